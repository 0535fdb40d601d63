import { copyFileSync, chmodSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  descendantsOf,
  isSameProcess,
  parseProcStat,
  processGroupMembers,
  readProcStart,
  readProcStat,
  scanProcesses,
} from '../../src/process/proc.js';
import { spawnCommand } from '../../src/process/spawn-command.js';
import { ENV, Sandbox, waitFor } from './helpers.js';

let box: Sandbox;
beforeEach(() => {
  box = new Sandbox();
});
afterEach(async () => {
  await box.cleanup();
});

function statLine(pid: number, comm: string, state: string, ppid: number, pgrp: number, starttime: number): string {
  // fields 7..21 are filler; 22 is starttime; then a few more
  const filler = ['34816', '-1', '4194560', '100', '0', '0', '0', '1', '2', '0', '0', '20', '0', '1', '0'];
  return `${pid} (${comm}) ${state} ${ppid} ${pgrp} ${pgrp} ${filler.join(' ')} ${starttime} 2400000 150 18446744073709551615\n`;
}

describe('parseProcStat', () => {
  it('takes the fixed fields after the LAST closing parenthesis', () => {
    const comm = 'a b) S 1 2 (c) ';
    const parsed = parseProcStat(statLine(4242, comm, 'S', 17, 4242, 987654));
    expect(parsed).toEqual({ pid: 4242, comm, state: 'S', ppid: 17, pgrp: 4242, session: 4242, starttime: 987654 });
  });

  it('reads a zombie state and rejects malformed lines', () => {
    expect(parseProcStat(statLine(7, 'x', 'Z', 1, 7, 5))?.state).toBe('Z');
    expect(parseProcStat('garbage')).toBeUndefined();
    expect(parseProcStat('12 (short) S 1 2')).toBeUndefined();
  });
});

describe('/proc of real processes', () => {
  it('reads our own start time; a pid that does not exist gives undefined', () => {
    const start = readProcStart(process.pid);
    expect(start).toBeTypeOf('number');
    expect(isSameProcess(process.pid, start)).toBe(true);
    expect(isSameProcess(process.pid, undefined)).toBe(true);
    expect(readProcStart(99_999_999)).toBeUndefined();
    expect(isSameProcess(99_999_999, undefined)).toBe(false);
  });

  it('isSameProcess is false for a live pid given a wrong start time', () => {
    const start = readProcStart(process.pid) as number;
    expect(isSameProcess(process.pid, start + 1)).toBe(false);
    expect(isSameProcess(process.pid, start - 1)).toBe(false);
  });

  it('parses a real process whose name contains spaces and parentheses', async () => {
    const weird = box.path('we ird) (x');
    copyFileSync('/bin/sleep', weird);
    chmodSync(weird, 0o755);
    const handle = await spawnCommand({ argv: [weird, '1000'], cwd: box.dir, env: ENV, logFile: box.path('w.log') });
    box.trackGroup(handle.pgid);
    const stat = await waitFor(() => {
      const s = readProcStat(handle.pid);
      return s?.comm === 'we ird) (x' ? s : undefined;
    }, 'the renamed sleep to exec');
    expect(stat.pgrp).toBe(handle.pid);
    expect(stat.ppid).toBe(process.pid);
    expect(stat.starttime).toBe(handle.procStart);
    expect(isSameProcess(handle.pid, handle.procStart)).toBe(true);
    expect(processGroupMembers(handle.pgid)).toEqual([handle.pid]);
    handle.signal('SIGKILL');
    await handle.exited;
  });

  it('counts a zombie as not alive and leaves it out of group members and descendants', async () => {
    // The shell forks `sleep 0`, then execs `sleep 1000`, which never reaps it: a zombie in the group.
    const handle = await spawnCommand({
      argv: ['sh', '-c', 'sleep 0 & exec sleep 1000'],
      cwd: box.dir,
      env: ENV,
      logFile: box.path('z.log'),
    });
    box.trackGroup(handle.pgid);
    const zombie = await waitFor(
      () => scanProcesses().find((p) => p.ppid === handle.pid && p.state === 'Z'),
      'a zombie child',
    );
    expect(readProcStart(zombie.pid)).toBe(zombie.starttime);
    expect(isSameProcess(zombie.pid, undefined)).toBe(false);
    expect(isSameProcess(zombie.pid, zombie.starttime)).toBe(false);
    await waitFor(() => readProcStat(handle.pid)?.comm === 'sleep', 'exec of sleep 1000');
    expect(processGroupMembers(handle.pgid)).toEqual([handle.pid]);
    expect(descendantsOf(handle.pid)).toEqual([]);
    handle.signal('SIGKILL');
    await handle.exited;
  });
});
