// Linux /proc helpers (DESIGN §1 "Real supervision"): identify a process by pid + start time so a recycled pid is
// never mistaken for ours, and find the members of a process group and the descendants of a process.
// Every function here is synchronous and never throws for a process that vanished while we looked at it.

import { readdirSync, readFileSync } from 'node:fs';

/** The fields of /proc/<pid>/stat this project uses (see proc(5)). */
export interface ProcStat {
  pid: number;
  /** Executable name as the kernel reports it (field 2, without the parentheses; may contain spaces and ')'). */
  comm: string;
  /** Field 3: R, S, D, Z (zombie), T, t, X (dead), I, ... */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Field 22: start time in clock ticks after system boot. Stable for the life of the process. */
  starttime: number;
}

/**
 * Parse one /proc/<pid>/stat line. The comm field is in parentheses and may itself contain spaces, '(' and ')',
 * so the fixed fields are taken after the LAST ')'. Returns undefined for a malformed line.
 */
export function parseProcStat(line: string): ProcStat | undefined {
  const open = line.indexOf('(');
  const close = line.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const pid = Number(line.slice(0, open).trim());
  const comm = line.slice(open + 1, close);
  // Fields from 3 (state) on; index i here is field i + 3.
  const rest = line.slice(close + 1).trim().split(/\s+/);
  if (rest.length < 20) return undefined;
  const state = rest[0];
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const session = Number(rest[3]);
  const starttime = Number(rest[19]);
  if (!Number.isInteger(pid) || !Number.isInteger(ppid) || !Number.isInteger(pgrp) || !Number.isInteger(starttime)) {
    return undefined;
  }
  return { pid, comm, state, ppid, pgrp, session, starttime };
}

/** The parsed /proc/<pid>/stat, or undefined when there is no such process (or it vanished meanwhile). */
export function readProcStat(pid: number): ProcStat | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  return parseProcStat(text);
}

/** True for a process that has finished running but may still be listed (zombie or dead). */
export function isDeadState(state: string): boolean {
  return state === 'Z' || state === 'X' || state === 'x';
}

/**
 * Start time of the process (field 22 of /proc/<pid>/stat, clock ticks since boot); undefined when it does not
 * exist. A zombie still exists and still has its start time.
 */
export function readProcStart(pid: number): number | undefined {
  return readProcStat(pid)?.starttime;
}

/**
 * True when `pid` is a live (non-zombie) process and, when `procStart` is given, started at that time: a recycled
 * pid is never mistaken for the process we recorded.
 */
export function isSameProcess(pid: number, procStart: number | undefined): boolean {
  const stat = readProcStat(pid);
  if (!stat || isDeadState(stat.state)) return false;
  return procStart === undefined || stat.starttime === procStart;
}

/** One pass over /proc/[0-9]*\/stat: every process visible right now (zombies included). */
export function scanProcesses(): ProcStat[] {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return [];
  }
  const out: ProcStat[] = [];
  for (const name of names) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const stat = readProcStat(Number(name));
    if (stat) out.push(stat);
  }
  return out;
}

/** Pids of the live (non-zombie) processes whose process group is `pgid`. */
export function processGroupMembers(pgid: number, table: ProcStat[] = scanProcesses()): number[] {
  return table.filter((p) => p.pgrp === pgid && !isDeadState(p.state)).map((p) => p.pid);
}

/** Live (non-zombie) descendants of `pid` (children, grandchildren, ...), found through their ppid. */
export function descendantsOf(pid: number, table: ProcStat[] = scanProcesses()): ProcStat[] {
  return descendantsOfAny([pid], table);
}

/** Live (non-zombie) descendants of any of `roots`, each once; the roots themselves are not included. */
export function descendantsOfAny(roots: Iterable<number>, table: ProcStat[] = scanProcesses()): ProcStat[] {
  const children = new Map<number, ProcStat[]>();
  for (const p of table) {
    const list = children.get(p.ppid);
    if (list) list.push(p);
    else children.set(p.ppid, [p]);
  }
  const seen = new Set<number>(roots);
  const queue = [...seen];
  const out: ProcStat[] = [];
  while (queue.length > 0) {
    const parent = queue.pop() as number;
    for (const child of children.get(parent) ?? []) {
      if (seen.has(child.pid)) continue;
      seen.add(child.pid);
      queue.push(child.pid);
      if (!isDeadState(child.state)) out.push(child);
    }
  }
  return out;
}

/**
 * Milliseconds since boot from /proc/uptime (10 ms steps): a monotonic clock that keeps running while a process
 * is stopped and that every process on the host reads alike, so one process can hand another an absolute
 * deadline. Falls back to performance.now() (this process's own clock) where /proc is missing.
 */
export function readUptimeMs(): number {
  try {
    const text = readFileSync('/proc/uptime', 'latin1');
    const seconds = Number(text.slice(0, text.indexOf(' ')));
    if (Number.isFinite(seconds)) return Math.round(seconds * 1000);
  } catch {
    // no /proc
  }
  return performance.now();
}
