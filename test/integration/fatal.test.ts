import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/open-store.js';
import { cleanEnv, cliEntry, isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Crash-only ends with real daemons, real SQLite files and real signals: SIGHUP is a clean stop; a store file
// deleted or replaced under a running daemon stops it loudly before anything more is processed; a store that
// refuses the daemon's writes for longer than a lease ends it non-zero, and the next start recovers its run.

const sandbox = useSandbox('runwarden-fatal-');
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;

/**
 * Each attempt writes "<number> start" to the ledger (outside the store), holds while the file hold-<number>
 * exists, then writes its output and "<number> end". Its pid goes to pids/<number>.
 */
function gatedConfig(extra = ''): void {
  const work = sandbox.script(
    'work.sh',
    [
      `dir=${JSON.stringify(sandbox.dir)}`,
      'echo "$1 start" >> "$dir/ledger"',
      'mkdir -p "$dir/pids" && echo $$ > "$dir/pids/$1"',
      'while [ -e "$dir/hold-$1" ]; do sleep 0.05; done',
      'echo ok > "$2/result"',
      'echo "$1 end" >> "$dir/ledger"',
    ].join('\n'),
  );
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.25s
  idle_poll: 1h
  signal_escalate: 0.1s
  max_busy_time: 1s
  max_considering_time: 1s
  presumed_dead: 1h
retry: {base: 0, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 3}
${extra}`,
  );
}

const ledger = () => {
  const file = join(sandbox.dir, 'ledger');
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n') : [];
};
const started = () => ledger().filter((l) => l.endsWith(' start')).map((l) => Number(l.split(' ')[0]));
const pidOf = (number: number) => Number(readFileSync(join(sandbox.dir, 'pids', String(number)), 'utf8').trim());
const hold = (...numbers: number[]) => {
  for (const number of numbers) writeFileSync(join(sandbox.dir, `hold-${number}`), '');
};
const release = (number: number) => rmSync(join(sandbox.dir, `hold-${number}`), { force: true });

async function submit(...numbers: number[]): Promise<void> {
  const lines = numbers.map((number) => JSON.stringify({ number, start: new Date(Date.UTC(2026, 0, number)).toISOString() }));
  writeFileSync(join(sandbox.dir, 'runs.jsonl'), `${lines.join('\n')}\n`);
  const result = await sandbox.run(['submit', '--file', 'runs.jsonl']);
  expect(result.exitCode, result.stderr).toBe(0);
}

/** The daemon with a deadline on its end: its exit code, signal and everything it wrote. */
async function ended(daemon: ReturnType<typeof sandbox.start>, what: string) {
  let result: Awaited<typeof daemon> | undefined;
  void daemon.then((r) => {
    result = r;
  });
  await waitFor(() => result, what, { timeoutMs: 60_000, intervalMs: 100 });
  return result!;
}

describe('SIGHUP (the terminal or ssh session closed)', () => {
  it('stops the daemon cleanly like SIGTERM, even with its stdout and stderr gone: runs released, exit 0', async () => {
    gatedConfig();
    hold(1);
    await submit(1);
    // A daemon whose terminal went away: its output pipes are closed before the hangup arrives.
    const child = spawn(process.execPath, ['--import', tsxLoader, cliEntry, 'daemon'], {
      cwd: sandbox.dir,
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    sandbox.track({ kill: (signal) => child.kill(signal), pid: child.pid, then: exited.then.bind(exited) });
    await waitFor(() => started().includes(1) && existsSync(join(sandbox.dir, 'pids/1')), 'run 1 to start');
    const command = pidOf(1);
    child.stdout.destroy();
    child.stderr.destroy();
    child.kill('SIGHUP');
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    void exited.then((e) => {
      exit = e;
    });
    await waitFor(() => exit, 'the daemon to stop after SIGHUP', { timeoutMs: 30_000 });
    expect(exit).toEqual({ code: 0, signal: null });
    expect(isAlive(command)).toBe(false);
    const s = await sandbox.openStore();
    const p = (await s.getRun(1))!.processing!;
    expect(p).toMatchObject({ state: 'failed', n_failures: 0, reason: 'host stopped' });
    expect((await s.getHost('testhost'))!.state).toBe('stopped');
  });
});

describe('the store file deleted or replaced under a running daemon', () => {
  /** Runs 1 and 2 done, run 3 in flight (held), runs 4–6 queued: the daemon is busy processing. */
  async function busyDaemon() {
    gatedConfig();
    hold(3, 4, 5, 6);
    await submit(1, 2, 3, 4, 5, 6);
    const daemon = sandbox.start(['daemon', '--order', 'oldest']);
    await waitFor(() => ledger().includes('2 end'), 'runs 1 and 2 to be processed');
    await waitFor(() => started().includes(3) && existsSync(join(sandbox.dir, 'pids/3')), 'run 3 to start');
    expect(started()).toEqual([1, 2, 3]);
    return { daemon, before: started() };
  }

  it('rm of the database file: the daemon exits non-zero naming the path and processes nothing more', async () => {
    const { daemon, before } = await busyDaemon();
    const command = pidOf(3);
    const db = join(sandbox.dir, 'runs.db');
    rmSync(db);
    release(3); // the command in flight ends now: its success must not be recorded in a file nobody can see
    const result = await ended(daemon, 'the daemon to exit after its store file was deleted');
    expect(result.exitCode, String(result.all)).toBe(1);
    expect(String(result.all)).toMatch(/"level":"fatal"/);
    expect(String(result.all)).toContain(`SQLite store ${db}: the database file was deleted or renamed`);
    // Nothing started after the deletion: the queued runs stay queued, the one in flight is not done.
    expect(started()).toEqual(before);
    expect(isAlive(command)).toBe(false);
    // Runs submitted now go to a new file at the path, and nobody claimed them.
    rmSync(`${db}-wal`, { force: true });
    rmSync(`${db}-shm`, { force: true });
    await submit(101);
    const s = await sandbox.openStore();
    expect((await s.getRun(101))?.processing).toBeUndefined();
    expect(started()).toEqual(before);
  });

  it('mv of another database over it: the daemon exits non-zero naming the path, claims none of its runs', async () => {
    const { daemon, before } = await busyDaemon();
    const db = join(sandbox.dir, 'runs.db');
    const other = join(sandbox.dir, 'other.db');
    const otherStore = await openStore(`sqlite:${other}`);
    await otherStore.insertRuns([201, 202, 203].map((number) => ({ number, start: Date.now() })));
    await otherStore.close();
    renameSync(other, db);
    release(3);
    const result = await ended(daemon, 'the daemon to exit after its store file was replaced');
    expect(result.exitCode, String(result.all)).toBe(1);
    expect(String(result.all)).toContain(`SQLite store ${db}: the database file was replaced by another file`);
    expect(started()).toEqual(before);
  });
});

describe('a store that refuses the daemon for longer than a lease', () => {
  it('ends the daemon non-zero within a bound, its command killed; the next start recovers the run', async () => {
    gatedConfig();
    hold(1);
    await submit(1);
    const daemon = sandbox.start(['daemon']);
    await waitFor(() => started().includes(1) && existsSync(join(sandbox.dir, 'pids/1')), 'run 1 to start');
    const command = pidOf(1);
    // Another process (a backup, a `sqlite3` shell left in a transaction) holds the write lock.
    const locker = new Database(join(sandbox.dir, 'runs.db'), { timeout: 20_000 });
    let output = '';
    daemon.all?.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    try {
      locker.exec('BEGIN IMMEDIATE');
      // Once the fatal line is out, the lock may go: the daemon is ending and need not wait out the busy
      // timeout of its last operator-log write.
      await waitFor(() => output.includes('"level":"fatal"'), 'the fatal line', { timeoutMs: 60_000, intervalMs: 100 });
      // Killed before the line was logged; the signal's delivery is all that may still be on its way.
      await waitFor(() => !isAlive(command), 'the command to be dead', { timeoutMs: 5_000 });
      locker.exec('ROLLBACK');
      const result = await ended(daemon, 'the daemon to exit while the store refuses its writes');
      expect(result.exitCode, String(result.all)).toBe(1);
      expect(String(result.all)).toMatch(/the store refused host heartbeats for [\d.]+s \(timeouts\.max_busy_time is 1s\)/);
    } finally {
      locker.close();
    }
    // Restarted (as systemd or --undying would), the daemon fails its predecessor's run and processes it again.
    release(1);
    const again = await sandbox.run(['daemon', '--once']);
    expect(again.exitCode, again.stderr).toBe(0);
    const s = await sandbox.openStore();
    expect((await s.getRun(1))!.processing).toMatchObject({ state: 'done', attempt: 2 });
  });
});

describe('a foreground `process N` ends the same way', () => {
  it('SIGHUP releases the run and exits 0; a deleted store file kills the command and exits 1 naming the path', async () => {
    gatedConfig();
    hold(1, 2);
    await submit(1, 2);
    const first = sandbox.start(['process', '1']);
    await waitFor(() => started().includes(1) && existsSync(join(sandbox.dir, 'pids/1')), 'run 1 to start');
    first.kill('SIGHUP');
    const hungUp = await ended(first, 'process 1 to stop after SIGHUP');
    expect(hungUp.exitCode, String(hungUp.all)).toBe(0);
    expect(isAlive(pidOf(1))).toBe(false);
    const s = await sandbox.openStore();
    expect((await s.getRun(1))!.processing).toMatchObject({ state: 'failed', n_failures: 0, reason: 'host stopped' });
    await s.close();

    const second = sandbox.start(['process', '2']);
    await waitFor(() => started().includes(2) && existsSync(join(sandbox.dir, 'pids/2')), 'run 2 to start');
    const db = join(sandbox.dir, 'runs.db');
    rmSync(db);
    const result = await ended(second, 'process 2 to exit after its store file was deleted');
    expect(result.exitCode, String(result.all)).toBe(1);
    expect(String(result.all)).toContain(`SQLite store ${db}: the database file was deleted or renamed`);
    expect(isAlive(pidOf(2))).toBe(false);
    expect(ledger()).not.toContain('2 end');
  });
});
