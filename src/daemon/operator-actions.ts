import { userInfo } from 'node:os';
import type { Config } from '../config/schema.js';
import { ChangedMeanwhileError, RefusedError, RunNotFoundError } from '../errors.js';
import { drainLimitMs } from '../policy/lease-limits.js';
import { retryDelay } from '../policy/retry-delay.js';
import { stageRun } from './staging.js';
import type { RunExpectation, RunOverride, RunStore } from '../store/run-store.js';
import { DEFAULT_STAGE, taskKeyOf, type LogPriority, type RunDoc, type RunState, type TaskRef } from '../store/types.js';

// What an operator may do to a run by hand (DESIGN §7): fail, abandon, retry, hold/release, and the claim
// behind `process N`. Every write that takes a run away is a compare-and-set on the state and lease token just
// read (store.overrideRun), so a live owner loses its lease and writes nothing more, and a run that changed in
// between is never overwritten blindly: it is read once more and, if still allowed, written again.

export interface OperatorDeps {
  store: RunStore;
  config: Config;
  /** The operator's host: named in run_events and the operator log. */
  host: string;
  /** The operator's login name (operatorUser()). */
  user: string;
  random: () => number;
  clock: () => number;
}

export type OperatorAction = 'fail' | 'abandon' | 'retry' | 'hold' | 'release';
export type RunStateLabel = RunState | 'pending';

export interface OperatorResult {
  action: OperatorAction;
  number: number;
  /** The stage of the task acted on (hold/release without a stage: the whole run, no stage). */
  stage?: string;
  from: RunStateLabel;
  to: RunStateLabel;
  /** The run as it is after the action. */
  run: RunDoc;
  /** Things the operator should know, e.g. that a retried run is still held. */
  warnings: string[];
}

/** The login name for "failed by <user>@<host>"; never throws (userInfo does without a passwd entry). */
export function operatorUser(): string {
  try {
    const name = userInfo().username;
    if (name) return name;
  } catch {
    // no passwd entry (containers): fall back to the environment
  }
  return process.env.USER || process.env.LOGNAME || 'unknown';
}

export function stateLabel(run: RunDoc): RunStateLabel {
  return run.processing?.state ?? 'pending';
}

function expectationOf(run: RunDoc): RunExpectation {
  return { state: run.processing?.state ?? null, token: run.processing?.token ?? null };
}

/** "busy on host alpha" / "pending" / "done": where a run stands, for messages. */
export function describeState(run: RunDoc): string {
  const p = run.processing;
  if (!p) return 'pending (never processed)';
  if (p.state === 'considering' || p.state === 'busy') return `${p.state} on host ${p.host} (pid ${p.pid})`;
  return p.state;
}

function who(deps: OperatorDeps): string {
  return `${deps.user}@${deps.host}`;
}

/**
 * How messages name a task: `run 7` for a bare number (a run whose one task is `process`, as in the first
 * wave), `run 7 stage compress` for a task named with its stage.
 */
export function taskName(task: TaskRef): string {
  return typeof task === 'number' ? `run ${task}` : `run ${task.number} stage ${task.stage}`;
}

/** The flags that name `task` again on the command line: `7`, or `7 --stage compress`. */
function taskArgs(task: TaskRef): string {
  return typeof task === 'number' ? String(task) : `${task.number} --stage ${task.stage}`;
}

async function readRun(store: RunStore, task: TaskRef): Promise<RunDoc> {
  const { number, stage } = taskKeyOf(task);
  const run = typeof task === 'number' ? await store.getRun(number) : await store.getRun(number, stage);
  if (!run) throw new RunNotFoundError(number);
  // A store that keeps one task per run hands back its one view whatever the stage asked for.
  if (typeof task !== 'number' && (run.stage ?? DEFAULT_STAGE) !== stage) {
    throw new RefusedError(number, `run ${number} has no task of stage ${stage}`);
  }
  return run;
}

/** The stage a result names: the task's, for a task named with its stage. */
function stageOf(task: TaskRef): { stage?: string } {
  return typeof task === 'number' ? {} : { stage: task.stage };
}

async function operatorLog(deps: OperatorDeps, priority: LogPriority, number: number, message: string) {
  await deps.store.appendLog({ host: deps.host, user: who(deps), priority, message, number });
}

/** How an action meets the run. */
export interface ActionOptions {
  /**
   * The run as the operator selected it (a command naming several runs, or a --state/--tag selection): the
   * write is fenced on exactly this reading, and a run that changed since is left alone (ChangedMeanwhileError)
   * instead of being read again, so nothing the operator did not see and confirm is written.
   */
  selected?: RunDoc;
}

/**
 * Reads the task, asks `plan` what to write (it throws RefusedError when the state does not allow the action),
 * and writes it fenced on what was read. A lost race is read and planned once more; a second loss is reported.
 * With `selected`, that reading is the one fenced on, once.
 */
async function overrideOnce(
  deps: OperatorDeps,
  task: TaskRef,
  action: OperatorAction,
  plan: (run: RunDoc) => RunOverride,
  selected?: RunDoc,
): Promise<{ before: RunDoc; after: RunDoc }> {
  const { number } = taskKeyOf(task);
  const name = taskName(task);
  for (let round = 0; round < 2; round++) {
    const before = selected ?? (await readRun(deps.store, task));
    // a busy run taken from its owner keeps its attempt as draining until its command is gone (issue 12)
    const change = { ...plan(before), drainMs: drainLimitMs(deps.config.timeouts) };
    const ok = await deps.store.overrideRun(task, expectationOf(before), change, {
      host: deps.host,
      detail: { by: 'operator', user: deps.user, action },
    });
    if (ok) return { before, after: await readRun(deps.store, task) };
    if (selected) {
      const now = await deps.store.getRun(number, taskKeyOf(task).stage);
      throw new ChangedMeanwhileError(
        number,
        `${name} changed since it was selected (it was ${describeState(selected)}, it is now ` +
          `${now ? describeState(now) : 'gone'}); left alone`,
      );
    }
  }
  const now = await readRun(deps.store, task);
  throw new RefusedError(
    number,
    `${name} changed twice while ${action} was being written (it is now ${describeState(now)}); ` +
      `look at runwarden show ${number} and try again`,
  );
}

function refuse(task: TaskRef, run: RunDoc, action: string, wayOut: string): never {
  throw new RefusedError(run.number, `cannot ${action} ${taskName(task)}: it is ${describeState(run)}; ${wayOut}`);
}

/** The hold tags that keep `task` from being claimed: `hold` for the whole run, `hold:<stage>` for its stage. */
function holdTagsOf(run: RunDoc, task: TaskRef): string[] {
  const { stage } = taskKeyOf(task);
  return run.tags.filter((tag) => tag === 'hold' || (typeof task !== 'number' && tag === `hold:${stage}`));
}

function heldWarnings(task: TaskRef, run: RunDoc): string[] {
  const warnings: string[] = [];
  const name = taskName(task);
  for (const tag of holdTagsOf(run, task)) {
    const release = tag === 'hold' ? String(run.number) : `${run.number} --stage ${tag.slice('hold:'.length)}`;
    warnings.push(`${name} is tagged ${tag}: no daemon claims it until runwarden release ${release}`);
  }
  if (run.tags.includes('abandon')) {
    warnings.push(`run ${run.number} is tagged abandon: the next cleanup pass abandons it again`);
  }
  return warnings;
}

/** Why a pending task is blocked, and what unblocks it; '' when it is not blocked. */
function blockedWayOut(run: RunDoc): string {
  if (!run.blocked) return '';
  return `; it is blocked since stage ${run.blocked.stage} was abandoned: runwarden retry ${run.number} --stage ${run.blocked.stage} unblocks it`;
}

/**
 * `fail N [reason]`: counts as a failure and schedules a retry by the backoff formula. Allowed from considering,
 * busy and done. The run stays failed even when this reaches max_failures; the next automatic failure abandons it.
 */
export async function failRunByOperator(
  deps: OperatorDeps,
  task: TaskRef,
  reason?: string,
  options: ActionOptions = {},
): Promise<OperatorResult> {
  const { number } = taskKeyOf(task);
  const again = taskArgs(task);
  const text = `failed by ${who(deps)}: ${reason?.trim() || 'no reason given'}`;
  const { before, after } = await overrideOnce(deps, task, 'fail', (run) => {
    const p = run.processing;
    if (!p) {
      refuse(task, run, 'fail', `use abandon ${again} to give it up, or hold ${again} to keep it from being claimed${blockedWayOut(run)}`);
    }
    if (p.state === 'failed') {
      refuse(task, run, 'fail', `use retry ${again} to make it eligible now, or abandon ${again} to give it up`);
    }
    if (p.state === 'abandoned') refuse(task, run, 'fail', `use retry ${again} to process it again`);
    return {
      to: 'failed',
      reason: text,
      n_failures: p.n_failures + 1,
      next_retry: deps.clock() + retryDelay(p.n_failures, deps.config.retry, deps.random),
    };
  }, options.selected);
  await operatorLog(deps, 2, number, `${taskName(task)} (was ${describeState(before)}) ${text}`);
  return { action: 'fail', number, ...stageOf(task), from: stateLabel(before), to: stateLabel(after), run: after, warnings: [] };
}

/**
 * `abandon N [reason]`: terminal, from any state but abandoned; n_failures unchanged. The tasks below it in the
 * pipeline become blocked (the store does it in the same write).
 */
export async function abandonRunByOperator(
  deps: OperatorDeps,
  task: TaskRef,
  reason?: string,
  options: ActionOptions = {},
): Promise<OperatorResult> {
  const { number } = taskKeyOf(task);
  const text = `abandoned by ${who(deps)}: ${reason?.trim() || 'no reason given'}`;
  const { before, after } = await overrideOnce(deps, task, 'abandon', (run) => {
    const p = run.processing;
    if (p?.state === 'abandoned') refuse(task, run, 'abandon', `it already is; use retry ${taskArgs(task)} to process it again`);
    return { to: 'abandoned', reason: text, n_failures: p?.n_failures ?? 0 };
  }, options.selected);
  await operatorLog(deps, 2, number, `${taskName(task)} (was ${describeState(before)}) ${text}`);
  return { action: 'abandon', number, ...stageOf(task), from: stateLabel(before), to: stateLabel(after), run: after, warnings: [] };
}

/**
 * `retry N [--reset]`: from failed, abandoned or done to failed with next_retry now, so a daemon claims it at
 * once; the tasks an abandon of it blocked are unblocked in the same write. `reset` zeroes n_failures and
 * n_interruptions (the attempt counter is never reset). A hold tag stays: reported as a warning.
 */
export async function retryRunByOperator(
  deps: OperatorDeps,
  task: TaskRef,
  options: { reset?: boolean } & ActionOptions = {},
): Promise<OperatorResult> {
  const { number } = taskKeyOf(task);
  const again = taskArgs(task);
  const text = `retry requested by ${who(deps)}${options.reset ? ' (failure count reset)' : ''}`;
  const { before, after } = await overrideOnce(deps, task, 'retry', (run) => {
    const p = run.processing;
    if (!p) {
      refuse(task, run, 'retry', run.blocked ? blockedWayOut(run).slice(2) : 'not processed yet; it is claimed as soon as a daemon is free');
    }
    if (p.state === 'considering' || p.state === 'busy') {
      refuse(task, run, 'retry', `use fail ${again} first, or process ${again} --force`);
    }
    return {
      to: 'failed',
      reason: text,
      n_failures: options.reset ? 0 : p.n_failures,
      // a reset forgets interruptions too, so a run given up on at retry.max_interruptions gets its full allowance
      ...(options.reset ? { n_interruptions: 0 } : {}),
      next_retry: deps.clock(),
    };
  }, options.selected);
  await operatorLog(deps, 1, number, `${taskName(task)} (was ${describeState(before)}): ${text}`);
  return {
    action: 'retry',
    number,
    ...stageOf(task),
    from: stateLabel(before),
    to: stateLabel(after),
    run: after,
    warnings: heldWarnings(task, after),
  };
}

/**
 * `hold N` / `release N`: adds or removes the hold tag, in any state: `hold` holds every task of the run, and
 * with a stage `hold:<stage>` holds only that stage's task. A running attempt goes on.
 */
export async function setHoldByOperator(
  deps: OperatorDeps,
  task: TaskRef,
  hold: boolean,
): Promise<OperatorResult> {
  const { number, stage } = taskKeyOf(task);
  const tag = typeof task === 'number' ? 'hold' : `hold:${stage}`;
  const run = await deps.store.setRunTag(number, tag, hold);
  if (!run) throw new RunNotFoundError(number);
  const view = typeof task === 'number' ? run : ((await deps.store.getRun(number, stage)) ?? run);
  const action = hold ? 'hold' : 'release';
  const warnings: string[] = [];
  const busy = (run.tasks && run.tasks.length > 0 ? run.tasks : [{ stage: view.stage, processing: view.processing }])
    .filter((t) => typeof task === 'number' || t.stage === stage)
    .filter((t) => t.processing?.state === 'considering' || t.processing?.state === 'busy');
  if (hold && busy.length > 0) {
    const what = typeof task === 'number' && (run.tasks?.length ?? 0) > 1
      ? `run ${number} has ${busy.map((t) => `stage ${t.stage} ${t.processing!.state} on host ${t.processing!.host}`).join(', ')}`
      : `${taskName(task)} is ${describeState(view)}`;
    warnings.push(`${what} and keeps running: hold only stops future claims`);
  }
  if (!hold && typeof task !== 'number' && run.tags.includes('hold')) {
    warnings.push(`run ${number} is still tagged hold (the whole run): runwarden release ${number} releases it`);
  }
  await operatorLog(deps, 1, number, `${taskName(task)} ${hold ? 'held' : 'released'} by ${who(deps)}`);
  return { action, number, ...stageOf(task), from: stateLabel(view), to: stateLabel(view), run: view, warnings };
}

export interface ProcessClaim {
  /** The run as claimed: considering, with this host and a fresh token. */
  run: RunDoc;
  from: RunStateLabel;
  /** The owner the run was taken away from (`--force` on a considering or busy run). */
  takenFrom?: { host: string; pid: number; state: RunState };
}

/** The stages `run`'s task (of run.stage) needs that are not done yet, with their state: `process (failed)`. */
export function unmetNeeds(run: RunDoc): string[] {
  const stage = run.stage ?? DEFAULT_STAGE;
  const task = run.tasks?.find((t) => t.stage === stage);
  if (!task) return [];
  return task.needs
    .map((need) => ({ need, state: run.tasks?.find((t) => t.stage === need)?.processing?.state ?? 'pending' }))
    .filter(({ state }) => state !== 'done')
    .map(({ need, state }) => `${need} (${state})`);
}

/**
 * A run no daemon or submit has given tasks yet (another tool inserted it) gets them now, under this
 * configuration's stages, as a daemon meeting it would (createTasks is idempotent: a daemon doing the same at
 * once creates nothing twice). A run that matches none of the stages is refused, naming why.
 */
async function giveTasksIfNone(deps: OperatorDeps, task: TaskRef): Promise<void> {
  const { number } = taskKeyOf(task);
  const run = await deps.store.getRun(number);
  if (!run) throw new RunNotFoundError(number);
  if ((run.tasks?.length ?? 0) > 0) return;
  const { specs } = await stageRun(deps.store, deps.config, run);
  if (specs.length === 0) {
    throw new RefusedError(
      number,
      `run ${number} has no task: it matches the selection (select:) of none of this configuration's stages`,
    );
  }
}

/**
 * The claim behind `process N`: refused for considering, busy and done runs unless `force` (which takes the run
 * away from its owner: it loses its lease and kills its command). Held, abandoned, failed and pending runs are
 * claimed as asked: the request is explicit. A task whose upstream tasks are not all done is refused even with
 * `force`: no stage ever starts before the stages it needs are done.
 */
export async function claimForProcessing(
  deps: OperatorDeps,
  task: TaskRef,
  options: { force?: boolean } = {},
): Promise<ProcessClaim> {
  const { number } = taskKeyOf(task);
  const name = taskName(task);
  await giveTasksIfNone(deps, task);
  for (let round = 0; round < 2; round++) {
    const before = await readRun(deps.store, task);
    const p = before.processing;
    const unmet = unmetNeeds(before);
    if (unmet.length > 0) {
      refuse(task, before, 'process', `it needs ${unmet.join(', ')} done first${blockedWayOut(before)}`);
    }
    if (!options.force && p && (p.state === 'considering' || p.state === 'busy')) {
      refuse(task, before, 'process', `--force takes it away from its owner (its command is killed within a check_interval)`);
    }
    if (!options.force && p?.state === 'done') refuse(task, before, 'process', `add --force to process it again`);
    const takenFrom = p && (p.state === 'considering' || p.state === 'busy')
      ? { host: p.host, pid: p.pid, state: p.state }
      : undefined;
    const reason = takenFrom
      ? `forced by ${who(deps)} (process ${taskArgs(task)} --force): taken from host ${takenFrom.host} ` +
        `(pid ${takenFrom.pid}, ${takenFrom.state})`
      : `claimed by ${who(deps)} to process in the foreground`;
    const claimed = await deps.store.claimRun(
      task,
      { host: deps.host, pid: process.pid, order: deps.config.order },
      expectationOf(before),
      {
        drainMs: drainLimitMs(deps.config.timeouts),
        note: {
          reason,
          detail: { by: 'operator', user: deps.user, action: options.force ? 'process --force' : 'process' },
        },
      },
    );
    if (!claimed) continue;
    await operatorLog(
      deps,
      takenFrom ? 2 : 1,
      number,
      `${name} (was ${describeState(before)}) claimed by ${who(deps)} to process in the foreground` +
        (takenFrom ? `, taken away from host ${takenFrom.host}` : ''),
    );
    return { run: claimed, from: stateLabel(before), ...(takenFrom ? { takenFrom } : {}) };
  }
  const now = await readRun(deps.store, task);
  throw new RefusedError(
    number,
    `${name} changed twice while it was being claimed (it is now ${describeState(now)}); ` +
      `look at runwarden show ${number} and try again`,
  );
}
