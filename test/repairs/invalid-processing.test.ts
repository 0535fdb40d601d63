import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import type { CleanupReport } from '../../src/daemon/cleanup.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Half-written processing documents, written straight into a real SQLite file as another tool would: each is
// shown as a problem, repaired by one `runwarden cleanup` pass with a reason naming what is wrong (it used to
// say "nothing to repair" and leave them for good), and then processed by a real daemon, whose attempt
// counters never go back (a counter another tool made unreadable continues from the run's history).

const sandbox = useSandbox('runwarden-invalid-');

type Columns = Record<string, string | number | null>;

describe('invalid processing documents', () => {
  it('are shown as problems, repaired by cleanup naming the problem, then processed without an attempt going back', async () => {
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: repairer
process:
  command: ["sh", "-c", "echo ok > \\"$1/out\\"", "sh", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts: {check_interval: 0.5s, idle_poll: 1h, signal_escalate: 0.5s, max_busy_time: 3s, max_considering_time: 3s}
`,
    );
    const name = 'evil \u001b]52;c;cHduZWQ=\u0007 \u001b[2J name';
    const file = join(sandbox.dir, 'runs.jsonl');
    writeFileSync(file, [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => JSON.stringify(n === 9 ? { number: n, name } : { number: n })).join('\n'));
    expect((await sandbox.run(['submit', '--file', file])).exitCode).toBe(0);
    const now = Date.now();
    const rows: Record<number, Columns> = {
      1: { state: 'busy', host: 'ghost', pid: 4_000_000, token: null, attempt: 2, n_failures: 1, time: now },
      2: { state: 'busy', host: 'ghost', pid: 4_000_000, token: 't2', attempt: 1, n_failures: 0, time: null },
      3: { state: 'busy', host: null, pid: 4_000_000, token: 't3', attempt: 1, n_failures: 0, time: now },
      4: { state: 'failed', host: 'ghost', pid: 1, token: 't4', attempt: 3, n_failures: 3, time: now, next_retry: null },
      5: { state: 'paused', host: 'other', pid: 1, token: 't5', attempt: 1, n_failures: 0, time: now },
      6: { state: 'failed', host: 'ghost', pid: 1, token: 't6', attempt: 'seven', n_failures: 1, time: now, next_retry: now - 1000 },
      7: { state: 'considering', host: 'ghost', pid: 1, token: 't7', attempt: 1, n_failures: 'lots', time: now },
    };
    const db = new Database(join(sandbox.dir, 'runs.db'));
    try {
      for (const [number, columns] of Object.entries(rows)) {
        const names = Object.keys(columns);
        // a run's processing columns are its process task's
        db.prepare(`UPDATE tasks SET ${names.map((c) => `"${c}" = @${c}`).join(', ')} WHERE number = @number AND stage = 'process'`).run({
          ...columns,
          number: Number(number),
        });
      }
      // Run 6's history knows attempts up to 7: its unreadable counter must continue from there.
      const event = db.prepare(
        `INSERT INTO run_events (number, time, host, attempt, from_state, to_state, reason) VALUES (6, ?, 'ghost', ?, 'busy', 'failed', 'exit 1')`,
      );
      for (let attempt = 1; attempt <= 7; attempt += 1) event.run(now - 10_000 + attempt, attempt);
    } finally {
      db.close();
    }

    // Shown, never crashing, whatever the rows hold.
    const list = await sandbox.run(['list']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^5\s+paused/m);
    const shown = await sandbox.run(['show', '1']);
    expect(shown.exitCode, shown.stderr).toBe(0);
    expect(shown.stdout).toContain('busy without token');
    expect((await sandbox.run(['show', '9'])).exitCode).toBe(0);
    expect((await sandbox.run(['show', '6'])).stdout).toMatch(/attempt: not a whole number ≥ 0 \(string \\?"seven\\?"\)/);

    const pass = await sandbox.run(['cleanup', '--json']);
    expect(pass.exitCode, pass.stderr).toBe(0);
    const report = JSON.parse(pass.stdout) as CleanupReport;
    const reasons = Object.fromEntries(report.repairs.map((r) => [r.number, `${r.kind} ${r.from}->${r.to}: ${r.reason}`]));
    const repaired = (problem: string) => `invalid processing document: ${problem}; repaired by cleanup on host repairer`;
    expect(reasons).toEqual({
      1: `invalid_processing busy->failed: ${repaired('busy without token')}`,
      2: `invalid_processing busy->failed: ${repaired('busy without time')}`,
      3: `invalid_processing busy->failed: ${repaired('busy without host')}`,
      4: `invalid_processing failed->failed: ${repaired('failed without next_retry')}`,
      5: `invalid_processing paused->failed: ${repaired('unknown state string "paused"')}`,
      6: `invalid_processing failed->failed: ${repaired('attempt: not a whole number ≥ 0 (string "seven")')}`,
      7: `invalid_processing considering->failed: ${repaired('n_failures: not a whole number ≥ 0 (string "lots")')}`,
    });
    expect(report.errors).toEqual([]);
    const again = await sandbox.run(['cleanup']);
    expect(again.stdout.trim()).toBe('nothing to repair');

    // A busy row, however mangled, may belong to a live owner whose command still runs until its lease keeper or
    // lease guard gives up: the repair keeps the attempt draining (not claimable) until that is surely over.
    const fenced = await sandbox.openStore();
    const draining = await Promise.all([1, 2, 3].map(async (n) => (await fenced.getRun(n))!.processing!.draining));
    for (const [i, record] of draining.entries()) expect(record?.until, `run ${i + 1} draining until`).toBeGreaterThan(now);
    const until = Math.max(...draining.map((record) => record!.until));
    await waitFor(() => Date.now() > until, 'the draining fences to pass', { timeoutMs: 30_000 });

    const daemon = await sandbox.run(['daemon', '--once']);
    expect(daemon.exitCode, daemon.stderr).toBe(0);
    const store = await sandbox.openStore();
    const processed = Object.fromEntries(
      await Promise.all(
        [1, 2, 3, 4, 5, 6, 7, 8, 9].map(async (n) => {
          const p = (await store.getRun(n))!.processing!;
          return [n, `${p.state} attempt ${p.attempt} failures ${p.n_failures}`];
        }),
      ),
    );
    // A repair is not a failure of the command: n_failures is kept (run 7's unreadable one: none in its history).
    expect(processed).toEqual({
      1: 'done attempt 3 failures 1',
      2: 'done attempt 2 failures 0',
      3: 'done attempt 2 failures 0',
      4: 'done attempt 4 failures 3',
      5: 'done attempt 2 failures 0',
      6: 'done attempt 8 failures 1',
      7: 'done attempt 2 failures 0',
      8: 'done attempt 1 failures 0',
      9: 'done attempt 1 failures 0',
    });
    for (let n = 1; n <= 9; n += 1) expect((await store.getRun(n))!.processing!.problems, `run ${n}`).toBeUndefined();
  });
});
