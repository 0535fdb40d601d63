import { userInfo } from 'node:os';
import type { Config } from '../config/schema.js';
import { ChangedMeanwhileError, RefusedError, RunNotFoundError } from '../errors.js';
import { drainLimitMs } from '../policy/lease-limits.js';
import { retryDelay } from '../policy/retry-delay.js';
import type { RunExpectation, RunOverride, RunStore } from '../store/run-store.js';
import type { LogPriority, RunDoc, RunState } from '../store/types.js';

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

async function readRun(store: RunStore, number: number): Promise<RunDoc> {
  const run = await store.getRun(number);
  if (!run) throw new RunNotFoundError(number);
  return run;
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
 * Reads the run, asks `plan` what to write (it throws RefusedError when the state does not allow the action),
 * and writes it fenced on what was read. A lost race is read and planned once more; a second loss is reported.
 * With `selected`, that reading is the one fenced on, once.
 */
async function overrideOnce(
  deps: OperatorDeps,
  number: number,
  action: OperatorAction,
  plan: (run: RunDoc) => RunOverride,
  selected?: RunDoc,
): Promise<{ before: RunDoc; after: RunDoc }> {
  for (let round = 0; round < 2; round++) {
    const before = selected ?? (await readRun(deps.store, number));
    // a busy run taken from its owner keeps its attempt as draining until its command is gone (issue 12)
    const change = { ...plan(before), drainMs: drainLimitMs(deps.config.timeouts) };
    const ok = await deps.store.overrideRun(number, expectationOf(before), change, {
      host: deps.host,
      detail: { by: 'operator', user: deps.user, action },
    });
    if (ok) return { before, after: await readRun(deps.store, number) };
    if (selected) {
      const now = await deps.store.getRun(number);
      throw new ChangedMeanwhileError(
        number,
        `run ${number} changed since it was selected (it was ${describeState(selected)}, it is now ` +
          `${now ? describeState(now) : 'gone'}); left alone`,
      );
    }
  }
  const now = await readRun(deps.store, number);
  throw new RefusedError(
    number,
    `run ${number} changed twice while ${action} was being written (it is now ${describeState(now)}); ` +
      `look at runwarden show ${number} and try again`,
  );
}

function refuse(run: RunDoc, action: string, wayOut: string): never {
  throw new RefusedError(run.number, `cannot ${action} run ${run.number}: it is ${describeState(run)}; ${wayOut}`);
}

function heldWarnings(run: RunDoc): string[] {
  const warnings: string[] = [];
  if (run.tags.includes('hold')) {
    warnings.push(`run ${run.number} is tagged hold: no daemon claims it until runwarden release ${run.number}`);
  }
  if (run.tags.includes('abandon')) {
    warnings.push(`run ${run.number} is tagged abandon: the next cleanup pass abandons it again`);
  }
  return warnings;
}

/**
 * `fail N [reason]`: counts as a failure and schedules a retry by the backoff formula. Allowed from considering,
 * busy and done. The run stays failed even when this reaches max_failures; the next automatic failure abandons it.
 */
export async function failRunByOperator(
  deps: OperatorDeps,
  number: number,
  reason?: string,
  options: ActionOptions = {},
): Promise<OperatorResult> {
  const text = `failed by ${who(deps)}: ${reason?.trim() || 'no reason given'}`;
  const { before, after } = await overrideOnce(deps, number, 'fail', (run) => {
    const p = run.processing;
    if (!p) refuse(run, 'fail', `use abandon ${number} to give it up, or hold ${number} to keep it from being claimed`);
    if (p.state === 'failed') {
      refuse(run, 'fail', `use retry ${number} to make it eligible now, or abandon ${number} to give it up`);
    }
    if (p.state === 'abandoned') refuse(run, 'fail', `use retry ${number} to process it again`);
    return {
      to: 'failed',
      reason: text,
      n_failures: p.n_failures + 1,
      next_retry: deps.clock() + retryDelay(p.n_failures, deps.config.retry, deps.random),
    };
  }, options.selected);
  await operatorLog(deps, 2, number, `run ${number} (was ${describeState(before)}) ${text}`);
  return { action: 'fail', number, from: stateLabel(before), to: stateLabel(after), run: after, warnings: [] };
}

/** `abandon N [reason]`: terminal, from any state but abandoned; n_failures unchanged. */
export async function abandonRunByOperator(
  deps: OperatorDeps,
  number: number,
  reason?: string,
  options: ActionOptions = {},
): Promise<OperatorResult> {
  const text = `abandoned by ${who(deps)}: ${reason?.trim() || 'no reason given'}`;
  const { before, after } = await overrideOnce(deps, number, 'abandon', (run) => {
    const p = run.processing;
    if (p?.state === 'abandoned') refuse(run, 'abandon', `it already is; use retry ${number} to process it again`);
    return { to: 'abandoned', reason: text, n_failures: p?.n_failures ?? 0 };
  }, options.selected);
  await operatorLog(deps, 2, number, `run ${number} (was ${describeState(before)}) ${text}`);
  return { action: 'abandon', number, from: stateLabel(before), to: stateLabel(after), run: after, warnings: [] };
}

/**
 * `retry N [--reset]`: from failed, abandoned or done to failed with next_retry now, so a daemon claims it at
 * once. `reset` zeroes n_failures and n_interruptions (the attempt counter is never reset). A hold tag stays: reported as a warning.
 */
export async function retryRunByOperator(
  deps: OperatorDeps,
  number: number,
  options: { reset?: boolean } & ActionOptions = {},
): Promise<OperatorResult> {
  const text = `retry requested by ${who(deps)}${options.reset ? ' (failure count reset)' : ''}`;
  const { before, after } = await overrideOnce(deps, number, 'retry', (run) => {
    const p = run.processing;
    if (!p) refuse(run, 'retry', 'not processed yet; it is claimed as soon as a daemon is free');
    if (p.state === 'considering' || p.state === 'busy') {
      refuse(run, 'retry', `use fail ${number} first, or process ${number} --force`);
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
  await operatorLog(deps, 1, number, `run ${number} (was ${describeState(before)}): ${text}`);
  return {
    action: 'retry',
    number,
    from: stateLabel(before),
    to: stateLabel(after),
    run: after,
    warnings: heldWarnings(after),
  };
}

/** `hold N` / `release N`: adds or removes the hold tag, in any state. A running attempt goes on. */
export async function setHoldByOperator(deps: OperatorDeps, number: number, hold: boolean): Promise<OperatorResult> {
  const run = await deps.store.setRunTag(number, 'hold', hold);
  if (!run) throw new RunNotFoundError(number);
  const action = hold ? 'hold' : 'release';
  const warnings: string[] = [];
  const p = run.processing;
  if (hold && p && (p.state === 'considering' || p.state === 'busy')) {
    warnings.push(`run ${number} is ${describeState(run)} and keeps running: hold only stops future claims`);
  }
  await operatorLog(deps, 1, number, `run ${number} ${hold ? 'held' : 'released'} by ${who(deps)}`);
  return { action, number, from: stateLabel(run), to: stateLabel(run), run, warnings };
}

export interface ProcessClaim {
  /** The run as claimed: considering, with this host and a fresh token. */
  run: RunDoc;
  from: RunStateLabel;
  /** The owner the run was taken away from (`--force` on a considering or busy run). */
  takenFrom?: { host: string; pid: number; state: RunState };
}

/**
 * The claim behind `process N`: refused for considering, busy and done runs unless `force` (which takes the run
 * away from its owner: it loses its lease and kills its command). Held, abandoned, failed and pending runs are
 * claimed as asked: the request is explicit.
 */
export async function claimForProcessing(
  deps: OperatorDeps,
  number: number,
  options: { force?: boolean } = {},
): Promise<ProcessClaim> {
  for (let round = 0; round < 2; round++) {
    const before = await readRun(deps.store, number);
    const p = before.processing;
    if (!options.force && p && (p.state === 'considering' || p.state === 'busy')) {
      refuse(before, 'process', `--force takes it away from its owner (its command is killed within a check_interval)`);
    }
    if (!options.force && p?.state === 'done') refuse(before, 'process', `add --force to process it again`);
    const takenFrom = p && (p.state === 'considering' || p.state === 'busy')
      ? { host: p.host, pid: p.pid, state: p.state }
      : undefined;
    const reason = takenFrom
      ? `forced by ${who(deps)} (process ${number} --force): taken from host ${takenFrom.host} ` +
        `(pid ${takenFrom.pid}, ${takenFrom.state})`
      : `claimed by ${who(deps)} to process in the foreground`;
    const claimed = await deps.store.claimRun(
      number,
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
      `run ${number} (was ${describeState(before)}) claimed by ${who(deps)} to process in the foreground` +
        (takenFrom ? `, taken away from host ${takenFrom.host}` : ''),
    );
    return { run: claimed, from: stateLabel(before), ...(takenFrom ? { takenFrom } : {}) };
  }
  const now = await readRun(deps.store, number);
  throw new RefusedError(
    number,
    `run ${number} changed twice while it was being claimed (it is now ${describeState(now)}); ` +
      `look at runwarden show ${number} and try again`,
  );
}
