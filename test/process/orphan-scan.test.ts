import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DAEMON_TAG_VARIABLE,
  findOrphanedCommands,
  formatDaemonTag,
  killOrphanedCommands,
  ownDaemonTag,
  parseDaemonTag,
  type DaemonTag,
} from '../../src/process/orphan-scan.js';
import { isSameProcess, processGroupMembers, readProcStart, readProcStat } from '../../src/process/proc.js';
import { ENV, Sandbox, waitFor } from './helpers.js';

// Real processes: a `sleep` stands in for a daemon, `sh` commands tagged with it fork grandchildren. Each test
// uses a host name of its own, so the scans never touch processes of other tests running at the same time.

let box: Sandbox;
let host: string;
let store: string;
const children: ChildProcess[] = [];

beforeEach(() => {
  box = new Sandbox();
  host = `orphan-scan-${randomUUID()}`;
  store = `sqlite:${box.path('runs.db')}`;
});
afterEach(async () => {
  await box.cleanup();
  // Every child was killed by now (by the test or by the sandbox): wait until node has reaped each one.
  await Promise.all(children.splice(0).map(exited));
});

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/** A stand-in for a daemon: a plain `sleep`, with its real start time. */
async function fakeDaemon(): Promise<{ child: ChildProcess; tag: DaemonTag }> {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore', env: ENV });
  children.push(child);
  const pid = child.pid!;
  const procStart = await waitFor(() => readProcStart(pid), 'the fake daemon to start');
  box.trackPid(pid, procStart);
  return { child, tag: { host, store, pid, procStart } };
}

async function killDaemon(daemon: { child: ChildProcess }): Promise<void> {
  daemon.child.kill('SIGKILL');
  await exited(daemon.child);
}

/** `sh -c script` in its own process group, as the daemon spawns commands, with `env` added to its environment. */
function command(script: string, env: Record<string, string>): { child: ChildProcess; pid: number } {
  const child = spawn('sh', ['-c', script], { cwd: box.dir, detached: true, stdio: 'ignore', env: { ...ENV, ...env } });
  children.push(child);
  box.trackGroup(child.pid!);
  box.trackPid(child.pid!);
  return { child, pid: child.pid! };
}

function tagged(tag: DaemonTag, run: number, attempt: number): Record<string, string> {
  return {
    [DAEMON_TAG_VARIABLE]: formatDaemonTag(tag),
    RUNWARDEN_RUN_NUMBER: String(run),
    RUNWARDEN_ATTEMPT: String(attempt),
  };
}

/** Waits for a pid the command wrote into `file` (in the sandbox dir) and registers it for reaping. */
async function pidIn(file: string): Promise<{ pid: number; start: number }> {
  const path = box.path(file);
  const pid = Number(await waitFor(() => existsSync(path) && readFileSync(path, 'utf8').trim(), `a pid in ${file}`));
  const start = await waitFor(() => readProcStart(pid), `process ${pid} to be visible`);
  box.trackPid(pid, start);
  return { pid, start };
}

// A grandchild that ignores SIGTERM (so escalation is needed), one that left the group with setsid, and a sleep
// in the foreground: everything a command of the fake daemon may leave behind.
const FAMILY = [
  '(trap "" TERM; sleep 1000) &',
  'echo $! > "$PREFIX.child.pid"',
  'setsid sh -c \'echo $$ > "$PREFIX.escaped.pid"; exec sleep 1000\' &',
  'sleep 1000',
].join('\n');

describe('daemon tag', () => {
  it('round-trips any host name and store location, and rejects what runwarden did not write', () => {
    const tag: DaemonTag = { host: 'h/with spaces"and quotes', store: 'mongodb://u:***@a,b/runs', pid: 42, procStart: 7 };
    expect(parseDaemonTag(formatDaemonTag(tag))).toEqual(tag);
    expect(parseDaemonTag(formatDaemonTag({ host: 'h', store: 's', pid: 1 }))).toEqual({ host: 'h', store: 's', pid: 1 });
    const junks = ['', 'h/1/2', '{}', 'null', '{"host":"h","store":"s","pid":0}', '{"host":"h","store":"s","pid":1.5}'];
    for (const junk of junks) {
      expect(parseDaemonTag(junk), junk).toBeUndefined();
    }
    expect(parseDaemonTag('{"host":"h","store":"s","pid":3,"proc_start":"x"}')).toBeUndefined();
  });

  it("names this process with its own start time", () => {
    expect(parseDaemonTag(ownDaemonTag('h', 's'))).toEqual({
      host: 'h',
      store: 's',
      pid: process.pid,
      procStart: readProcStart(process.pid),
    });
  });
});

describe('killOrphanedCommands', () => {
  it("kills the commands of a daemon that is gone, their grandchildren and descendants that left the group", async () => {
    const daemon = await fakeDaemon();
    const first = command(FAMILY, { ...tagged(daemon.tag, 7, 2), PREFIX: 'first' });
    const second = command(FAMILY, { ...tagged(daemon.tag, 8, 1), PREFIX: 'second' });
    const family = [
      { pid: first.pid, start: readProcStart(first.pid)! },
      await pidIn('first.child.pid'),
      await pidIn('first.escaped.pid'),
      { pid: second.pid, start: readProcStart(second.pid)! },
      await pidIn('second.child.pid'),
      await pidIn('second.escaped.pid'),
    ];
    const escapedGroup = family[2]!.pid;
    expect(readProcStat(escapedGroup)!.pgrp).toBe(escapedGroup);

    // While the daemon lives its commands are not orphans.
    expect(findOrphanedCommands({ host, store })).toEqual([]);
    await killDaemon(daemon);
    const found = findOrphanedCommands({ host, store }).map((o) => o.stat.pid);
    expect(found).toEqual(expect.arrayContaining(family.map((p) => p.pid)));

    const killed = await killOrphanedCommands({ host, store }, 300);
    for (const p of family) expect(isSameProcess(p.pid, p.start), `pid ${p.pid}`).toBe(false);
    expect(processGroupMembers(first.pid)).toEqual([]);
    expect(processGroupMembers(second.pid)).toEqual([]);
    const summary = killed.map(({ pgid, run, attempt, scope, outcome }) => ({ pgid, run, attempt, scope, outcome }));
    expect(summary).toHaveLength(4);
    expect(summary).toEqual(
      expect.arrayContaining([
        { pgid: first.pid, run: 7, attempt: 2, scope: 'group', outcome: 'gone' },
        { pgid: escapedGroup, run: 7, attempt: 2, scope: 'group', outcome: 'gone' },
        { pgid: second.pid, run: 8, attempt: 1, scope: 'group', outcome: 'gone' },
        { pgid: family[5]!.pid, run: 8, attempt: 1, scope: 'group', outcome: 'gone' },
      ]),
    );
    expect(killed.every((k) => k.daemonPid === daemon.tag.pid)).toBe(true);
    // The leader, its grandchildren and its foreground sleep: every member the scan saw in the group.
    const firstGroup = killed.find((k) => k.pgid === first.pid)!;
    expect(firstGroup.pids).toEqual(expect.arrayContaining([first.pid, family[1]!.pid]));
    expect(firstGroup.pids.length).toBeGreaterThanOrEqual(3);
  });

  it("kills a group whose leader has already exited", async () => {
    const daemon = await fakeDaemon();
    const leader = command('(trap "" TERM; sleep 1000) & echo $! > child.pid', tagged(daemon.tag, 9, 1));
    const child = await pidIn('child.pid');
    await exited(leader.child);
    expect(processGroupMembers(leader.pid)).toContain(child.pid);
    await killDaemon(daemon);

    const killed = await killOrphanedCommands({ host, store }, 300);
    expect(killed.map((k) => [k.pgid, k.scope, k.outcome])).toEqual([[leader.pid, 'group', 'gone']]);
    expect(isSameProcess(child.pid, child.start)).toBe(false);
  });

  it('leaves the commands of a live daemon, of another host and of another store alone', async () => {
    const live = await fakeDaemon();
    const gone = await fakeDaemon();
    const ofLive = command(FAMILY, { ...tagged(live.tag, 1, 1), PREFIX: 'live' });
    const ofOtherHost = command(FAMILY, { ...tagged({ ...gone.tag, host: `${host}-other` }, 2, 1), PREFIX: 'host' });
    const ofOtherStore = command(FAMILY, { ...tagged({ ...gone.tag, store: `${store}-other` }, 3, 1), PREFIX: 'store' });
    const untagged = command(FAMILY, { PREFIX: 'untagged' });
    const survivors = [ofLive, ofOtherHost, ofOtherStore, untagged].map((c) => ({
      pid: c.pid,
      start: readProcStart(c.pid)!,
    }));
    // The grandchildren, and the sleeps that left the group with setsid (pidIn also has them reaped after the test).
    for (const prefix of ['live', 'host', 'store', 'untagged']) {
      survivors.push(await pidIn(`${prefix}.child.pid`), await pidIn(`${prefix}.escaped.pid`));
    }
    await killDaemon(gone);

    expect(await killOrphanedCommands({ host, store }, 300)).toEqual([]);
    for (const p of survivors) expect(isSameProcess(p.pid, p.start), `pid ${p.pid}`).toBe(true);
  });

  it('a tag whose daemon pid now belongs to another process (recycled) is an orphan; that process is spared', async () => {
    // The "daemon" lives, but started at another time than the tag says: the tagged daemon is gone.
    const holder = await fakeDaemon();
    const recycledTag = { ...holder.tag, procStart: holder.tag.procStart! + 1 };
    const orphan = command(FAMILY, { ...tagged(recycledTag, 4, 3), PREFIX: 'o' });
    const grandchild = await pidIn('o.child.pid');

    const killed = await killOrphanedCommands({ host, store }, 300);
    expect(killed.map((k) => [k.pgid, k.run, k.attempt])).toEqual(
      expect.arrayContaining([[orphan.pid, 4, 3]]),
    );
    expect(isSameProcess(grandchild.pid, grandchild.start)).toBe(false);
    expect(isSameProcess(holder.tag.pid, holder.tag.procStart)).toBe(true);
  });

  it('in a group led by a live process that is no orphan, kills only the orphans', async () => {
    const daemon = await fakeDaemon();
    // An untagged leader whose child carries the tag of the gone daemon, in the leader's group.
    const leader = command('RUNWARDEN_DAEMON="$CHILD_TAG" sleep 1000 & echo $! > tagged.pid; sleep 1000', {
      CHILD_TAG: formatDaemonTag(daemon.tag),
    });
    const taggedChild = await pidIn('tagged.pid');
    await killDaemon(daemon);

    const killed = await killOrphanedCommands({ host, store }, 300);
    expect(killed.map((k) => ({ pgid: k.pgid, pids: k.pids, scope: k.scope, outcome: k.outcome }))).toEqual([
      { pgid: leader.pid, pids: [taggedChild.pid], scope: 'processes', outcome: 'gone' },
    ]);
    expect(isSameProcess(taggedChild.pid, taggedChild.start)).toBe(false);
    expect(isSameProcess(leader.pid, undefined)).toBe(true);
  });
});
