import { interruptionOutcome } from '../policy/failure-decision.js';
import { groupAlive, killProcessGroup } from '../process/kill-group.js';
import { killOrphanedCommands } from '../process/orphan-scan.js';
import { isSameProcess, readProcStat } from '../process/proc.js';
import { stageNamed } from '../policy/pipeline.js';
import { DEFAULT_STAGE, type HostDoc, type RunDoc } from '../store/types.js';
import type { DaemonContext } from './context.js';
import { taskLabel, taskRefOf } from './run-input.js';

// Restart after kill -9 (DESIGN §1 "fast recovery of its own runs"): the new incarnation kills the process
// groups its predecessor recorded (pgid + start time, so a recycled pid is never hit) and fails those runs at
// once, instead of letting them wait for max_busy_time. They become eligible again at once, as interrupted, not
// failed: n_failures and the targets of the next attempt stay as they were. A /proc scan for
// commands tagged with a gone daemon of this host (RUNWARDEN_DAEMON) kills the groups no record names.

export interface RecoveredRun {
  number: number;
  /** The task's stage. */
  stage: string;
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

/** Kills the recorded group of `run` when it is still ours; returns its pgid when it did. */
async function killRecordedGroup(run: RunDoc, escalateMs: number): Promise<number | undefined> {
  const p = run.processing!;
  if (p.pgid === undefined || p.pgid <= 1 || !groupIsOurs(p.pgid, p.proc_start)) return undefined;
  const outcome = await killProcessGroup(p.pgid, {
    escalateMs,
    ...(p.proc_start !== undefined ? { procStart: p.proc_start } : {}),
  });
  if (outcome === 'unkillable') {
    throw new Error(
      `${taskLabel(run.number, run.stage)}: could not kill process group ${p.pgid} left by the previous daemon: it survived SIGKILL`,
    );
  }
  return p.pgid;
}

/**
 * Kills the commands of earlier daemons of this host that no run record names (found through their
 * RUNWARDEN_DAEMON): groups of runs another host has taken over since, or spawned just before a SIGKILL, before
 * their pgid was recorded. Returns the pgid killed per "run/stage/attempt".
 */
async function killUnrecordedOrphans(ctx: DaemonContext): Promise<Map<string, number>> {
  const { config, logger, host, store } = ctx;
  const killed = await killOrphanedCommands({ host, store: store.location }, config.timeouts.signal_escalate);
  const byAttempt = new Map<string, number>();
  for (const group of killed) {
    const members = group.scope === 'group' ? '' : `pid(s) ${group.pids.join(', ')} of `;
    const what = `${group.run !== undefined ? taskLabel(group.run, group.stage) : 'run ?'} attempt ${group.attempt ?? '?'}, ${members}process group ${group.pgid}`;
    if (group.outcome === 'unkillable') {
      throw new Error(`could not kill an orphaned command of a previous daemon (${what}): it survived SIGKILL`);
    }
    logger.warn(
      `killed an orphaned command of a previous daemon: ${what} (daemon pid ${group.daemonPid} is gone)`,
      group.run !== undefined ? { number: group.run } : {},
    );
    if (group.run !== undefined && group.attempt !== undefined) {
      byAttempt.set(`${group.run}/${group.stage ?? DEFAULT_STAGE}/${group.attempt}`, group.pgid);
    }
  }
  return byAttempt;
}

export async function recoverOwnRuns(ctx: DaemonContext, previous: HostDoc | null): Promise<RecoveredRun[]> {
  const { store, config, logger, host } = ctx;
  const held = [
    ...(await store.listRuns({ host, state: 'considering' })),
    ...(await store.listRuns({ host, state: 'busy' })),
  ].filter((run) => run.processing && orphaned(run, previous));

  // Every orphan is dead before any run is failed, so no host can start a run again while its old command
  // still runs. The recorded groups are killed in parallel (a restart must not wait signal_escalate per run),
  // then the /proc scan kills what no record named.
  const recordedKills = await Promise.all(held.map((run) => killRecordedGroup(run, config.timeouts.signal_escalate)));
  const scanKills = await killUnrecordedOrphans(ctx);
  // A run taken from the previous daemon while its command ran keeps that attempt as draining (issue 12): the
  // command is dead now, so say so, and the run need not wait for the drain limit.
  await Promise.all(
    [...scanKills.keys()].map(async (key) => {
      const parts = key.split('/');
      const run = Number(parts[0]);
      const attempt = Number(parts.at(-1));
      const stage = parts.slice(1, -1).join('/');
      if (!Number.isSafeInteger(run) || !Number.isSafeInteger(attempt)) return;
      await store.confirmAttemptGone(taskRefOf(run, stage), { host, attempt }).catch((error: unknown) => {
        logger.warn(
          `${taskLabel(run, stage)}: could not record that attempt ${attempt}'s command is gone: ${String(error)}`,
        );
      });
    }),
  );

  return Promise.all(
    held.map(async (run, index): Promise<RecoveredRun> => {
      const p = run.processing!;
      const stage = run.stage ?? DEFAULT_STAGE;
      const task = taskRefOf(run.number, stage);
      const label = taskLabel(run.number, stage);
      const retry = stageNamed(config, stage)?.retry ?? config.retry;
      const killedPgid = recordedKills[index] ?? scanKills.get(`${run.number}/${stage}/${p.attempt}`);
      const why =
        `host ${host} restarted while the run was ${p.state} (daemon pid ${p.pid} is gone)` +
        (killedPgid !== undefined ? `; killed its orphaned command (process group ${killedPgid})` : '');
      // Not the run's fault as far as anyone knows: an interruption, eligible again at once and never charged
      // as a failure; counted apart, so a run that kills its daemon every time is given up on eventually.
      const outcome = interruptionOutcome({
        nFailures: p.n_failures,
        nInterruptionsBefore: p.n_interruptions ?? 0,
        maxInterruptions: retry.max_interruptions,
        what: why,
        retryAt: ctx.clock(),
      });
      const detail = {
        kind: 'restart',
        interruption: 'restart',
        previous_pid: p.pid,
        ...(killedPgid !== undefined ? { killed_pgid: killedPgid } : {}),
      };
      const { reason, n_failures, n_interruptions } = outcome;
      const ok =
        outcome.to === 'abandoned'
          ? await store.abandonRun(task, p.token, { reason, n_failures, n_interruptions }, { detail })
          : await store.failRun(
              task,
              p.token,
              { reason, n_failures, n_interruptions, next_retry: outcome.next_retry },
              { detail },
            );
      if (!ok) return { number: run.number, stage, state: p.state, outcome: 'lost_race' };
      logger.warn(
        outcome.to === 'abandoned'
          ? `${label} abandoned: ${reason}`
          : `${label} interrupted (${n_interruptions} of retry.max_interruptions ` +
              `${retry.max_interruptions}; not counted as a failure): ${why}`,
        { number: run.number },
      );
      return {
        number: run.number,
        stage,
        state: p.state,
        outcome: outcome.to,
        ...(killedPgid !== undefined ? { killedPgid } : {}),
      };
    }),
  );
}
