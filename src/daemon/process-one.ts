import { join } from 'node:path';
import { createActor, type SnapshotFrom } from 'xstate';
import type { runMachine } from '../../machines/run.machine.js';
import type { RunSettlement } from '../../machines/types.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { startLeaseGuard, type LeaseGuard } from '../process/lease-guard.js';
import { ownDaemonTag } from '../process/orphan-scan.js';
import type { RunStore } from '../store/run-store.js';
import type { RunDoc } from '../store/types.js';
import { createDaemonContext } from './context.js';
import { provideRunMachine } from './daemon.js';
import { runInputFor } from './run-input.js';
import { attemptLogDir, stageNamed, stagesOf } from '../policy/pipeline.js';
import { DEFAULT_STAGE } from '../store/types.js';

// `runwarden process N`: one attempt of one already-claimed run in the foreground, with the same run machine
// and the same effects a daemon uses (preflight, supervision, fenced writes, lease heartbeat), but no host actor:
// nothing else is claimed and no host document is written.

export interface ProcessOneDeps {
  store: RunStore;
  config: Config;
  logger: Logger;
  /** The host the run was claimed for (its processing.host). */
  host: string;
  clock?: () => number;
  random?: () => number;
  /** From startCommandGuard, started before the claim; closed when the attempt is over. */
  leaseGuard?: LeaseGuard;
}

/**
 * The lease guard of a foreground attempt, the same as a daemon's: a SIGKILL of this process (EOF on the guard's
 * stdin) kills the command at once. Throws (exit 2) when bash is missing; start it before claiming the run.
 */
export function startCommandGuard(config: Config, storeLocation?: string): LeaseGuard {
  return startLeaseGuard({
    escalateMs: config.timeouts.signal_escalate,
    ...(storeLocation !== undefined ? { daemonTag: ownDaemonTag(config.host, storeLocation) } : {}),
  });
}

export interface ProcessOneOutcome {
  /** How the attempt ended: done, failed (retried later), abandoned, released (stopped), lost, unkillable, error. */
  settlement: RunSettlement;
  /** Set for `unkillable` and `error`. */
  error?: string;
}

export interface ProcessOneHandle {
  /** `<log_dir>/<stage>/<number>/attempt-<k>.log`: where the command's output goes. */
  logFile: string;
  /** First signal: terminate the command (with escalation) and release the run, as a stopping daemon does. */
  stop(): void;
  /** Second signal: SIGKILL the command's process group at once. */
  killCommand(): void;
  /** Resolves once the attempt is over: the run actor reached a final state or waits for a retry. */
  done: Promise<ProcessOneOutcome>;
}

type RunSnapshot = SnapshotFrom<typeof runMachine>;

function settlementOf(snapshot: RunSnapshot): RunSettlement | undefined {
  if (snapshot.matches({ failed: 'waitingForRetry' })) return 'failed';
  // `abandoned.recorded` is final only within `abandoned`: the machine as a whole never reaches done there.
  if (snapshot.matches({ abandoned: 'recorded' })) return 'abandoned';
  if (snapshot.status !== 'done') return undefined;
  for (const state of ['done', 'released', 'lost', 'unkillable', 'error'] as const) {
    if (snapshot.matches(state)) return state;
  }
  return 'error';
}

/** Runs one attempt of `claimed` (as claimRun returned it) and reports how it ended. */
export function processOneRun(deps: ProcessOneDeps, claimed: RunDoc): ProcessOneHandle {
  const p = claimed.processing;
  if (!p || p.state !== 'considering') {
    throw new Error(`internal: run ${claimed.number} must be claimed (considering) before processOneRun`);
  }
  const { config } = deps;
  // A stage this configuration lacks: the attempt's preflight fails the task naming it (its log would be here).
  const stageName = claimed.stage ?? DEFAULT_STAGE;
  const stage = stageNamed(config, stageName) ?? { ...stagesOf(config)[0]!, name: stageName };
  // The same context and machine a daemon uses; the context's host token is unused without a host actor.
  const leaseGuard = deps.leaseGuard ?? startCommandGuard({ ...config, host: deps.host }, deps.store.location);
  const ctx = createDaemonContext({ ...deps, config: { ...config, host: deps.host }, leaseGuard });
  const machine = provideRunMachine(ctx);
  const input = runInputFor(config, claimed);
  const { run } = input;
  const actor = createActor(machine, { input });
  const killCommand = () => {
    for (const handle of ctx.liveCommands) handle.signal('SIGKILL');
  };
  let storeWatch: NodeJS.Timeout | undefined;
  const outcome = new Promise<ProcessOneOutcome>((resolve) => {
    let settled = false;
    const settle = (outcome: ProcessOneOutcome) => {
      if (settled) return;
      settled = true;
      clearInterval(storeWatch);
      subscription.unsubscribe();
      resolve(outcome);
    };
    const subscription = actor.subscribe({
      next: (snapshot) => {
        const settlement = settlementOf(snapshot);
        if (!settlement) return;
        const error = snapshot.context.error;
        // A run waiting for its retry still has a lease keeper; nothing of this attempt is left to do.
        queueMicrotask(() => actor.stop());
        settle({ settlement, ...(error ? { error } : {}) });
      },
      error: (error: unknown) => {
        killCommand();
        settle({ settlement: 'error', error: error instanceof Error ? error.message : String(error) });
      },
    });
    // As a daemon's host heartbeat does: a store file deleted or replaced under the attempt ends it at once,
    // its command killed, before anything more is written into a file nobody else can see.
    storeWatch = setInterval(() => {
      deps.store.verifyIdentity().catch((error: unknown) => {
        if (settled) return;
        killCommand();
        queueMicrotask(() => actor.stop());
        settle({ settlement: 'error', error: error instanceof Error ? error.message : String(error) });
      });
    }, Math.min(1000, config.timeouts.check_interval));
    // Crash-only, as a daemon: with its guard gone the command is no longer bound to its lease.
    leaseGuard.onLost((reason) => {
      if (settled) return;
      killCommand();
      queueMicrotask(() => actor.stop());
      settle({ settlement: 'error', error: reason });
    });
  });
  const done = outcome.then(async (result) => {
    await leaseGuard.close();
    return result;
  });
  actor.start();
  return {
    logFile: join(attemptLogDir(stage, claimed.number), `attempt-${p.attempt}.log`),
    stop: () => actor.send({ type: 'STOP' }),
    killCommand,
    done,
  };
}
