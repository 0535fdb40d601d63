import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStore, type SqliteRunStore } from '../src/store/sqlite/sqlite-store.js';
import { wakeDirFor } from '../src/store/sqlite/wake.js';
import { makeWorkspace } from './lib/processes.js';
import { isEntryPoint, runAsProgram, type BenchOptions, type BenchResult } from './lib/result.js';
import { median, percentile } from './lib/stats.js';

// 3. Claim cost at scale: the product's claimNextRun on a store of 10^3 runs and on one of 10^6 (most done,
// some failed and waiting for a retry, some held, a few pending), alternating between the two. The big file
// is built with plain SQL on the product's own schema and cached in the OS temp directory under a hash of
// that schema, because building it takes longer than measuring it.

/** Bump when the generated contents change, so a cached file from an older generator is not reused. */
const GENERATOR = 2;
/** Pending runs in each store: the claims of one round take them all, and the round puts them back. */
const POOL = 100;
const HOST = 'bench-claims';

interface Composition {
  total: number;
  pending: number;
  held: number;
  failedWaiting: number;
  done: number;
}

function composition(total: number): Composition {
  const held = Math.ceil(total * 0.01);
  const failedWaiting = Math.ceil(total * 0.02);
  const pending = Math.min(POOL, total - held - failedWaiting);
  return { total, pending, held, failedWaiting, done: total - pending - held - failedWaiting };
}

/** A hash of the schema a fresh store creates, so a cached file always has the current schema. */
async function schemaHash(scratch: string): Promise<string> {
  const file = join(scratch, 'schema.db');
  const store = await openSqliteStore(file);
  await store.close();
  const db = new Database(file, { readonly: true });
  const sql = db.prepare('SELECT type, name, sql FROM sqlite_master ORDER BY type, name').all();
  const version = db.pragma('user_version', { simple: true });
  db.close();
  return createHash('sha256')
    .update(JSON.stringify({ sql, version, GENERATOR }))
    .digest('hex')
    .slice(0, 12);
}

/**
 * Fills a fresh store file: done runs with their three run_events (considering, busy, done) and an output,
 * failed runs waiting 1–24 h for a retry, held runs, and POOL pending runs, newest numbers last.
 */
async function buildStore(file: string, total: number): Promise<void> {
  const store = await openSqliteStore(file);
  await store.close();
  const db = new Database(file);
  db.pragma('journal_mode = OFF');
  db.pragma('synchronous = OFF');
  const c = composition(total);
  const now = Date.now();
  // Each run with its one `process` task (schema 5), as submit writes them; the task's copies of the run's
  // priority, start and hold come from the schema's triggers.
  const insertRunRow = db.prepare(
    `INSERT INTO runs (number, name, start, tags, priority, params, outputs, staged)
     VALUES (@number, @name, @start, @tags, 0, '{}', @outputs, 1)`,
  );
  const insertTask = db.prepare(
    `INSERT INTO tasks (number, stage, needs, ready, state, host, pid, token, attempt, time, started, ended,
                        n_failures, reason, next_retry, exit_code)
     VALUES (@number, 'process', '[]', 1, @state, @host, @pid, @token, @attempt, @time, @started, @ended,
             @n_failures, @reason, @next_retry, @exit_code)`,
  );
  const insertRun = {
    run: (row: Record<string, unknown>): void => {
      insertRunRow.run({ number: row.number, name: row.name, start: row.start, tags: row.tags, outputs: row.outputs });
      const { name: _n, tags: _t, outputs: _o, ...task } = row;
      insertTask.run(task);
    },
  };
  const insertEvent = db.prepare(
    `INSERT INTO run_events (number, time, host, attempt, from_state, to_state, reason, exit_code, duration_ms)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  // Runs are numbered in the order they arrived: done ones first, then failed, held and pending ones mixed in.
  const fill = db.transaction(() => {
    for (let number = 1; number <= total; number += 1) {
      const fromEnd = total - number;
      const start = now - (total - number) * 60_000;
      const base = {
        number,
        name: `run_${String(number).padStart(6, '0')}`,
        start,
        tags: '[]',
        outputs: '[]',
        state: null as string | null,
        host: null as string | null,
        pid: null as number | null,
        token: null as string | null,
        attempt: null as number | null,
        time: null as number | null,
        started: null as number | null,
        ended: null as number | null,
        n_failures: null as number | null,
        reason: null as string | null,
        next_retry: null as number | null,
        exit_code: null as number | null,
      };
      const owned = { host: `daq${number % 7}`, pid: 1000 + (number % 5000), time: start + 3_600_000 };
      const token = `${number.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`;
      if (fromEnd < c.pending) {
        insertRun.run(base);
      } else if (fromEnd < c.pending + c.held) {
        insertRun.run({ ...base, tags: '["hold"]' });
      } else if (fromEnd < c.pending + c.held + c.failedWaiting) {
        const n = 1 + (number % 3);
        insertRun.run({
          ...base,
          ...owned,
          token,
          state: 'failed',
          attempt: n,
          started: start + 60_000,
          ended: start + 120_000,
          n_failures: n,
          reason: 'exit code 1: calibration not available',
          next_retry: now + 3_600_000 * (1 + (number % 24)),
          exit_code: 1,
        });
        insertEvent.run(number, start + 120_000, owned.host, n, 'busy', 'failed', 'exit code 1', 1, 60_000);
      } else {
        const ended = start + 600_000;
        insertRun.run({
          ...base,
          ...owned,
          token,
          state: 'done',
          attempt: 1,
          started: start + 1_000,
          ended,
          n_failures: 0,
          outputs: JSON.stringify([
            { location: `/data/processed/${String(number).padStart(6, '0')}`, host: owned.host, attempt: 1, at: ended },
          ]),
        });
        insertEvent.run(number, start, owned.host, 1, null, 'considering', null, null, null);
        insertEvent.run(number, start + 1_000, owned.host, 1, 'considering', 'busy', null, null, null);
        insertEvent.run(number, ended, owned.host, 1, 'busy', 'done', null, null, 599_000);
      }
    }
  });
  fill();
  db.pragma('journal_mode = WAL');
  db.exec('ANALYZE');
  db.close();
}

/** The store file for `total` runs: a copy of the cached one, built first when there is none yet. */
async function storeFile(total: number, hash: string, into: string): Promise<{ file: string; builtMs: number }> {
  const cached = join(tmpdir(), `runwarden-bench-claims-${hash}-${total}.db`);
  let builtMs = 0;
  if (!existsSync(cached)) {
    const t0 = performance.now();
    const partial = `${cached}.${process.pid}.partial`;
    await buildStore(partial, total);
    renameSync(partial, cached);
    rmSync(wakeDirFor(partial), { recursive: true, force: true });
    builtMs = performance.now() - t0;
  }
  const file = join(into, `runs-${total}.db`);
  copyFileSync(cached, file);
  // The cache may be hours old: move the failed runs' next_retry back to 1–24 h from now, or some would have
  // become eligible since it was built.
  const db = new Database(file);
  try {
    db.prepare(`UPDATE tasks SET next_retry = ? + 3600000 * (1 + number % 24) WHERE state = 'failed'`).run(Date.now());
  } finally {
    db.close();
  }
  return { file, builtMs };
}

interface Side {
  total: number;
  store: SqliteRunStore;
  /** A second connection, for putting claimed runs back between rounds (not timed). */
  reset: Database.Database;
  roundMeans: number[];
  claims: number[];
}

/** Claims the whole pending pool one run at a time; returns µs per claim for each claim. */
async function claimRound(side: Side, expected: number): Promise<number[]> {
  const times: number[] = [];
  const numbers: number[] = [];
  for (let k = 0; k < expected; k += 1) {
    const t0 = performance.now();
    const doc = await side.store.claimNextRun({ host: HOST, pid: process.pid, order: 'newest' });
    times.push((performance.now() - t0) * 1000);
    if (!doc) throw new Error(`store of ${side.total} runs: claim ${k + 1} of ${expected} found nothing`);
    numbers.push(doc.number);
  }
  if (await side.store.claimNextRun({ host: HOST, pid: process.pid, order: 'newest' })) {
    throw new Error(`store of ${side.total} runs: a run outside the pending pool was eligible`);
  }
  const put = side.reset.prepare(
    `UPDATE tasks SET state = NULL, host = NULL, pid = NULL, token = NULL, attempt = NULL, time = NULL,
            n_failures = NULL WHERE number = ? AND stage = 'process'`,
  );
  side.reset.transaction(() => {
    for (const number of numbers) put.run(number);
  })();
  return times;
}

export async function claimCost(options: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const sizes = options.smoke ? [1_000, 20_000] : [1_000, 1_000_000];
  const rounds = options.smoke ? 3 : 20;
  const workspace = makeWorkspace('claims');
  const notes: string[] = [];
  const sides: Side[] = [];
  try {
    const hash = await schemaHash(workspace.dir);
    for (const total of sizes) {
      const { file, builtMs } = await storeFile(total, hash, workspace.dir);
      if (builtMs > 0) {
        notes.push(`built the ${total}-run store in ${(builtMs / 1000).toFixed(1)} s (cached for later runs)`);
      }
      const store = await openSqliteStore(file);
      const reset = new Database(file);
      reset.pragma('busy_timeout = 10000');
      sides.push({ total, store, reset, roundMeans: [], claims: [] });
    }
    const pool = Math.min(...sizes.map((total) => composition(total).pending));
    // One unmeasured round each: statements prepared, pages in the cache, as in a daemon that has been running.
    for (const side of sides) await claimRound(side, pool);
    for (let round = 0; round < rounds; round += 1) {
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) {
        const times = await claimRound(side, pool);
        side.claims.push(...times);
        side.roundMeans.push(times.reduce((a, b) => a + b, 0) / times.length);
      }
    }
  } finally {
    for (const side of sides) {
      await side.store.close();
      side.reset.close();
    }
    workspace.cleanup();
  }
  const [small, large] = sides;
  const smallUs = median(small.roundMeans);
  const largeUs = median(large.roundMeans);
  const describe = (side: Side) =>
    `${side.total} runs: per claim p50 ${percentile(side.claims, 50).toFixed(0)} µs, ` +
    `p99 ${percentile(side.claims, 99).toFixed(0)} µs over ${side.claims.length} claims`;
  const c = composition(large.total);
  return {
    id: 'claim-cost',
    title: '3. Claim cost at scale',
    smoke: options.smoke,
    elapsedMs: performance.now() - t0,
    figures: [
      {
        name: `µs per claim, ${large.total} runs ÷ ${small.total} runs`,
        value: largeUs / smallUs,
        unit: '×',
        digits: 2,
        target: { op: '<=', limit: 1.5, text: '≤ 1.50 ×' },
        detail: `${describe(small)}; ${describe(large)}`,
      },
      { name: `µs per claim, ${small.total} runs in the store`, value: smallUs, unit: 'µs', digits: 0 },
      { name: `µs per claim, ${large.total} runs in the store`, value: largeUs, unit: 'µs', digits: 0 },
    ],
    how: [
      `Two SQLite stores with the product's schema: ${small.total} runs and ${large.total} runs, each with ` +
        `${c.pending} pending runs, 1 % held (tagged hold), 2 % failed with next_retry 1–24 h ahead and the rest ` +
        `done with an output and three run_events each (${c.done} done in the large one). The large file is ` +
        `built once with one prepared-statement transaction and cached in the OS temp directory under a hash of ` +
        `the schema; each run copies it. The product's \`SqliteRunStore.claimNextRun\` (one BEGIN IMMEDIATE ` +
        `transaction: candidate selection, the claim write, its run_events row, the read-back) claims the ` +
        `${c.pending} pending runs one by one; a second connection then puts them back, untimed. After one ` +
        `warm-up round per store, ${rounds} rounds alternate between the two stores; the figure per store is the ` +
        `median over rounds of the mean time per claim, and the ratio is large ÷ small.`,
    ],
    notes,
  };
}

if (isEntryPoint(import.meta.url)) void runAsProgram(claimCost);
