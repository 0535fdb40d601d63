import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type Database from 'better-sqlite3';

import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { startTsxWorker } from '../helpers/tsx-worker.js';
import { runStoreConformance, type RaceTake } from './conformance.js';

const claimOnlyWorker = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'claim-only-worker.ts');

runStoreConformance('sqlite', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runwarden-store-'));
  const dbPath = path.join(dir, 'runs.db');
  const store = await openSqliteStore(dbPath);
  // better-sqlite3 runs each call to its end before the next: claimers in one process never overlap. Racing
  // claimers are separate processes on the same file, started together through a go file.
  const race = async (hosts: string[]): Promise<RaceTake[]> => {
    const goFile = path.join(dir, `go-${hosts.join('-')}`);
    const workers = hosts.map((host) => startTsxWorker(claimOnlyWorker, [dbPath, host, goFile]));
    try {
      const deadline = Date.now() + 30_000;
      while (!workers.every((w) => w.lines.includes('ready'))) {
        if (Date.now() > deadline) throw new Error(`claimers not ready: ${workers.map((w) => w.stderr.join('')).join('\n')}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      fsSync.writeFileSync(goFile, 'go');
      const codes = await Promise.all(workers.map((w) => w.done));
      if (codes.some((code) => code !== 0)) {
        throw new Error(`claimers exited ${codes.join(', ')}: ${workers.map((w) => w.stderr.join('')).join('\n')}`);
      }
      return workers.map((w) => JSON.parse(w.lines.at(-1)!) as RaceTake);
    } finally {
      for (const w of workers) w.child.kill('SIGKILL');
    }
  };
  const db = (store as unknown as { db: Database.Database }).db;
  return {
    store,
    race,
    // processing fields live in the run's task (its `process` task unless `stage` names another)
    writeProcessing: async (number, fields, stage = 'process') => {
      for (const [column, value] of Object.entries(fields)) {
        if (!/^[a-z_]+$/.test(column)) throw new Error(`not a column: ${column}`);
        const info = db.prepare(`UPDATE tasks SET "${column}" = ? WHERE number = ? AND stage = ?`).run(
          value instanceof Date ? value.getTime() : (value as string | number | null),
          number,
          stage,
        );
        if (info.changes !== 1) throw new Error(`run ${number} has no ${stage} task`);
      }
    },
    insertUnstaged: async (run) => {
      db.prepare(`INSERT INTO runs (number, start, tags, params, outputs) VALUES (?, ?, '[]', '{}', '[]')`).run(run.number, run.start);
    },
    cleanup: async () => {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}, { tasks: true });
