import { formatElapsed } from '../config/duration.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { interruptionOutcome, repairFailureOutcome } from '../policy/failure-decision.js';
import { drainLimitMs } from '../policy/lease-limits.js';
import { retryDelay } from '../policy/retry-delay.js';
import type { RunOverride, RunStore } from '../store/run-store.js';
import { DEFAULT_STAGE, type RunDoc, type RunState } from '../store/types.js';
import { stageNamed, stagesOf as stagesOfConfig } from '../policy/pipeline.js';
import { taskLabel, taskRefOf } from './run-input.js';
import { isoTimeOrInvalid } from '../time-range.js';
import type { LeaseObservations } from './lease-observations.js';

// The cleanup pass (DESIGN §4): repairs what crashed or vanished hosts left behind, from any host. Each repair
// is one fenced write (store.overrideRun on the state and token just read), so two hosts cleaning at once never
// both fail one run: the loser's write changes nothing and is counted as lost. One run that cannot be repaired
// is reported and the pass goes on.

export interface CleanupDeps {
  store: RunStore;
  config: Config;
  /** The cleaning host, named in run_events and the operator log. */
  host: string;
  /**
   * Where the warnings go. When given it is the only channel (the daemon's logger forwards warnings to the
   * operator log); without it, cleanupPass writes its warnings to the operator log itself.
   */
  logger?: Pick<Logger, 'warn'>;
  random: () => number;
  clock: () => number;
  /**
   * A daemon's memory of the leases it saw in its earlier passes (monotonic clock). With it, a lease is
   * failed as stale only once this cleaner saw it unchanged for the limit, whatever the wall clocks say.
   * Without it (the one-pass `runwarden cleanup` an operator runs on purpose) the store's time alone judges.
   */
  observations?: LeaseObservations;
  /**
   * The runs this live daemon is processing right now: never failed by its own cleanup, whatever the store's
   * times say (restart recovery handles the runs of a previous incarnation of this host).
   */
  ownLiveRuns?: () => readonly number[];
  /** This daemon's pid, as written in processing.pid of the runs it claimed. */
  pid?: number;
}

export type RepairKind = 'stale' | 'no_output' | 'tagged_abandon' | 'invalid_processing';

export interface CleanupRepair {
  number: number;
  /** The repaired task's stage. */
  stage: string;
  kind: RepairKind;
  from: RunState | 'pending';
  to: 'failed' | 'abandoned';
  reason: string;
}

export interface CleanupReport {
  /** Hosts this pass marked dead, with the time they last wrote. */
  deadHosts: Array<{ host: string; silentSince: number }>;
  /** Dead hosts silent for longer than timeouts.forget_dead_hosts, removed from the hosts list by this pass. */
  forgottenHosts: Array<{ host: string; silentSince: number }>;
  repairs: CleanupRepair[];
  /** Runs that changed between reading and writing (another cleaner, the owner or an operator got there first). */
  lost: Array<{ number: number; kind: RepairKind }>;
  /** Runs that could not be repaired; the pass went on. */
  errors: Array<{ number: number; kind: RepairKind; error: string }>;
}


/** The failure a repair records: counted, with backoff, or abandoned once max_failures is reached. */
/** The task's stage as this cleaner's config has it; a stage it lacks is judged by the daemon's own policy. */
function stagePolicy(deps: CleanupDeps, run: RunDoc) {
  const stage = stageNamed(deps.config, run.stage ?? DEFAULT_STAGE);
  return {
    retry: stage?.retry ?? deps.config.retry,
    noRetryExitCodes: stage?.no_retry_exit_codes ?? deps.config.process.no_retry_exit_codes,
    requireOutput: stage?.require_output ?? deps.config.process.require_output,
  };
}

function failureOverride(deps: CleanupDeps, run: RunDoc, what: string): RunOverride {
  const nBefore = run.processing?.n_failures ?? 0;
  const policy = stagePolicy(deps, run);
  return repairFailureOutcome({
    nFailuresBefore: nBefore,
    what,
    maxFailures: policy.retry.max_failures,
    noRetryExitCodes: policy.noRetryExitCodes,
    retryAt: deps.clock() + retryDelay(nBefore, policy.retry, deps.random),
  });
}

/**
 * A stale lease: its host went silent (crashed, presumed dead, cut off), which its command did not cause. An
 * interruption, not a failure: eligible again at once, n_failures and the next attempt's targets unchanged;
 * abandoned only at retry.max_interruptions.
 */
function interruptionOverride(deps: CleanupDeps, run: RunDoc, what: string): RunOverride {
  return interruptionOutcome({
    nFailures: run.processing?.n_failures ?? 0,
    nInterruptionsBefore: run.processing?.n_interruptions ?? 0,
    maxInterruptions: stagePolicy(deps, run).retry.max_interruptions,
    what,
    retryAt: deps.clock(),
  });
}

function staleReason(deps: CleanupDeps, run: RunDoc): string {
  const p = run.processing!;
  const limit = p.state === 'busy' ? 'timeouts.max_busy_time' : 'timeouts.max_considering_time';
  return (
    `host ${p.host} said it was ${p.state} at ${isoTimeOrInvalid(p.time)} (${formatElapsed(deps.clock() - p.time)} ago), ` +
    `then nothing; ${limit} passed` +
    (deps.observations ? ` (seen unchanged for ${formatElapsed(deps.observations.unchangedFor(run))})` : '') +
    `, failed by cleanup on host ${deps.host}`
  );
}

/**
 * The repair of a processing document that is not a valid state (docs/operations.md, "Invalid processing
 * documents"): failed, due at once, with a reason naming every problem. Not a failure of the command, so
 * n_failures is kept (read from digits as text when it was stored so; the failures in the run's history when
 * it is unreadable), and the attempt counter is made readable and never lower than the history's.
 */
async function invalidProcessingOverride(deps: CleanupDeps, run: RunDoc, problems: string[]): Promise<RunOverride> {
  const p = run.processing!;
  const unreadableFailures = problems.some((problem) => /\bn_failures\b/.test(problem) && !/stored as text/.test(problem));
  const nFailures = unreadableFailures
    ? (await deps.store.listRunEvents(run.number, run.stage ?? DEFAULT_STAGE)).filter(
        (e) => e.to === 'failed' || e.to === 'abandoned',
      ).length
    : p.n_failures;
  return {
    to: 'failed',
    reason: `invalid processing document: ${problems.join('; ')}; repaired by cleanup on host ${deps.host}`,
    n_failures: nFailures,
    next_retry: deps.clock(),
    attempt: Math.max(p.attempt, await deps.store.maxEventAttempt(taskRefOf(run.number, run.stage))),
  };
}

export async function cleanupPass(deps: CleanupDeps): Promise<CleanupReport> {
  const { store, config } = deps;
  const report: CleanupReport = { deadHosts: [], forgottenHosts: [], repairs: [], lost: [], errors: [] };

  const warn = async (message: string, number?: number) => {
    if (deps.logger) {
      deps.logger.warn(message, number !== undefined ? { number } : {});
      return;
    }
    await store.appendLog({
      host: deps.host,
      user: `runwarden@${deps.host}`,
      priority: 2,
      message,
      ...(number !== undefined ? { number } : {}),
    });
  };

  /** One fenced repair; never throws for this run. */
  const repair = (run: RunDoc, kind: RepairKind, change: (run: RunDoc) => RunOverride) =>
    repairAsync(run, kind, async (r) => change(r));
  const repairAsync = async (run: RunDoc, kind: RepairKind, change: (run: RunDoc) => Promise<RunOverride>) => {
    try {
      const p = run.processing;
      // a busy run taken over keeps its attempt as draining until its command is surely gone (issue 12)
      const planned = { ...(await change(run)), drainMs: drainLimitMs(deps.config.timeouts) };
      const ok = await store.overrideRun(
        taskRefOf(run.number, run.stage),
        { state: p?.state ?? null, token: p?.token ?? null },
        planned,
        {
          host: deps.host,
          detail: {
            by: 'cleanup',
            kind,
            ...(kind === 'stale' ? { interruption: 'presumed_dead' } : {}),
            ...(p ? { owner: p.host } : {}),
          },
        },
      );
      if (!ok) {
        report.lost.push({ number: run.number, kind });
        return;
      }
      const from = p?.state ?? 'pending';
      const stage = run.stage ?? DEFAULT_STAGE;
      report.repairs.push({ number: run.number, stage, kind, from, to: planned.to, reason: planned.reason });
      await warn(`${taskLabel(run.number, stage)} ${planned.to} by cleanup: ${planned.reason}`, run.number);
    } catch (error) {
      report.errors.push({ number: run.number, kind, error: error instanceof Error ? error.message : String(error) });
    }
  };

  for (const host of await store.markSilentHostsDead(config.timeouts.presumed_dead)) {
    report.deadHosts.push({ host: host.host, silentSince: host.time });
    await warn(`host ${host.host} presumed dead: silent since ${isoTimeOrInvalid(host.time)}`);
  }
  // Hosts gone for good (decommissioned, renamed) leave the hosts list after timeouts.forget_dead_hosts.
  for (const host of await store.forgetDeadHosts(config.timeouts.forget_dead_hosts)) {
    report.forgottenHosts.push({ host: host.host, silentSince: host.time });
  }

  // First, so a half-written row is repaired for what it is, not reported stale from a time it lacks.
  for (const run of await store.listInvalidRuns()) {
    const problems = run.processing?.problems ?? [];
    if (problems.length === 0) continue; // the store's query and decoding disagree: nothing to name, left alone
    await repairAsync(run, 'invalid_processing', () => invalidProcessingOverride(deps, run, problems));
  }

  const limits = { maxConsideringMs: config.timeouts.max_considering_time, maxBusyMs: config.timeouts.max_busy_time };
  if (deps.observations) {
    // Every live lease is watched (not only those the store already calls stale), so the watch starts soon
    // after the owner's last write and a dead owner's run is taken over about one limit after it went silent.
    const live = [...(await store.listRuns({ state: 'considering' })), ...(await store.listRuns({ state: 'busy' }))];
    deps.observations.observe(live);
  }
  const own = new Set(deps.ownLiveRuns?.() ?? []);
  const isOwnLiveRun = (run: RunDoc) =>
    own.has(run.number) && run.processing?.host === deps.host && run.processing?.pid === (deps.pid ?? process.pid);
  // The store's time comparison is the pre-filter; the monotonic watch has the last word.
  const stale = (await store.listStaleRuns(limits)).filter((run) => {
    if (isOwnLiveRun(run)) return false;
    if (!deps.observations) return true;
    const limit = run.processing?.state === 'busy' ? limits.maxBusyMs : limits.maxConsideringMs;
    return deps.observations.unchangedFor(run) >= limit;
  });
  for (const run of stale) {
    await repair(run, 'stale', (r) => interruptionOverride(deps, r, staleReason(deps, r)));
  }

  // Done tasks of a run without any registered output, where their stage requires one.
  if (stagesOfConfig(config).some((stage) => stage.require_output)) {
    for (const run of await store.listRuns({ state: 'done', noOutputs: true })) {
      if (!stagePolicy(deps, run).requireOutput) continue;
      const key = run.stage === undefined || config.stages === undefined ? 'process' : `stages.${run.stage}`;
      await repair(run, 'no_output', (r) =>
        failureOverride(
          deps,
          r,
          `done without a registered output (${key}.require_output is on); failed by cleanup on host ${deps.host}`,
        ),
      );
    }
  }

  // Listed after the other repairs, so a stale run that is also tagged is read with its new token.
  for (const run of await store.listRuns({ tag: 'abandon' })) {
    if (run.processing?.state === 'abandoned') continue;
    await repair(run, 'tagged_abandon', (r) => ({
      to: 'abandoned',
      reason: `tagged abandon; abandoned by cleanup on host ${deps.host}`,
      n_failures: r.processing?.n_failures ?? 0,
    }));
  }
  return report;
}
