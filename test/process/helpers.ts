// Shared helpers for the process-layer tests: temp dirs, polling with deadlines, and reaping every process a
// test started (by recorded pgid and pid + start time, never by name).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isSameProcess, processGroupMembers, readProcStart } from '../../src/process/proc.js';

export const ENV: Record<string, string> = { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin' };

/** Poll `pred` every 10 ms until it returns a truthy value; throw after `timeoutMs`. */
export async function waitFor<T>(pred: () => T | undefined | false | null, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Per-test scratch space plus a registry of processes to SIGKILL at the end whatever happened. */
export class Sandbox {
  readonly dir = mkdtempSync(join(tmpdir(), 'runwarden-proc-'));
  private readonly groups = new Set<number>();
  private readonly pids = new Map<number, number | undefined>();

  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  trackGroup(pgid: number): void {
    this.groups.add(pgid);
  }

  trackPid(pid: number, procStart = readProcStart(pid)): void {
    if (procStart !== undefined) this.pids.set(pid, procStart);
  }

  async cleanup(): Promise<void> {
    for (const pgid of this.groups) {
      if (processGroupMembers(pgid).length === 0) continue;
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const [pid, start] of this.pids) {
      if (!isSameProcess(pid, start)) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await waitFor(
      () =>
        [...this.groups].every((g) => processGroupMembers(g).length === 0) &&
        [...this.pids].every(([pid, start]) => !isSameProcess(pid, start)),
      'test processes to be reaped',
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}
