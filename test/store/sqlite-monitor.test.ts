// Monitor history on SQLite beyond the conformance suite: a database file of schema version 1 gains the
// monitor table when opened, and samples older than 7 days are deleted from the file, not only hidden.

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { MONITOR_RETENTION_MS } from '../../src/store/run-store.js';
import { SCHEMA_VERSION } from '../../src/store/sqlite/schema.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { MonitorSample } from '../../src/store/types.js';

const MINUTE = 60_000;
const T0 = Date.UTC(2026, 0, 5, 8, 0, 0);

function sample(time: number, extra: Partial<MonitorSample> = {}): MonitorSample {
  return { host: 'alpha', time, state: 'idle', slots: 1, running: [], ...extra };
}

describe('SQLite monitor table', () => {
  let dir: string;
  let dbPath: string;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runwarden-monitor-'));
    dbPath = path.join(dir, 'runs.db');
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  function rowTimes(): number[] {
    const db = new Database(dbPath, { readonly: true });
    try {
      return (db.prepare('SELECT time FROM monitor ORDER BY time').all() as { time: number }[]).map((r) => r.time);
    } finally {
      db.close();
    }
  }

  it('is added to a database written by the previous schema (version 1), keeping its runs', async () => {
    const first = await openSqliteStore(dbPath);
    await first.insertRun({ number: 1, start: T0 });
    await first.close();
    // what a runs.db of schema version 1 looks like: everything but the monitor table
    const db = new Database(dbPath);
    db.exec('DROP TABLE monitor');
    db.pragma('user_version = 1');
    db.close();

    const upgraded = await openSqliteStore(dbPath, { clock: () => T0 });
    try {
      expect((await upgraded.getRun(1))?.number).toBe(1);
      await upgraded.recordMonitor(sample(T0));
      expect(await upgraded.listMonitor({ sinceMs: T0 - MINUTE })).toEqual([sample(T0)]);
    } finally {
      await upgraded.close();
    }
    const check = new Database(dbPath, { readonly: true });
    try {
      expect(check.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      check.close();
    }
  });

  it('deletes samples older than 7 days (by its clock) when the next sample is recorded', async () => {
    let now = T0;
    const store = await openSqliteStore(dbPath, { clock: () => now });
    try {
      await store.recordMonitor(sample(T0));
      await store.recordMonitor(sample(T0 + MINUTE));
      now = T0 + MONITOR_RETENTION_MS + MINUTE / 2; // the first sample is now older than 7 days
      expect(rowTimes()).toEqual([T0, T0 + MINUTE]); // nothing deletes until a sample arrives
      expect(await store.listMonitor({ sinceMs: 0 })).toEqual([sample(T0 + MINUTE)]); // but it is not listed
      await store.recordMonitor(sample(now));
      expect(rowTimes()).toEqual([T0 + MINUTE, now]);
    } finally {
      await store.close();
    }
  });

  it('expires by the time index, not by a scan of the table', async () => {
    await (await openSqliteStore(dbPath)).close();
    const db = new Database(dbPath, { readonly: true });
    try {
      const plan = db.prepare('EXPLAIN QUERY PLAN DELETE FROM monitor WHERE time < ?').all(0) as { detail: string }[];
      expect(plan.map((p) => p.detail).join('\n')).toMatch(/USING (COVERING )?INDEX monitor_time/);
    } finally {
      db.close();
    }
  });
});
