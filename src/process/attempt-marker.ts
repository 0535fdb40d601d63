// No process an attempt started outlives it (DESIGN §1 "No orphan survives"): every command carries
// RUNWARDEN_ATTEMPT_ID, a random id of its own attempt, in its environment, and every process it starts inherits
// it, whether it stays in the command's process group or leaves it (setsid, a double fork into a new session).
// When the attempt ends, one pass over /proc finds the processes that still carry the id and kills them.
//
// Limit: the environment is the process's own. A process that clears or rewrites its environment before it
// execs (`env -i`, `execve` with a fresh environment) no longer carries the id and escapes this sweep; it is
// still killed while it stays in the command's process group or is a descendant we saw when signalling it.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { pollUntil, signalVerified } from './kill-group.js';
import { isDeadState, isSameProcess, parseProcStat, scanProcesses, type ProcStat } from './proc.js';

/** The environment variable that tags every process of one attempt. Set by runwarden; do not change. */
export const ATTEMPT_MARKER_VARIABLE = 'RUNWARDEN_ATTEMPT_ID';

/** A fresh marker for one attempt: random, so it names nothing else (it is not the lease token). */
export function newAttemptMarker(): string {
  return randomUUID();
}

function carriesMarker(environ: Buffer, entry: Buffer): boolean {
  // Entries are NUL-separated; the marker entry is either the first one or follows a NUL.
  let at = environ.indexOf(entry);
  while (at >= 0) {
    if ((at === 0 || environ[at - 1] === 0) && (at + entry.length === environ.length || environ[at + entry.length] === 0)) {
      return true;
    }
    at = environ.indexOf(entry, at + 1);
  }
  return false;
}

export interface MarkedProcessScope {
  marker: string;
  /**
   * Start time (clock ticks since boot, /proc field 22) of the attempt's first process: nothing that started
   * earlier can carry its marker, so only the environments of younger processes are read.
   */
  since?: number;
}

function candidates(table: ProcStat[], scope: MarkedProcessScope): ProcStat[] {
  return table.filter(
    (p) => p.pid !== process.pid && !isDeadState(p.state) && (scope.since === undefined || p.starttime >= scope.since),
  );
}

/** The live processes that carry `scope.marker`; synchronous (for the paths where the daemon is about to exit). */
export function findMarkedProcesses(scope: MarkedProcessScope, table: ProcStat[] = scanProcesses()): ProcStat[] {
  const entry = Buffer.from(`${ATTEMPT_MARKER_VARIABLE}=${scope.marker}`);
  const out: ProcStat[] = [];
  for (const p of candidates(table, scope)) {
    let environ: Buffer;
    try {
      environ = readFileSync(`/proc/${p.pid}/environ`);
    } catch {
      continue; // vanished, or another user's
    }
    if (carriesMarker(environ, entry)) out.push(p);
  }
  return out;
}

/**
 * The same as findMarkedProcesses, read asynchronously, so a host with many processes never holds the daemon's
 * event loop for the whole pass: this runs at the end of every attempt.
 */
export async function findMarkedProcessesAsync(scope: MarkedProcessScope): Promise<ProcStat[]> {
  const entry = Buffer.from(`${ATTEMPT_MARKER_VARIABLE}=${scope.marker}`);
  let names: string[];
  try {
    names = await readdir('/proc');
  } catch {
    return [];
  }
  const pids = names.filter((n) => n.charCodeAt(0) >= 48 && n.charCodeAt(0) <= 57).map(Number);
  const out: ProcStat[] = [];
  const CHUNK = 64;
  for (let i = 0; i < pids.length; i += CHUNK) {
    await Promise.all(
      pids.slice(i, i + CHUNK).map(async (pid) => {
        if (pid === process.pid) return;
        let stat: ProcStat | undefined;
        try {
          stat = parseProcStat(await readFile(`/proc/${pid}/stat`, 'latin1'));
        } catch {
          return;
        }
        if (!stat || isDeadState(stat.state)) return;
        if (scope.since !== undefined && stat.starttime < scope.since) return;
        try {
          if (carriesMarker(await readFile(`/proc/${pid}/environ`), entry)) out.push(stat);
        } catch {
          // vanished, or another user's
        }
      }),
    );
  }
  return out;
}

/** SIGKILL every process that carries the marker, at once. Returns how many were signalled. */
export function killMarkedProcessesNow(scope: MarkedProcessScope): number {
  const marked = findMarkedProcesses(scope);
  for (const p of marked) signalVerified(p.pid, p.starttime, 'SIGKILL');
  return marked.length;
}

/**
 * SIGTERM to every process that carries the marker, SIGKILL to those left after `escalateMs` (each checked by
 * pid and start time, so a recycled pid is never hit), and a second look for processes they started meanwhile.
 * Returns how many were found and how many are still alive at the end (normally 0).
 */
export async function sweepMarkedProcesses(
  scope: MarkedProcessScope,
  escalateMs: number,
): Promise<{ found: number; remaining: number }> {
  const seen = new Map<number, number>();
  const alive = () => [...seen].filter(([pid, start]) => isSameProcess(pid, start));
  const look = async (): Promise<ProcStat[]> => {
    const fresh = (await findMarkedProcessesAsync(scope)).filter((p) => seen.get(p.pid) !== p.starttime);
    for (const p of fresh) seen.set(p.pid, p.starttime);
    return fresh;
  };
  // Each round: what is there now gets SIGTERM, then SIGKILL once escalateMs passed; a process forked by one
  // of them between the look and the signal is found by the next round.
  for (let round = 0; round < 3; round++) {
    const fresh = await look();
    if (fresh.length === 0) break;
    for (const p of fresh) signalVerified(p.pid, p.starttime, 'SIGTERM');
    if (!(await pollUntil(() => alive().length === 0, performance.now() + escalateMs, 20))) {
      for (const [pid, start] of alive()) signalVerified(pid, start, 'SIGKILL');
      await pollUntil(() => alive().length === 0, performance.now() + Math.max(escalateMs, 1000), 20);
    }
  }
  return { found: seen.size, remaining: alive().length };
}
