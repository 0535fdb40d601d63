// Group kill with escalation (DESIGN §1 "Real supervision", §8): SIGTERM to the process group, wait, SIGKILL to
// the group plus the descendants that left it (found through /proc, and by tree-kill), verify nothing is left.

import { accessSync, constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';
import treeKill from 'tree-kill';
import { descendantsOfAny, isDeadState, isSameProcess, processGroupMembers, readProcStat, scanProcesses } from './proc.js';

export type KillOutcome = 'gone' | 'unkillable';

export interface KillGroupOptions {
  /** How long to wait after SIGTERM before SIGKILL, and again after SIGKILL before giving up. */
  escalateMs: number;
  /** Start time (/proc field 22) of the group leader as recorded when it was spawned. */
  procStart?: number;
  /** Pid of the group leader; defaults to `pgid` (a command spawned detached leads its own group). */
  leaderPid?: number;
  /** Poll interval while waiting for the group to empty; default 20 ms. */
  pollMs?: number;
}

const DEFAULT_POLL_MS = 20;

let ownPgrp: number | undefined;

function assertSignallableGroup(pgid: number): void {
  // process.kill(-0) would hit our own group and process.kill(-1) every process we may signal.
  if (!Number.isInteger(pgid) || pgid <= 1) throw new RangeError(`refusing to signal process group ${pgid}`);
  ownPgrp ??= readProcStat(process.pid)?.pgrp;
  if (pgid === ownPgrp) throw new Error(`refusing to signal process group ${pgid}: it is runwarden's own group`);
}

function errnoOf(error: unknown): string | undefined {
  return error && typeof error === 'object' && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}

/** `process.kill(-pgid, signal)`; a group that no longer exists (ESRCH) is not an error. Throws on EPERM. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  assertSignallableGroup(pgid);
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if (errnoOf(error) !== 'ESRCH') throw error;
  }
}

/** Signal one process if it is still the one we saw (pid + start time); ESRCH/EPERM are ignored. */
export function signalVerified(pid: number, starttime: number, signal: NodeJS.Signals): void {
  if (!isSameProcess(pid, starttime)) return;
  try {
    process.kill(pid, signal);
  } catch {
    // gone meanwhile (ESRCH) or not ours (EPERM): nothing to do
  }
}

/**
 * Cheap emptiness check first (`kill(-pgid, 0)`: ESRCH means no process, zombies included, is in the group), a
 * /proc scan only when something is there: a group whose only members are zombies counts as empty.
 */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (error) {
    if (errnoOf(error) === 'ESRCH') return false;
  }
  return processGroupMembers(pgid).length > 0;
}

let psAvailable: boolean | undefined;

/** tree-kill spawns `ps` without an 'error' listener: a missing `ps` would be an uncaught exception. */
function hasPs(): boolean {
  if (psAvailable === undefined) {
    psAvailable = (process.env.PATH ?? '').split(delimiter).some((dir) => {
      if (!dir) return false;
      try {
        accessSync(join(dir, 'ps'), fsConstants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
  }
  return psAvailable;
}

/** tree-kill as a promise that never rejects and gives up waiting after `timeoutMs` (its `ps` calls run on). */
function treeKillBounded(pid: number, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
  if (!hasPs()) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, timeoutMs));
    try {
      treeKill(pid, signal, () => {
        clearTimeout(timer);
        resolve();
      });
    } catch {
      clearTimeout(timer);
      resolve();
    }
  });
}

export interface EscapeeOptions {
  leaderPid?: number;
  procStart?: number;
}

/**
 * Descendants of the group's members (and of the leader, when it is still the recorded process) that are no
 * longer in the group, e.g. after `setsid`. One /proc scan.
 */
export function groupEscapees(pgid: number, opts: EscapeeOptions = {}): Array<{ pid: number; starttime: number }> {
  const table = scanProcesses();
  const roots = new Set(processGroupMembers(pgid, table));
  const leaderPid = opts.leaderPid ?? pgid;
  const leader = table.find((p) => p.pid === leaderPid);
  if (leader && !isDeadState(leader.state) && (opts.procStart === undefined || leader.starttime === opts.procStart)) {
    roots.add(leaderPid);
  }
  return descendantsOfAny(roots, table)
    .filter((p) => p.pgrp !== pgid)
    .map((p) => ({ pid: p.pid, starttime: p.starttime }));
}

/**
 * Signal the descendants that left the group (found through /proc). With SIGKILL, tree-kill is also run on the
 * leader while it is still the recorded process (fire and forget). Returns the pids signalled.
 */
export function signalEscapees(pgid: number, signal: NodeJS.Signals, opts: EscapeeOptions = {}): number[] {
  const escapees = groupEscapees(pgid, opts);
  for (const e of escapees) signalVerified(e.pid, e.starttime, signal);
  const leaderPid = opts.leaderPid ?? pgid;
  if (signal === 'SIGKILL' && isSameProcess(leaderPid, opts.procStart)) void treeKillBounded(leaderPid, signal, 0);
  return escapees.map((e) => e.pid);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `done` every `pollMs` until it holds or `deadline` (performance.now() ms) passed; returns its last value. */
export async function pollUntil(done: () => boolean, deadline: number, pollMs: number): Promise<boolean> {
  for (;;) {
    if (done()) return true;
    const left = deadline - performance.now();
    if (left <= 0) return false;
    await sleep(Math.min(pollMs, left));
  }
}

/**
 * Kill a whole process group with escalation: SIGTERM to the group (and to descendants that left it), poll until
 * nothing is left or `escalateMs` passed, then SIGKILL to the group, to the descendants that left it and, while
 * the leader is still the recorded process, tree-kill of the leader; poll again up to `escalateMs`.
 *
 * Recycled pid: when `procStart` is given and the leader pid exists with another start time, the recorded
 * group cannot exist any more (Linux never hands out a pid that is still some group's id), so nothing is
 * signalled and 'gone' is returned, whether or not a new group of that number has members.
 */
export async function killProcessGroup(pgid: number, opts: KillGroupOptions): Promise<KillOutcome> {
  assertSignallableGroup(pgid);
  const leaderPid = opts.leaderPid ?? pgid;
  const pollMs = Math.max(1, opts.pollMs ?? DEFAULT_POLL_MS);
  const escalateMs = Math.max(0, opts.escalateMs);

  if (opts.procStart !== undefined) {
    const leader = readProcStat(leaderPid);
    // A zombie with another start time proves it as well: it still holds the pid.
    const recycled = leader !== undefined && leader.starttime !== opts.procStart;
    if (recycled && (leaderPid === pgid || !groupAlive(pgid))) return 'gone';
  }
  const escapeeOpts: EscapeeOptions = { leaderPid, procStart: opts.procStart };
  const escapees = new Map<number, number>();
  /** Adds the descendants that left the group to `escapees`; returns the ones not seen before. */
  const collect = (): Array<[number, number]> => {
    const fresh: Array<[number, number]> = [];
    for (const e of groupEscapees(pgid, escapeeOpts)) {
      if (escapees.get(e.pid) !== e.starttime) fresh.push([e.pid, e.starttime]);
      escapees.set(e.pid, e.starttime);
    }
    return fresh;
  };
  const signalGroupTolerant = (signal: NodeJS.Signals): void => {
    try {
      signalGroup(pgid, signal);
    } catch (error) {
      if (errnoOf(error) !== 'EPERM') throw error; // not ours to kill: it stays and the result says so
    }
  };
  const signalAll = (signal: NodeJS.Signals): void => {
    signalGroupTolerant(signal);
    for (const [pid, starttime] of escapees) signalVerified(pid, starttime, signal);
  };
  const nothingLeft = (): boolean => {
    if (groupAlive(pgid)) return false;
    for (const [pid, starttime] of escapees) if (isSameProcess(pid, starttime)) return false;
    return true;
  };

  collect();
  if (nothingLeft()) return 'gone';
  signalAll('SIGTERM');
  const termDeadline = performance.now() + escalateMs;
  const termed = await pollUntil(
    () => {
      // SIGTERM goes once to each process (a graceful shutdown handler must not be hit again and again);
      // descendants that escaped the group since the last poll get theirs now.
      for (const [pid, starttime] of collect()) signalVerified(pid, starttime, 'SIGTERM');
      return nothingLeft();
    },
    termDeadline,
    pollMs,
  );
  if (termed) return 'gone';

  collect();
  signalAll('SIGKILL');
  const killDeadline = performance.now() + escalateMs;
  if (isSameProcess(leaderPid, opts.procStart)) {
    await treeKillBounded(leaderPid, 'SIGKILL', killDeadline - performance.now());
  }
  const killed = await pollUntil(
    () => {
      collect();
      if (nothingLeft()) return true;
      signalAll('SIGKILL');
      return false;
    },
    killDeadline,
    pollMs,
  );
  return killed ? 'gone' : 'unkillable';
}
