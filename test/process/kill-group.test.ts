import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { killProcessGroup, signalGroup } from '../../src/process/kill-group.js';
import { isSameProcess, processGroupMembers, readProcStart, readProcStat } from '../../src/process/proc.js';
import { spawnCommand } from '../../src/process/spawn-command.js';
import { ENV, Sandbox, waitFor } from './helpers.js';

let box: Sandbox;
beforeEach(() => {
  box = new Sandbox();
});
afterEach(async () => {
  await box.cleanup();
});

async function start(script: string) {
  const handle = await spawnCommand({ argv: ['sh', '-c', script], cwd: box.dir, env: ENV, logFile: box.path('cmd.log') });
  box.trackGroup(handle.pgid);
  box.trackPid(handle.pid, handle.procStart);
  return handle;
}

const STUBBORN = [
  'trap "" TERM',
  'sh -c \'trap "" TERM; sleep 1000; echo never\' &',
  'echo $! > grandchild.pid',
  'sleep 1000 &',
  'wait',
].join('\n');

describe('signalGroup', () => {
  it('ignores a group that does not exist and refuses pgid 0, 1 and negative', () => {
    expect(() => signalGroup(99_999_999, 'SIGTERM')).not.toThrow();
    expect(() => signalGroup(0, 'SIGTERM')).toThrow(RangeError);
    expect(() => signalGroup(1, 'SIGTERM')).toThrow(RangeError);
    expect(() => signalGroup(-5, 'SIGTERM')).toThrow(RangeError);
  });
});

describe('killProcessGroup', () => {
  it('escalates to SIGKILL and leaves nothing of a group that ignores SIGTERM', async () => {
    const handle = await start(STUBBORN);
    const members = await waitFor(() => {
      const m = processGroupMembers(handle.pgid);
      return m.length >= 4 && existsSync(box.path('grandchild.pid')) ? m : undefined;
    }, 'the whole group to start');
    const recorded = members.map((pid) => [pid, readProcStart(pid)] as const);
    for (const [pid, st] of recorded) box.trackPid(pid, st);

    const outcome = await killProcessGroup(handle.pgid, { escalateMs: 300, procStart: handle.procStart, leaderPid: handle.pid });
    expect(outcome).toBe('gone');
    expect(processGroupMembers(handle.pgid)).toEqual([]);
    for (const [pid, st] of recorded) expect(isSameProcess(pid, st)).toBe(false);
    expect((await handle.exited).signal).toBe('SIGKILL');
  });

  it('a group that honours SIGTERM ends without SIGKILL', async () => {
    const handle = await start('sleep 1000 & wait');
    await waitFor(() => processGroupMembers(handle.pgid).length >= 2, 'the sleep');
    // generous escalation: the SIGTERM phase must be enough
    const outcome = await killProcessGroup(handle.pgid, { escalateMs: 20_000, procStart: handle.procStart });
    expect(outcome).toBe('gone');
    expect((await handle.exited).signal).toBe('SIGTERM');
  });

  it('kills a grandchild that left the group (setsid) while its parent is alive', async () => {
    const handle = await start('trap "" TERM; setsid sleep 1000 & echo $! > escapee.pid; wait');
    const escapee = await waitFor(() => {
      if (!existsSync(box.path('escapee.pid'))) return undefined;
      const s = readProcStat(Number(readFileSync(box.path('escapee.pid'), 'utf8')));
      return s && s.comm === 'sleep' && s.pgrp !== handle.pgid ? s : undefined;
    }, 'the setsid sleep');
    box.trackPid(escapee.pid, escapee.starttime);

    const outcome = await killProcessGroup(handle.pgid, { escalateMs: 300, procStart: handle.procStart, leaderPid: handle.pid });
    expect(outcome).toBe('gone');
    expect(isSameProcess(escapee.pid, escapee.starttime)).toBe(false);
    expect(processGroupMembers(handle.pgid)).toEqual([]);
    await handle.exited;
  });

  it('kills an orphaned group whose leader is already gone (daemon restart case)', async () => {
    // Plain child_process (no CommandHandle, whose exit handling would clean the group up by itself).
    const leader = spawn('sh', ['-c', STUBBORN], { cwd: box.dir, env: ENV, detached: true, stdio: 'ignore' });
    const pgid = leader.pid as number;
    box.trackGroup(pgid);
    const procStart = readProcStart(pgid);
    const leaderGone = new Promise((resolve) => leader.once('exit', resolve));
    const members = await waitFor(() => {
      const m = processGroupMembers(pgid);
      return m.length >= 4 ? m : undefined;
    }, 'the whole group to start');
    const others = members.filter((pid) => pid !== pgid).map((pid) => [pid, readProcStart(pid)] as const);
    for (const [pid, st] of others) box.trackPid(pid, st);
    // kill only the leader: the others are now orphans in a group whose leader pid is dead
    process.kill(pgid, 'SIGKILL');
    await leaderGone;
    expect(readProcStart(pgid)).toBeUndefined();
    expect(others.every(([pid, st]) => isSameProcess(pid, st))).toBe(true);
    const outcome = await killProcessGroup(pgid, { escalateMs: 300, procStart, leaderPid: pgid });
    expect(outcome).toBe('gone');
    expect(processGroupMembers(pgid)).toEqual([]);
    for (const [pid, st] of others) expect(isSameProcess(pid, st)).toBe(false);
  });

  it('does nothing when the recorded leader pid now belongs to another process (recycled pid)', async () => {
    const handle = await start('sleep 1000');
    const wrongStart = (handle.procStart as number) - 1;
    const outcome = await killProcessGroup(handle.pgid, { escalateMs: 300, procStart: wrongStart, leaderPid: handle.pid });
    expect(outcome).toBe('gone');
    // untouched: had it been signalled, killProcessGroup would have waited for it to die before answering
    expect(isSameProcess(handle.pid, handle.procStart)).toBe(true);
    handle.signal('SIGKILL');
    await handle.exited;
  });

  it('returns gone at once for a group that does not exist', async () => {
    expect(await killProcessGroup(99_999_999, { escalateMs: 300 })).toBe('gone');
  });
});
