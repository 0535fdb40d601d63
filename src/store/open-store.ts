// Opens the runs database named by the `store` setting (DESIGN §6, §7).

import path from 'node:path';

import { UsageError } from '../errors.js';
import type { RunStore, StoreOptions } from './run-store.js';
import { openSqliteStore } from './sqlite/sqlite-store.js';

const ACCEPTED = 'sqlite:PATH, a path ending in .db or .sqlite, or mongodb://… / mongodb+srv://…';

/**
 * `sqlite:PATH` (relative to the current directory), a bare `*.db`/`*.sqlite` path, or a MongoDB URL.
 * Throws UsageError (field `store`) for anything else, StoreUnavailableError when the store cannot be opened.
 */
export async function openStore(url: string, options?: StoreOptions): Promise<RunStore> {
  const value = typeof url === 'string' ? url.trim() : '';
  if (value === '') {
    throw new UsageError(`store: empty; expected ${ACCEPTED}`, 'store');
  }
  if (/^mongodb(\+srv)?:\/\//i.test(value)) {
    // Loaded only when asked for: the MongoDB driver adds about 10 MB to every SQLite daemon otherwise.
    const { openMongoStore } = await import('./mongo/mongo-store.js');
    return openMongoStore(value, options);
  }
  let file: string | undefined;
  if (value.toLowerCase().startsWith('sqlite:')) {
    file = value.slice('sqlite:'.length);
    // tolerate sqlite:///abs/path and sqlite://rel as written by habit from other tools
    if (file.startsWith('//')) file = file.slice(2);
    if (file === '') throw new UsageError(`store: sqlite: needs a path, e.g. sqlite:./runwarden.db`, 'store');
  } else if (/\.(db|sqlite|sqlite3)$/i.test(value) && !/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
    file = value;
  }
  if (file === undefined) {
    throw new UsageError(`store: cannot use ${JSON.stringify(redact(value))}; expected ${ACCEPTED}`, 'store');
  }
  return openSqliteStore(path.resolve(process.cwd(), file), options);
}

/** Hides a password in a URL-like value before it goes into a message. */
function redact(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@');
}
