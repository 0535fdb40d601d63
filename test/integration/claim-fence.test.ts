import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { operatorUser } from '../../src/daemon/operator-actions.js';
import type { RunDoc } from '../../src/store/types.js';
import { execa } from 'execa';
import { isAlive, repoRoot, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Issue 12 faults 1, 6 and 13, through the real CLI and daemons on one SQLite file: a run taken from a live
// owner (operator fail, process --force) never starts again while the previous attempt's command still runs,
// and a daemon that claims a run whose old actor is still stopping does not crash.
//
// The command proves overlap by itself: an O_EXCL lock file names the attempt holding it (pid and start time);
// an attempt that finds the lock held by a live process records an overlap and exits 97. Attempt 1 ignores
// SIGTERM (its group dies only by SIGKILL, after signal_escalate); later attempts finish at once.

const sandbox = useSandbox('runwarden-fence-');
const user = operatorUser();

const COMMAND = `number=$1 attempt=$2 out=$3 ev=$4
lock="$ev/lock-$number"
read -r stat < /proc/$$/stat
set -- $stat
me="$$ \${22}"
if ! ( set -C; echo "$me $attempt" > "$lock" ) 2>/dev/null; then
  read -r hpid hstart hattempt < "$lock"
  if [ -n "$hpid" ] && read -r hstat < "/proc/$hpid/stat" 2>/dev/null; then
    set -- $hstat
    if [ "$3" != Z ] && [ "\${22}" = "$hstart" ]; then
      echo "attempt $attempt started while attempt $hattempt (pid $hpid) still ran" > "$ev/overlap-$number-$attempt"
      exit 97
    fi
  fi
  echo "$me $attempt" > "$lock"
fi
echo "$attempt $$" >> "$ev/started-$number"
if [ "$attempt" -ge 2 ]; then echo done > "$out/result"; exit 0; fi
trap '' TERM
echo $$ > "$ev/leader-$number"
while :; do sleep 0.05; done`;

const TIMEOUTS = `  check_interval: 0.2s
  signal_escalate: 1s
  cleanup_interval: 0.5s
  idle_poll: 1h`;

function config(extra = '', timeouts = TIMEOUTS): void {
  const command = sandbox.script('attempt.sh', COMMAND);
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(command)}, "{number}", "{attempt}", "{output}", ${JSON.stringify(sandbox.dir)}]
  output_root: ./out
  log_dir: ./logs
timeouts:
${timeouts}
retry: {base: 0.05, factor: 1, max_exponent: 1, jitter: [1, 1], max_failures: 5}
${extra}
`,
  );
}

async function submit(number: number): Promise<void> {
  const result = await sandbox.run(['submit', String(number)]);
  expect(result.exitCode, result.stderr).toBe(0);
}

async function run(number: number): Promise<RunDoc> {
  return (await (await sandbox.openStore()).getRun(number))!;
}

/** Attempt 1's command, once it runs and its process group is recorded. */
async function firstCommand(number: number): Promise<number> {
  const file = join(sandbox.dir, `leader-${number}`);
  const leader = Number(await waitFor(() => existsSync(file) && readFileSync(file, 'utf8').trim(), 'attempt 1 to start'));
  await waitFor(async () => (await run(number)).processing?.pgid === leader, 'its process group to be recorded');
  return leader;
}

/** The overlaps the commands recorded (none, unless two attempts ran at once). */
function overlaps(): string[] {
  return readdirSync(sandbox.dir)
    .filter((f) => f.startsWith('overlap-'))
    .map((f) => readFileSync(join(sandbox.dir, f), 'utf8').trim());
}

/**
 * Waits until the run is done, an attempt recorded an overlap, or one of `daemons` ended; then there must be no
 * overlap and every daemon must still run.
 */
async function done(number: number, daemons: Array<{ exitCode: number | null }>): Promise<RunDoc> {
  const finished = await waitFor(async () => {
    const r = await run(number);
    const over = r.processing?.state === 'done' || overlaps().length > 0 || daemons.some((d) => d.exitCode !== null);
    return over ? r : null;
  }, `run ${number} to be done`, { timeoutMs: 60_000 });
  expect(overlaps()).toEqual([]);
  expect(daemons.map((d) => d.exitCode)).toEqual(daemons.map(() => null));
  return finished;
}

describe('drain fence: a run taken from a live owner starts again only once its command is gone', () => {
  it('fault 1: fail N of a busy run with a short retry; the daemon neither crashes nor starts attempt 2 early', async () => {
    // a free slot: the daemon claims again while the old actor is still killing the command
    config('slots: 2');
    await submit(7);
    const daemon = sandbox.start(['daemon']);
    const leader = await firstCommand(7);

    const failed = await sandbox.run(['fail', '7', 'recalibrate', '--host', 'ops']);
    expect(failed.exitCode, failed.stderr).toBe(0);
    // the retry is due at once, but attempt 1's command (it ignores SIGTERM) is still stopping
    expect((await run(7)).processing!.draining).toMatchObject({ host: 'testhost', attempt: 1, pgid: leader });

    const finished = await done(7, [daemon]);
    expect(isAlive(leader)).toBe(false);
    expect(overlaps()).toEqual([]);
    expect(finished.processing).toMatchObject({ attempt: 2, host: 'testhost' });
    expect(finished.processing!.draining).toBeUndefined();
    // the daemon is still alive and stops cleanly: no "Actor with system ID 'run-7' already exists"
    expect(daemon.exitCode).toBeNull();
    daemon.kill('SIGTERM');
    const result = await daemon;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    expect(String(result.stderr)).not.toMatch(/already exists/);
  });

  it('fault 13: fail N of a busy run while a daemon of another host polls; the retry waits for the command', async () => {
    config();
    await submit(8);
    const alpha = sandbox.start(['daemon', '--host', 'alpha']);
    const leader = await firstCommand(8);
    // beta is idle and wakes up on the fail (and polls every check_interval meanwhile)
    const beta = sandbox.start(['daemon', '--host', 'beta']);
    const s = await sandbox.openStore();
    await waitFor(async () => (await s.getHost('beta'))?.state === 'idle', 'beta to be idle');

    const failed = await sandbox.run(['fail', '8', 'wrong gains', '--host', 'ops']);
    expect(failed.exitCode, failed.stderr).toBe(0);

    const finished = await done(8, [alpha, beta]);
    expect(isAlive(leader)).toBe(false);
    expect(overlaps()).toEqual([]);
    expect(finished.processing!.attempt).toBe(2);
    const events = await s.listRunEvents(8);
    expect(events.find((e) => e.to === 'failed')).toMatchObject({ host: 'ops', from: 'busy', attempt: 1 });
    for (const daemon of [alpha, beta]) {
      expect(daemon.exitCode).toBeNull();
      daemon.kill('SIGTERM');
      expect((await daemon).exitCode).toBe(0);
    }
  });

  it('fault 6: process N --force from another host waits for the previous command; the takeover names the operator', async () => {
    config();
    await submit(9);
    const daemon = sandbox.start(['daemon']);
    const leader = await firstCommand(9);

    const forced = await sandbox.run(['process', '9', '--force', '--host', 'ops']);
    expect(forced.exitCode, forced.stderr).toBe(0);
    // it said what it waited for
    expect(forced.stderr).toMatch(/run 9 attempt 2 waits for attempt 1 on host testhost \(pid \d+\) to stop its command/);
    expect(isAlive(leader)).toBe(false);
    expect(overlaps()).toEqual([]);
    expect((await run(9)).processing).toMatchObject({ state: 'done', host: 'ops', attempt: 2 });
    const takeover = (await (await sandbox.openStore()).listRunEvents(9)).find((e) => e.attempt === 2)!;
    expect(takeover).toMatchObject({ host: 'ops', from: 'busy', to: 'considering' });
    expect(takeover.reason).toMatch(new RegExp(`^forced by ${user}@ops \\(process 9 --force\\): taken from host testhost`));
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('fault 6: process N --force on the owner host kills the previous command itself before it starts', async () => {
    config();
    await submit(10);
    const daemon = sandbox.start(['daemon']);
    const leader = await firstCommand(10);
    // a frozen owner never notices its lost lease: the foreground process on its host must kill the group
    daemon.kill('SIGSTOP');

    const forced = await sandbox.run(['process', '10', '--force']);
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(forced.stderr).toMatch(/run 10: killed the command of attempt 1 \(process group \d+\)/);
    expect(isAlive(leader)).toBe(false);
    expect(overlaps()).toEqual([]);
    expect((await run(10)).processing).toMatchObject({ state: 'done', host: 'testhost', attempt: 2 });
  });

  it('fault 11: a daemon rides out its store locked by another process past the statement timeout', async () => {
    // SQLite waits 10 s for a lock, then refuses with SQLITE_BUSY; max_busy_time is longer than the lock, so no
    // lease may be taken: every claim, heartbeat and cleanup write meanwhile must be postponed, not fatal.
    config(
      '',
      `  check_interval: 5s
  cleanup_interval: 1h
  idle_poll: 0.2s
  max_busy_time: 40s
  max_considering_time: 40s`,
    );
    const daemon = sandbox.start(['daemon']);
    const s = await sandbox.openStore();
    await waitFor(async () => (await s.getHost('testhost'))?.state === 'idle', 'the daemon to be idle');
    // Lock right after a host heartbeat: the next one is check_interval away, so the statement the lock holds
    // up is one of the idle daemon's claims (every idle_poll).
    const beat = (await s.getHost('testhost'))!.time;
    await waitFor(async () => (await s.getHost('testhost'))!.time !== beat, 'a host heartbeat', { intervalMs: 10 });

    const lockedFile = join(sandbox.dir, 'locked');
    const locker = sandbox.track(
      execa(
        process.execPath,
        [
          '-e',
          `const Database = require('better-sqlite3');
           const db = new Database(process.argv[1], { timeout: 0 });
           db.exec('BEGIN EXCLUSIVE');
           require('fs').writeFileSync(process.argv[2], 'locked');
           setTimeout(() => { db.exec('COMMIT'); db.close(); }, 12000);`,
          join(sandbox.dir, 'runs.db'),
          lockedFile,
        ],
        { cwd: repoRoot, reject: false },
      ),
    );
    await waitFor(() => existsSync(lockedFile), 'the store to be locked');
    const unlocked = await locker;
    expect(unlocked.exitCode, String(unlocked.stderr)).toBe(0);

    await submit(12);
    // attempt 1 of this command never ends by itself: fail it to see attempt 2 done by the same daemon
    await firstCommand(12);
    expect(daemon.exitCode).toBeNull();
    const failed = await sandbox.run(['fail', '12', 'enough', '--host', 'ops']);
    expect(failed.exitCode, failed.stderr).toBe(0);
    const finished = await done(12, [daemon]);
    expect(finished.processing!.attempt).toBe(2);
    daemon.kill('SIGTERM');
    const result = await daemon;
    expect(result.exitCode).toBe(0);
    expect(String(result.stderr)).toMatch(/claim postponed: the store is busy or unreachable/);
  });
});
