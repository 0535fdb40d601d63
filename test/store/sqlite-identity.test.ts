import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StoreReplacedError } from '../../src/errors.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir } from '../helpers/cli.js';

// RunStore.verifyIdentity on SQLite (issue 12 fault 10): the store refuses to go on in a file that is no longer
// the one at its path; closing it then leaves the -wal/-shm files at that path alone (SQLite does not
// checkpoint a moved database on close), so a daemon's exit cannot damage the file that replaced its own.

let dir: string;
let cleanup: () => void;
const opened: RunStore[] = [];

beforeEach(() => {
  ({ dir, cleanup } = tempDir('runwarden-identity-'));
});
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close().catch(() => undefined);
  cleanup();
});

async function open(name = 'runs.db'): Promise<RunStore> {
  const s = await openStore(`sqlite:${join(dir, name)}`);
  opened.push(s);
  return s;
}

const claim = (s: RunStore) => s.claimNextRun({ host: 'h', pid: process.pid, order: 'newest' });

describe('SQLite store identity', () => {
  it('holds while the files stay, even as other connections to the same file open and close', async () => {
    const s = await open();
    await s.insertRun({ number: 1, start: 1 });
    const other = await openStore(`sqlite:${join(dir, 'runs.db')}`);
    await other.insertRun({ number: 2, start: 2 });
    await other.close();
    await expect(s.verifyIdentity()).resolves.toBeUndefined();
    expect((await claim(s))?.number).toBe(2);
  });

  it('a deleted database file: verifyIdentity, claims and fenced writes throw naming the path', async () => {
    const s = await open();
    await s.insertRuns([{ number: 1, start: 1 }, { number: 2, start: 2 }]);
    const claimed = (await claim(s))!;
    const db = join(dir, 'runs.db');
    rmSync(db);
    const named = new RegExp(`SQLite store ${db}: the database file was deleted or renamed`);
    await expect(s.verifyIdentity()).rejects.toThrow(StoreReplacedError);
    await expect(s.verifyIdentity()).rejects.toThrow(named);
    await expect(claim(s)).rejects.toThrow(named);
    await expect(s.heartbeatRun(claimed.number, claimed.processing!.token)).rejects.toThrow(named);
    await expect(
      s.finishRun(claimed.number, claimed.processing!.token, { location: '/x', host: 'h', attempt: 1, at: 3 }),
    ).rejects.toThrow(named);
    await expect(s.heartbeatHost('h', 't')).rejects.toThrow(named);
  });

  it('another file moved over it: refused as replaced; closing leaves the -wal and -shm at the path alone', async () => {
    const s = await open();
    await s.insertRun({ number: 1, start: 1 });
    const other = await openStore(`sqlite:${join(dir, 'other.db')}`);
    await other.insertRun({ number: 7, start: 7 });
    await other.close();
    const db = join(dir, 'runs.db');
    renameSync(join(dir, 'other.db'), db);
    await expect(claim(s)).rejects.toThrow(`SQLite store ${db}: the database file was replaced by another file`);
    expect(existsSync(`${db}-wal`)).toBe(true);
    await s.close();
    // The last connection to the old file did not checkpoint and delete the files now at the path.
    expect(existsSync(`${db}-wal`)).toBe(true);
    expect(existsSync(`${db}-shm`)).toBe(true);
  });

  it('a deleted -wal file is a replaced store too', async () => {
    const s = await open();
    await s.insertRun({ number: 1, start: 1 });
    const db = join(dir, 'runs.db');
    rmSync(`${db}-wal`);
    await expect(s.verifyIdentity()).rejects.toThrow(`SQLite store ${db}: its wal file ${db}-wal was deleted or renamed`);
  });
});
