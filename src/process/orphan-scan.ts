// Orphans no store record names (DESIGN §1 "No orphan survives"): every command carries RUNWARDEN_DAEMON, naming
// the daemon that started it. At restart a daemon scans /proc for commands of its host and store whose daemon
// is gone and kills their process groups: this finds the groups recorded for runs another host has since taken
// over, and the group of a command spawned just before a SIGKILL, before its pgid reached the store.

import { readFileSync } from 'node:fs';
import { killProcessGroup, pollUntil, signalVerified, type KillOutcome } from './kill-group.js';
import { isDeadState, isSameProcess, readProcStart, readProcStat, scanProcesses, type ProcStat } from './proc.js';

/** The environment variable that tags a command with its daemon. Set by runwarden; do not change. */
export const DAEMON_TAG_VARIABLE = 'RUNWARDEN_DAEMON';

/** Who started a command: the daemon (or foreground `runwarden process N`) of `host` on `store`. */
export interface DaemonTag {
  host: string;
  /** The store's location as the daemon names it (an absolute SQLite path, a masked MongoDB URL). */
  store: string;
  pid: number;
  /** Start time of the daemon (/proc field 22), so a recycled pid is not taken for the live daemon. */
  procStart?: number;
}

/** JSON, so a host name or store location may contain any character. */
export function formatDaemonTag(tag: DaemonTag): string {
  return JSON.stringify({
    host: tag.host,
    store: tag.store,
    pid: tag.pid,
    ...(tag.procStart !== undefined ? { proc_start: tag.procStart } : {}),
  });
}

/** The tag in a RUNWARDEN_DAEMON value, or undefined when it is not one runwarden wrote. */
export function parseDaemonTag(text: string): DaemonTag | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object') return undefined;
  const { host, store, pid, proc_start: procStart } = value as Record<string, unknown>;
  if (typeof host !== 'string' || typeof store !== 'string' || !Number.isInteger(pid) || (pid as number) <= 0) {
    return undefined;
  }
  if (procStart !== undefined && !Number.isInteger(procStart)) return undefined;
  return { host, store, pid: pid as number, ...(procStart !== undefined ? { procStart: procStart as number } : {}) };
}

/** The tag for the commands this process starts. */
export function ownDaemonTag(host: string, store: string): string {
  const procStart = readProcStart(process.pid);
  return formatDaemonTag({ host, store, pid: process.pid, ...(procStart !== undefined ? { procStart } : {}) });
}

const WANTED = [DAEMON_TAG_VARIABLE, 'RUNWARDEN_RUN_NUMBER', 'RUNWARDEN_ATTEMPT', 'RUNWARDEN_STAGE'] as const;
type Wanted = (typeof WANTED)[number];

/**
 * The runwarden variables of a process's initial environment (/proc/<pid>/environ, NUL-separated); undefined
 * when it cannot be read: another user's process, or one that vanished meanwhile.
 */
function readRunwardenEnvironment(pid: number): Partial<Record<Wanted, string>> | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return undefined;
  }
  if (!text.includes(DAEMON_TAG_VARIABLE)) return {};
  const found: Partial<Record<Wanted, string>> = {};
  for (const entry of text.split('\0')) {
    for (const name of WANTED) {
      if (entry.startsWith(`${name}=`)) found[name] = entry.slice(name.length + 1);
    }
  }
  return found;
}

export interface OrphanScope {
  /** This daemon's host and store: only their commands are considered. */
  host: string;
  store: string;
}

/** A command process whose daemon is gone. */
interface OrphanProcess {
  stat: ProcStat;
  daemon: DaemonTag;
  run?: number;
  attempt?: number;
  stage?: string;
}

/** What the orphan kill found and did, one entry per process group. */
export interface KilledOrphanGroup {
  pgid: number;
  /** The group's orphaned processes as the scan saw them. */
  pids: number[];
  /** From the command's RUNWARDEN_RUN_NUMBER and RUNWARDEN_ATTEMPT, when it has them. */
  run?: number;
  attempt?: number;
  /** From the command's RUNWARDEN_STAGE (absent for commands of a first-wave daemon: the `process` stage). */
  stage?: string;
  /** Pid of the daemon that started the command. */
  daemonPid: number;
  /**
   * 'group': the whole group was killed (its leader is one of the orphans, or gone). 'processes': the group
   * belongs to a live process that is not an orphan, so only the orphans in it were killed, one by one.
   */
  scope: 'group' | 'processes';
  outcome: KillOutcome;
}

function integerOrUndefined(text: string | undefined): number | undefined {
  const value = text === undefined || text === '' ? NaN : Number(text);
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * The live processes whose RUNWARDEN_DAEMON names `scope` and a daemon that is no longer the same live process.
 * Commands of a live daemon (a foreground `runwarden process N`, say) and of other hosts or stores are left out,
 * and so is this process. One /proc pass; unreadable and vanished processes are skipped.
 */
export function findOrphanedCommands(scope: OrphanScope, table: ProcStat[] = scanProcesses()): OrphanProcess[] {
  const daemonGone = new Map<string, boolean>();
  const orphans: OrphanProcess[] = [];
  for (const stat of table) {
    if (stat.pid === process.pid || isDeadState(stat.state)) continue;
    const env = readRunwardenEnvironment(stat.pid);
    const tagText = env?.[DAEMON_TAG_VARIABLE];
    if (tagText === undefined) continue;
    const daemon = parseDaemonTag(tagText);
    if (!daemon || daemon.host !== scope.host || daemon.store !== scope.store) continue;
    const key = `${daemon.pid}/${daemon.procStart ?? ''}`;
    let gone = daemonGone.get(key);
    if (gone === undefined) {
      gone = daemon.pid !== process.pid && !isSameProcess(daemon.pid, daemon.procStart);
      daemonGone.set(key, gone);
    }
    if (!gone) continue;
    const run = integerOrUndefined(env?.RUNWARDEN_RUN_NUMBER);
    const attempt = integerOrUndefined(env?.RUNWARDEN_ATTEMPT);
    const stage = env?.RUNWARDEN_STAGE;
    orphans.push({
      stat,
      daemon,
      ...(run !== undefined ? { run } : {}),
      ...(attempt !== undefined ? { attempt } : {}),
      ...(stage ? { stage } : {}),
    });
  }
  return orphans;
}

/** SIGTERM, wait up to `escalateMs`, SIGKILL, wait again: for processes that cannot be killed as a group. */
async function killProcesses(processes: ProcStat[], escalateMs: number): Promise<KillOutcome> {
  const allGone = () => processes.every((p) => !isSameProcess(p.pid, p.starttime));
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    for (const p of processes) signalVerified(p.pid, p.starttime, signal);
    if (await pollUntil(allGone, performance.now() + escalateMs, 20)) return 'gone';
  }
  return 'unkillable';
}

/**
 * Finds the orphaned commands of `scope` (findOrphanedCommands) and kills them, all groups in parallel: a group
 * whose leader is an orphan or gone is killed whole with killProcessGroup (escalation, descendants that left
 * it); orphans in a group led by some other live process, or in our own group, are killed one by one.
 */
export async function killOrphanedCommands(scope: OrphanScope, escalateMs: number): Promise<KilledOrphanGroup[]> {
  const table = scanProcesses();
  const byGroup = new Map<number, OrphanProcess[]>();
  for (const orphan of findOrphanedCommands(scope, table)) {
    const members = byGroup.get(orphan.stat.pgrp);
    if (members) members.push(orphan);
    else byGroup.set(orphan.stat.pgrp, [orphan]);
  }
  const ownGroup = readProcStat(process.pid)?.pgrp;
  return Promise.all(
    [...byGroup].map(async ([pgid, members]): Promise<KilledOrphanGroup> => {
      const leader = members.find((m) => m.stat.pid === pgid);
      const leaderStat = table.find((p) => p.pid === pgid);
      const foreignLeader = !leader && leaderStat !== undefined && !isDeadState(leaderStat.state);
      const whole = pgid > 1 && pgid !== ownGroup && !foreignLeader;
      const outcome = whole
        ? await killProcessGroup(pgid, { escalateMs, ...(leader ? { procStart: leader.stat.starttime } : {}) })
        : await killProcesses(
            members.map((m) => m.stat),
            escalateMs,
          );
      const named = leader ?? members.find((m) => m.run !== undefined) ?? members[0]!;
      return {
        pgid,
        pids: members.map((m) => m.stat.pid),
        ...(named.run !== undefined ? { run: named.run } : {}),
        ...(named.attempt !== undefined ? { attempt: named.attempt } : {}),
        ...(named.stage !== undefined ? { stage: named.stage } : {}),
        daemonPid: named.daemon.pid,
        scope: whole ? 'group' : 'processes',
        outcome,
      };
    }),
  );
}
