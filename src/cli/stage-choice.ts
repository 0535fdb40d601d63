import type { Argv } from 'yargs';
import { UsageError } from '../errors.js';
import { printable } from '../policy/terminal-text.js';
import { DEFAULT_STAGE, type RunDoc, type TaskRef } from '../store/types.js';

// `--stage S` on the commands that read or change one task of a run (DESIGN §9): needed only when the run has
// more than one task; a run of one task is that task. A bare number names a run whose one task is `process`,
// so the first wave's runs, messages and JSON stay as they were.

export interface StageArgs {
  stage?: string;
}

export function stageOption<T>(yargs: Argv<T>, what: string) {
  return yargs.option('stage', {
    type: 'string',
    describe: `the stage whose task to ${what} (needed when the run has several; runwarden show N lists them)`,
  });
}

/** The stages of a run's tasks, upstream first; a run whose store keeps no task list has its view's stage. */
export function stagesOfRun(run: RunDoc): string[] {
  if (run.tasks && run.tasks.length > 0) return run.tasks.map((task) => task.stage);
  return [run.stage ?? DEFAULT_STAGE];
}

/** True when the run has one task and it is `process`: a first-wave run, named by its number alone. */
export function isSingleProcessRun(run: RunDoc): boolean {
  const stages = stagesOfRun(run);
  return stages.length === 1 && stages[0] === DEFAULT_STAGE;
}

/** How a command names the task a view of a run is about: the bare number for a first-wave run. */
export function taskOfView(run: RunDoc): TaskRef {
  return isSingleProcessRun(run) ? run.number : { number: run.number, stage: run.stage ?? DEFAULT_STAGE };
}

function stageList(stages: string[]): string {
  return stages.map((stage) => printable(stage)).join(', ');
}

/**
 * The task of `run` a command acts on: the one named by `stage`, or the run's only task. A stage the run has no
 * task of, or no stage for a run of several tasks, is a UsageError (exit 2) naming the stages to choose from.
 */
export function taskOfRun(run: RunDoc, stage: string | undefined, doWhat: string): TaskRef {
  const stages = stagesOfRun(run);
  if (stage !== undefined) {
    if (!stages.includes(stage)) {
      throw new UsageError(
        `--stage: run ${run.number} has no stage ${JSON.stringify(printable(stage))}; its stages: ${stageList(stages)}`,
        'stage',
      );
    }
    return isSingleProcessRun(run) ? run.number : { number: run.number, stage };
  }
  if (stages.length > 1) {
    throw new UsageError(
      `--stage: run ${run.number} has ${stages.length} stages (${stageList(stages)}); name the one to ${doWhat} ` +
        `with --stage`,
      'stage',
    );
  }
  return taskOfView({ ...run, stage: stages[0] });
}

/** The stage a task names (`process` for a bare number). */
export function stageOfTask(task: TaskRef): string {
  return typeof task === 'number' ? DEFAULT_STAGE : task.stage;
}

/** Stage names in pipeline order (`order`, the configuration's), then the ones it does not name, sorted. */
export function orderedStages(names: readonly string[], order: readonly string[]): string[] {
  const known = order.filter((name) => names.includes(name));
  return [...known, ...names.filter((name) => !order.includes(name)).sort()];
}
