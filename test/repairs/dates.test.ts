import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Times beyond what a JavaScript Date holds (±8.64e15 ms): submit refuses them naming the field (exit 2); a
// row another tool wrote with one is shown as an invalid time by list and show (which used to exit 1 with
// "Invalid time value" for every run) and fails with a reason naming the field when a daemon claims it.

const sandbox = useSandbox('runwarden-dates-');

function configure(): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", "-c", "echo ok > \\"$1/out\\"", "sh", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts: {check_interval: 1s, idle_poll: 1h, signal_escalate: 1s}
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
  );
}

describe('times beyond the range of a date', () => {
  it('submit refuses them with exit 2, naming the field', async () => {
    configure();
    const file = join(sandbox.dir, 'runs.jsonl');
    const cases: Array<{ line: string; field: string }> = [
      { line: '{"number": 1, "start": 1e20}', field: 'start' },
      { line: '{"number": 1, "start": 0, "end": -8640000000000001}', field: 'end' },
      { line: '{"number": 1, "start": -1e300}', field: 'start' },
    ];
    for (const c of cases) {
      writeFileSync(file, `${c.line}\n`);
      const result = await sandbox.run(['submit', '--file', file]);
      expect(result.exitCode, `${c.line}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(new RegExp(`runs.jsonl:1: ${c.field}: expected an ISO-8601 time .*the range of a date`));
    }
    // The edge of the range is a date, so it is accepted.
    writeFileSync(file, '{"number": 2, "start": 8640000000000000}\n');
    const edge = await sandbox.run(['submit', '--file', file]);
    expect(edge.exitCode, edge.stderr).toBe(0);
    const store = await sandbox.openStore();
    expect((await store.listRuns()).map((r) => r.number)).toEqual([2]);
  });

  it('list and show print a stored out-of-range time as invalid; the daemon fails that run naming the field', async () => {
    configure();
    expect((await sandbox.run(['submit', '1', '--start', '2026-01-01T00:00:00Z'])).exitCode).toBe(0);
    expect((await sandbox.run(['submit', '2', '--start', '2026-01-02T00:00:00Z'])).exitCode).toBe(0);
    const db = new Database(join(sandbox.dir, 'runs.db'));
    try {
      db.prepare('UPDATE runs SET start = 1e20, "end" = -9e15 WHERE number = 2').run();
    } finally {
      db.close();
    }

    const list = await sandbox.run(['list']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^1\s+pending/m);
    expect(list.stdout).toMatch(/^2\s+pending/m);
    const show = await sandbox.run(['show', '2']);
    expect(show.exitCode, show.stderr).toBe(0);
    expect(show.stdout).toMatch(/start\s+invalid time \(100000000000000000000\)/);
    expect(show.stdout).toMatch(/end\s+invalid time \(-9000000000000000\)/);
    expect((await sandbox.run(['list', '--json'])).exitCode).toBe(0);

    const daemon = await sandbox.run(['daemon', '--once']);
    expect(daemon.exitCode, daemon.stderr).toBe(0);
    const store = await sandbox.openStore();
    expect((await store.getRun(1))!.processing!.state).toBe('done');
    const bad = (await store.getRun(2))!.processing!;
    expect(bad.state).toMatch(/^(failed|abandoned)$/);
    expect(bad.reason).toMatch(/invalid run document: start: outside the range of a date .*; end: outside the range/);
    expect(bad.reason?.match(/start:/g)).toHaveLength(1);
    const shown = await sandbox.run(['show', '2']);
    expect(shown.exitCode, shown.stderr).toBe(0);
  });
});
