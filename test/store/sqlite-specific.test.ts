// What only the SQLite backend has to show: several OS processes on one file, wake-ups through the wake
// directory, WAL mode, the schema and its indexes, and tolerance of rows written by other tools.

import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { StoreUnavailableError, UsageError } from '../../src/errors.js';
import { openStore } from '../../src/store/open-store.js';
import { SCHEMA_VERSION, migrate } from '../../src/store/sqlite/schema.js';
import { NEXT_RETRY_SQL, claimStatement, openSqliteStore, SqliteRunStore } from '../../src/store/sqlite/sqlite-store.js';
import { startTsxWorker } from '../helpers/tsx-worker.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const claimWorker = path.join(here, 'fixtures', 'claim-worker.ts');
const insertWorker = path.join(here, 'fixtures', 'insert-worker.ts');
const HOUR = 3_600_000;

async function waitFor(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('SqliteRunStore specifics', () => {
  let dir: string;
  let dbPath: string;
  let store: SqliteRunStore;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runwarden-sqlite-'));
    dbPath = path.join(dir, 'nested', 'runs.db');
    store = await openSqliteStore(dbPath);
  });
  afterEach(async () => {
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  function raw(): Database.Database {
    return new Database(dbPath, { timeout: 10_000 });
  }

  it('creates the parent directory, uses WAL and records the schema version', () => {
    expect(fsSync.existsSync(dbPath)).toBe(true);
    expect(store.location).toBe(`sqlite:${dbPath}`);
    expect(store.kind).toBe('sqlite');
    const db = raw();
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      const tables = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as { name: string }[])
        .map((t) => t.name)
        .filter((n) => !n.startsWith('sqlite_'))
        .sort();
      expect(tables).toEqual(['hosts', 'log', 'monitor', 'run_events', 'runs', 'tasks']);
    } finally {
      db.close();
    }
  });

  it('opens the same file again without touching its data (idempotent schema)', async () => {
    await store.insertRun({ number: 1, start: 1 });
    const again = await openSqliteStore(dbPath);
    try {
      expect((await again.getRun(1))?.number).toBe(1);
    } finally {
      await again.close();
    }
  });

  /** A file as the first wave (or an earlier release) wrote it: the schema up to `version`, then `fill`. */
  async function oldFile(version: number, fill: (db: Database.Database) => void): Promise<void> {
    await store.close();
    await fs.rm(dbPath, { force: true });
    await fs.rm(`${dbPath}-wal`, { force: true });
    await fs.rm(`${dbPath}-shm`, { force: true });
    const db = raw();
    try {
      db.pragma('journal_mode = WAL');
      migrate(db, version);
      fill(db);
    } finally {
      db.close();
    }
  }

  it('upgrades a file of schema version 3 in place: its runs read n_interruptions 0, and counting works', async () => {
    await oldFile(3, (db) => {
      db.prepare(
        `INSERT INTO runs (number, start, state, host, pid, token, attempt, time, n_failures, reason, next_retry)
         VALUES (1, 1, 'failed', 'alpha', 1, 'tok', 1, 5, 2, 'x', 0)`,
      ).run();
      db.prepare(
        `INSERT INTO hosts (host, pid, token, state, time, started, version, slots) VALUES ('alpha', 1, 't', 'idle', 1, 1, 'v', 1)`,
      ).run();
    });
    store = await openSqliteStore(dbPath);
    const upgraded = (await store.getRun(1))!.processing!;
    expect(upgraded).toMatchObject({ state: 'failed', n_failures: 2, n_interruptions: 0 });
    expect((await store.getHost('alpha'))!.paused_reason).toBeUndefined();
    expect(await store.countRunsByState()).toMatchObject({ failed: 1, pending: 0 });
    const again = await store.claimNextRun({ host: 'alpha', pid: 1, order: 'newest' });
    expect(await store.releaseRun(1, again!.processing!.token, 'host stopped')).toBe(true);
    expect((await store.getRun(1))!.processing).toMatchObject({ n_failures: 2, n_interruptions: 1 });
    expect(await store.heartbeatHost('alpha', 't', { state: 'paused', paused_reason: 'log_dir' })).toBe(true);
    expect((await store.getHost('alpha'))!.paused_reason).toBe('log_dir');
    const check = raw();
    try {
      expect(check.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      check.close();
    }
  });

  it('upgrades a first-wave file (schema 4) in place: every processing field and event survives as the process task', async () => {
    const T = Date.UTC(2024, 0, 1);
    const draining = { host: 'beta', pid: 9, attempt: 2, pgid: 77, proc_start: 123, until: T + 9_000 };
    await oldFile(4, (db) => {
      const insert = db.prepare(
        `INSERT INTO runs (number, name, start, "end", mode, tags, priority, input, params, outputs, state, host, pid,
                           pgid, proc_start, token, attempt, time, started, ended, n_failures, n_interruptions,
                           reason, next_retry, exit_code, signal, targets, resources, draining, draining_until)
         VALUES (@number, @name, @start, @end, @mode, @tags, @priority, @input, @params, @outputs, @state, @host,
                 @pid, @pgid, @proc_start, @token, @attempt, @time, @started, @ended, @n_failures,
                 @n_interruptions, @reason, @next_retry, @exit_code, @signal, @targets, @resources, @draining,
                 @draining_until)`,
      );
      const none = {
        name: null, end: null, mode: null, tags: '[]', priority: 0, input: null, params: '{}', outputs: '[]',
        state: null, host: null, pid: null, pgid: null, proc_start: null, token: null, attempt: null, time: null,
        started: null, ended: null, n_failures: null, n_interruptions: null, reason: null, next_retry: null,
        exit_code: null, signal: null, targets: null, resources: null, draining: null, draining_until: null,
      };
      // 1 failed (due long ago, its previous attempt drained), 2 done, 3 busy, 4 and 5 never processed (5 held)
      insert.run({
        ...none, number: 1, name: 'one', start: T + 1, end: T + 2, mode: 'physics', tags: '["x"]', priority: 3,
        input: '/raw/1', params: '{"a":1}', state: 'failed', host: 'alpha', pid: 11, pgid: 12, proc_start: 13,
        token: 'tok-1', attempt: 3, time: T + 5, started: T + 3, ended: T + 4, n_failures: 2, n_interruptions: 1,
        reason: 'exit 1', next_retry: T + 6, exit_code: 1, signal: 'SIGTERM', targets: '["/t"]',
        resources: '{"cpu":2}', draining: JSON.stringify(draining), draining_until: draining.until,
      });
      insert.run({
        ...none, number: 2, start: T + 2, outputs: JSON.stringify([{ location: '/out/2', host: 'alpha', attempt: 1, at: T }]),
        state: 'done', host: 'alpha', pid: 11, token: 'tok-2', attempt: 1, time: T + 7, started: T + 6, ended: T + 7,
        n_failures: 0,
      });
      insert.run({
        ...none, number: 3, start: T + 3, state: 'busy', host: 'alpha', pid: 11, pgid: 31, proc_start: 32,
        token: 'tok-3', attempt: 1, time: T + 8, started: T + 8, n_failures: 0,
      });
      insert.run({ ...none, number: 4, start: T + 4 });
      insert.run({ ...none, number: 5, start: T + 5, tags: '["hold"]' });
      const event = db.prepare(
        `INSERT INTO run_events (number, time, host, attempt, from_state, to_state, reason, exit_code, signal,
                                 duration_ms, detail)
         VALUES (?, ?, 'alpha', ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      event.run(1, T + 1, 1, null, 'considering', null, null, null, null, null);
      event.run(1, T + 2, 1, 'considering', 'busy', null, null, null, null, '{"pgid":12}');
      event.run(1, T + 3, 1, 'busy', 'failed', 'exit 1', 1, 'SIGTERM', 2000, null);
      event.run(2, T + 4, 1, 'busy', 'done', null, 0, null, 10, null);
      db.prepare(`INSERT INTO log (time, host, user, priority, message, number) VALUES (?, 'alpha', 'op', 2, 'note', 1)`).run(T);
    });
    const before = raw();
    const eventsBefore = before.prepare('SELECT * FROM run_events ORDER BY id').all();
    before.close();

    store = await openSqliteStore(dbPath);
    expect(await store.getRun(1)).toEqual({
      number: 1, name: 'one', start: T + 1, end: T + 2, mode: 'physics', tags: ['x'], priority: 3, input: '/raw/1',
      params: { a: 1 }, outputs: [], stage: 'process',
      processing: {
        state: 'failed', host: 'alpha', pid: 11, pgid: 12, proc_start: 13, token: 'tok-1', attempt: 3, time: T + 5,
        started: T + 3, ended: T + 4, n_failures: 2, n_interruptions: 1, reason: 'exit 1', next_retry: T + 6,
        exit_code: 1, signal: 'SIGTERM', targets: ['/t'], resources: { cpu: 2 }, draining,
      },
      tasks: [{ stage: 'process', needs: [], processing: (await store.getRun(1))!.processing }],
    });
    expect((await store.getRun(2))!.outputs).toEqual([{ location: '/out/2', host: 'alpha', attempt: 1, at: T }]);
    expect((await store.getRun(2))!.processing).toMatchObject({ state: 'done', token: 'tok-2', ended: T + 7 });
    expect((await store.getRun(3))!.processing).toMatchObject({ state: 'busy', pgid: 31, proc_start: 32, token: 'tok-3' });
    // never processed: no task yet, each one pending view; a daemon gives them tasks under its stages
    expect((await store.getRun(4))!.tasks).toEqual([]);
    expect((await store.listUnstagedRuns(10)).map((r) => r.number)).toEqual([4, 5]);
    expect(await store.countRunsByState()).toEqual({ pending: 2, considering: 0, busy: 1, done: 1, failed: 1, abandoned: 0 });
    expect(await store.countTasksByStage()).toEqual({
      process: { pending: 0, considering: 0, busy: 1, done: 1, failed: 1, abandoned: 0, blocked: 0 },
    });
    const events = await store.listRunEvents(1);
    expect(events.map((e) => [e.from, e.to, e.stage, e.reason, e.exit_code, e.signal, e.duration_ms, e.detail])).toEqual([
      [null, 'considering', 'process', undefined, undefined, undefined, undefined, undefined],
      ['considering', 'busy', 'process', undefined, undefined, undefined, undefined, { pgid: 12 }],
      ['busy', 'failed', 'process', 'exit 1', 1, 'SIGTERM', 2000, undefined],
    ]);
    expect(await store.listRunEvents(1, 'process')).toEqual(events);
    expect(await store.maxEventAttempt(1)).toBe(1);
    expect((await store.listLog({ number: 1 })).map((l) => l.message)).toEqual(['note']);
    const after = raw();
    try {
      // nothing in the old tables was lost or changed
      expect(after.prepare('SELECT id, number, time, host, attempt, from_state, to_state, reason, exit_code, signal, duration_ms, detail FROM run_events ORDER BY id').all()).toEqual(eventsBefore.map((e) => { const { stage: _s, ...rest } = e as Record<string, unknown>; return rest; }));
      expect(after.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      after.close();
    }

    // first-wave use by number keeps working. Run 1 (priority 3) is due (next_retry long past, its drain over):
    // claimed again, past its attempt counter. Then the claim gives run 4 its process task (5 is held).
    const one = await store.claimNextRun({ host: 'alpha', pid: 1, order: 'newest' });
    expect([one!.number, one!.processing!.attempt, one!.processing!.n_failures]).toEqual([1, 4, 2]);
    expect(one!.processing!.draining).toBeUndefined();
    const four = await store.claimNextRun({ host: 'alpha', pid: 1, order: 'newest' });
    expect([four!.number, four!.stage, four!.processing!.attempt]).toEqual([4, 'process', 1]);
    expect(await store.markBusy(4, four!.processing!.token, { started: T })).toBe(true);
    expect(await store.finishRun(4, four!.processing!.token, { location: '/out/4', host: 'alpha', attempt: 1, at: T })).toBe(true);
    expect((await store.getRun(4))!.outputs).toEqual([{ location: '/out/4', stage: 'process', host: 'alpha', attempt: 1, at: T }]);
    expect((await store.listRunEvents(4)).map((e) => [e.stage, e.to])).toEqual([
      ['process', 'considering'],
      ['process', 'busy'],
      ['process', 'done'],
    ]);
    expect(await store.claimNextRun({ host: 'alpha', pid: 1, order: 'newest' })).toBeNull();
    expect((await store.listUnstagedRuns(10)).map((r) => r.number)).toEqual([]);
  });

  it('refuses a database written by a newer schema', async () => {
    const db = raw();
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    await expect(openSqliteStore(dbPath)).rejects.toBeInstanceOf(StoreUnavailableError);
  });

  it('uses the injected clock for every time it writes', async () => {
    let now = 1_000_000;
    const clocked = await openSqliteStore(dbPath, { clock: () => now });
    try {
      await clocked.insertRun({ number: 1, start: 5 });
      const doc = await clocked.claimNextRun({ host: 'h', pid: 1, order: 'newest' });
      expect(doc?.processing?.time).toBe(1_000_000);
      now += 500;
      const token = doc!.processing!.token;
      expect(await clocked.releaseRun(1, token, 'stop')).toBe(true);
      const p = (await clocked.getRun(1))!.processing!;
      expect([p.time, p.ended, p.next_retry]).toEqual([1_000_500, 1_000_500, 1_000_500]);
      expect((await clocked.listRunEvents(1)).map((e) => e.time)).toEqual([1_000_000, 1_000_500]);
      // next_retry ≤ now of the injected clock decides eligibility
      expect((await clocked.claimNextRun({ host: 'h', pid: 1, order: 'newest' }))?.number).toBe(1);
      await clocked.appendLog({ host: 'h', user: 'u', priority: 1, message: 'm' });
      expect((await clocked.listLog())[0].time).toBe(1_000_500);
    } finally {
      await clocked.close();
    }
  });

  it('a state change and its run_events row commit together: when the event cannot be written, neither is', async () => {
    // Runs 1 (busy), 3 (considering) and 4 (failed) are set up first; 2 stays pending. Then every insert into
    // run_events is refused by a trigger, as a full disk or a broken file would refuse it mid-transaction.
    await store.insertRuns([1, 2, 3, 4].map((number) => ({ number, start: 100 - number })));
    const one = await store.claimRun(1, { host: 'h', pid: 1, order: 'newest' }, { state: null, token: null });
    const token1 = one!.processing!.token;
    expect(await store.markBusy(1, token1, { started: 1 })).toBe(true);
    const three = await store.claimRun(3, { host: 'h', pid: 1, order: 'newest' }, { state: null, token: null });
    const token3 = three!.processing!.token;
    const four = await store.claimRun(4, { host: 'h', pid: 1, order: 'newest' }, { state: null, token: null });
    expect(await store.failRun(4, four!.processing!.token, { reason: 'x', n_failures: 1, next_retry: 0 })).toBe(true);
    const db = raw();
    db.exec(`CREATE TRIGGER refuse_events BEFORE INSERT ON run_events BEGIN SELECT RAISE(ABORT, 'injected: no event'); END`);
    db.close();

    const snapshot = async () => ({
      runs: await Promise.all([1, 2, 3, 4].map((n) => store.getRun(n))),
      events: await Promise.all([1, 2, 3, 4].map((n) => store.listRunEvents(n))),
    });
    const before = await snapshot();
    const output = { location: '/out/1', host: 'h', attempt: 1, at: 5 };
    const writes: Array<[string, () => Promise<unknown>]> = [
      ['claimNextRun (of pending run 2; failed run 4 is due too)', () => store.claimNextRun({ host: 'h', pid: 1, order: 'newest' })],
      ['claimRun 2', () => store.claimRun(2, { host: 'h', pid: 1, order: 'newest' }, { state: null, token: null })],
      ['markBusy 3', () => store.markBusy(3, token3, { started: 2 })],
      ['finishRun 1', () => store.finishRun(1, token1, output)],
      ['failRun 1', () => store.failRun(1, token1, { reason: 'boom', n_failures: 1, next_retry: 9 })],
      ['abandonRun 1', () => store.abandonRun(1, token1, { reason: 'boom', n_failures: 1 })],
      ['releaseRun 1', () => store.releaseRun(1, token1, 'host stopped')],
      [
        'overrideRun 1',
        () => store.overrideRun(1, { state: 'busy', token: token1 }, { to: 'failed', reason: 'op', n_failures: 1, next_retry: 9 }, { host: 'op' }),
      ],
    ];
    for (const [what, write] of writes) {
      await expect(write(), what).rejects.toThrow(/injected: no event/);
      expect(await snapshot(), `${what} changed the runs without its event`).toEqual(before);
    }
  });

  it('a claim never lowers the attempt counter another tool left unreadable: it goes past the history', async () => {
    await store.insertRun({ number: 1, start: 1 });
    await store.insertRun({ number: 2, start: 2 });
    const db = raw();
    try {
      // Failed runs due now whose counter is text SQLite cannot convert (run 1) or was reset to 0 (run 2),
      // while their histories know attempts up to 7 and 3.
      const due = Date.now() - HOUR;
      db.prepare(`UPDATE tasks SET state = 'failed', host = 'x', pid = 1, token = 't', attempt = 'seven', n_failures = 1, time = ?, next_retry = ? WHERE number = 1`).run(due, due);
      db.prepare(`UPDATE tasks SET state = 'failed', host = 'x', pid = 1, token = 't', attempt = 0, n_failures = 1, time = ?, next_retry = ? WHERE number = 2`).run(due, due);
      const event = db.prepare(`INSERT INTO run_events (number, time, host, attempt, from_state, to_state) VALUES (?, 0, 'x', ?, 'busy', 'failed')`);
      for (let attempt = 1; attempt <= 7; attempt += 1) event.run(1, attempt);
      for (let attempt = 1; attempt <= 3; attempt += 1) event.run(2, attempt);
    } finally {
      db.close();
    }
    const first = await store.claimNextRun({ host: 'h', pid: 1, order: 'oldest' });
    const second = await store.claimNextRun({ host: 'h', pid: 1, order: 'oldest' });
    expect([first, second].map((r) => [r!.number, r!.processing!.attempt])).toEqual([
      [1, 8],
      [2, 4],
    ]);
  });

  it('two OS processes claiming from one file never get the same run', async () => {
    const total = 200;
    await store.insertRuns(Array.from({ length: total }, (_, i) => ({ number: i + 1, start: i })));
    const goFile = path.join(dir, 'go');
    const workers = ['w1', 'w2'].map((host) => startTsxWorker(claimWorker, [dbPath, host, goFile]));
    await waitFor(() => workers.every((w) => w.lines.includes('ready')), 'both workers ready');
    await fs.writeFile(goFile, 'go');
    const codes = await Promise.all(workers.map((w) => w.done));
    expect(codes, workers.map((w) => w.stderr.join('')).join('\n')).toEqual([0, 0]);

    const lists = workers.map((w) => JSON.parse(w.lines.at(-1)!) as number[]);
    const all = lists.flat();
    expect(all).toHaveLength(total);
    expect(new Set(all).size).toBe(total);
    expect([...all].sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    // both really took part
    expect(lists[0].length).toBeGreaterThan(0);
    expect(lists[1].length).toBeGreaterThan(0);

    const counts = await store.countRunsByState();
    expect(counts.done).toBe(total);
    for (const n of [1, 100, 200]) {
      const events = await store.listRunEvents(n);
      expect(events.map((e) => e.to)).toEqual(['considering', 'busy', 'done']);
      expect(new Set(events.map((e) => e.host)).size).toBe(1);
    }
  });

  it('two OS processes claiming the tasks of a pipeline take each task once, never one before its needs are done', async () => {
    const total = 60;
    // a, then b and c (independent of each other), each needing a
    const pipeline = [
      { stage: 'a', needs: [] },
      { stage: 'b', needs: ['a'] },
      { stage: 'c', needs: ['a'] },
    ];
    await store.insertRuns(Array.from({ length: total }, (_, i) => ({ number: i + 1, start: i })), pipeline);
    const stages = JSON.stringify([{ stage: 'a', depth: 0 }, { stage: 'b', depth: 1 }, { stage: 'c', depth: 1 }]);
    const goFile = path.join(dir, 'go-tasks');
    const workers = ['w1', 'w2'].map((host) => startTsxWorker(claimWorker, [dbPath, host, goFile, stages]));
    await waitFor(() => workers.every((w) => w.lines.includes('ready')), 'both workers ready');
    await fs.writeFile(goFile, 'go');
    const codes = await Promise.all(workers.map((w) => w.done));
    expect(codes, workers.map((w) => w.stderr.join('')).join('\n')).toEqual([0, 0]);

    const lists = workers.map((w) => JSON.parse(w.lines.at(-1)!) as string[]);
    const all = lists.flat();
    expect(all).toHaveLength(total * 3);
    expect(new Set(all).size).toBe(total * 3);
    expect(lists[0].length).toBeGreaterThan(0);
    expect(lists[1].length).toBeGreaterThan(0);
    expect(await store.countTasksByStage()).toEqual(
      Object.fromEntries(['a', 'b', 'c'].map((s) => [s, { pending: 0, considering: 0, busy: 0, done: total, failed: 0, abandoned: 0, blocked: 0 }])),
    );
    // One file, one sequence of events: every claim of b or c comes after a's done, whoever claimed which.
    const db = raw();
    try {
      const events = db.prepare('SELECT id, number, stage, to_state FROM run_events ORDER BY id').all() as {
        id: number; number: number; stage: string; to_state: string;
      }[];
      for (let n = 1; n <= total; n += 1) {
        const of = events.filter((e) => e.number === n);
        const aDone = of.find((e) => e.stage === 'a' && e.to_state === 'done')!.id;
        for (const stage of ['b', 'c']) {
          const claimed = of.filter((e) => e.stage === stage && e.to_state === 'considering');
          expect(claimed, `run ${n} ${stage}`).toHaveLength(1);
          expect(claimed[0].id, `run ${n}: ${stage} claimed before a was done`).toBeGreaterThan(aDone);
        }
      }
    } finally {
      db.close();
    }
  });

  it('wakes a watcher in this process when another process inserts a run', async () => {
    let calls = 0;
    const stop = store.watchNewRuns(() => {
      calls += 1;
    });
    try {
      const child = startTsxWorker(insertWorker, [dbPath, '77']);
      expect(await child.done, child.stderr.join('')).toBe(0);
      await waitFor(() => calls > 0, 'the wake-up from the other process');
      expect((await store.getRun(77))?.number).toBe(77);
    } finally {
      stop();
    }
  });

  it('close() stops its watchers', async () => {
    const other = await openSqliteStore(dbPath);
    let calls = 0;
    other.watchNewRuns(() => {
      calls += 1;
    });
    await other.close();
    let mine = 0;
    const stop = store.watchNewRuns(() => {
      mine += 1;
    });
    try {
      await store.insertRun({ number: 1, start: 1 });
      await waitFor(() => mine > 0, 'the wake-up of the open store');
      expect(calls).toBe(0);
    } finally {
      stop();
    }
  });

  it('does not throw on a row with invalid JSON or wrong types written by another tool', async () => {
    await store.insertRun({ number: 1, start: 10, tags: ['ok'] });
    const db = raw();
    try {
      db.prepare(
        `INSERT INTO runs (number, start, tags, params, outputs, priority) VALUES (2, 20, 'not json', '{', '[', 0)`,
      ).run();
      db.prepare(
        `INSERT INTO runs (number, start, tags, params, outputs, staged) VALUES (3, 'yesterday', '{"a":1}', '[1,2]', '{"x":1}', 1)`,
      ).run();
      db.prepare(
        `INSERT INTO tasks (number, stage, needs, state, targets, resources, attempt, n_failures)
         VALUES (3, 'process', 'nope', 'failed', 'oops', '[', 'two', NULL)`,
      ).run();
    } finally {
      db.close();
    }
    const two = await store.getRun(2);
    expect(two).toEqual({
      number: 2,
      start: 20,
      tags: [],
      priority: 0,
      params: {},
      outputs: [],
      tasks: [],
      invalid: ['tags: not valid JSON (string "not json")', 'params: not valid JSON (string "{")'],
    });
    const three = await store.getRun(3);
    expect(three).toMatchObject({ number: 3, start: 0, tags: [], params: {}, outputs: [] });
    expect(three!.invalid).toEqual([
      'start: expected a number, got string "yesterday"',
      'tags: expected an array of strings, got object {"a":1}',
      'params: expected an object, got array [1,2]',
    ]);
    expect((await store.getRun(1))!.invalid).toBeUndefined();
    expect(three!.processing).toMatchObject({ state: 'failed', attempt: 0, n_failures: 0 });
    expect(three!.processing!.targets).toBeUndefined();
    expect((await store.listRuns()).map((r) => r.number)).toEqual([3, 2, 1]);
    expect(await store.countRunsByState()).toMatchObject({ pending: 2, failed: 1 });
    // the malformed pending run is still claimable, so a later validation step can fail it with a reason
    const claimed = await store.claimNextRun({ host: 'h', pid: 1, order: 'newest' });
    expect(claimed?.number).toBe(2);
    expect(claimed?.processing?.attempt).toBe(1);
  });

  it('honours hold tags set by another tool with plain SQL', async () => {
    await store.insertRuns([
      { number: 1, start: 1 },
      { number: 2, start: 2 },
    ]);
    const doc = await store.claimNextRun({ host: 'h', pid: 1, order: 'newest' });
    expect(doc?.number).toBe(2);
    expect(
      await store.failRun(2, doc!.processing!.token, { reason: 'r', n_failures: 1, next_retry: Date.now() - HOUR }),
    ).toBe(true);
    const db = raw();
    try {
      db.prepare(`UPDATE runs SET tags = '["hold"]' WHERE number IN (1, 2)`).run();
    } finally {
      db.close();
    }
    expect(await store.claimNextRun({ host: 'h', pid: 1, order: 'newest' })).toBeNull();
    expect(await store.nextRetryAt()).toBeNull();
    const db2 = raw();
    try {
      db2.prepare(`UPDATE runs SET tags = '["x"]' WHERE number = 2`).run();
    } finally {
      db2.close();
    }
    expect((await store.claimNextRun({ host: 'h', pid: 1, order: 'newest' }))?.number).toBe(2);
  });

  it('plain-SQL edits of a run’s tags (hold:<stage>), priority and start reach its tasks’ claim order at once', async () => {
    const pipeline = [{ stage: 'a', needs: [] }, { stage: 'b', needs: [] }];
    await store.insertRuns([{ number: 1, start: 1 }, { number: 2, start: 2 }], pipeline);
    const stages = [{ stage: 'a', depth: 0 }, { stage: 'b', depth: 0 }];
    const take = async () => {
      const doc = await store.claimNextRun({ host: 'h', pid: 1, order: 'newest', stages });
      return doc ? `${doc.number}/${doc.stage}` : null;
    };
    const sqlOf = (text: string) => {
      const db = raw();
      try {
        db.prepare(text).run();
      } finally {
        db.close();
      }
    };
    // run 2 is newest; another tool holds its stage a and all of run 1, then raises run 1 above it
    sqlOf(`UPDATE runs SET tags = '["hold:a"]' WHERE number = 2`);
    sqlOf(`UPDATE runs SET tags = '["x", "hold"]' WHERE number = 1`);
    expect(await take()).toBe('2/b');
    expect(await take()).toBeNull();
    sqlOf(`UPDATE runs SET tags = '[]', priority = 5 WHERE number = 1`);
    expect(await take()).toBe('1/a');
    // an older start moves run 1 below run 2 at equal priority
    sqlOf(`UPDATE runs SET priority = 0, start = 0 WHERE number = 1`);
    sqlOf(`UPDATE runs SET tags = '[]' WHERE number = 2`);
    expect(await take()).toBe('2/a');
    expect(await take()).toBe('1/b');
  });

  it('answers the claim over three stages and nextRetryAt from partial indexes at 10^6 runs × 3 stages: no scan, no sort', async () => {
    const RUNS = 1_000_000;
    await store.close();
    const bigPath = path.join(dir, 'big.db');
    const db = new Database(bigPath);
    try {
      // Bulk build without a journal, the indexes and triggers put back afterwards (the INSERTs do the
      // triggers' work themselves): run n has a done `fetch` task, a `process` task that is done
      // (n % 10 != 0), failed with a retry due (n % 100 == 10) or pending, and a `compress` task needing
      // process, ready where process is done. Every 1000th run is held.
      db.pragma('journal_mode = OFF');
      db.pragma('synchronous = OFF');
      db.pragma('cache_size = -200000');
      db.pragma('temp_store = MEMORY');
      migrate(db);
      const rebuilt = db
        .prepare(`SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') AND sql IS NOT NULL`)
        .all() as { type: string; name: string; sql: string }[];
      for (const item of rebuilt) db.exec(`DROP ${item.type.toUpperCase()} ${item.name}`);
      db.exec(`
        INSERT INTO runs (number, start, tags, priority, params, outputs, staged)
          WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ${RUNS})
          SELECT x, x * 1000, CASE WHEN x % 1000 = 0 THEN '["hold"]' ELSE '[]' END, x % 3, '{}', '[]', 1 FROM n;
        INSERT INTO tasks (number, stage, needs, ready, priority, start, held, state, host, attempt, n_failures, next_retry)
          SELECT number, 'fetch', '[]', 1, priority, start, number % 1000 = 0, 'done', 'h', 1, 0, NULL FROM runs;
        INSERT INTO tasks (number, stage, needs, ready, priority, start, held, state, host, attempt, n_failures, next_retry)
          SELECT number, 'process', '["fetch"]', 1, priority, start, number % 1000 = 0,
                 CASE WHEN number % 100 = 10 THEN 'failed' WHEN number % 10 != 0 THEN 'done' END,
                 CASE WHEN number % 10 != 0 OR number % 100 = 10 THEN 'h' END,
                 CASE WHEN number % 10 != 0 OR number % 100 = 10 THEN 1 END, 0,
                 CASE WHEN number % 100 = 10 THEN 5 END
            FROM runs;
        INSERT INTO tasks (number, stage, needs, ready, priority, start, held)
          SELECT number, 'compress', '["process"]', number % 10 != 0, priority, start, number % 1000 = 0 FROM runs;`);
      for (const item of rebuilt) db.exec(item.sql);
      const stages = [
        { stage: 'fetch', depth: 0 },
        { stage: 'process', depth: 1, select: [{ not_tags: ['calib'] }] },
        { stage: 'compress', depth: 2, select: [{ params: { a: 1 }, tags: ['x'] }, { min_number: 5 }] },
      ];
      const plan = (text: string, params: Record<string, unknown>): string[] =>
        (db.prepare(`EXPLAIN QUERY PLAN ${text}`).all(params) as { detail: string }[]).map((r) => r.detail);
      for (const oldest of [false, true]) {
        const { text, params } = claimStatement(stages, oldest, Date.now(), [7, { number: 8, stage: 'process' }]);
        const lines = plan(text, params);
        const on = (table: string) => lines.filter((l) => new RegExp(`^(SCAN|SEARCH) ${table}\\b`).test(l));
        // every candidate comes from its partial index, searched by stage; the run is looked up by number
        expect(on('t')).toHaveLength(6);
        for (const line of on('t')) {
          expect(line).toMatch(new RegExp(`^SEARCH t USING (COVERING )?INDEX tasks_(pending|retry)_${oldest ? 'oldest' : 'newest'} \\(stage=\\?\\)`));
        }
        for (const line of on('r')) expect(line).toMatch(/^SEARCH r USING INTEGER PRIMARY KEY \(rowid=\?\)/);
        // the only sort is of the six candidates (the compound's outer ORDER BY)
        expect(lines.filter((l) => /TEMP B-TREE/.test(l))).toEqual(['USE TEMP B-TREE FOR ORDER BY']);
        expect(lines.join('\n')).not.toMatch(/SCAN (t|r|tasks|runs)\b/);
      }
      const next = plan(NEXT_RETRY_SQL, { all: 0, stages: '["process"]' }).join('\n');
      expect(next).toMatch(/tasks_next_retry/);
      expect(next).toMatch(/tasks_draining/);
      expect(next).not.toMatch(/SCAN tasks\b(?! USING)/);
      expect(next).not.toMatch(/TEMP B-TREE/);
    } finally {
      db.close();
    }
    store = await openSqliteStore(bigPath);
    // and the claim takes what the order says: the deepest stage first among equal priority (2 = max of
    // number % 3), newest start first; runs 999_999.. hold priorities 0, 2, 1...
    const claimed = await store.claimNextRun({ host: 'alpha', pid: 1, order: 'newest', stages: [
      { stage: 'fetch', depth: 0 }, { stage: 'process', depth: 1 }, { stage: 'compress', depth: 2 },
    ] });
    expect([claimed!.number, claimed!.stage]).toEqual([999_998, 'compress']);
    expect(await store.nextRetryAt(['process'])).toBe(5);
    expect(await store.nextRetryAt(['compress'])).toBeNull();
  }, 120_000);
});

describe('openStore', () => {
  let dir: string;
  const cwd = process.cwd();

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runwarden-open-'));
  });
  afterEach(async () => {
    process.chdir(cwd);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('opens sqlite:PATH with an absolute path', async () => {
    const file = path.join(dir, 'a.db');
    const store = await openStore(`sqlite:${file}`);
    try {
      expect(store.kind).toBe('sqlite');
      expect(store.location).toBe(`sqlite:${file}`);
    } finally {
      await store.close();
    }
  });

  it('resolves a relative sqlite:PATH and a bare *.db path against the current directory', async () => {
    process.chdir(dir);
    const realDir = process.cwd();
    const a = await openStore('sqlite:./sub/runs.db');
    const b = await openStore('other.sqlite');
    try {
      expect(a.location).toBe(`sqlite:${path.join(realDir, 'sub', 'runs.db')}`);
      expect(b.location).toBe(`sqlite:${path.join(realDir, 'other.sqlite')}`);
      expect(fsSync.existsSync(path.join(realDir, 'sub', 'runs.db'))).toBe(true);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses anything else with the accepted forms', async () => {
    for (const url of ['', 'postgres://u:pw@h/db', 'runs.txt', 'sqlite:']) {
      const error = await openStore(url).catch((e: unknown) => e);
      expect(error, url).toBeInstanceOf(UsageError);
      expect((error as UsageError).field).toBe('store');
      expect((error as UsageError).message).not.toMatch(/pw@/);
    }
    const error = (await openStore('redis://x').catch((e: unknown) => e)) as UsageError;
    expect(error.message).toMatch(/sqlite:PATH/);
  });

  it('throws StoreUnavailableError naming the path when the file cannot be opened', async () => {
    const blocker = path.join(dir, 'not-a-dir');
    await fs.writeFile(blocker, 'x');
    const target = path.join(blocker, 'runs.db');
    const error = await openStore(`sqlite:${target}`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreUnavailableError);
    expect((error as Error).message).toContain(target);

    const garbage = path.join(dir, 'garbage.db');
    await fs.writeFile(garbage, 'this is not an SQLite database, not even close'.repeat(100));
    const error2 = await openStore(garbage).catch((e: unknown) => e);
    expect(error2).toBeInstanceOf(StoreUnavailableError);
    expect((error2 as Error).message).toContain(garbage);
  });
});
