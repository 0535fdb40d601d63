import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { operatorUser } from '../../src/daemon/operator-actions.js';
import type { RunDoc } from '../../src/store/types.js';
import { isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// The operator commands through the real CLI, against a real SQLite file, with real daemons, commands and
// signals: fail, abandon, retry, hold/release, process.

const HOUR = 3_600_000;
const sandbox = useSandbox('runwarden-operator-');
const user = operatorUser();

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.2s
  idle_poll: 1h
  signal_escalate: 0.3s
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
${extra}`,
  );
}

/** An operator command from host "ops". */
function ops(...args: string[]) {
  return sandbox.run([...args, '--host', 'ops']);
}

async function ok(...args: string[]) {
  const result = await ops(...args);
  expect(result.exitCode, `${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result;
}

/** Submits through the store (as `submit` does, wake-up included), without a CLI process per run. */
async function submit(number: string, tags: string[] = []) {
  await (await sandbox.openStore()).insertRun({ number: Number(number), start: Date.now(), tags });
}

async function run(number: number): Promise<RunDoc> {
  return (await (await sandbox.openStore()).getRun(number))!;
}

/** Claims a pending run for another host that is not running here, and marks it busy. */
async function claimElsewhere(number: number, busy = true, nFailures = 0): Promise<RunDoc> {
  const s = await sandbox.openStore();
  const owner = { host: 'elsewhere', pid: 1, order: 'newest' as const };
  const claimed = (await s.claimRun(number, owner, { state: null, token: null }))!;
  if (nFailures > 0) {
    await s.failRun(number, claimed.processing!.token, { reason: 'earlier', n_failures: nFailures, next_retry: 0 });
    const failed = (await s.getRun(number))!;
    await s.claimRun(number, owner, { state: 'failed', token: failed.processing!.token });
  }
  const now = (await s.getRun(number))!;
  if (busy) await s.markBusy(number, now.processing!.token, { started: Date.now() });
  return (await s.getRun(number))!;
}

/** A command that ignores SIGTERM and leaves a grandchild that ignores it too; it writes their pids first. */
const STUBBORN = [
  `trap '' TERM`,
  `(trap '' TERM; sleep 1000) &`,
  `echo $! > "$2/child.pid"`,
  `echo $$ > "$2/leader.pid"`,
  'sleep 1000',
].join('\n');

async function pidsOf(number: number): Promise<{ child: number; leader: number }> {
  const out = join(sandbox.dir, 'out', String(number).padStart(6, '0'));
  const child = await waitFor(
    () => existsSync(join(out, 'leader.pid')) && readFileSync(join(out, 'leader.pid'), 'utf8').trim(),
    `run ${number}'s command to start`,
  );
  return { child: Number(readFileSync(join(out, 'child.pid'), 'utf8').trim()), leader: Number(child) };
}

describe('operator commands', () => {
  it('fail, abandon, retry, hold and release: results, refusals and exit codes', async () => {
    config(['true']);
    for (const n of [1, 2, 3, 4, 5, 6]) await submit(String(n));
    await claimElsewhere(2);
    await claimElsewhere(3, true, 2); // two failures already: this one reaches max_failures (3)
    await claimElsewhere(4);

    // Refusals name the run, its state and the way out; usage errors name the argument.
    const refusals: Array<[string[], number, RegExp]> = [
      [['fail', '1'], 1, /cannot fail run 1: it is pending.*use abandon 1/],
      [['retry', '1'], 1, /cannot retry run 1: it is pending.*not processed yet; it is claimed as soon as a daemon is/],
      [['retry', '4'], 1, /cannot retry run 4: it is busy on host elsewhere.*use fail 4 first, or process 4 --force/],
      [['fail', 'x'], 2, /number: expected a non-negative integer run number, got "x"/],
      [['fail', '404'], 1, /run 404 not found/],
    ];
    const results = await Promise.all(refusals.map(([args]) => ops(...args)));
    refusals.forEach(([args, code, message], i) => {
      expect({ args, code: results[i].exitCode }).toEqual({ args, code });
      expect(results[i].stderr).toMatch(message);
    });

    // Independent actions on different runs run side by side.
    const busy = await run(2);
    await claimElsewhere(6);
    const before = Date.now();
    const [failed, atMax, abandoned, , held, heldPending] = await Promise.all([
      ok('fail', '2', 'calibration', 'was', 'wrong'),
      ok('fail', '3'),
      ok('abandon', '1', 'detector', 'off', '--json'),
      ok('abandon', '4'),
      ok('hold', '6'),
      ok('hold', '5'),
    ]);

    // fail of a busy run: counted, retried after the backoff, reason and event name the operator.
    expect(failed.stdout).toMatch(/^run 2: busy → failed \(failed by .+@ops: calibration was wrong\); failures 1/);
    const p2 = (await run(2)).processing!;
    expect(p2).toMatchObject({ state: 'failed', n_failures: 1 });
    expect(p2.reason).toBe(`failed by ${user}@ops: calibration was wrong`);
    expect(p2.token).not.toBe(busy.processing!.token);
    expect(p2.next_retry!).toBeGreaterThanOrEqual(before + 0.5 * HOUR);
    expect((await (await sandbox.openStore()).listRunEvents(2)).at(-1)).toMatchObject({
      host: 'ops',
      from: 'busy',
      to: 'failed',
      detail: { by: 'operator', user },
    });
    // Reaching max_failures by hand stays failed; the next automatic failure abandons it.
    expect(atMax.stdout).toMatch(/^run 3: busy → failed/);
    expect((await run(3)).processing).toMatchObject({
      state: 'failed',
      n_failures: 3,
      reason: `failed by ${user}@ops: no reason given`,
    });

    // abandon: from pending or busy, terminal, failures kept; --json prints the result with the run document.
    expect(JSON.parse(abandoned.stdout)).toMatchObject({
      action: 'abandon',
      from: 'pending',
      to: 'abandoned',
      run: {
        number: 1,
        processing: { state: 'abandoned', n_failures: 0, reason: `abandoned by ${user}@ops: detector off` },
      },
    });
    expect((await run(4)).processing).toMatchObject({ state: 'abandoned', n_failures: 0 });

    // hold/release: tags printed; a busy run keeps running (warned).
    expect(held.stdout).toMatch(/^run 6: busy; tags: hold$/m);
    expect(held.stderr).toMatch(/keeps running: hold only stops future claims/);
    expect(heldPending.stdout).toMatch(/^run 5: pending; tags: hold$/m);

    const [failAgain, abandonAgain, released] = await Promise.all([
      ops('fail', '2'),
      ops('abandon', '1'),
      ok('release', '6'),
      ok('abandon', '5'),
    ]);
    expect(failAgain.exitCode).toBe(1);
    expect(failAgain.stderr).toMatch(/cannot fail run 2: it is failed; use retry 2 to make it eligible now/);
    expect(abandonAgain.exitCode).toBe(1);
    expect(abandonAgain.stderr).toMatch(/cannot abandon run 1: it is abandoned; it already is; use retry 1/);
    expect(released.stdout).toMatch(/^run 6: busy; tags: \(none\)$/m);
    expect((await run(6)).processing!.state).toBe('busy');

    // retry --reset of an abandoned, held run: eligible now, failures 0, still held (warned).
    const retried = await ok('retry', '5', '--reset');
    expect(retried.stderr).toMatch(/run 5 is tagged hold: no daemon claims it until runwarden release 5/);
    const p5 = (await run(5)).processing!;
    expect(p5).toMatchObject({ state: 'failed', n_failures: 0 });
    expect(p5.reason).toBe(`retry requested by ${user}@ops (failure count reset)`);
    expect(p5.next_retry!).toBeLessThanOrEqual(Date.now());
    expect((await run(5)).tags).toEqual(['hold']);

    // Each action left an operator-log entry naming the operator: warnings for fail/abandon, info for the rest.
    const log = await (await sandbox.openStore()).listLog({ limit: 100 });
    const entries = log.map((e) => [e.number, e.priority, e.host, e.user] as const);
    expect(entries).toContainEqual([2, 2, 'ops', `${user}@ops`]);
    expect(entries).toContainEqual([1, 2, 'ops', `${user}@ops`]);
    expect(entries).toContainEqual([6, 1, 'ops', `${user}@ops`]);
    expect(entries).toContainEqual([5, 1, 'ops', `${user}@ops`]);
    expect(log.find((e) => e.number === 2 && e.priority === 2)?.message).toContain('calibration was wrong');
  });

  it('fail/abandon of a busy run under a live daemon: it kills the group, writes nothing more, goes on', async () => {
    const work = sandbox.script('work.sh', `if [ "$1" = 63 ]; then echo x > "$2/x"; exit 0; fi\n${STUBBORN}`);
    config(['sh', work, '{number}', '{output}']);
    await submit('61');
    const daemon = sandbox.start(['daemon']);
    const s = await sandbox.openStore();

    for (const [number, action, to] of [[61, 'fail', 'failed'], [62, 'abandon', 'abandoned']] as const) {
      if (number === 62) await submit('62');
      const { child, leader } = await pidsOf(number);
      await waitFor(async () => (await run(number)).processing?.pgid, `run ${number}'s process group to be recorded`);
      expect(isAlive(child) && isAlive(leader)).toBe(true);
      await ok(action, String(number), 'stop', 'it');
      const written = await run(number);
      expect(written.processing).toMatchObject({ state: to, host: 'testhost', pgid: leader });
      // the attempt taken away is kept as draining (its command may still run) until its owner confirms it gone
      expect(written.processing!.draining).toMatchObject({ host: 'testhost', attempt: 1, pgid: leader });
      const events = await s.listRunEvents(number);
      expect(events.at(-1)).toMatchObject({ host: 'ops', from: 'busy', to, detail: { by: 'operator' } });

      // Within a check_interval the owner notices, SIGTERMs the group, then SIGKILLs it (the command ignores TERM).
      await waitFor(() => !isAlive(child) && !isAlive(leader), `run ${number}'s command group to be killed`);
      await waitFor(async () => (await s.getHost('testhost'))?.running.length === 0, 'the daemon to let go of it');
      // its one write after the kill: the drain record naming its attempt is cleared; nothing else changes
      const { draining: _gone, ...stillWritten } = written.processing!;
      await waitFor(async () => (await run(number)).processing?.draining === undefined, 'the owner to confirm');
      // (the view's `processing` is its task's, listed again in `tasks`)
      expect(await run(number)).toEqual({
        ...written,
        processing: stillWritten,
        tasks: written.tasks!.map((t) => (t.stage === written.stage ? { ...t, processing: stillWritten } : t)),
      });
      expect(await s.listRunEvents(number)).toEqual(events);
    }

    // The daemon keeps going.
    await submit('63');
    await waitFor(async () => (await run(63)).processing?.state === 'done', 'run 63 to be done');
    expect((await run(61)).processing!.state).toBe('failed');
    const logged = (await s.listLog({ limit: 50 })).filter((e) => e.host === 'testhost').map((e) => e.message);
    expect(logged.some((m) => m.includes('run 61: lease lost'))).toBe(true);
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('retry makes an abandoned run done by a daemon; --reset zeroes the failures while the attempt grows', async () => {
    const broken = join(sandbox.dir, 'broken');
    const work = sandbox.script('work.sh', `if [ -e "${broken}" ]; then echo broken >&2; exit 1; fi\necho x > "$2/x"`);
    config(['sh', work, '{number}', '{output}']);
    writeFileSync(broken, '');
    await submit('71');
    await submit('72');
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    for (const n of [71, 72]) {
      expect((await run(n)).processing).toMatchObject({ state: 'failed', n_failures: 1, attempt: 1 });
    }
    await Promise.all([ok('abandon', '71'), ok('abandon', '72')]);
    rmSync(broken);
    await Promise.all([ok('retry', '71', '--reset'), ok('retry', '72')]);
    expect((await run(72)).processing).toMatchObject({ state: 'failed', n_failures: 1 });
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    expect((await run(71)).processing).toMatchObject({ state: 'done', n_failures: 0, attempt: 2 });
    expect((await run(72)).processing).toMatchObject({ state: 'done', n_failures: 1, attempt: 2 });
    const refused = await ops('retry', '71', '--json');
    expect(refused.exitCode).toBe(0); // done runs may be retried
    expect(JSON.parse(refused.stdout)).toMatchObject({ from: 'done', to: 'failed' });
  });

  it('hold keeps a run from being claimed; release lets a running daemon claim it', async () => {
    const work = sandbox.script('work.sh', `echo x > "$2/x"`);
    config(['sh', work, '{number}', '{output}']);
    await submit('81');
    await ok('hold', '81');
    await submit('82');
    // --once drains everything eligible: the held run is not.
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    expect((await run(82)).processing!.state).toBe('done');
    expect((await run(81)).processing).toBeUndefined();

    // idle_poll is 1h: release itself wakes an idle daemon on this host.
    const daemon = sandbox.start(['daemon']);
    const s = await sandbox.openStore();
    await waitFor(async () => (await s.getHost('testhost'))?.state === 'idle', 'the daemon to be idle');
    expect((await run(81)).processing).toBeUndefined();
    await ok('release', '81');
    await waitFor(async () => (await run(81)).processing?.state === 'done', 'run 81 to be claimed and done');
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('process N runs one attempt in the foreground; refuses a done run without --force', async () => {
    const work = sandbox.script(
      'work.sh',
      `echo "working on $1"\nif [ "$1" = 92 ]; then echo "no calibration" >&2; exit 4; fi\necho x > "$2/x"`,
    );
    config(['sh', work, '{number}', '{output}']);
    await submit('91');
    await submit('92');
    const first = await ops('process', '91');
    expect(first.exitCode, first.stderr).toBe(0);
    const logFile = join(sandbox.dir, 'logs/process/91/attempt-1.log');
    expect(first.stdout).toContain(`log ${logFile}`);
    expect(first.stdout).toMatch(/^run 91 done \(attempt 1\)/m);
    expect(readFileSync(logFile, 'utf8')).toContain('working on 91');
    expect((await run(91)).processing).toMatchObject({ state: 'done', host: 'ops', attempt: 1 });

    const [refused, failing, usage] = await Promise.all([
      ops('process', '91'),
      ops('process', '92'),
      ops('process', 'x'),
    ]);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/cannot process run 91: it is done; add --force to process it again/);
    const forced = await ops('process', '91', '--force', '--json');
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({
      outcome: 'done',
      run: { processing: { state: 'done', attempt: 2 } },
    });

    expect(failing.exitCode).toBe(1);
    expect(failing.stdout).toMatch(/^run 92 failed \(attempt 1, failure 1\): exit code 4: no calibration/m);
    expect(usage.exitCode).toBe(2);
    expect(usage.stderr).toMatch(/number: expected a non-negative integer/);
  });

  it('process N --force takes a busy run from a live daemon, which kills its command, writes no more', async () => {
    // The daemon's attempt (1) never ends; the foreground attempt (2) succeeds.
    const work = sandbox.script('work.sh', `if [ "$3" -ge 2 ]; then echo x > "$2/x"; exit 0; fi\n${STUBBORN}`);
    config(['sh', work, '{number}', '{output}', '{attempt}']);
    await submit('95');
    const daemon = sandbox.start(['daemon']);
    const { child, leader } = await pidsOf(95);
    await waitFor(async () => (await run(95)).processing?.pgid, 'the process group to be recorded');

    const busyRefused = await ops('process', '95');
    expect(busyRefused.exitCode).toBe(1);
    expect(busyRefused.stderr).toMatch(/cannot process run 95: it is busy on host testhost .*--force takes it away/);

    const forced = await ops('process', '95', '--force');
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(forced.stderr).toMatch(/taken away from host testhost/);
    await waitFor(() => !isAlive(child) && !isAlive(leader), "the daemon's command group to be killed");
    const s = await sandbox.openStore();
    await waitFor(async () => (await s.getHost('testhost'))?.running.length === 0, 'the daemon to let go of it');
    const done = await run(95);
    expect(done.processing).toMatchObject({ state: 'done', host: 'ops', attempt: 2 });
    const events = await s.listRunEvents(95);
    const takeover = events.findIndex((e) => e.attempt === 2);
    expect(events.slice(takeover).map((e) => `${e.host}:${e.from}>${e.to}`)).toEqual([
      'ops:busy>considering',
      'ops:considering>busy',
      'ops:busy>done',
    ]);
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('SIGINT to process N terminates the command, releases the run unharmed and exits 0', async () => {
    const work = sandbox.script('work.sh', `echo $$ > "$2/leader.pid"\necho $$ > "$2/child.pid"\nsleep 1000`);
    config(['sh', work, '{number}', '{output}']);
    await submit('97');
    const foreground = sandbox.start(['process', '97', '--host', 'ops']);
    const { leader } = await pidsOf(97);
    foreground.kill('SIGINT');
    const result = await foreground;
    expect(result.exitCode, String(result.all)).toBe(0);
    expect(result.stdout).toMatch(/run 97 released/);
    expect(isAlive(leader)).toBe(false);
    const p = (await run(97)).processing!;
    expect(p).toMatchObject({ state: 'failed', n_failures: 0, reason: 'host stopped', host: 'ops' });
    expect(p.next_retry!).toBeLessThanOrEqual(Date.now());
  });

  it('every operator command has --help with examples', async () => {
    const commands = ['fail', 'abandon', 'retry', 'hold', 'release', 'process', 'cleanup'];
    const results = await Promise.all(commands.map((c) => sandbox.run([c, '--help'])));
    results.forEach((result, i) => {
      expect(result.exitCode).toBe(0);
      expect(result.stdout, commands[i]).toContain('Examples:');
    });
  });

  it('cleanup prints what one pass repaired', async () => {
    config(['true']);
    await submit('99', ['abandon']);
    const text = await ok('cleanup');
    expect(text.stdout).toMatch(
      /^99\s+tagged_abandon\s+pending\s+abandoned\s+tagged abandon; abandoned by cleanup on host ops/m,
    );
    const json = await ok('cleanup', '--json');
    expect(JSON.parse(json.stdout)).toEqual({ deadHosts: [], forgottenHosts: [], repairs: [], lost: [], errors: [] });
    expect((await ok('cleanup')).stdout).toBe('nothing to repair');
  });
});
