import { readFileSync } from 'node:fs';
import { LEASE_GUARD_NAME } from '../../src/process/lease-guard.js';
import { scanProcesses } from '../../src/process/proc.js';

/** Pid of the lease guard a daemon (or `process N`) with this pid started, or undefined. */
export function leaseGuardOf(pid: number): number | undefined {
  for (const p of scanProcesses()) {
    if (p.ppid !== pid) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${p.pid}/cmdline`, 'latin1').split('\0');
    } catch {
      continue;
    }
    if (argv.includes(LEASE_GUARD_NAME)) return p.pid;
  }
  return undefined;
}

/** SIGCONT first: a frozen process would otherwise hold what the test waits for until its SIGKILL lands. */
export function thaw(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGCONT');
  } catch {
    // gone
  }
}

/**
 * SIGKILLs a daemon (or `process N`) together with its lease guard, so that its commands survive it as orphans:
 * what a restart's recovery (the backstop behind the guard) must then kill. The daemon is stopped first, so it
 * cannot react to its guard's death before its own.
 */
export async function killWithGuard(child: { pid?: number | undefined; kill: (signal: NodeJS.Signals) => unknown } & PromiseLike<unknown>): Promise<void> {
  const pid = child.pid!;
  const guard = leaseGuardOf(pid);
  process.kill(pid, 'SIGSTOP');
  if (guard !== undefined) process.kill(guard, 'SIGKILL');
  child.kill('SIGKILL');
  await child;
}
