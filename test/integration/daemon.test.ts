import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// The daemon end to end: real CLI processes, a real SQLite file, real commands and signals.

const sandbox = useSandbox();

const RETRY = '{base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}';

function config(command: string[], extra = '', retry = RETRY): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 1s
retry: ${retry}
${extra}`,
  );
}

async function submit(...args: string[]) {
  const result = await sandbox.run(['submit', ...args]);
  expect(result.exitCode, result.stderr).toBe(0);
}

describe('runwarden daemon', () => {
  it('--once processes every eligible run: placeholders per argv element, environment, logs, outputs', async () => {
    const record = sandbox.script(
      'record.sh',
      `out=$2\nprintf '%s\\n' "$@" > "$out/argv.txt"\nenv | grep '^RUNWARDEN_' | sort > "$out/env.txt"\n` +
        `echo "stdout of $1"\necho "stderr of $1" >&2`,
    );
    config(['sh', record, '{number}', '{output}', '{name}', '{attempt}', 'p={params.gain}']);
    await submit('7', '--name', 'x; rm -rf / $(touch PWNED)', '--param', 'gain=2.5');
    await submit('8', '--name', 'plain', '--param', 'gain=1');
    const result = await sandbox.run(['daemon', '--once']);
    expect(result.exitCode, result.stderr).toBe(0);

    const s = await sandbox.openStore();
    for (const number of [7, 8]) {
      const run = await s.getRun(number);
      expect(run?.processing?.state).toBe('done');
      expect(run?.processing?.attempt).toBe(1);
      expect(run?.outputs.map((o) => o.location)).toEqual([join(sandbox.dir, 'out', `00000${number}`)]);
    }
    const argv = readFileSync(join(sandbox.dir, 'out/000007/argv.txt'), 'utf8').trimEnd().split('\n');
    expect(argv).toEqual(['7', join(sandbox.dir, 'out/000007'), 'x; rm -rf / $(touch PWNED)', '1', 'p=2.5']);
    expect(existsSync(join(sandbox.dir, 'PWNED'))).toBe(false);
    const env = readFileSync(join(sandbox.dir, 'out/000007/env.txt'), 'utf8');
    expect(env).toContain('RUNWARDEN_RUN_NUMBER=7\n');
    expect(env).toContain(`RUNWARDEN_OUTPUT=${join(sandbox.dir, 'out/000007')}\n`);
    expect(env).toContain('RUNWARDEN_ATTEMPT=1\n');
    expect(env).toContain(`RUNWARDEN_ERROR_FILE=${join(sandbox.dir, 'logs/process/7/attempt-1.error')}\n`);
    const log = readFileSync(join(sandbox.dir, 'logs/process/7/attempt-1.log'), 'utf8');
    expect(log).toContain('stdout of 7');
    expect(log).toContain('stderr of 7');
    const events = await s.listRunEvents(7);
    expect(events.map((e) => `${e.from ?? '-'}>${e.to}`)).toEqual(['->considering', 'considering>busy', 'busy>done']);
    const host = await s.getHost('testhost');
    expect(host?.state).toBe('stopped');
    const byHost = async (name: string) =>
      (JSON.parse((await sandbox.run(['list', '--host', name, '--json'])).stdout) as Array<{ number: number }>).map(
        (r) => r.number,
      );
    expect(await byHost('testhost')).toEqual([8, 7]);
    expect(await byHost('elsewhere')).toEqual([]);
    // status: hosts and counts per state, for people and as JSON.
    const status = await sandbox.run(['status', '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({
      hosts: [{ host: 'testhost', state: 'stopped', slots: 1, running: [] }],
      counts: { done: 2, pending: 0, failed: 0 },
    });
    const statusText = (await sandbox.run(['status'])).stdout;
    expect(statusText).toMatch(/^testhost\s+stopped\s+\d+\s+\d+s ago\s+0\/1/m);
    expect(statusText).toMatch(/^done\s+2$/m);
    // show: the document plus its history.
    const show = JSON.parse((await sandbox.run(['show', '7', '--json'])).stdout) as {
      run: { processing: { state: string } };
      events: Array<{ to: string }>;
    };
    expect(show.run.processing.state).toBe('done');
    expect(show.events.map((e) => e.to)).toEqual(['considering', 'busy', 'done']);
    const showText = (await sandbox.run(['show', '7'])).stdout;
    expect(showText).toMatch(/^history$/m);
    expect(showText).toMatch(/testhost\s+1\s+busy\s+done\s+-\s+[\d.]+s/);
    const logs = await sandbox.run(['logs', '7']);
    expect(logs.exitCode).toBe(0);
    expect(logs.stdout).toContain('stdout of 7');
    expect(logs.stdout).toMatch(/=== runwarden \S+ exit code=0/);
    const missing = await sandbox.run(['logs', '7', '--attempt', '2']);
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain('attempts with logs: 1');
  });

  it('claims in order of priority, then newest start; --order oldest reverses the start order', async () => {
    const order = sandbox.script('order.sh', `echo "$1" >> "${join(sandbox.dir, 'order.txt')}"\necho x > "$2/x"`);
    config(['sh', order, '{number}', '{output}']);
    await submit('1', '--start', '2026-01-01T00:00:00Z');
    await submit('2', '--start', '2026-01-02T00:00:00Z');
    await submit('3', '--start', '2026-01-03T00:00:00Z');
    await submit('4', '--start', '2026-01-01T00:00:00Z', '--priority', '5');
    await submit('5', '--tag', 'hold');
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    const ordered = () => readFileSync(join(sandbox.dir, 'order.txt'), 'utf8').split('\n').filter(Boolean);
    expect(ordered()).toEqual(['4', '3', '2', '1']);
    const s = await sandbox.openStore();
    expect((await s.getRun(5))?.processing).toBeUndefined();

    writeFileSync(join(sandbox.dir, 'order.txt'), '');
    await submit('11', '--start', '2026-02-01T00:00:00Z');
    await submit('12', '--start', '2026-02-02T00:00:00Z');
    expect((await sandbox.run(['daemon', '--once', '--order', 'oldest'])).exitCode).toBe(0);
    expect(ordered()).toEqual(['11', '12']);
  });

  it(
    'a failure stores the error file as reason, counts it, and schedules the retry by the backoff formula',
    async () => {
      const fail = sandbox.script(
        'fail.sh',
        `if [ "$1" = 21 ]; then echo "calibration missing for run $1" > "$RUNWARDEN_ERROR_FILE"; fi\n` +
          `echo "last words of $1" >&2\nexit 3`,
      );
      config(['sh', fail, '{number}']);
      await submit('21');
      await submit('22');
      const before = Date.now();
      expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
      const after = Date.now();
      const s = await sandbox.openStore();
      const withFile = (await s.getRun(21))!.processing!;
      expect(withFile).toMatchObject({ state: 'failed', n_failures: 1, exit_code: 3 });
      expect(withFile.reason).toBe('calibration missing for run 21');
      // retry.base 1h × U(0.5, 1.5) × 2^0
      expect(withFile.next_retry!).toBeGreaterThanOrEqual(before + 0.5 * 3_600_000);
      expect(withFile.next_retry!).toBeLessThanOrEqual(after + 1.5 * 3_600_000);
      const withoutFile = (await s.getRun(22))!.processing!;
      expect(withoutFile.reason).toContain('last words of 22');
      expect(withoutFile.reason).toContain('exit code 3');
      const events = await s.listRunEvents(22);
      expect(events.at(-1)).toMatchObject({ from: 'busy', to: 'failed', exit_code: 3 });
      // A first failure is a warning in the operator log, with the host and the run number.
      const warnings = await s.listLog({ minPriority: 2 });
      expect(warnings.map((e) => [e.number, e.priority, e.host]).sort()).toEqual([
        [21, 2, 'testhost'],
        [22, 2, 'testhost'],
      ]);
      expect(warnings.find((e) => e.number === 21)?.message).toContain('calibration missing for run 21');
    },
  );

  it('retries once next_retry has passed and abandons after max_failures', async () => {
    const fail = sandbox.script('fail.sh', `echo "attempt $2 failed" >&2\nexit 1`);
    const retry = '{base: 0.2s, factor: 1, max_exponent: 0, jitter: [0.5, 1.5], max_failures: 3}';
    config(['sh', fail, '{number}', '{attempt}'], '', retry);
    await submit('31');
    const daemon = sandbox.start(['daemon']);
    const s = await sandbox.openStore();
    const run = await waitFor(async () => {
      const r = await s.getRun(31);
      return r?.processing?.state === 'abandoned' ? r : undefined;
    }, 'run 31 to be abandoned');
    expect(run.processing).toMatchObject({ attempt: 3, n_failures: 3 });
    expect(run.processing!.reason).toMatch(
      /^gave up: 3 failures reached retry.max_failures \(3\); last failure: exit code 1: attempt 3 failed/,
    );
    const events = await s.listRunEvents(31);
    expect(events.map((e) => `${e.attempt}:${e.to}`)).toEqual([
      '1:considering', '1:busy', '1:failed',
      '2:considering', '2:busy', '2:failed',
      '3:considering', '3:busy', '3:abandoned',
    ]);
    // The operator log: a new failure is a warning, a repeated one info, giving up an error (bootstrax's levels).
    const entries = (await s.listLog({ number: 31 })).reverse();
    expect(entries.map((e) => [e.priority, e.message.replace(/ \(attempt.*$|: .*$/, '')])).toEqual([
      [2, 'run 31 failed'],
      [1, 'run 31 failed'],
      [3, 'run 31 abandoned'],
    ]);
    daemon.kill('SIGTERM');
    const result = await daemon;
    expect(result.exitCode).toBe(0);
  });

  it('an idle daemon picks up a run submitted on the same host at once, not after idle_poll (1h here)', async () => {
    const ok = sandbox.script('ok.sh', `echo done > "$2/result"`);
    config(['sh', ok, '{number}', '{output}']);
    const daemon = sandbox.start(['daemon']);
    const s = await sandbox.openStore();
    const idle = await waitFor(async () => {
      const host = await s.getHost('testhost');
      return host?.state === 'idle' ? host : undefined;
    }, 'the daemon to be idle');
    // It heartbeats its host document every check_interval (1s here).
    await waitFor(async () => ((await s.getHost('testhost'))?.time ?? 0) > idle.time, 'a heartbeat');
    await submit('41');
    await waitFor(async () => (await s.getRun(41))?.processing?.state === 'done', 'run 41 to be done');
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('logs --follow prints a running attempt until it ends', async () => {
    const gate = join(sandbox.dir, 'gate');
    const talk = sandbox.script(
      'talk.sh',
      `echo "first line"\nwhile [ ! -e "${gate}" ]; do sleep 0.05; done\necho "last line"\necho x > "$2/x"`,
    );
    config(['sh', talk, '{number}', '{output}']);
    await submit('45');
    const daemon = sandbox.start(['daemon']);
    const logFile = join(sandbox.dir, 'logs/process/45/attempt-1.log');
    await waitFor(() => existsSync(logFile) && readFileSync(logFile, 'utf8').includes('first line'), 'the first line');
    const follow = sandbox.start(['logs', '45', '--follow']);
    let printed = '';
    follow.stdout?.on('data', (chunk: Buffer) => {
      printed += chunk.toString('utf8');
    });
    // Only once `logs` is following a live attempt does the command go on to its last line.
    await waitFor(() => printed.includes('first line'), 'logs to print the first line');
    expect(printed).not.toContain('last line');
    writeFileSync(gate, '');
    const result = await follow;
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toMatch(/first line[\s\S]*last line[\s\S]*exit code=0/);
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  });

  it('two daemons on one SQLite file share the runs: each processed exactly once', async () => {
    const ledger = join(sandbox.dir, 'ledger.txt');
    const work = sandbox.script('work.sh', `echo "$1 $3" >> "${ledger}"\nsleep 0.05\necho x > "$2/x"`);
    config(['sh', work, '{number}', '{output}', '{host}']);
    const lines = Array.from({ length: 30 }, (_, i) => JSON.stringify({ number: 100 + i }));
    writeFileSync(join(sandbox.dir, 'runs.jsonl'), lines.join('\n'));
    await submit('--file', 'runs.jsonl');
    const [a, b] = await Promise.all([
      sandbox.run(['daemon', '--once', '--host', 'alpha', '--slots', '2']),
      sandbox.run(['daemon', '--once', '--host', 'beta', '--slots', '2']),
    ]);
    expect([a.exitCode, b.exitCode], a.stderr + b.stderr).toEqual([0, 0]);
    const entries = readFileSync(ledger, 'utf8').trim().split('\n');
    const numbers = entries.map((line) => Number(line.split(' ')[0])).sort((x, y) => x - y);
    expect(numbers).toEqual(Array.from({ length: 30 }, (_, i) => 100 + i));
    const s = await sandbox.openStore();
    const runs = await s.listRuns({ state: 'done' });
    expect(runs).toHaveLength(30);
    expect(runs.every((r) => r.processing!.attempt === 1)).toBe(true);
    // Whichever host ran a command is the host the run records.
    for (const line of entries) {
      const [number, host] = line.split(' ');
      expect((await s.getRun(Number(number)))!.processing!.host).toBe(host);
    }
  });

  it('never runs more than --slots commands at once', async () => {
    const slow = sandbox.script('slow.sh', `sleep 0.4\necho x > "$2/x"`);
    config(['sh', slow, '{number}', '{output}']);
    for (const n of [51, 52, 53, 54, 55]) await submit(String(n));
    expect((await sandbox.run(['daemon', '--once', '--slots', '2'])).exitCode).toBe(0);
    const s = await sandbox.openStore();
    const intervals: Array<[number, number]> = [];
    for (const n of [51, 52, 53, 54, 55]) {
      const events = await s.listRunEvents(n);
      const busy = events.find((e) => e.to === 'busy')!.time;
      const done = events.find((e) => e.to === 'done')!.time;
      intervals.push([busy, done]);
    }
    const points = intervals.flatMap(([a, b]) => [[a, 1], [b, -1]] as const).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let running = 0;
    let most = 0;
    for (const [, delta] of points) {
      running += delta;
      most = Math.max(most, running);
    }
    expect(most).toBeLessThanOrEqual(2);
    expect(most).toBe(2);
  });

  it('SIGTERM while busy terminates the command group, releases the run unharmed and exits 0', async () => {
    const stubborn = sandbox.script(
      'stubborn.sh',
      `trap '' TERM\n(trap '' TERM; sleep 1000) &\necho $! > "$2/child.pid"\necho $$ > "$2/leader.pid"\nsleep 1000`,
    );
    config(['sh', stubborn, '{number}', '{output}']);
    await submit('61');
    const daemon = sandbox.start(['daemon']);
    const pidFile = join(sandbox.dir, 'out/000061/child.pid');
    const childPid = Number(
      await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim(), 'the command to start'),
    );
    const leaderPid = Number(readFileSync(join(sandbox.dir, 'out/000061/leader.pid'), 'utf8').trim());
    expect(isAlive(childPid)).toBe(true);
    daemon.kill('SIGTERM');
    const result = await daemon;
    expect(result.exitCode, String(result.all)).toBe(0);
    expect(isAlive(childPid)).toBe(false);
    expect(isAlive(leaderPid)).toBe(false);
    const s = await sandbox.openStore();
    const p = (await s.getRun(61))!.processing!;
    expect(p).toMatchObject({ state: 'failed', n_failures: 0, reason: 'host stopped' });
    expect(p.next_retry!).toBeLessThanOrEqual(Date.now());
  });

  it('a second signal kills every process group at once and exits 130', async () => {
    const stubborn = sandbox.script(
      'stubborn.sh',
      `trap '' TERM INT\n(trap '' TERM INT; sleep 1000) &\necho $! > "$2/child.pid"\nsleep 1000`,
    );
    config(['sh', stubborn, '{number}', '{output}'], '', undefined);
    writeFileSync(
      join(sandbox.dir, 'runwarden.yaml'),
      readFileSync(join(sandbox.dir, 'runwarden.yaml'), 'utf8').replace('signal_escalate: 1s', 'signal_escalate: 30s'),
    );
    await submit('65');
    const daemon = sandbox.start(['daemon']);
    const pidFile = join(sandbox.dir, 'out/000065/child.pid');
    const childPid = Number(
      await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim(), 'the command to start'),
    );
    daemon.kill('SIGINT');
    const s = await sandbox.openStore();
    // The first signal is being handled: the command ignores SIGTERM and escalation is 30 s away.
    await waitFor(async () => (await s.getHost('testhost'))?.state === 'stopping', 'the host to be stopping');
    expect(isAlive(childPid)).toBe(true);
    daemon.kill('SIGINT');
    const result = await daemon;
    expect(result.exitCode).toBe(130);
    await waitFor(() => !isAlive(childPid), 'the grandchild to be gone', { timeoutMs: 5_000 });
  });

  it('a command that ignores SIGTERM and forks a grandchild is killed whole on timeout', async () => {
    const stubborn = sandbox.script(
      'stubborn.sh',
      `trap '' TERM\n(trap '' TERM; sleep 1000) &\necho $! > "$2/child.pid"\nwhile true; do echo tick; sleep 0.1; done`,
    );
    config(['sh', stubborn, '{number}', '{output}'], '');
    writeFileSync(
      join(sandbox.dir, 'runwarden.yaml'),
      readFileSync(join(sandbox.dir, 'runwarden.yaml'), 'utf8')
        .replace('signal_escalate: 1s', 'signal_escalate: 0.5s\n  max_processing_time: 1s'),
    );
    await submit('71');
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    const childPid = Number(readFileSync(join(sandbox.dir, 'out/000071/child.pid'), 'utf8').trim());
    expect(isAlive(childPid)).toBe(false);
    const s = await sandbox.openStore();
    const p = (await s.getRun(71))!.processing!;
    expect(p.state).toBe('failed');
    expect(p.reason).toMatch(/^timed out after 1s/);
    expect(p.signal).toBe('SIGKILL');
  });

  it('a malformed run document fails that run with a reason naming the field; the daemon goes on', async () => {
    const ok = sandbox.script('ok.sh', `echo done > "$2/result"`);
    config(['sh', ok, '{number}', '{output}']);
    await submit('81');
    const s = await sandbox.openStore();
    // Written straight into the store by another tool: params is not an object.
    const raw = (s as unknown as { db: import('better-sqlite3').Database }).db;
    raw.prepare(`UPDATE runs SET params = '"oops"' WHERE number = 81`).run();
    await submit('82');
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    const bad = (await s.getRun(81))!.processing!;
    expect(bad.state).toBe('failed');
    expect(bad.reason).toBe('preflight failed: invalid run document: params: expected an object, got string "oops"');
    expect((await s.getRun(82))!.processing!.state).toBe('done');
  });

  it('exit 0 with an empty output directory is a failure when outputs are required', async () => {
    const lazy = sandbox.script('lazy.sh', 'exit 0');
    config(['sh', lazy]);
    await submit('91');
    expect((await sandbox.run(['daemon', '--once'])).exitCode).toBe(0);
    const s = await sandbox.openStore();
    const p = (await s.getRun(91))!.processing!;
    expect(p.state).toBe('failed');
    expect(p.reason).toMatch(/output missing/);
  });
});
