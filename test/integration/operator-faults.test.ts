import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
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
