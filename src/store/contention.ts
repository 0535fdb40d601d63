// Store errors that say "not now" rather than "broken": another process holds SQLite's write lock, or the
// MongoDB servers cannot be reached for the moment. An owner rides these out within its lease (issue 12
// fault 11); any other store error stays fatal, so a daemon whose store is gone exits (crash-only).

const SQLITE_CONTENTION = new Set(['SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_BUSY_RECOVERY', 'SQLITE_LOCKED']);

const MONGO_UNREACHABLE = new Set([
  'MongoServerSelectionError',
  'MongoNetworkError',
  'MongoNetworkTimeoutError',
]);

export function isStoreContention(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const code = 'code' in error ? error.code : undefined;
  if (typeof code === 'string' && SQLITE_CONTENTION.has(code)) return true;
  const name = 'name' in error ? error.name : undefined;
  return typeof name === 'string' && MONGO_UNREACHABLE.has(name);
}
