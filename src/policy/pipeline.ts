// The pipeline as the daemon and the faces read it (DESIGN §9): the stages of a config, and which of them a
// run gets. Pure; config's types only.

import type { Config, RunSelector, StageConfig } from '../config/schema.js';
import { outputDirName } from './placeholders.js';

/** The stage a config without `stages:` has: its `process:` block, named as the first wave's one stage. */
export const PROCESS_STAGE = 'process';

/**
 * The config's stages, upstream first. A config without `stages:` has one stage named `process`, built from
 * `process:`, `timeouts` and `retry` as they are now (tests change those after loading).
 */
export function stagesOf(config: Config): StageConfig[] {
  if (config.stages !== undefined && config.stages.length > 0) return config.stages;
  const { host_fault_threshold: _hostLevel, ...section } = config.process;
  return [
    {
      ...section,
      name: PROCESS_STAGE,
      needs: [],
      depth: 0,
      slots: config.slots,
      check: [],
      select: {},
      timeouts: {
        max_processing_time: config.timeouts.max_processing_time,
        max_no_output_time: config.timeouts.max_no_output_time,
      },
      retry: config.retry,
    },
  ];
}

/**
 * The stages `name` needs, directly or further up, in the order `stages` lists them (upstream first for a
 * config's stages). These are the stages whose outputs its command may name, and whose tasks must be done first.
 */
export function upstreamOf(stages: readonly { name: string; needs: readonly string[] }[], name: string): string[] {
  const needsOf = new Map(stages.map((stage) => [stage.name, stage.needs]));
  const above = new Set<string>();
  const visit = (stage: string) => {
    for (const need of needsOf.get(stage) ?? []) {
      if (above.has(need)) continue;
      above.add(need);
      visit(need);
    }
  };
  visit(name);
  return stages.map((stage) => stage.name).filter((stage) => above.has(stage) && stage !== name);
}

/** An output a run registered, as the store keeps it (a first-wave output has no stage: it is `process`'s). */
export interface StageOutput {
  location: string;
  stage?: string;
  at: number;
}

/**
 * The upstream values of one task's placeholders and environment ({upstream.STAGE.output},
 * RUNWARDEN_UPSTREAM_STAGE): for each stage above `stage`, the newest output its task registered. A stage with
 * no output registered is left out (its placeholder then fails the attempt, naming the stage).
 */
export function upstreamOutputs(config: Config, stage: string, outputs: readonly StageOutput[]): Record<string, { output: string }> {
  const upstream: Record<string, { output: string }> = {};
  for (const above of upstreamOf(stagesOf(config), stage)) {
    let newest: StageOutput | undefined;
    for (const output of outputs) {
      if ((output.stage ?? PROCESS_STAGE) !== above) continue;
      if (newest === undefined || output.at >= newest.at) newest = output;
    }
    if (newest !== undefined) upstream[above] = { output: newest.location };
  }
  return upstream;
}

/** `root/part/...` for absolute paths as the config holds them (resolved, no trailing slash). */
function under(root: string, ...parts: string[]): string {
  return [root.replace(/\/+$/, ''), ...parts].join('/');
}

/**
 * A task's output directory: `output_root/{stage}/{number06}` with `stages:`, and `output_root/{number06}`
 * without, where the first wave put a run's output.
 */
export function taskOutputDir(config: Config, stage: StageConfig, number: number): string {
  return config.stages !== undefined && config.stages.length > 0
    ? under(stage.output_root, stage.name, outputDirName(number))
    : under(stage.output_root, outputDirName(number));
}

/** Where a task's attempt logs go, for every stage: `log_dir/{stage}/{number}` (attempt-{k}.log inside). */
export function attemptLogDir(stage: StageConfig, number: number): string {
  return under(stage.log_dir, stage.name, String(number));
}

/** Where the first wave wrote a run's attempt logs (`log_dir/{number}`): `logs` falls back to it for old attempts. */
export function firstWaveAttemptLogDir(logDir: string, number: number): string {
  return under(logDir, String(number));
}

/** The stage named `name`, or undefined when the config has none. */
export function stageNamed(config: Config, name: string): StageConfig | undefined {
  return stagesOf(config).find((stage) => stage.name === name);
}

/** The run fields a selector looks at. */
export interface SelectableRun {
  number: number;
  mode?: string;
  end?: number;
  tags: readonly string[];
  params: Readonly<Record<string, unknown>>;
}

/** Whether `run` passes `selector` (every condition it sets). */
export function matchesSelector(run: SelectableRun, selector: RunSelector): boolean {
  if (selector.tags && !selector.tags.every((tag) => run.tags.includes(tag))) return false;
  if (selector.not_tags && selector.not_tags.some((tag) => run.tags.includes(tag))) return false;
  if (selector.modes && !(run.mode !== undefined && selector.modes.includes(run.mode))) return false;
  if (selector.min_number !== undefined && run.number < selector.min_number) return false;
  if (selector.max_number !== undefined && run.number > selector.max_number) return false;
  if (selector.params) {
    for (const [key, value] of Object.entries(selector.params)) {
      if (!Object.hasOwn(run.params, key) || run.params[key] !== value) return false;
    }
  }
  if (selector.require_end && run.end === undefined) return false;
  return true;
}

/** What a store is told to create for one stage of a run. */
export interface StageSpec {
  stage: string;
  needs: string[];
}

/**
 * The tasks a run gets under `config` (submit, and a daemon meeting a run another tool inserted): every stage
 * whose selection matches, and whose needed stages the run gets too (a run that skips a stage skips
 * everything below it). `require_end` is not a reason to skip: it only holds the task back at claim time.
 */
export function stagesForRun(config: Config, run: SelectableRun): StageSpec[] {
  const given = new Set<string>();
  const specs: StageSpec[] = [];
  for (const stage of stagesOf(config)) {
    const { require_end: _later, ...selector } = stage.select;
    if (!matchesSelector(run, selector)) continue;
    if (!stage.needs.every((need) => given.has(need))) continue;
    given.add(stage.name);
    specs.push({ stage: stage.name, needs: [...stage.needs] });
  }
  return specs;
}
