// SQLite schema of the runs database (DESIGN §3, §9). Times are epoch milliseconds (INTEGER). Scalars that are
// queried are real columns; lists and maps are JSON text. A run's processing lives in its tasks (one row per
// run and stage, schema 5); `held` and the tasks' copies of priority/start/held are derived from `runs` by a
// generated column and triggers, so they stay right even when another tool edits `runs` with plain SQL.

import type Database from 'better-sqlite3';

/** PRAGMA user_version written by this code; bump it and add a step to MIGRATIONS for schema changes. */
export const SCHEMA_VERSION = 5;

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

// Tasks of a pipeline (issue 14, DESIGN §9): one row per (run, stage) carrying what the run's processing
// columns carried, plus `needs` (JSON), `ready` (every needed stage's task is done; kept right by the writes
// that change it, in their transaction) and `blocked` (JSON TaskBlock while an upstream task is abandoned).
// `priority`, `start` and `held` are copies of the run's, kept right by triggers whoever writes `runs` (another
// tool's plain SQL included), so the claim is served by partial indexes on this table alone. `held` is 1 when
// the run's tags hold "hold", "abandon" or "hold:<stage>".
const TASK_PROCESSING_COLUMNS = `
  state           TEXT,
  host            TEXT,
  pid             INTEGER,
  pgid            INTEGER,
  proc_start      INTEGER,
  token           TEXT,
  attempt         INTEGER,
  time            INTEGER,
  started         INTEGER,
  ended           INTEGER,
  n_failures      INTEGER,
  n_interruptions INTEGER,
  reason          TEXT,
  next_retry      INTEGER,
  exit_code       INTEGER,
  signal          TEXT,
  targets         TEXT,
  resources       TEXT,
  draining        TEXT,
  draining_until  INTEGER`;

/** The processing columns a first-wave run row carries and its `process` task takes over. */
export const PROCESSING_COLUMNS = [
  'state', 'host', 'pid', 'pgid', 'proc_start', 'token', 'attempt', 'time', 'started', 'ended', 'n_failures',
  'n_interruptions', 'reason', 'next_retry', 'exit_code', 'signal', 'targets', 'resources', 'draining',
  'draining_until',
] as const;

/** SQL: 1 when `tags` (a run's tags column) holds a tag that holds the task of `stage`. */
export function heldSql(tags: string, stage: string): string {
  return `EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(${tags}) THEN ${tags} ELSE '[]' END)
                   WHERE value IN ('hold', 'abandon', 'hold:' || ${stage}))`;
}

// The claim's candidates (see CLAIM_SQL in sqlite-store.ts): per stage, the first entry of a partial index in
// claim order. Retry candidates are filtered on the covered next_retry/draining_until while walking that order,
// so no candidate is ever sorted.
const ELIGIBLE = 'held = 0 AND ready = 1 AND blocked IS NULL';
const V5_TASKS = `
CREATE TABLE IF NOT EXISTS tasks (
  number      INTEGER NOT NULL,
  stage       TEXT NOT NULL,
  needs       TEXT NOT NULL DEFAULT '[]',
  ready       INTEGER NOT NULL DEFAULT 1,
  blocked     TEXT,
  priority    INTEGER NOT NULL DEFAULT 0,
  start       INTEGER NOT NULL DEFAULT 0,
  held        INTEGER NOT NULL DEFAULT 0,
  ${TASK_PROCESSING_COLUMNS},
  PRIMARY KEY (number, stage)
);
CREATE INDEX IF NOT EXISTS tasks_pending_newest ON tasks (stage, priority, start, number)
  WHERE state IS NULL AND ${ELIGIBLE};
CREATE INDEX IF NOT EXISTS tasks_pending_oldest ON tasks (stage, priority, start DESC, number DESC)
  WHERE state IS NULL AND ${ELIGIBLE};
CREATE INDEX IF NOT EXISTS tasks_retry_newest ON tasks (stage, priority, start, number, next_retry, draining_until)
  WHERE state = 'failed' AND ${ELIGIBLE};
CREATE INDEX IF NOT EXISTS tasks_retry_oldest
  ON tasks (stage, priority, start DESC, number DESC, next_retry, draining_until)
  WHERE state = 'failed' AND ${ELIGIBLE};
-- nextRetryAt: the earliest due time of an eligible failed task, and those waiting for an attempt to drain
CREATE INDEX IF NOT EXISTS tasks_next_retry ON tasks (next_retry, stage)
  WHERE state = 'failed' AND ${ELIGIBLE} AND draining_until IS NULL;
CREATE INDEX IF NOT EXISTS tasks_draining ON tasks (draining_until) WHERE draining_until IS NOT NULL;
-- listing, counting, stale and invalid tasks
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, number);
CREATE INDEX IF NOT EXISTS tasks_host ON tasks (host, number);
CREATE INDEX IF NOT EXISTS tasks_blocked ON tasks (number) WHERE blocked IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_unstaged ON runs (number) WHERE staged = 0;

CREATE TRIGGER IF NOT EXISTS tasks_copy_run AFTER INSERT ON tasks BEGIN
  UPDATE tasks SET priority = coalesce(r.priority, 0), start = coalesce(r.start, 0), held = ${heldSql('r.tags', 'tasks.stage')}
    FROM (SELECT priority, start, tags FROM runs WHERE number = NEW.number) AS r
   WHERE tasks.number = NEW.number AND tasks.stage = NEW.stage;
END;
CREATE TRIGGER IF NOT EXISTS runs_insert_tasks AFTER INSERT ON runs BEGIN
  UPDATE tasks SET priority = NEW.priority, start = NEW.start, held = ${heldSql('NEW.tags', 'tasks.stage')}
   WHERE number = NEW.number;
END;
CREATE TRIGGER IF NOT EXISTS runs_update_tasks AFTER UPDATE OF tags, priority, start ON runs BEGIN
  UPDATE tasks SET priority = NEW.priority, start = NEW.start, held = ${heldSql('NEW.tags', 'tasks.stage')}
   WHERE number = NEW.number;
END;
CREATE TRIGGER IF NOT EXISTS runs_delete_tasks AFTER DELETE ON runs BEGIN
  DELETE FROM tasks WHERE number = OLD.number;
END;
`;

/**
 * Schema 5: tasks. A first-wave file is upgraded in the migration's transaction, losing nothing: every run with
 * a processing state gets a `process` task carrying it, and is marked staged; runs never processed stay
 * unstaged (a daemon gives them tasks under its stages). The runs table keeps its old processing columns,
 * unused from now on; the indexes that served them go.
 */
function addTasks(db: Database.Database): void {
  addColumn(db, 'runs', 'staged', 'INTEGER NOT NULL DEFAULT 0');
  addColumn(db, 'run_events', 'stage', 'TEXT');
  db.exec(V5_TASKS);
  const columns = PROCESSING_COLUMNS.join(', ');
  db.exec(`INSERT OR IGNORE INTO tasks (number, stage, needs, ready, ${columns})
           SELECT number, 'process', '[]', 1, ${columns} FROM runs WHERE state IS NOT NULL`);
  db.exec(`UPDATE runs SET staged = 1 WHERE state IS NOT NULL`);
  for (const index of ['runs_pending_newest', 'runs_pending_oldest', 'runs_retry', 'runs_state', 'runs_host', 'runs_draining']) {
    db.exec(`DROP INDEX IF EXISTS ${index}`);
  }
}

/** MIGRATIONS[k] takes a database from user_version k to k + 1: SQL, or a step that needs to look first. */
const MIGRATIONS: ReadonlyArray<string | ((db: Database.Database) => void)> = [
  V1,
  V2,
  addDrainFence,
  addInterruptionCount,
  addTasks,
];

/**
 * Creates or upgrades the schema in one immediate transaction, so several processes opening a fresh file
 * at once do not trip over each other. Throws when the file was written by a newer runwarden. `target` is for
 * tests that build a file as an older runwarden wrote it (e.g. 4: the first wave's schema).
 */
export function migrate(db: Database.Database, target: number = SCHEMA_VERSION): void {
  const step = db.transaction(() => {
    const version = Number(db.pragma('user_version', { simple: true }));
    if (version > SCHEMA_VERSION) {
      throw new Error(
        `database schema version ${version} is newer than this runwarden understands (${SCHEMA_VERSION})`,
      );
    }
    for (let v = version; v < target; v += 1) {
      const migration = MIGRATIONS[v]!;
      if (typeof migration === 'string') db.exec(migration);
      else migration(db);
    }
    if (version < target) db.pragma(`user_version = ${target}`);
  });
  step.immediate();
}
