import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { groupAlive } from '../../src/process/kill-group.js';
import { startLeaseGuard, type LeaseGuard } from '../../src/process/lease-guard.js';
import { LEASE_GUARD_SCRIPT } from '../../src/process/lease-guard.sh.js';
import { readProcStart, readUptimeMs } from '../../src/process/proc.js';
import { waitFor } from '../helpers/cli.js';

// The lease guard against real process groups and real signals: a deadline that passes kills the group
// (SIGTERM, then SIGKILL), a renewed one is left alone, a recycled leader is never signalled, EOF on its
// stdin kills everything it watches, and its death is reported.

const groups: ChildProcess[] = [];
const guards: LeaseGuard[] = [];

afterEach(async () => {
  for (const child of groups.splice(0)) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await Promise.all(guards.splice(0).map((g) => g.close()));
});

function group(ignoreTerm = false): { pgid: number; start: number } {
  const script = `${ignoreTerm ? 'trap "" TERM; ' : ''}sleep 1000 & sleep 1000; wait`;
  const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
  child.on('error', () => undefined);
  groups.push(child);
  return { pgid: child.pid!, start: readProcStart(child.pid!)! };
}

function guard(escalateMs = 200): LeaseGuard {
  const g = startLeaseGuard({ escalateMs });
  guards.push(g);
  return g;
}

describe('lease guard', () => {
  it('kills the groups carrying a watched attempt marker once its deadline passes, without ever being told the group', async () => {
    // A daemon frozen between spawning a command and naming its group: the marker was announced before the spawn.
    const marker = `m-${process.pid}-${Date.now()}`;
    const child = spawn('sh', ['-c', 'trap "" TERM; sleep 1000 & sleep 1000; wait'], {
      detached: true,
      stdio: 'ignore',
      env: { ...process.env, RUNWARDEN_ATTEMPT_ID: marker },
    });
    child.on('error', () => undefined);
    groups.push(child);
    const g = guard();
    const expired: number[] = [];
    g.onExpired((pgid) => expired.push(pgid));
    const renewed = group();
    g.watchMarker(marker, readUptimeMs() + 300);
    g.watch(renewed.pgid, renewed.start, readUptimeMs() + 60_000);
    await waitFor(() => !groupAlive(child.pid!), 'the marked group (ignoring SIGTERM) to be killed', { timeoutMs: 8_000 });
    expect(expired).toEqual([child.pid]);
    expect(groupAlive(renewed.pgid)).toBe(true);
  });

  it('at EOF also kills the groups of its daemon\'s tagged commands it was never told to watch', async () => {
    // The daemon can die between spawning a command and writing its watch line: the command carries the
    // daemon's tag (RUNWARDEN_DAEMON) from its exec on, and the guard's end sweeps /proc for it.
    const tag = `{"host":"guard-test","pid":${process.pid},"n":${Math.random()}}`;
    const tagged = (value: string) => {
      const child = spawn('sh', ['-c', 'trap "" TERM; sleep 1000 & sleep 1000; wait'], {
        detached: true,
        stdio: 'ignore',
        env: { ...process.env, RUNWARDEN_DAEMON: value },
      });
      child.on('error', () => undefined);
      groups.push(child);
      return child.pid!;
    };
    const mine = tagged(tag);
    const other = tagged(`${tag}-another-daemon`);
    const g = startLeaseGuard({ escalateMs: 200, daemonTag: tag });
    guards.push(g);
    await waitFor(() => readProcStart(mine) !== undefined && readProcStart(other) !== undefined, 'both groups to start');
    await g.close();
    await waitFor(() => !groupAlive(mine), 'the unwatched tagged group (ignoring SIGTERM) to be killed', { timeoutMs: 8_000 });
    expect(groupAlive(other)).toBe(true);
  });

  it('keeps a line its read timed out in the middle of: a watch written in two parts still guards its group', async () => {
    // The guard reads with a timeout while it has deadlines; a line cut by that timeout (a loaded machine, a
    // write split in two) must be completed by the next read, not lost (then its group would never be guarded).
    const child = spawn('bash', ['--norc', '--noprofile', '-c', LEASE_GUARD_SCRIPT, 'lease-guard-test', '3000'], {
      detached: true,
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    groups.push(child);
    const out: string[] = [];
    child.stdout!.on('data', (chunk: Buffer) => out.push(...chunk.toString().split('\n').filter(Boolean)));
    await waitFor(() => out.includes('ready'), 'the guard to be ready', { timeoutMs: 5_000 });
    // A group whose deadline passes 100 ms from now makes the guard read with a 100 ms timeout: the first part
    // of the next line arrives within it, the rest only after it.
    const pacer = group(true);
    const watched = group();
    child.stdin!.write(`watch ${pacer.pgid} ${pacer.start} ${readUptimeMs() + 100}\n`);
    child.stdin!.write('wat');
    await waitFor(() => out.includes(`expired ${pacer.pgid}`), 'the pacing group to expire', { timeoutMs: 5_000 });
    child.stdin!.write(`ch ${watched.pgid} ${watched.start} ${readUptimeMs() - 1}\n`);
    await waitFor(() => out.includes(`expired ${watched.pgid}`), 'the group of the split watch line to expire', { timeoutMs: 5_000 });
    expect(out.filter((line) => line.startsWith('error'))).toEqual([]);
    child.stdin!.end();
    await waitFor(() => !groupAlive(watched.pgid), 'the split-line group to be killed', { timeoutMs: 8_000 });
  });

  it('kills a group whose deadline passed and reports it; a renewed group stays', async () => {
    const g = guard();
    const expired: number[] = [];
    g.onExpired((pgid) => expired.push(pgid));
    const late = group(true);
    const renewed = group();
    g.watch(late.pgid, late.start, readUptimeMs() + 300);
    g.watch(renewed.pgid, renewed.start, readUptimeMs() + 300);
    g.renew(renewed.pgid, readUptimeMs() + 60_000);
    await waitFor(() => !groupAlive(late.pgid) && expired.length > 0, 'the unrenewed group (ignoring SIGTERM) to be killed', { timeoutMs: 5_000 });
    expect(expired).toEqual([late.pgid]);
    expect(groupAlive(renewed.pgid)).toBe(true);
  });

  it('never signals a group whose leader is another process now (start time differs)', async () => {
    const g = guard();
    const expired: number[] = [];
    g.onExpired((pgid) => expired.push(pgid));
    const other = group();
    g.watch(other.pgid, other.start + 1, readUptimeMs() - 1);
    // A second, genuine group expiring afterwards proves the guard has looked at the first one.
    const mine = group();
    g.watch(mine.pgid, mine.start, readUptimeMs() - 1);
    await waitFor(() => !groupAlive(mine.pgid) && expired.length > 0, 'the genuine group to be killed', { timeoutMs: 5_000 });
    expect(expired).toEqual([mine.pgid]);
    expect(groupAlive(other.pgid)).toBe(true);
  });

  it('at EOF on its stdin kills every group it watches (SIGTERM, then SIGKILL) and exits', async () => {
    const g = guard(300);
    const stubborn = group(true);
    const polite = group();
    g.watch(stubborn.pgid, stubborn.start, readUptimeMs() + 60_000);
    g.watch(polite.pgid, polite.start, readUptimeMs() + 60_000);
    let lost: string | undefined;
    g.onLost((reason) => (lost = reason));
    await g.close();
    await waitFor(() => !groupAlive(stubborn.pgid) && !groupAlive(polite.pgid), 'both groups to be gone', { timeoutMs: 5_000 });
    expect(lost).toBeUndefined();
  });

  it('reports its own death (a daemon treats it as fatal)', async () => {
    const g = guard();
    const lost = new Promise<string>((resolve) => g.onLost(resolve));
    process.kill(g.pid, 'SIGKILL');
    expect(await lost).toMatch(/lease guard \(pid \d+\) ended unexpectedly \(SIGKILL\)/);
  });

  it('ignores SIGTERM, SIGINT and SIGHUP: only its stdin ends it', async () => {
    const g = guard();
    let lost: string | undefined;
    g.onLost((reason) => (lost = reason));
    // Up and reading first (the traps come before that): a group past its deadline is killed.
    const first = group();
    g.watch(first.pgid, first.start, readUptimeMs() - 1);
    await waitFor(() => !groupAlive(first.pgid), 'the guard to be up', { timeoutMs: 5_000 });
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.kill(g.pid, signal);
    // Still answering: a watched group past its deadline is killed after the signals.
    const target = group();
    g.watch(target.pgid, target.start, readUptimeMs() - 1);
    await waitFor(() => !groupAlive(target.pgid), 'the guard to kill a group after the signals', { timeoutMs: 5_000 });
    expect(lost).toBeUndefined();
  });
});
