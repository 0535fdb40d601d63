import { isSameProcess } from '../../src/process/proc.js';
import { attemptProcesses, type Evidence } from './evidence.js';

/**
 * Kills every attempt's command group that is still alive (leader pid = pgid, start time checked first, so a
 * recycled pid is left alone) and its grandchild. For the end of a chaos test, pass or fail, once no daemon
 * is left to start more; a passing test has nothing left to kill.
 */
export function reapAttempts(evidence: Evidence | undefined): void {
  if (!evidence) return;
  let processes;
  try {
    processes = attemptProcesses(evidence);
  } catch {
    return; // the sandbox dir is already gone
  }
  for (const p of processes) {
    for (const [pid, start, group] of [
      [p.pid, p.start, true],
      [p.grandchild, p.grandchildStart, false],
    ] as const) {
      if (!isSameProcess(pid, start)) continue;
      try {
        process.kill(group ? -pid : pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  }
}
