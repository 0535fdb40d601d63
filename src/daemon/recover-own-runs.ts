import { repairFailureOutcome } from '../policy/failure-decision.js';
import { groupAlive, killProcessGroup } from '../process/kill-group.js';
import { isSameProcess, readProcStat } from '../process/proc.js';
import type { HostDoc, RunDoc } from '../store/types.js';
import type { DaemonContext } from './context.js';

// Restart after kill -9 (DESIGN §1 "fast recovery of its own runs"): the new incarnation kills the process
// groups its predecessor recorded (pgid + start time, so a recycled pid is never hit) and fails those runs at
// once, instead of letting them wait for max_busy_time. They become eligible again at once.

export interface RecoveredRun {
  number: number;
  state: string;
  /** The orphaned process group that was still alive and has been killed. */
  killedPgid?: number;
  outcome: 'failed' | 'abandoned' | 'lost_race';
}


/**
 * True when `run` was held by an incarnation of this host's daemon that is gone: the previous daemon the host
 * document named, or any claimer whose pid is no longer alive. A live claimer that is not the previous daemon
 * (a foreground `runwarden process N` on this host) keeps its run.
 */
function orphaned(run: RunDoc, previous: HostDoc | null): boolean {
  const owner = run.processing!.pid;
  if (owner === process.pid) return false;
  if (previous && owner === previous.pid && !isSameProcess(previous.pid, previous.proc_start)) return true;
  return !isSameProcess(owner, undefined);
}

/**
 * True when the recorded group still has members and its leader pid was not recycled: a leader alive with
 * another start time means the pid (and so the group id) now belongs to an unrelated process.
 */
function groupIsOurs(pgid: number, procStart: number | undefined): boolean {
  if (!groupAlive(pgid)) return false;
  const leader = readProcStat(pgid);
  return !(leader !== undefined && procStart !== undefined && leader.starttime !== procStart);
}

export async function recoverOwnRuns(ctx: DaemonContext, previous: HostDoc | null): Promise<RecoveredRun[]> {
  const { store, config, logger, host } = ctx;
  const held = [
    ...(await store.listRuns({ host, state: 'considering' })),
    ...(await store.listRuns({ host, state: 'busy' })),
  ].filter((run) => run.processing && orphaned(run, previous));

  // Every orphaned group is killed in parallel: a restart must not wait signal_escalate per run.
  return Promise.all(
    held.map(async (run): Promise<RecoveredRun> => {
      const p = run.processing!;
      let killedPgid: number | undefined;
      if (p.pgid !== undefined && p.pgid > 1 && groupIsOurs(p.pgid, p.proc_start)) {
        const outcome = await killProcessGroup(p.pgid, {
          escalateMs: config.timeouts.signal_escalate,
          ...(p.proc_start !== undefined ? { procStart: p.proc_start } : {}),
        });
        if (outcome === 'unkillable') {
          throw new Error(
            `run ${run.number}: could not kill process group ${p.pgid} left by the previous daemon: ` +
              `it survived SIGKILL`,
          );
        }
        killedPgid = p.pgid;
      }
      const why =
        `host ${host} restarted while the run was ${p.state} (daemon pid ${p.pid} is gone)` +
        (killedPgid !== undefined ? `; killed its orphaned command (process group ${killedPgid})` : '');
      // Not the run's fault as far as anyone knows: eligible again at once, but counted, so a run that kills
      // its daemon every time is given up on eventually.
      const outcome = repairFailureOutcome({
        nFailuresBefore: p.n_failures,
        what: why,
        maxFailures: config.retry.max_failures,
        noRetryExitCodes: config.process.no_retry_exit_codes,
        retryAt: ctx.clock(),
      });
      const detail = {
        kind: 'restart',
        previous_pid: p.pid,
        ...(killedPgid !== undefined ? { killed_pgid: killedPgid } : {}),
      };
      const { reason, n_failures } = outcome;
      const ok =
        outcome.to === 'abandoned'
          ? await store.abandonRun(run.number, p.token, { reason, n_failures }, { detail })
          : await store.failRun(
              run.number,
              p.token,
              { reason, n_failures, next_retry: outcome.next_retry },
              { detail },
            );
      if (!ok) return { number: run.number, state: p.state, outcome: 'lost_race' };
      logger.warn(`run ${run.number} ${outcome.to}: ${why}`, { number: run.number });
      return {
        number: run.number,
        state: p.state,
        outcome: outcome.to,
        ...(killedPgid !== undefined ? { killedPgid } : {}),
      };
    }),
  );
}
