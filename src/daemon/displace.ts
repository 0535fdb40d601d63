import { pollUntil } from '../process/kill-group.js';
import { isSameProcess } from '../process/proc.js';
import type { HostDoc } from '../store/types.js';
import type { Logger } from '../log/logger.js';

// One daemon per host (DESIGN §4 host): a new daemon displaces the previous one of the same host name.
// The previous daemon is identified by pid AND process start time, so a recycled pid that now belongs to an
// unrelated process is never signalled.

export type Displacement =
  | 'none' // no previous daemon is alive (never ran, stopped, or its pid now belongs to someone else)
  | 'unverifiable' // its pid is alive but the host document has no start time to prove it is the daemon
  | 'terminated' // it exited after SIGTERM (it released its runs itself)
  | 'killed'; // it needed SIGKILL (its commands may be orphaned; recovery kills them)

const POLL_MS = 20;

/** How displacement sees and signals processes; tests substitute a process that refuses to die. */
export interface ProcessControl {
  isSameProcess(pid: number, procStart: number | undefined): boolean;
  signal(pid: number, signal: NodeJS.Signals): void;
}

const realProcesses: ProcessControl = {
  isSameProcess,
  signal(pid, sig) {
    try {
      process.kill(pid, sig);
    } catch (error) {
      // gone already (ESRCH) is fine; not ours to signal (EPERM) shows as "still alive" below
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ESRCH' && code !== 'EPERM') throw error;
    }
  },
};

/**
 * Stops the daemon the host document names when it is still alive: SIGTERM, `escalateMs`, SIGKILL,
 * `escalateMs`. Throws when it survives SIGKILL: two daemons of one host must never run at once.
 */
export async function displacePreviousDaemon(
  previous: HostDoc,
  escalateMs: number,
  logger: Pick<Logger, 'warn'>,
  processes: ProcessControl = realProcesses,
): Promise<Displacement> {
  const { pid, proc_start: procStart, host } = previous;
  if (pid === process.pid || !Number.isInteger(pid) || pid <= 1) return 'none';
  if (procStart === undefined) {
    if (processes.isSameProcess(pid, undefined)) {
      logger.warn(
        `host ${host}: the previous daemon's document has no process start time, so pid ${pid} cannot be ` +
          `proven to be it; leaving pid ${pid} alone`,
      );
      return 'unverifiable';
    }
    return 'none';
  }
  const alive = () => processes.isSameProcess(pid, procStart);
  if (!alive()) return 'none';
  logger.warn(`host ${host}: displacing the previous daemon (pid ${pid}): SIGTERM`);
  processes.signal(pid, 'SIGTERM');
  if (await pollUntil(() => !alive(), performance.now() + escalateMs, POLL_MS)) return 'terminated';
  logger.warn(`host ${host}: the previous daemon (pid ${pid}) is still alive after SIGTERM: SIGKILL`);
  processes.signal(pid, 'SIGKILL');
  if (await pollUntil(() => !alive(), performance.now() + escalateMs, POLL_MS)) return 'killed';
  throw new Error(
    `could not displace the previous daemon of host ${host}: pid ${pid} is still alive after SIGKILL; ` +
      `two daemons must not run as one host, so this one stops`,
  );
}
