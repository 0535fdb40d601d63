import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { groupAlive } from '../../src/process/kill-group.js';
import { parseDaemonTag } from '../../src/process/orphan-scan.js';
import { readProcStart } from '../../src/process/proc.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { HostDoc } from '../../src/store/types.js';
import { isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { killWithGuard } from '../helpers/lease-guard.js';
import { useSandbox } from '../helpers/sandbox.js';

// Crash-only recovery with real daemons, real commands and real signals: restart after kill -9, displacement
// of a daemon of the same host, recycled pids left alone, --undying.

const sandbox = useSandbox();

/** The first attempt hangs (recording its pid); later attempts write their output and succeed. */
function hangOnceConfig(extra = ''): void {
  const hang = sandbox.script(
    'hang-once.sh',
    [
      'out=$2',
      'if [ "$3" = 1 ]; then',
      '  echo $$ > "$out/leader.pid"',
      "  (trap '' TERM; sleep 1000) &",
      '  echo $! > "$out/child.pid"',
      '  sleep 1000',
      'fi',
      'echo ok > "$out/result.txt"',
    ].join('\n'),
  );
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(hang)}, "{number}", "{output}", "{attempt}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 1s
  max_busy_time: 1h
  max_considering_time: 1h
  presumed_dead: 1h
  restart_pause: 300ms
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
${extra}`,
  );
}

async function readPid(file: string): Promise<number> {
  return Number(await waitFor(() => existsSync(file) && readFileSync(file, 'utf8').trim(), `a pid in ${file}`));
}

async function hostWhen(s: RunStore, state: string): Promise<HostDoc> {
  return waitFor(async () => {
    const host = await s.getHost('testhost');
    return host?.state === state ? host : null;
  }, `host testhost to be ${state}`);
}

function startDaemon(...args: string[]) {
  const daemon = sandbox.start(['daemon', ...args]);
  return daemon;
}

async function submit(...args: string[]): Promise<void> {
  const result = await sandbox.run(['submit', ...args]);
  expect(result.exitCode, result.stderr).toBe(0);
}

describe('restart after kill -9', () => {
  it('kills the orphaned command, fails its run at once with the reason, then retries it to done', async () => {
    hangOnceConfig();
    await submit('11');
    const first = startDaemon();
    const leader = await readPid(join(sandbox.dir, 'out/000011/leader.pid'));
    const grandchild = await readPid(join(sandbox.dir, 'out/000011/child.pid'));
    const s = await sandbox.openStore();
    const busy = await waitFor(async () => {
      const p = (await s.getRun(11))?.processing;
      return p?.state === 'busy' && p.pgid !== undefined ? p : null;
    }, 'the process group to be recorded');
    expect(busy.pgid).toBe(leader);

    // The daemon dies with its lease guard (which would otherwise kill the command at once): the restart's
    // recovery is the backstop that must kill the orphan.
    await killWithGuard(first);
    // The daemon is gone; its command (its own process group) is not.
    expect(isAlive(leader)).toBe(true);
    expect(isAlive(grandchild)).toBe(true);

    startDaemon();
    const done = await waitFor(async () => {
      const run = await s.getRun(11);
      return run?.processing?.state === 'done' ? run : null;
    }, 'run 11 to be done by the new daemon');
    expect(isAlive(leader)).toBe(false);
    expect(isAlive(grandchild)).toBe(false);
    expect(groupAlive(leader)).toBe(false);
    expect(done.processing).toMatchObject({ attempt: 2, n_failures: 0, n_interruptions: 1 });
    const events = await s.listRunEvents(11);
    expect(events.map((e) => `${e.from ?? '-'}>${e.to}@${e.attempt}`)).toEqual([
      '->considering@1',
      'considering>busy@1',
      'busy>failed@1',
      'failed>considering@2',
      'considering>busy@2',
      'busy>done@2',
    ]);
    const failed = events[2]!;
    expect(failed.reason).toContain('host testhost restarted while the run was busy');
    expect(failed.reason).toContain(`killed its orphaned command (process group ${leader})`);
    expect(failed.detail).toMatchObject({ kind: 'restart', killed_pgid: leader });
    // The restart did not wait for max_busy_time (1 h here) or the retry backoff (1 h).
    const log = await s.listLog({ minPriority: 2 });
    expect(log.map((e) => e.message).join('\n')).toContain('host testhost restarted: 1 run(s) of the previous daemon');
  });

  it('leaves a recycled pid alone: a live process that is not the recorded one is never signalled', async () => {
    hangOnceConfig();
    // An unrelated long-lived process in its own group stands in for whatever now holds the recorded pids.
    const bystander = execa('sleep', ['1000'], { detached: true, reject: false, stdio: 'ignore' });
    sandbox.track(bystander, { group: true });
    const pid = bystander.pid!;
    const start = readProcStart(pid)!;
    const s = await sandbox.openStore();
    await s.registerHost({
      host: 'testhost',
      pid,
      proc_start: start + 1, // the daemon that held this pid started at another time
      token: 'old-incarnation',
      state: 'busy',
      time: Date.now(),
      started: Date.now(),
      version: 'old',
      slots: 1,
      running: [12],
    });
    await s.insertRun({ number: 12, start: Date.now() });
    const claimed = (await s.claimRun(12, { host: 'testhost', pid, order: 'newest' }, { state: null, token: null }))!;
    const token = claimed.processing!.token;
    expect(await s.markBusy(12, token, { started: Date.now() })).toBe(true);
    // the recorded command group: same pgid as the bystander's, but another start time
    expect(await s.recordProcessGroup(12, token, { pgid: pid, proc_start: start + 1 })).toBe(true);

    startDaemon();
    await waitFor(async () => (await s.getRun(12))?.processing?.state === 'done', 'run 12 to be retried to done');
    expect(isAlive(pid)).toBe(true);
    const failed = (await s.listRunEvents(12)).find((e) => e.to === 'failed')!;
    expect(failed.reason).toContain('restarted while the run was busy');
    expect(failed.reason).not.toContain('killed');
    expect((await s.getHost('testhost'))!.pid).not.toBe(pid);
  });
});

/** Starts run `number` under a daemon, SIGKILLs that daemon, and returns the orphan it left behind. */
async function orphanOfKilledDaemon(number: number) {
  hangOnceConfig();
  await submit(String(number));
  const first = startDaemon();
  const out = join(sandbox.dir, 'out', String(number).padStart(6, '0'));
  const leader = await readPid(join(out, 'leader.pid'));
  const grandchild = await readPid(join(out, 'child.pid'));
  const s = await sandbox.openStore();
  const busy = await waitFor(async () => {
    const p = (await s.getRun(number))?.processing;
    return p?.state === 'busy' && p.pgid !== undefined ? p : null;
  }, 'the process group to be recorded');
  await killWithGuard(first); // the guard too: the restart is the backstop under test
  orphanGroups.push(leader);
  expect(isAlive(leader)).toBe(true);
  expect(isAlive(grandchild)).toBe(true);
  return { s, busy, leader, grandchild };
}

/** Orphan groups to SIGKILL after the test, should the restart under test have failed to. */
const orphanGroups: number[] = [];

describe('orphans no run record names (found through RUNWARDEN_DAEMON)', () => {
  afterEach(() => {
    for (const pgid of orphanGroups.splice(0)) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // gone, as it should be
      }
    }
  });

  it("a restart kills its predecessor's command of a run another host has taken over since", async () => {
    const { s, busy, leader, grandchild } = await orphanOfKilledDaemon(15);
    // Another host's cleanup fails the silent run and that host claims it: processing names otherhost now.
    const repaired = await s.overrideRun(
      15,
      { state: 'busy', token: busy.token },
      {
        to: 'failed',
        reason: 'host testhost said it was busy, then nothing',
        n_failures: 1,
        next_retry: Date.now(),
        drainMs: 3_600_000,
      },
      { host: 'otherhost' },
    );
    expect(repaired).toBe(true);
    const failedToken = (await s.getRun(15))!.processing!.token;
    const claimed = await s.claimRun(
      15,
      { host: 'otherhost', pid: 999_999, order: 'newest' },
      { state: 'failed', token: failedToken },
      { drainMs: 3_600_000 },
    );
    expect(claimed?.processing).toMatchObject({ host: 'otherhost', attempt: 2, state: 'considering' });
    // otherhost's attempt waits for testhost's attempt 1, whose command may still run (it does)
    expect(claimed!.processing!.draining).toMatchObject({ host: 'testhost', attempt: 1, pgid: leader });

    const second = startDaemon();
    await hostWhen(s, 'idle');
    expect((await s.getHost('testhost'))!.pid).toBe(second.pid);
    expect(isAlive(leader)).toBe(false);
    expect(isAlive(grandchild)).toBe(false);
    expect(groupAlive(leader)).toBe(false);
    // The run is otherhost's: the restart killed the orphan and wrote nothing into the run but that its
    // attempt's command is gone (the drain record naming it is cleared: otherhost may start at once).
    expect((await s.getRun(15))!.processing).toMatchObject({ host: 'otherhost', attempt: 2, state: 'considering' });
    await waitFor(async () => (await s.getRun(15))!.processing!.draining === undefined, 'the drain record to be cleared');
    const warnings = await waitFor(async () => {
      const text = (await s.listLog({ minPriority: 2 })).map((e) => e.message).join('\n');
      return text.includes('killed an orphaned command') ? text : null;
    }, 'the warning about the killed orphan');
    expect(warnings).toContain(
      `killed an orphaned command of a previous daemon: run 15 attempt 1, process group ${leader} ` +
        `(daemon pid ${busy.pid} is gone)`,
    );
  });

  it('a restart kills a command whose process group never reached the store (SIGKILL right after the spawn)', async () => {
    const { s, busy, leader, grandchild } = await orphanOfKilledDaemon(16);
    // As if the daemon had died before its recordProcessGroup write landed.
    const raw = (s as unknown as { db: import('better-sqlite3').Database }).db;
    raw.prepare(`UPDATE tasks SET pgid = NULL, proc_start = NULL WHERE number = 16 AND stage = 'process'`).run();
    expect((await s.getRun(16))!.processing!.pgid).toBeUndefined();

    startDaemon();
    const done = await waitFor(async () => {
      const run = await s.getRun(16);
      return run?.processing?.state === 'done' ? run : null;
    }, 'run 16 to be retried to done');
    expect(isAlive(leader)).toBe(false);
    expect(isAlive(grandchild)).toBe(false);
    expect(done.processing).toMatchObject({ attempt: 2, n_failures: 0, n_interruptions: 1 });
    const failed = (await s.listRunEvents(16)).find((e) => e.to === 'failed')!;
    // The scan tells the repair which group it killed for this attempt.
    expect(failed.reason).toContain(`killed its orphaned command (process group ${leader})`);
    expect(failed.detail).toMatchObject({ kind: 'restart', previous_pid: busy.pid, killed_pgid: leader });
  });

  it('a daemon starting leaves alone the command of a live foreground `process N`, which its tag names', async () => {
    hangOnceConfig();
    await submit('17');
    const foreground = sandbox.start(['process', '17']);
    const leader = await readPid(join(sandbox.dir, 'out/000017/leader.pid'));
    const grandchild = await readPid(join(sandbox.dir, 'out/000017/child.pid'));
    orphanGroups.push(leader);
    const s = await sandbox.openStore();
    const environ = readFileSync(`/proc/${leader}/environ`, 'utf8').split('\0');
    const tag = environ.find((entry) => entry.startsWith('RUNWARDEN_DAEMON='))!.slice('RUNWARDEN_DAEMON='.length);
    expect(parseDaemonTag(tag)).toEqual({
      host: 'testhost',
      store: s.location,
      pid: foreground.pid,
      procStart: readProcStart(foreground.pid!),
    });

    startDaemon();
    await hostWhen(s, 'idle');
    expect(isAlive(leader)).toBe(true);
    expect(isAlive(grandchild)).toBe(true);
    expect((await s.getRun(17))!.processing).toMatchObject({ state: 'busy', pid: foreground.pid });
    const warnings = (await s.listLog({ minPriority: 2 })).map((e) => e.message).join('\n');
    expect(warnings).not.toContain('orphaned command');
  });
});

describe('one daemon per host', () => {
  it('a second daemon with the same host name displaces the first, which releases its run', async () => {
    hangOnceConfig();
    await submit('21');
    const first = startDaemon();
    const leader = await readPid(join(sandbox.dir, 'out/000021/leader.pid'));
    const s = await sandbox.openStore();
    const firstPid = (await hostWhen(s, 'busy')).pid;

    const second = startDaemon();
    const firstResult = (await first) as { exitCode?: number };
    // SIGTERM: the first daemon stopped as on ^C (exit 0) and released the run unharmed.
    expect(firstResult.exitCode).toBe(0);
    expect(isAlive(leader)).toBe(false);
    const done = await waitFor(async () => {
      const run = await s.getRun(21);
      return run?.processing?.state === 'done' ? run : null;
    }, 'run 21 to be done by the second daemon');
    expect(done.processing).toMatchObject({ attempt: 2, n_failures: 0, n_interruptions: 1 });
    const host = (await s.getHost('testhost'))!;
    expect(host.pid).toBe(second.pid);
    expect(host.pid).not.toBe(firstPid);
    const released = (await s.listRunEvents(21)).find((e) => e.to === 'failed')!;
    expect(released.reason).toBe('host stopped');
  });

  it('kills a previous daemon that ignores SIGTERM, after signal_escalate', async () => {
    hangOnceConfig();
    // A stand-in for a wedged daemon: the host document names it, with its true start time.
    const wedged = execa('sh', ['-c', "trap '' TERM; sleep 1000"], { detached: true, reject: false, stdio: 'ignore' });
    sandbox.track(wedged, { group: true });
    await waitFor(() => readProcStart(wedged.pid!), 'the stand-in to start');
    const s = await sandbox.openStore();
    await s.registerHost({
      host: 'testhost',
      pid: wedged.pid!,
      proc_start: readProcStart(wedged.pid!)!,
      token: 'wedged',
      state: 'idle',
      time: Date.now(),
      started: Date.now(),
      version: 'old',
      slots: 1,
      running: [],
    });
    startDaemon();
    const result = (await wedged) as { signal?: string };
    expect(result.signal).toBe('SIGKILL');
    await hostWhen(s, 'idle');
    const warnings = (await s.listLog({ minPriority: 2 })).map((e) => e.message).join('\n');
    expect(warnings).toContain(`displacing the previous daemon (pid ${wedged.pid})`);
    expect(warnings).toContain('still alive after SIGTERM: SIGKILL');
  });
});

describe('--undying', () => {
  it('restarts a daemon that was killed, logs the crash, recovers its run, and stops on SIGTERM', async () => {
    hangOnceConfig();
    await submit('31');
    const parent = startDaemon('--undying');
    const s = await sandbox.openStore();
    const leader = await readPid(join(sandbox.dir, 'out/000031/leader.pid'));
    const child = (await hostWhen(s, 'busy')).pid;
    expect(child).not.toBe(parent.pid);

    process.kill(child, 'SIGKILL'); // an OOM kill, say
    const done = await waitFor(async () => {
      const run = await s.getRun(31);
      return run?.processing?.state === 'done' ? run : null;
    }, 'run 31 to be done by the restarted daemon');
    expect(isAlive(leader)).toBe(false);
    expect(done.processing!.attempt).toBe(2);
    const host = (await s.getHost('testhost'))!;
    expect(host.pid).not.toBe(child);
    const crash = (await s.listLog({ minPriority: 3 })).find((e) => e.message.includes('crashed'));
    expect(crash?.message).toMatch(
      /daemon of host testhost crashed \(signal SIGKILL; crash 1 since start\); restarting in 300ms/,
    );

    parent.kill('SIGTERM');
    const result = (await parent) as { exitCode?: number };
    expect(result.exitCode).toBe(0);
    expect((await s.getHost('testhost'))!.state).toBe('stopped');
    expect(isAlive(host.pid)).toBe(false);
  });

  it('does not restart after a configuration error (exit 2)', async () => {
    writeConfig(sandbox.dir, 'store: sqlite:./runs.db\nprocess:\n  command: ["true"]\nslots: 0\n');
    const result = await sandbox.run(['daemon', '--undying']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('slots');
  });
});

describe('cleanup of other hosts', () => {
  it("a running daemon fails a silent host's stale run, marks that host dead, then processes the run", async () => {
    const work = sandbox.script('work.sh', 'echo ok > "$2/result"');
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.3s
  cleanup_interval: 0.3s
  max_busy_time: 1.5s
  max_considering_time: 1s
  presumed_dead: 1s
  idle_poll: 1h
  signal_escalate: 0.2s
retry: {base: 0, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 3}
`,
    );
    const s = await sandbox.openStore();
    await s.registerHost({
      host: 'ghost',
      pid: 999_999,
      token: 'ghost-token',
      state: 'busy',
      time: Date.now() - 60_000,
      started: Date.now() - 120_000,
      version: 'old',
      slots: 1,
      running: [41],
    });
    await s.insertRun({ number: 41, start: Date.now() });
    const claimed = (await s.claimRun(
      41,
      { host: 'ghost', pid: 999_999, order: 'newest' },
      { state: null, token: null },
    ))!;
    expect(await s.markBusy(41, claimed.processing!.token, { started: Date.now() })).toBe(true);

    startDaemon();
    const done = await waitFor(async () => {
      const run = await s.getRun(41);
      return run?.processing?.state === 'done' ? run : null;
    }, 'run 41 to be repaired and processed');
    expect(done.processing).toMatchObject({ host: 'testhost', attempt: 2, n_failures: 0, n_interruptions: 1 });
    const failed = (await s.listRunEvents(41)).find((e) => e.to === 'failed')!;
    expect(failed.host).toBe('testhost');
    expect(failed.reason).toMatch(/host ghost said it was busy at \S+/);
    expect((await s.getHost('ghost'))!.state).toBe('dead');
    const warnings = (await s.listLog({ minPriority: 2 })).map((e) => e.message).join('\n');
    expect(warnings).toContain('host ghost presumed dead');
  });
});
