// SQLite schema of the runs database (DESIGN §3). Times are epoch milliseconds (INTEGER). Scalars that are
// queried are real columns; lists and maps are JSON text. `held` is a generated column derived from `tags`,
// so it stays right even when another tool edits `tags` with plain SQL.

import type Database from 'better-sqlite3';

/** PRAGMA user_version written by this code; bump it and add a step to MIGRATIONS for schema changes. */
export const SCHEMA_VERSION = 4;

const V1 = `
CREATE TABLE IF NOT EXISTS runs (
  number      INTEGER PRIMARY KEY,
  name        TEXT,
  start       INTEGER NOT NULL,
  "end"       INTEGER,
  mode        TEXT,
  tags        TEXT NOT NULL DEFAULT '[]',
  -- derived, so it stays right whoever writes tags: 1 when tags holds "hold" or "abandon". A textual test
  -- (json_each is not allowed here); it errs only towards holding, for tags ending in a quote and the word.
  held        INTEGER GENERATED ALWAYS AS (
                CASE WHEN json_valid(tags) THEN instr(tags, '"hold"') > 0 OR instr(tags, '"abandon"') > 0
                     ELSE 0 END) VIRTUAL,
  priority    INTEGER NOT NULL DEFAULT 0,
  input       TEXT,
  params      TEXT NOT NULL DEFAULT '{}',
  outputs     TEXT NOT NULL DEFAULT '[]',
  -- processing; state IS NULL means never touched (pending)
  state       TEXT,
  host        TEXT,
  pid         INTEGER,
  pgid        INTEGER,
  proc_start  INTEGER,
  token       TEXT,
  attempt     INTEGER,
  time        INTEGER,
  started     INTEGER,
  ended       INTEGER,
  n_failures  INTEGER,
  reason      TEXT,
  next_retry  INTEGER,
  exit_code   INTEGER,
  signal      TEXT,
  targets     TEXT,
  resources   TEXT
);

-- claim, pending candidates: newest = backward scan of the first, oldest = backward scan of the second
CREATE INDEX IF NOT EXISTS runs_pending_newest ON runs (priority, start, number)
  WHERE state IS NULL AND held = 0;
CREATE INDEX IF NOT EXISTS runs_pending_oldest ON runs (priority, start DESC, number DESC)
  WHERE state IS NULL AND held = 0;
-- claim, retry candidates (failed with next_retry <= now), and nextRetryAt
CREATE INDEX IF NOT EXISTS runs_retry ON runs (next_retry)
  WHERE state = 'failed' AND held = 0;
-- listing and counting
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, number);
CREATE INDEX IF NOT EXISTS runs_host ON runs (host, number);

CREATE TABLE IF NOT EXISTS run_events (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  number      INTEGER NOT NULL,
  time        INTEGER NOT NULL,
  host        TEXT NOT NULL,
  attempt     INTEGER NOT NULL,
  from_state  TEXT,
  to_state    TEXT NOT NULL,
  reason      TEXT,
  exit_code   INTEGER,
  signal      TEXT,
  duration_ms INTEGER,
  detail      TEXT
);
CREATE INDEX IF NOT EXISTS run_events_number ON run_events (number, id);

CREATE TABLE IF NOT EXISTS hosts (
  host        TEXT PRIMARY KEY,
  pid         INTEGER NOT NULL,
  proc_start  INTEGER,
  token       TEXT NOT NULL,
  state       TEXT NOT NULL,
  time        INTEGER NOT NULL,
  started     INTEGER NOT NULL,
  version     TEXT NOT NULL,
  slots       INTEGER NOT NULL,
  running     TEXT NOT NULL DEFAULT '[]',
  disk        TEXT
);

CREATE TABLE IF NOT EXISTS log (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  time        INTEGER NOT NULL,
  host        TEXT NOT NULL,
  user        TEXT NOT NULL,
  priority    INTEGER NOT NULL,
  message     TEXT NOT NULL,
  number      INTEGER
);
CREATE INDEX IF NOT EXISTS log_time ON log (time, id);
CREATE INDEX IF NOT EXISTS log_number ON log (number, time, id) WHERE number IS NOT NULL;
`;

// Monitor history (DESIGN §3): one row per host and UTC minute (`minute` is the minute's start, epoch ms);
// rows older than 7 days are deleted as new samples arrive, by the time index.
const V2 = `
CREATE TABLE IF NOT EXISTS monitor (
  host        TEXT NOT NULL,
  minute      INTEGER NOT NULL,
  time        INTEGER NOT NULL,
  state       TEXT NOT NULL,
  slots       INTEGER NOT NULL,
  running     TEXT NOT NULL DEFAULT '[]',
  disk        TEXT,
  PRIMARY KEY (host, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS monitor_time ON monitor (time);
`;

// The drain fence (issue 12): the attempt a busy run was taken from, as JSON (host, pid, attempt, pgid?,
// proc_start?, until), and its `until` as a column the claim can compare. Both are set and cleared together.
// The partial index serves nextRetryAt for the (rare) runs that wait for a previous attempt to stop.
function addDrainFence(db: Database.Database): void {
  const columns = new Set((db.pragma('table_info(runs)') as { name: string }[]).map((c) => c.name));
  // a database taken back to an earlier user_version by hand may have the columns already
  if (!columns.has('draining')) db.exec('ALTER TABLE runs ADD COLUMN draining TEXT');
  if (!columns.has('draining_until')) db.exec('ALTER TABLE runs ADD COLUMN draining_until INTEGER');
  db.exec(`CREATE INDEX IF NOT EXISTS runs_draining ON runs (draining_until) WHERE draining_until IS NOT NULL`);
}

// Interruptions (attempts ended by their host, not their command) are counted apart from failures; rows of
// older files have NULL there and read as 0. A paused host says why in its document.
// (ADD COLUMN has no IF NOT EXISTS: a column already there is left alone.)
function addInterruptionCount(db: Database.Database): void {
  addColumn(db, 'runs', 'n_interruptions', 'INTEGER');
  addColumn(db, 'hosts', 'paused_reason', 'TEXT');
}

function addColumn(db: Database.Database, table: string, column: string, type: string): void {
  const columns = db.prepare(`SELECT name FROM pragma_table_info(?)`).all(table) as { name: string }[];
  if (!columns.some((c) => c.name === column)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
}

/** MIGRATIONS[k] takes a database from user_version k to k + 1: SQL, or a step that needs to look first. */
const MIGRATIONS: ReadonlyArray<string | ((db: Database.Database) => void)> = [
  V1,
  V2,
  addDrainFence,
  addInterruptionCount,
];

/**
 * Creates or upgrades the schema in one immediate transaction, so several processes opening a fresh file
 * at once do not trip over each other. Throws when the file was written by a newer runwarden.
 */
export function migrate(db: Database.Database): void {
  const step = db.transaction(() => {
    const version = Number(db.pragma('user_version', { simple: true }));
    if (version > SCHEMA_VERSION) {
      throw new Error(
        `database schema version ${version} is newer than this runwarden understands (${SCHEMA_VERSION})`,
      );
    }
    for (let v = version; v < SCHEMA_VERSION; v += 1) {
      const migration = MIGRATIONS[v]!;
      if (typeof migration === 'string') db.exec(migration);
      else migration(db);
    }
    if (version !== SCHEMA_VERSION) db.pragma(`user_version = ${SCHEMA_VERSION}`);
  });
  step.immediate();
}
