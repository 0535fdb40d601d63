import type { Argv, CommandModule } from 'yargs';
import type { Config } from '../config/schema.js';
import {
  failRunByOperator,
  operatorUser,
  type OperatorAction,
  type OperatorDeps,
  type OperatorResult,
} from '../daemon/operator-actions.js';
import { applyToRuns, selectRuns } from '../daemon/operator-selection.js';
import { UsageError } from '../errors.js';
import type { RunStore } from '../store/run-store.js';
import type { RunDoc, TaskRef } from '../store/types.js';
import { RunNotFoundError } from '../errors.js';
import {
  configFromArgs,
  formatRelative,
  formatTime,
  printJson,
  runCommand,
  withStore,
  type GlobalArgs,
} from './common.js';
import {
  CONFIRM_ABOVE,
  confirmSelection,
  isRunWord,
  operatorResultLine,
  printOutcomes,
  selectionOptions,
  targetsOf,
  type SelectionArgs,
} from './run-selection.js';
import { stageOption, taskOfRun, taskOfView, type StageArgs } from './stage-choice.js';

// `runwarden fail N [reason]`. Also the printing shared by the operator commands (abandon, retry, hold).

export interface OperatorArgs extends SelectionArgs, StageArgs {
  runs?: string;
  reason?: string[];
}

export function operatorDeps(config: Config, store: RunStore): OperatorDeps {
  return { store, config, host: config.host, user: operatorUser(), random: Math.random, clock: Date.now };
}

/** `reason..` collects the words after N, so `fail 7 calibration missing` needs no quotes. */
export function reasonArgument(words: string[] | undefined): string | undefined {
  const text = (words ?? []).map(String).join(' ').trim();
  return text === '' ? undefined : text;
}

/** One line for people (warnings to stderr), or the whole result as JSON. */
export function printOperatorResult(result: OperatorResult, json: boolean | undefined): void {
  if (json) return printJson(result);
  for (const warning of result.warnings) process.stderr.write(`runwarden: warning: ${warning}\n`);
  process.stdout.write(`${resultLine(result)}\n`);
}

function resultLine(result: OperatorResult): string {
  const now = Date.now();
  return operatorResultLine(result, now, (ms) => `at ${formatTime(ms)} (${formatRelative(ms, now)})`);
}

/**
 * The body of fail, abandon, retry, hold and release: one run named alone is acted on as always (a refusal exits
 * 1 with the way out); a selection is read once, confirmed above a few runs, and each run acted on fenced on
 * that reading, with one line per run and the count. Each acts on one task: the one `--stage` names, or the
 * run's only one (a run of several tasks without --stage is refused, exit 2); a --state selection without
 * numbers selects tasks, each acted on in its own stage. `wholeRun` (hold, release): without --stage the
 * action is on the run, not a task.
 */
export async function runOperatorCommand(
  args: SelectionArgs & StageArgs,
  words: string[],
  usage: string,
  action: OperatorAction,
  act: (deps: OperatorDeps, task: TaskRef, selected?: RunDoc) => Promise<OperatorResult>,
  options: { wholeRun?: boolean } = {},
): Promise<number> {
  const targets = targetsOf(words, args, usage);
  const config = configFromArgs(args);
  const wholeRun = (options.wholeRun ?? false) && args.stage === undefined;
  return withStore(config, async (store) => {
    const deps = operatorDeps(config, store);
    if (targets.kind === 'one') {
      const run = await store.getRun(targets.number);
      if (!run) throw new RunNotFoundError(targets.number);
      const task = wholeRun ? targets.number : taskOfRun(run, args.stage, action);
      printOperatorResult(await act(deps, task), args.json);
      return 0;
    }
    const selected = await selectRuns(store, {
      ...targets.selection,
      ...(args.stage !== undefined ? { stage: args.stage } : {}),
    });
    // The store lists a --state/--tag selection one view per task: each is its own task, or (whole run) one run.
    const perTask = targets.selection.numbers === undefined && targets.selection.state !== undefined;
    const runs = wholeRun ? selected.runs.filter((run, i, all) => all.findIndex((r) => r.number === run.number) === i) : selected.runs;
    // Every task is known before anything is asked or written: a run that needs --stage refuses the whole command.
    const tasks = new Map<RunDoc, TaskRef>(
      runs.map((run) => [
        run,
        wholeRun ? run.number : perTask && args.stage === undefined ? taskOfView(run) : taskOfRun(run, args.stage, action),
      ]),
    );
    const chosen = { ...selected, runs };
    if (!(await confirmSelection(action, chosen, args.yes ?? false))) {
      process.stderr.write(`runwarden: ${action}: nothing done\n`);
      return 1;
    }
    const outcomes = await applyToRuns(chosen, (run) => act(deps, tasks.get(run)!, run));
    return printOutcomes(action, outcomes, args.json, resultLine);
  });
}

/**
 * fail and abandon take `[runs] [reason..]`: the first word names the runs unless --state/--tag select them and
 * it is not a run word (then it starts the reason). `fail 7 8 9` would fail 7 with the reason "8 9": refused,
 * the runs are written 7,8,9.
 */
export function runsAndReason(args: OperatorArgs, command: string): { words: string[]; reason?: string } {
  const first = args.runs === undefined ? undefined : String(args.runs);
  const rest = (args.reason ?? []).map(String);
  const filtered = args.state !== undefined || args.tag !== undefined;
  if (first !== undefined && filtered && !isRunWord(first)) return { words: [], reason: reasonArgument([first, ...rest]) };
  if (first !== undefined && rest.length > 0 && rest.every(isRunWord)) {
    throw new UsageError(
      `reason: "${rest.join(' ')}" looks like run numbers; to ${command} several runs write them with commas ` +
        `(${command} ${[first, ...rest].join(',')}), or quote a reason that starts with a number`,
      'reason',
    );
  }
  const reason = reasonArgument(rest);
  return { words: first === undefined ? [] : [first], ...(reason !== undefined ? { reason } : {}) };
}

export const failCommand: CommandModule<GlobalArgs, OperatorArgs> = {
  command: 'fail [runs] [reason..]',
  describe:
    'fail considering, busy or done runs by hand: counts as a failure, retried later by the backoff formula',
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(selectionOptions(yargs), 'fail')
      .positional('runs', { type: 'string', describe: 'run number, or several: 7,8,9 or 100-120' })
      .positional('reason', { type: 'string', array: true, describe: 'why (stored as "failed by USER@HOST: …")' })
      .epilogue(
        'A busy run loses its lease: its owner kills the command within one check_interval and writes nothing ' +
          'more. n_failures grows by one and next_retry follows retry.*; the run stays failed even when this ' +
          'reaches retry.max_failures (the next automatic failure abandons it). Refused for pending, failed and ' +
          `abandoned runs. Several runs: each is failed on its own, fenced on the state it was selected in (a run ` +
          `that changed meanwhile is skipped); more than ${CONFIRM_ABOVE} need a yes (a prompt, or --yes).`,
      )
      .example('$0 fail 1042 calibration was wrong', 'stop run 1042 now; it is retried after the backoff')
      .example('$0 fail 1042 --stage compress out of space', 'fail the compress task of run 1042')
      .example('$0 fail 1042,1043 --json', 'two runs; the results, with the run documents, as JSON')
      .example('$0 fail --state busy --tag calib-v1 --yes bad calibration', 'every busy run tagged calib-v1'),
  handler: (args) =>
    runCommand(async () => {
      const { words, reason } = runsAndReason(args, 'fail');
      return runOperatorCommand(args, words, 'fail <runs> [reason..]', 'fail', (deps, task, selected) =>
        failRunByOperator(deps, task, reason, { ...(selected ? { selected } : {}) }),
      );
    }),
};
