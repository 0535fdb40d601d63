import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { cleanEnv, cliEntry, tsxLoader, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// What misleads the person on shift (issue 13), through the real CLI against real SQLite files.

const sandbox = useSandbox('runwarden-operator-faults-');

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
  require_output: false
${extra}
timeouts:
  check_interval: 0.2s
  idle_poll: 1h
  signal_escalate: 0.3s
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
  );
}

async function submit(number: number, tags: string[] = []) {
  await (await sandbox.openStore()).insertRun({ number, start: Date.now(), tags });
}

describe('process N', () => {
  it('exits 1 and says so when the attempt ends abandoned, in text and with --json', async () => {
    config(['sh', '-c', 'echo boom >&2; exit 3'], '  no_retry_exit_codes: [3]');
    await submit(5);
    await submit(6);
    const text = await sandbox.run(['process', '5']);
    expect(text.exitCode, text.stderr).toBe(1);
    expect(text.stdout).toMatch(/run 5 abandoned: gave up: exit code 3 .*boom/);

    const json = await sandbox.run(['process', '6', '--json']);
    expect(json.exitCode, json.stderr).toBe(1);
    const result = JSON.parse(json.stdout) as { number: number; outcome: string; run: { processing: { state: string } } };
    expect(result).toMatchObject({ number: 6, outcome: 'abandoned', run: { processing: { state: 'abandoned' } } });
  });
});

describe('a store that does not exist', () => {
  it('is refused by every command that does not add work (exit 1, path named), and nothing is created', async () => {
    config(['true']);
    const store = 'sqlite:./typo/nested/runs.db';
    const commands = [
      ['status'],
      ['status', '--history'],
      ['list'],
      ['show', '1'],
      ['top', '--once'],
      ['logs', '1'],
      ['cleanup'],
      ['fail', '1'],
      ['abandon', '1'],
      ['retry', '1'],
      ['hold', '1'],
      ['release', '1'],
      ['process', '1'],
    ];
    const results = await Promise.all(commands.map((args) => sandbox.run([...args, '--store', store])));
    results.forEach((result, i) => {
      const what = commands[i]!.join(' ');
      expect(result.exitCode, `${what}: ${result.stdout}${result.stderr}`).toBe(1);
      expect(result.stderr, what).toContain(`no SQLite store at ${join(sandbox.dir, 'typo/nested/runs.db')}`);
    });
    expect(existsSync(join(sandbox.dir, 'typo')), 'the mistyped directory was created').toBe(false);

    // An existing directory with a mistyped file name: no file appears either.
    const inDir = await sandbox.run(['list', '--store', 'sqlite:./runs-typo.db']);
    expect(inDir.exitCode).toBe(1);
    expect(readdirSync(sandbox.dir).filter((f) => f.startsWith('runs-typo'))).toEqual([]);

    // submit creates the store (and its directory); then the read-only commands work on it.
    const submitted = await sandbox.run(['submit', '7', '--store', store]);
    expect(submitted.exitCode, submitted.stderr).toBe(0);
    const listed = await sandbox.run(['list', '--store', store]);
    expect(listed.exitCode, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^7 +pending/m);
  });
});

describe('--json', () => {
  it('gives every time as an ISO 8601 string; params keep what the user wrote', async () => {
    config(['sh', '-c', 'echo ok > "$1/out"', 'sh', '{output}']);
    await (await sandbox.openStore()).insertRun({ number: 3, start: Date.now(), tags: [], params: { start: 5, time: 7 } });
    const processed = await sandbox.run(['process', '3', '--json']);
    expect(processed.exitCode, processed.stderr).toBe(0);
    const iso = expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const processing = { time: iso, started: iso, ended: iso };
    expect(JSON.parse(processed.stdout)).toMatchObject({ run: { start: iso, processing, outputs: [{ at: iso }] } });

    await (await sandbox.openStore()).registerHost({
      host: 'lab1', pid: 1, token: 't', state: 'idle', time: Date.now(), started: Date.now(), version: 'x', slots: 1, running: [],
    });
    const [list, show, status, top] = await Promise.all([
      sandbox.run(['list', '--json']),
      sandbox.run(['show', '3', '--json']),
      sandbox.run(['status', '--json']),
      sandbox.run(['top', '--once', '--json']),
    ]);
    expect(JSON.parse(list.stdout)).toMatchObject([{ number: 3, start: iso, params: { start: 5, time: 7 }, processing }]);
    const shown = JSON.parse(show.stdout) as { events: Array<{ time: unknown; from: unknown; to: unknown }> };
    expect(shown).toMatchObject({ run: { start: iso, processing } });
    expect(shown.events.map((e) => [e.time, e.to])).toEqual([
      [iso, 'considering'],
      [iso, 'busy'],
      [iso, 'done'],
    ]);
    expect(JSON.parse(status.stdout)).toMatchObject({ hosts: [{ host: 'lab1', time: iso, started: iso }], counts: { done: 1 } });
    expect(JSON.parse(top.stdout)).toMatchObject({ readAt: iso });
  });
});

describe('held runs and several runs at once', () => {
  it('list shows held runs as held and filters by --tag', async () => {
    config(['true']);
    await submit(1, ['hold']);
    await submit(2);
    await submit(3, ['calib']);
    const listed = await sandbox.run(['list']);
    expect(listed.exitCode, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^1 +pending \(held\) /m);
    expect(listed.stdout).toMatch(/^2 +pending /m);
    const held = await sandbox.run(['list', '--tag', 'hold']);
    expect(held.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['1']);
    const calib = await sandbox.run(['list', '--tag', 'calib', '--json']);
    expect((JSON.parse(calib.stdout) as Array<{ number: number }>).map((r) => r.number)).toEqual([3]);
  });

  it('fail, abandon, retry, hold and release take numbers, ranges and --state/--tag, count, and ask above five', async () => {
    config(['true']);
    for (let n = 1; n <= 8; n++) await submit(n, n <= 2 ? ['calib'] : []);
    const store = await sandbox.openStore();

    // More than five runs without --yes and without a terminal to ask: refused, nothing written.
    const unconfirmed = await sandbox.run(['abandon', '1-8', 'detector', 'off']);
    expect(unconfirmed.exitCode).toBe(2);
    expect(unconfirmed.stderr).toMatch(/--yes: 8 runs selected \(1, 2, 3, 4, 5, 6, 7, 8\).*add --yes/);
    expect((await store.listRuns({ state: 'abandoned' })).length).toBe(0);

    const abandoned = await sandbox.run(['abandon', '1-6,8', 'detector', 'off', '--yes']);
    expect(abandoned.exitCode, abandoned.stderr).toBe(0);
    expect(abandoned.stdout).toMatch(/^run 8: pending → abandoned \(abandoned by .*: detector off\)/m);
    expect(abandoned.stdout).toMatch(/^abandon: 7 runs selected: 7 changed$/m);

    // A selection by state and tag; five runs or fewer need no confirmation.
    const retried = await sandbox.run(['retry', '--state', 'abandoned', '--tag', 'calib', '--reset']);
    expect(retried.exitCode, retried.stderr).toBe(0);
    expect(retried.stdout).toMatch(/^retry: 2 runs selected: 2 changed$/m);
    expect((await store.getRun(1))!.processing).toMatchObject({ state: 'failed', n_failures: 0 });
    expect((await store.getRun(3))!.processing).toMatchObject({ state: 'abandoned' });

    // Several numbers: each run on its own; refusals and unknown numbers are reported, exit 1.
    const mixed = await sandbox.run(['retry', '2', '3', '7', '99']);
    expect(mixed.exitCode).toBe(1);
    expect(mixed.stdout).toMatch(/^run 2: failed \(retry requested by /m);
    expect(mixed.stdout).toMatch(/^run 3: abandoned → failed /m);
    expect(mixed.stdout).toMatch(/^run 7: skipped: cannot retry run 7: it is pending/m);
    expect(mixed.stdout).toMatch(/^run 99: not found$/m);
    expect(mixed.stdout).toMatch(/^retry: 4 runs selected: 2 changed, 1 skipped, 1 not found$/m);

    const held = await sandbox.run(['hold', '4', '5', '6', '--json']);
    expect(held.exitCode, held.stderr).toBe(0);
    expect(JSON.parse(held.stdout)).toMatchObject({ action: 'hold', selected: 3, changed: 3, skipped: 0, not_found: 0 });
    const released = await sandbox.run(['release', '--tag', 'hold']);
    expect(released.stdout).toMatch(/^release: 3 runs selected: 3 changed$/m);
    expect((await store.listRuns({ tag: 'hold' })).length).toBe(0);

    // `fail 7 8 9` reads as run 7 with the reason "8 9": refused, naming the way to write several runs.
    const ambiguous = await sandbox.run(['fail', '7', '8', '9']);
    expect(ambiguous.exitCode).toBe(2);
    expect(ambiguous.stderr).toContain('fail 7,8,9');
    const nothing = await sandbox.run(['hold']);
    expect(nothing.exitCode).toBe(2);
    expect(nothing.stderr).toMatch(/number: name the runs \(hold <runs\.\.>\), or select them with --state or --tag/);
  });
});

describe.skipIf(spawnSync('script', ['--version']).status !== 0)('the confirmation on a terminal (script(1) gives the command one)', () => {
  it('asks before changing more than five runs: y goes on, anything else changes nothing', async () => {
    config(['true']);
    for (let n = 1; n <= 7; n++) await submit(n);
    const inTerminal = (args: string, answer: string) =>
      execa('script', ['-qec', `${process.execPath} --import ${tsxLoader} ${cliEntry} ${args}`, '/dev/null'], {
        cwd: sandbox.dir,
        env: cleanEnv(),
        extendEnv: false,
        input: answer,
        reject: false,
      });
    const declined = await inTerminal('hold 1-7', 'n\n');
    expect(declined.stdout).toContain('hold 7 runs: 1, 2, 3, 4, 5, 6, 7? [y/N]');
    expect(declined.stdout).toContain('runwarden: hold: nothing done');
    expect(declined.exitCode).toBe(1);
    const store = await sandbox.openStore();
    expect(await store.listRuns({ tag: 'hold' })).toEqual([]);
    const confirmed = await inTerminal('hold 1-7', 'y\n');
    expect(confirmed.exitCode, confirmed.stdout).toBe(0);
    expect(confirmed.stdout).toContain('hold: 7 runs selected: 7 changed');
    expect((await store.listRuns({ tag: 'hold' })).length).toBe(7);
  });
});

describe('input errors', () => {
  it('submit --file - reads standard input', async () => {
    config(['true']);
    const submitted = await sandbox.run(['submit', '--file', '-'], { input: '{"number": 40}\n{"number": 41}\n' });
    expect(submitted.exitCode, submitted.stderr).toBe(0);
    expect(submitted.stdout).toBe('submitted 2 runs (40 … 41)');
  });

  it('config errors: every problem at once, each naming its field and its source or the default; flags say what was given', async () => {
    writeFileSync(join(sandbox.dir, 'short.yaml'), 'timeouts: {check_interval: 30}\n');
    const contradiction = await sandbox.run(['list', '--config', 'short.yaml']);
    expect(contradiction.exitCode).toBe(2);
    expect(contradiction.stderr).toContain(
      `(timeouts.max_considering_time is the default; timeouts.check_interval set by ${join(sandbox.dir, 'short.yaml')})`,
    );

    const slots = await sandbox.run(['daemon', '--slots', 'abc', '--once', '--store', 'sqlite:./runs.db']);
    expect(slots.exitCode).toBe(2);
    expect(slots.stderr).toContain('slots: expected an integer ≥ 1, got "abc" (set by --slots)');
    const limit = await sandbox.run(['list', '--limit', 'ten']);
    expect(limit.exitCode).toBe(2);
    expect(limit.stderr).toContain('--limit: expected an integer ≥ 1, got "ten"');

    const missing = await sandbox.run(['list', '--config', 'nope.yaml']);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/^runwarden: config: file not found: .*nope\.yaml/);
    expect(missing.stderr).not.toContain('config: config:');

    writeFileSync(join(sandbox.dir, 'many.yaml'), 'slots: 0\norder: up\ntimeouts: {idle_poll: soon}\nbogus: 1\n');
    const many = await sandbox.run(['list', '--config', 'many.yaml', '--set', 'retry.factor=0.5'], {
      env: { RUNWARDEN_PROCESS__TARGETS: '[oops' },
    });
    expect(many.exitCode).toBe(2);
    expect(many.stderr).toMatch(/^runwarden: config: 6 problems:$/m);
    for (const field of ['slots', 'order', 'timeouts.idle_poll', 'bogus', 'retry.factor', 'process.targets']) {
      expect(many.stderr, field).toMatch(new RegExp(`^  ${field.replace('.', '\\.')}: `, 'm'));
    }
  });
});

describe('what list, show and top say about a run', () => {
  it('a traceback is stored from its error line; top and list lead with the cause of a give-up; show prints reasons in full', async () => {
    const traceback = [
      'Traceback (most recent call last):',
      '  File "/opt/proc/run.py", line 12, in <module>',
      '    main()',
      'ValueError: bad calibration for run 9',
    ].join('\\n');
    config(['sh', '-c', `printf '${traceback}\\n' >&2; exit 1`]);
    writeConfig(sandbox.dir, readFileSync(join(sandbox.dir, 'runwarden.yaml'), 'utf8').replace('max_failures: 3', 'max_failures: 1'));
    await submit(9);
    const processed = await sandbox.run(['process', '9']);
    expect(processed.exitCode).toBe(1);
    const run = (await (await sandbox.openStore()).getRun(9))!;
    expect(run.processing!.reason).toMatch(/^gave up: 1 failure reached retry\.max_failures \(1\); last failure: exit code 1: ValueError: bad calibration for run 9\nTraceback/);

    const [top, list, show] = await Promise.all([
      sandbox.run(['top', '--once'], { env: { COLUMNS: '160', LINES: '30' } }),
      sandbox.run(['list']),
      sandbox.run(['show', '9']),
    ]);
    expect(top.stdout).toMatch(/^9 +abandoned +1 .* exit code 1: ValueError: bad calibration for run 9 /m);
    expect(list.stdout).toMatch(/^9 +abandoned .* exit code 1: ValueError: bad calibration for run 9 /m);
    // Not a terminal: each history reason in full on its line, nothing cut.
    expect(show.stdout).toMatch(/ busy +abandoned +1 +[\d.]+s +exit code 1: ValueError: bad calibration for run 9 Traceback \(most recent call last\): .* ValueError: bad calibration for run 9 \(gave up: 1 failure reached retry\.max_failures \(1\)\)$/m);
  });

  it('escape sequences in run fields never reach the terminal; runs done with fewer targets are marked degraded', async () => {
    config(['true'], '  targets: [raw, peaks, events]\n  drop_targets_after: {"*": 0}\n  minimal_targets: [raw]');
    const store = await sandbox.openStore();
    const evil = 'x\u001b]52;c;ZXZpbA==\u0007y\u001b[2J\u009b31m';
    await store.insertRun({ number: 1, start: Date.now(), tags: [], name: evil, input: `/data/${evil}`, mode: evil, params: { k: evil } });
    // Run 2: done by an attempt that got one target of three. Run 3: busy with one target.
    await store.insertRun({ number: 2, start: Date.now(), tags: [] });
    await store.insertRun({ number: 3, start: Date.now(), tags: [] });
    const owner = { host: 'daq', pid: 1, order: 'newest' as const };
    for (const number of [2, 3]) {
      const claimed = (await store.claimRun(number, owner, { state: null, token: null }))!;
      await store.markBusy(number, claimed.processing!.token, { started: Date.now(), targets: ['raw'] });
      if (number === 2) {
        await store.finishRun(number, claimed.processing!.token, { location: '/out/2', host: 'daq', attempt: 1, at: Date.now() });
      }
    }
    const [list, show1, show2, top] = await Promise.all([
      sandbox.run(['list']),
      sandbox.run(['show', '1']),
      sandbox.run(['show', '2']),
      sandbox.run(['top', '--once'], { env: { COLUMNS: '160', LINES: '30' } }),
    ]);
    for (const [what, out] of [['list', list.stdout], ['show', show1.stdout], ['top', top.stdout]] as const) {
      expect(out, what).not.toMatch(/[\u001b\u0007\u009b]/);
    }
    expect(show1.stdout).toMatch(/^ {2}name +xy$/m);
    expect(list.stdout).toMatch(/^2 +done \(degraded\) /m);
    expect(list.stdout).toMatch(/^3 +busy /m);
    expect(show2.stdout).toMatch(/^ {2}degraded +done with targets 1 of 3 \(without peaks, events\)$/m);
    expect(top.stdout).toMatch(/^3 +1 \(degraded\) +daq /m);
  });

  it('a document another tool wrote badly is marked invalid in list and its problems named in show', async () => {
    config(['true']);
    await submit(4);
    await (await sandbox.openStore()).close();
    // Another tool leaves run 4 busy without a lease token or host.
    const db = new Database(join(sandbox.dir, 'runs.db'));
    try {
      db.prepare(`UPDATE tasks SET state = 'busy', attempt = 1, n_failures = 0, time = ?, pid = 7 WHERE number = 4 AND stage = 'process'`).run(Date.now());
    } finally {
      db.close();
    }
    const [list, show] = await Promise.all([sandbox.run(['list']), sandbox.run(['show', '4'])]);
    expect(list.stdout).toMatch(/^4 +busy \(invalid\) /m);
    expect(show.stdout).toMatch(/^ {2}invalid +busy without token$/m);
  });
});

describe('hosts', () => {
  it('restarts after kill -9 show in status --history even within a minute; a displaced daemon names who took over', async () => {
    config(['true']);
    const store = await sandbox.openStore();
    const registered = async (pid: number) =>
      waitFor(async () => (await store.getHost('testhost'))?.pid === pid && (await store.getHost('testhost'))!.state !== 'starting', `daemon ${pid} registered`);
    // Three crashes in a row, seconds apart: no minute without a sample, but three restarts without a stop.
    for (let i = 0; i < 3; i++) {
      const daemon = sandbox.start(['daemon']);
      await registered(daemon.pid!);
      daemon.kill('SIGKILL');
      await daemon;
    }
    const last = sandbox.start(['daemon']);
    await registered(last.pid!);
    const history = await sandbox.run(['status', '--history']);
    expect(history.exitCode, history.stderr).toBe(0);
    expect(history.stdout).toMatch(/^ {2}restarts +3 without a stop \(the daemon was killed or crashed\)$/m);
    expect(history.stdout.match(/^ {12}\d\d:\d\d:\d\dZ after \d+(\.\d+)?m?s silent \(pid \d+ was (idle|busy)\)$/gm)).toHaveLength(3);
    const json = JSON.parse((await sandbox.run(['status', '--history', '--json'])).stdout) as {
      hosts: Array<{ host: string; restarts: Array<{ at: string; previousPid: number }> }>;
    };
    expect(json.hosts.find((h) => h.host === 'testhost')!.restarts).toHaveLength(3);

    // Another daemon (another machine with the same host name) takes the host document over: the displaced
    // daemon says who.
    const now = Date.now();
    await store.registerHost({ host: 'testhost', pid: 424242, token: 'newcomer', state: 'idle', time: now, started: now, version: '9.9.9', slots: 1, running: [] });
    const ended = await last;
    expect(ended.exitCode).not.toBe(0);
    expect(ended.all).toMatch(/another daemon took over host testhost: pid 424242, started \S+, version 9\.9\.9/);
  });

  it('a host presumed dead runs nothing (its RUNNING list is cleared); a host dead for a week is forgotten', async () => {
    config(['true'], '');
    writeConfig(sandbox.dir, readFileSync(join(sandbox.dir, 'runwarden.yaml'), 'utf8').replace('timeouts:\n', 'timeouts:\n  presumed_dead: 1s\n'));
    const store = await sandbox.openStore();
    const long = Date.now() - 60_000;
    await store.registerHost({ host: 'ghost', pid: 1, token: 't', state: 'busy', time: long, started: long, version: 'x', slots: 2, running: [5, 6] });
    // Dead for eight days: past timeouts.forget_dead_hosts (7 days by default), so cleanup forgets it.
    const gone = Date.now() - 8 * 24 * 3_600_000;
    await store.registerHost({ host: 'gone', pid: 2, token: 'g', state: 'dead', time: gone, started: gone, version: 'x', slots: 1, running: [] });
    const cleaned = await sandbox.run(['cleanup']);
    expect(cleaned.stdout).toMatch(/^host ghost presumed dead/m);
    expect(cleaned.stdout).toMatch(/^host gone forgotten: dead and silent since \S+ \S+ \(timeouts\.forget_dead_hosts\)$/m);
    expect(await store.getHost('gone')).toBeNull();
    expect((await store.getHost('ghost'))).toMatchObject({ state: 'dead', running: [] });
    const status = await sandbox.run(['status']);
    expect(status.stdout).toMatch(/^ghost +dead +1 +\S+ ago +0\/2 +- /m);
    expect(status.stdout).not.toMatch(/^gone /m);
  });
});
