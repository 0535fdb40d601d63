import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isSameProcess, processGroupMembers, readProcStart, readProcStat } from '../../src/process/proc.js';
import { SpawnError, spawnCommand, type CommandSpec } from '../../src/process/spawn-command.js';
import { ENV, Sandbox, waitFor } from './helpers.js';

let box: Sandbox;
beforeEach(() => {
  box = new Sandbox();
});
afterEach(async () => {
  await box.cleanup();
});

function spec(argv: string[], extra: Partial<CommandSpec> = {}): CommandSpec {
  return { argv, cwd: box.dir, env: ENV, logFile: box.path('logs', '7', 'attempt-1.log'), ...extra };
}

async function start(s: CommandSpec) {
  const handle = await spawnCommand(s);
  box.trackGroup(handle.pgid);
  box.trackPid(handle.pid, handle.procStart);
  return handle;
}

describe('spawnCommand: exit status, log, stderr tail', () => {
  it('exit 0: output in the log file (header, both streams, footer), onOutput fires', async () => {
    const handle = await start(spec(['sh', '-c', 'echo to-stdout; echo to-stderr >&2; exit 0']));
    let outputs = 0;
    handle.onOutput(() => outputs++);
    const removed = handle.onOutput(() => {
      throw new Error('removed listener must not be called');
    });
    removed();
    expect(handle.pgid).toBe(handle.pid);
    expect(handle.procStart).toBeTypeOf('number');
    const exit = await handle.exited;
    expect(exit).toMatchObject({ exitCode: 0, signal: null, groupLeftovers: 0, groupRemaining: 0 });
    expect(exit.stderrTail).toBe('to-stderr');
    expect(exit.durationMs).toBeGreaterThanOrEqual(0);
    expect(outputs).toBeGreaterThan(0);
    const log = readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8');
    const lines = log.trimEnd().split('\n');
    expect(lines[0]).toContain('start argv=["sh","-c","echo to-stdout; echo to-stderr >&2; exit 0"]');
    expect(log).toContain('to-stdout\n');
    expect(log).toContain('to-stderr\n');
    expect(lines.at(-1)).toMatch(/exit code=0 signal=null duration_ms=\d+ leftovers=0$/);
  });

  it('appends to an existing log (a second attempt in the same file keeps the first)', async () => {
    const s = spec(['sh', '-c', 'echo first']);
    await (await start(s)).exited;
    await (await start({ ...s, argv: ['sh', '-c', 'echo second'] })).exited;
    const log = readFileSync(s.logFile, 'utf8');
    expect(log.indexOf('first')).toBeGreaterThan(0);
    expect(log.indexOf('second')).toBeGreaterThan(log.indexOf('first'));
    expect(log.match(/ start argv=/g)).toHaveLength(2);
  });

  it('exit 3 gives exitCode 3 and the last N lines of stderr', async () => {
    const handle = await start(
      spec(['sh', '-c', 'i=1; while [ $i -le 30 ]; do echo "err line $i" >&2; i=$((i+1)); done; echo out; exit 3'], {
        stderrTailLines: 5,
      }),
    );
    const exit = await handle.exited;
    expect(exit.exitCode).toBe(3);
    expect(exit.signal).toBeNull();
    expect(exit.stderrTail).toBe(['err line 26', 'err line 27', 'err line 28', 'err line 29', 'err line 30'].join('\n'));
    expect(readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8')).toMatch(/exit code=3 signal=null/);
  });

  it('a command killed by a signal reports the signal and a null exit code', async () => {
    const self = await start(spec(['sh', '-c', 'kill -USR1 $$; sleep 1000']));
    expect(await self.exited).toMatchObject({ exitCode: null, signal: 'SIGUSR1' });

    const sleeper = await start(spec(['sleep', '1000']));
    sleeper.signal('SIGTERM');
    const exit = await sleeper.exited;
    expect(exit).toMatchObject({ exitCode: null, signal: 'SIGTERM', groupRemaining: 0 });
    expect(isSameProcess(sleeper.pid, sleeper.procStart)).toBe(false);
    // after the exit, signal() is a no-op: the group's number may be reused by now
    expect(() => sleeper.signal('SIGKILL')).not.toThrow();
  });

  it('passes exactly the given environment (extendEnv false)', async () => {
    process.env.RUNWARDEN_TEST_LEAK = 'leaked';
    try {
      const handle = await start(spec(['sh', '-c', 'echo "A=$A LEAK=${RUNWARDEN_TEST_LEAK:-unset}"'], { env: { ...ENV, A: 'b c' } }));
      await handle.exited;
    } finally {
      delete process.env.RUNWARDEN_TEST_LEAK;
    }
    expect(readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8')).toContain('A=b c LEAK=unset\n');
  });
});

describe('spawnCommand: failures to start', () => {
  it('rejects with SpawnError naming a missing executable', async () => {
    const err = await spawnCommand(spec(['runwarden-no-such-program-xyz', 'arg'])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpawnError);
    expect((err as SpawnError).message).toContain('runwarden-no-such-program-xyz');
    expect((err as SpawnError).code).toBe('ENOENT');
    expect(readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8')).toContain('spawn failed');
  });

  it('rejects with SpawnError for a file that is not executable (EACCES)', async () => {
    const file = box.path('not-executable.sh');
    writeFileSync(file, '#!/bin/sh\necho hi\n');
    chmodSync(file, 0o644);
    const err = await spawnCommand(spec([file])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpawnError);
    expect((err as SpawnError).code).toBe('EACCES');
    expect((err as SpawnError).message).toContain(file);
  });

  it('rejects with SpawnError naming argv[0] and the directory when cwd is missing', async () => {
    const cwd = box.path('no', 'such', 'dir');
    const err = await spawnCommand(spec(['echo', 'hi'], { cwd })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SpawnError);
    expect((err as SpawnError).message).toContain('"echo"');
    expect((err as SpawnError).message).toContain(cwd);
  });

  it('rejects an empty argv', async () => {
    await expect(spawnCommand(spec([]))).rejects.toBeInstanceOf(SpawnError);
  });
});

describe('spawnCommand: argv is never a shell string', () => {
  it('passes shell metacharacters through as single literal arguments', async () => {
    const args = ['x; touch PWNED', '$(touch PWNED2)', '`touch PWNED3`', "a'b\"c", '*', '&& touch PWNED4 ||'];
    const handle = await start(spec(['printf', '[%s]\\n', ...args]));
    const exit = await handle.exited;
    expect(exit.exitCode).toBe(0);
    const log = readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8');
    const printed = log.split('\n').filter((l) => l.startsWith('['));
    expect(printed).toEqual(args.map((a) => `[${a}]`));
    for (const f of ['PWNED', 'PWNED2', 'PWNED3', 'PWNED4']) expect(existsSync(box.path(f))).toBe(false);
  });
});

describe('spawnCommand: the group dies with the command', () => {
  it('exited waits for a background straggler of the group and reports it', async () => {
    const handle = await start(spec(['sh', '-c', 'sleep 1000 & echo $! > straggler.pid; echo leader done']));
    const exit = await handle.exited;
    expect(exit.exitCode).toBe(0);
    expect(exit.groupLeftovers).toBeGreaterThanOrEqual(1);
    expect(exit.groupRemaining).toBe(0);
    expect(processGroupMembers(handle.pgid)).toEqual([]);
    const straggler = Number(readFileSync(box.path('straggler.pid'), 'utf8'));
    const stat = readProcStat(straggler);
    expect(stat === undefined || stat.state === 'Z' || stat.pgrp !== handle.pgid).toBe(true);
    expect(readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8')).toMatch(/leftovers=[1-9]/);
  });

  it('exited still resolves when a process that left the group keeps stdout open, and that process is killed', async () => {
    const handle = await start(spec(['sh', '-c', 'setsid sleep 1000 & echo $! > escapee.pid; echo leader done']));
    const exit = await handle.exited;
    expect(exit.exitCode).toBe(0);
    const pid = Number(readFileSync(box.path('escapee.pid'), 'utf8'));
    box.trackPid(pid);
    expect(isSameProcess(pid, undefined)).toBe(false);
    expect(exit.groupLeftovers).toBeGreaterThanOrEqual(1);
    expect(readFileSync(box.path('logs', '7', 'attempt-1.log'), 'utf8')).toContain('leader done\n');
  });

  it('a daemonized grandchild (new session, ignores SIGTERM) gets SIGTERM, then SIGKILL after escalateMs', async () => {
    const script = [
      `setsid sh -c 'sh -c "trap \\"\\" TERM; echo \\$\\$ > daemon.pid; while :; do sleep 1; done" & exit 0' </dev/null >/dev/null 2>&1 &`,
      'while [ ! -s daemon.pid ]; do sleep 0.02; done',
    ].join('\n');
    const handle = await start(spec(['sh', '-c', script], { escalateMs: 200 }));
    const exit = await handle.exited;
    const pid = Number(readFileSync(box.path('daemon.pid'), 'utf8'));
    box.trackPid(pid);
    expect(exit.exitCode).toBe(0);
    expect(exit.groupRemaining).toBe(0);
    expect(isSameProcess(pid, undefined)).toBe(false);
    // Every process of the attempt carries the marker, the handle says which.
    expect(handle.attemptMarker).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('SIGTERM then SIGKILL through the handle ends a command and grandchild that ignore SIGTERM', async () => {
    const script = [
      'trap "" TERM',
      'sh -c \'trap "" TERM; sleep 1000; echo never\' &',
      'echo $! > grandchild.pid',
      'sleep 1000 &',
      'echo started',
      'wait',
    ].join('\n');
    const handle = await start(spec(['sh', '-c', script]));
    const members = await waitFor(() => {
      const m = processGroupMembers(handle.pgid);
      return m.length >= 4 && existsSync(box.path('grandchild.pid')) ? m : undefined;
    }, 'leader, inner shell and two sleeps');
    const recorded = members.map((pid) => [pid, readProcStart(pid)] as const);
    for (const [pid, st] of recorded) box.trackPid(pid, st);

    handle.signal('SIGTERM');
    // SIGTERM is ignored by all of them: nothing has exited on its account
    expect(recorded.every(([pid, st]) => isSameProcess(pid, st))).toBe(true);
    handle.signal('SIGKILL');
    const exit = await handle.exited;
    expect(exit.signal).toBe('SIGKILL');
    expect(exit.groupRemaining).toBe(0);
    expect(processGroupMembers(handle.pgid)).toEqual([]);
    for (const [pid, st] of recorded) expect(isSameProcess(pid, st)).toBe(false);
  });

  it('SIGKILL through the handle also kills a grandchild that left the group (setsid)', async () => {
    const handle = await start(spec(['sh', '-c', 'trap "" TERM; setsid sleep 1000 & echo $! > escapee.pid; wait']));
    const escapee = await waitFor(() => {
      if (!existsSync(box.path('escapee.pid'))) return undefined;
      const pid = Number(readFileSync(box.path('escapee.pid'), 'utf8'));
      const s = readProcStat(pid);
      return s && s.comm === 'sleep' && s.pgrp !== handle.pgid ? s : undefined;
    }, 'the setsid sleep');
    box.trackPid(escapee.pid, escapee.starttime);
    expect(escapee.ppid).toBe(handle.pid);

    handle.signal('SIGKILL');
    const exit = await handle.exited;
    expect(exit.signal).toBe('SIGKILL');
    await waitFor(() => !isSameProcess(escapee.pid, escapee.starttime), 'the escapee to die');
  });
});
