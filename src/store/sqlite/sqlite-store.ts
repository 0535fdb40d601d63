// The SQLite backend of RunStore (DESIGN §3, §4): one file in WAL mode, shared by any number of processes on
// one host. Every read-modify-write is one BEGIN IMMEDIATE transaction, so the write lock is taken before
// anything is read and two claimers can never pick the same run. Every write after a claim is fenced by the
// attempt's lease token.

import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import Database from 'better-sqlite3';

import { DuplicateRunError, StoreReplacedError, StoreUnavailableError, UsageError } from '../../errors.js';
import type {
  AbandonFields,
  BusyFields,
  ClaimRequest,
  FailureFields,
  GoneAttempt,
  HostPatch,
  LogQuery,
  MonitorQuery,
  ProcessGroupFields,
  RunExpectation,
  RunFilter,
  RunOverride,
  RunStore,
  StaleLimits,
  StateCounts,
  StoreOptions,
} from '../run-store.js';
import { MONITOR_RETENTION_MS, excludedNumbers, logSince, monitorMinute, monitorSince } from '../run-store.js';
import type { TaskCounts, TaskSpec } from '../run-store.js';
import type {
  EventNote,
  HostDoc,
  LogEntry,
  MonitorSample,
  NewRun,
  RunDoc,
  RunEvent,
  RunOutput,
  RunState,
} from '../types.js';
import { RUN_STATES } from '../types.js';
import {
  eventFromRow,
  hostFromRow,
  logFromRow,
  monitorFromRow,
  parseJson,
  runFromRow,
  sql,
  toJson,
  type Row,
} from './rows.js';
import { migrate } from './schema.js';
import { signalWake, wakeDirFor, watchWake } from './wake.js';
import { MAX_DATE_MS } from '../../time-range.js';
import { checkNewRun, countValue } from '../decode.js';

/** How long a statement waits for another process's write lock before failing with SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 10_000;

/** A release counts one more interruption; a count another tool wrote as something else starts again at 1. */
const COUNT_ONE_MORE_INTERRUPTION =
  "CASE WHEN typeof(n_interruptions) = 'integer' AND n_interruptions >= 0 THEN n_interruptions + 1 ELSE 1 END";

/** States in which an attempt is still running and its owner may write. */
const LIVE_STATES: readonly string[] = ['considering', 'busy'];

/**
 * The selection queries, exported so a test can check their plans. INDEXED BY pins the partial indexes: the
 * planner has no statistics on a young database and would otherwise search runs_state and sort every
 * pending run. The pending candidate is the first entry of a partial index (no sort at any table size); the
 * retry candidate sorts only failed runs whose next_retry has passed, normally a handful.
 */
// A number beyond 2^53 (written by another tool) reads back rounded and would address another row, or none:
// such a run is never claimed (it stays pending, shown by list) instead of crashing every daemon that tries.
const ADDRESSABLE = `number BETWEEN ${-Number.MAX_SAFE_INTEGER} AND ${Number.MAX_SAFE_INTEGER}`;

export const CLAIM_SQL = {
  pending: (oldest: boolean): string =>
    `SELECT number, priority, start FROM runs INDEXED BY ${oldest ? 'runs_pending_oldest' : 'runs_pending_newest'}
      WHERE state IS NULL AND held = 0 AND ${ADDRESSABLE}
      ORDER BY priority DESC, start ${oldest ? 'ASC' : 'DESC'}, number ${oldest ? 'ASC' : 'DESC'}
      LIMIT 1`,
  // A run whose previous attempt may still be stopping (draining_until in the future) is not a candidate.
  retry: (oldest: boolean): string =>
    `SELECT number, priority, start FROM runs INDEXED BY runs_retry
      WHERE state = 'failed' AND held = 0 AND next_retry <= @now AND ${ADDRESSABLE}
        AND (draining_until IS NULL OR draining_until <= @now)
        AND number NOT IN (SELECT value FROM json_each(@exclude))
      ORDER BY priority DESC, start ${oldest ? 'ASC' : 'DESC'}, number ${oldest ? 'ASC' : 'DESC'}
      LIMIT 1`,
  // The earliest time a failed run may be claimed: its next_retry, or later while a previous attempt drains.
  nextRetry: `SELECT min(t) AS t FROM (
      SELECT * FROM (SELECT next_retry AS t FROM runs INDEXED BY runs_retry
        WHERE state = 'failed' AND held = 0 AND next_retry IS NOT NULL AND draining_until IS NULL
        ORDER BY next_retry LIMIT 1)
      UNION ALL
      SELECT max(next_retry, draining_until) AS t FROM runs INDEXED BY runs_draining
        WHERE draining_until IS NOT NULL AND state = 'failed' AND held = 0 AND next_retry IS NOT NULL)`,
} as const;

/** A whole number ≥ 0 (decode's countValue, apart from digits as text, which SQLite's affinity converts). */
const isCount = (column: string) =>
  `(typeof(${column}) IN ('integer', 'real') AND ${column} >= 0 AND ${column} <= ${Number.MAX_SAFE_INTEGER} ` +
  `AND ${column} = round(${column}))`;
/** A time a date can hold (decode's isDateMs). */
const isTime = (column: string) => `(typeof(${column}) IN ('integer', 'real') AND abs(${column}) <= ${MAX_DATE_MS})`;
const isText = (column: string) => `(typeof(${column}) = 'text' AND ${column} != '')`;

/**
 * Runs whose processing document is not a valid state (decode's processingProblems, in a repairable or unknown
 * state). The ranges around 'abandoned' and 'done' let the state index skip the final runs, usually nearly all.
 */
export const INVALID_PROCESSING_SQL = `SELECT * FROM runs INDEXED BY runs_state
  WHERE (state < 'abandoned' OR (state > 'abandoned' AND state < 'done') OR state > 'done')
    AND (state NOT IN ('considering', 'busy', 'failed') OR typeof(state) != 'text'
      OR (state IN ('considering', 'busy') AND NOT (${isText('token')} AND ${isText('host')} AND ${isTime('time')}))
      OR (state = 'failed' AND NOT ${isTime('next_retry')})
      OR NOT (${isCount('attempt')} AND ${isCount('n_failures')}))
  ORDER BY number`;

interface Candidate {
  number: number;
  priority: unknown;
  start: unknown;
}

interface Lease {
  state: string;
  host: string | null;
  attempt: number | null;
  outputs: string | null;
}

/** What the drain fence needs of a run's current attempt. */
interface AttemptRow {
  state: string | null;
  host: unknown;
  pid: unknown;
  attempt: unknown;
  pgid: unknown;
  proc_start: unknown;
  time: unknown;
  draining: unknown;
  draining_until: unknown;
}

function finiteNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/**
 * The draining columns a write that takes the run from `row` leaves: a busy attempt becomes the draining
 * record (until its last heartbeat + drainMs); otherwise a record still in force at `now` stays, and an
 * expired one is cleared only when `clearExpired` (a claim; an override leaves it as it is).
 */
function drainingAfter(
  row: AttemptRow,
  drainMs: number | undefined,
  now: number,
  clearExpired: boolean,
): { draining: string | null; draining_until: number | null } {
  if (row.state === 'busy' && drainMs !== undefined) {
    const until = (finiteNumber(row.time) ?? now) + drainMs;
    const record: Record<string, unknown> = {
      host: typeof row.host === 'string' ? row.host : '',
      pid: finiteNumber(row.pid) ?? 0,
      attempt: finiteNumber(row.attempt) ?? 0,
      until,
    };
    if (finiteNumber(row.pgid) !== undefined) record.pgid = row.pgid;
    if (finiteNumber(row.proc_start) !== undefined) record.proc_start = row.proc_start;
    return { draining: toJson(record), draining_until: until };
  }
  const until = finiteNumber(row.draining_until);
  if (until !== undefined && (until > now || !clearExpired)) {
    return { draining: typeof row.draining === 'string' ? row.draining : null, draining_until: until };
  }
  return { draining: null, draining_until: null };
}

type Statement = Database.Statement<unknown[], unknown>;

/** Which file a path named when the store was opened: device and inode, exact as bigints. */
interface FileIdentity {
  path: string;
  dev: bigint;
  ino: bigint;
}

/** The identity of the file at `file` now; undefined when nothing is there. Throws on other errors. */
function identityOf(file: string): FileIdentity | undefined {
  try {
    const stat = fs.statSync(file, { bigint: true });
    return { path: file, dev: stat.dev, ino: stat.ino };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') {
      return undefined;
    }
    throw error;
  }
}

/**
 * The files this connection holds open: the database and, in WAL mode, its -wal and -shm files. While any
 * connection is open SQLite never removes or recreates them (only the last connection to close does), so a
 * change of identity means someone else deleted, renamed or replaced them.
 */
function openedFiles(absolutePath: string): FileIdentity[] {
  const files: FileIdentity[] = [];
  for (const file of [absolutePath, `${absolutePath}-wal`, `${absolutePath}-shm`]) {
    const identity = identityOf(file);
    if (identity) files.push(identity);
  }
  return files;
}

function isPrimaryKeyViolation(error: unknown): boolean {
  return (
    typeof error === 'object' &&
    error !== null &&
    'code' in error &&
    (error.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || error.code === 'SQLITE_CONSTRAINT_UNIQUE')
  );
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class SqliteRunStore implements RunStore {
  readonly kind = 'sqlite' as const;
  readonly location: string;
  readonly wakeUpMethod: string;
  /** Absolute path of the database file. */
  readonly path: string;

  private readonly db: Database.Database;
  private readonly clock: () => number;
  private readonly wakeDir: string;
  private readonly watchers = new Set<() => void>();
  private readonly cache = new Map<string, Statement>();

  /** The files opened (see openedFiles); verifyIdentity compares what is at their paths now. */
  private readonly opened: FileIdentity[];

  private readonly claimTx: (request: ClaimRequest, now: number) => RunDoc | null;
  private readonly insertTx: (runs: NewRun[]) => number;
  private readonly insertOneTx: (run: NewRun) => RunDoc | null;

  /** Use openSqliteStore(); the constructor expects an open database with the schema in place. */
  constructor(db: Database.Database, absolutePath: string, options?: StoreOptions) {
    this.db = db;
    this.path = absolutePath;
    this.location = `sqlite:${absolutePath}`;
    this.wakeDir = wakeDirFor(absolutePath);
    this.wakeUpMethod = `wake-up files in ${this.wakeDir} (polling as the fallback)`;
    const clock = options?.clock ?? Date.now;
    this.clock = () => Math.floor(clock());
    this.opened = openedFiles(absolutePath);

    const claimTx = db.transaction((request: ClaimRequest, now: number) => this.claimInTx(request, now)).immediate;
    this.claimTx = (request, now) => {
      this.assertSameFiles();
      return claimTx(request, now);
    };
    this.insertTx = db.transaction((runs: NewRun[]) => {
      const insert = this.stmt(
        'insert-run',
        `INSERT INTO runs (number, name, start, "end", mode, tags, priority, input, params, outputs)
         VALUES (@number, @name, @start, @end, @mode, @tags, @priority, @input, @params, '[]')`,
      );
      for (const run of runs) {
        try {
          insert.run(this.newRunRow(run));
        } catch (error) {
          if (isPrimaryKeyViolation(error)) throw new DuplicateRunError(run.number);
          throw error;
        }
      }
      return runs.length;
    }).immediate;
    // insert and read back in one transaction, so the caller sees the run as inserted, not as claimed by a
    // quicker process a moment later
    this.insertOneTx = db.transaction((run: NewRun) => {
      this.insertTx([run]);
      return this.readRun(run.number);
    }).immediate;
  }

  // ---------------------------------------------------------------------------------------------- plumbing

  /**
   * Throws StoreReplacedError, naming the path, once a file this connection opened is no longer the file at
   * its path. One stat per file; called before every write that processes runs, so nothing more is claimed,
   * started or finished in a file nobody else can see.
   */
  private assertSameFiles(): void {
    for (const opened of this.opened) {
      let now: FileIdentity | undefined;
      try {
        now = identityOf(opened.path);
      } catch (error) {
        throw new StoreReplacedError(
          `SQLite store ${this.path}: cannot check that ${opened.path} is still the file this process opened: ` +
            `${messageOf(error)}; stopping before anything more is processed`,
        );
      }
      if (now && now.dev === opened.dev && now.ino === opened.ino) continue;
      const which = opened.path === this.path ? 'the database file' : `its ${opened.path.slice(this.path.length + 1)} file ${opened.path}`;
      const what = now ? 'was replaced by another file' : 'was deleted or renamed';
      throw new StoreReplacedError(
        `SQLite store ${this.path}: ${which} ${what} while this process had it open; ` +
          `stopping before anything more is processed (restart to open the file now at that path)`,
      );
    }
  }

  async verifyIdentity(): Promise<void> {
    if (this.db.open) this.assertSameFiles();
  }

  private stmt(key: string, text: string): Statement {
    let s = this.cache.get(key);
    if (!s) {
      s = this.db.prepare(text);
      this.cache.set(key, s);
    }
    return s;
  }

  /** Runs `fn` in a BEGIN IMMEDIATE transaction, never in a file that is no longer at the store's path. */
  private immediate<T>(fn: () => T): T {
    this.assertSameFiles();
    return this.db.transaction(fn).immediate();
  }

  private readRun(number: number): RunDoc | null {
    const row = this.stmt('get-run', 'SELECT * FROM runs WHERE number = ?').get(number) as Row | undefined;
    return row ? runFromRow(row) : null;
  }

  private newRunRow(run: NewRun): Record<string, unknown> {
    checkNewRun(run);
    return {
      number: run.number,
      name: sql(run.name),
      start: Math.floor(run.start),
      end: sql(run.end),
      mode: sql(run.mode),
      tags: toJson(run.tags ?? []) ?? '[]',
      priority: run.priority ?? 0,
      input: sql(run.input),
      params: toJson(run.params ?? {}) ?? '{}',
    };
  }

  private appendEvent(
    number: number,
    now: number,
    lease: { host: string | null; attempt: number | null },
    from: RunState | null,
    to: RunState,
    note: EventNote | undefined,
    defaults: EventNote = {},
  ): void {
    this.stmt(
      'insert-event',
      `INSERT INTO run_events
         (number, time, host, attempt, from_state, to_state, reason, exit_code, signal, duration_ms, detail)
       VALUES (@number, @time, @host, @attempt, @from, @to, @reason, @exit_code, @signal, @duration_ms, @detail)`,
    ).run({
      number,
      time: now,
      host: note?.host ?? lease.host ?? '',
      attempt: lease.attempt ?? 0,
      from,
      to,
      reason: sql(note?.reason ?? defaults.reason),
      exit_code: sql(note?.exit_code ?? defaults.exit_code),
      signal: sql(note?.signal ?? defaults.signal),
      duration_ms: sql(note?.duration_ms ?? defaults.duration_ms),
      detail: toJson(note?.detail ?? defaults.detail),
    });
  }

  /** The lease row when `token` is the current attempt's token and the attempt is still live. */
  private liveLease(number: number, token: string): Lease | null {
    const row = this.stmt(
      'lease',
      'SELECT state, host, attempt, outputs FROM runs WHERE number = ? AND token = ?',
    ).get(number, token) as Lease | undefined;
    if (!row || !LIVE_STATES.includes(row.state)) return null;
    return row;
  }

  /**
   * The common shape of a fenced state change: check the lease, apply `update` (which must itself be
   * conditioned on number and token), append the event. False, writing nothing, when the lease is gone.
   */
  private fencedTransition(
    number: number,
    token: string,
    to: RunState,
    update: (lease: Lease, now: number) => number,
    note: EventNote | undefined,
    defaults?: EventNote,
  ): boolean {
    if (typeof token !== 'string') return false;
    const now = this.clock();
    return this.immediate(() => {
      const lease = this.liveLease(number, token);
      if (!lease) return false;
      if (update(lease, now) !== 1) return false;
      this.appendEvent(number, now, lease, lease.state as RunState, to, note, defaults);
      return true;
    });
  }

  // ------------------------------------------------------------------------------------------------- runs

  async close(): Promise<void> {
    for (const stop of [...this.watchers]) stop();
    this.watchers.clear();
    // SQLite itself neither checkpoints nor deletes the -wal/-shm files by path when the database file has
    // moved since it was opened (databaseIsUnmoved), so closing a replaced store leaves the files now there alone.
    if (this.db.open) this.db.close();
  }

  async insertRun(run: NewRun): Promise<RunDoc> {
    const doc = this.insertOneTx(run);
    signalWake(this.wakeDir);
    if (!doc) throw new Error(`run ${run.number} vanished right after it was inserted`);
    return doc;
  }

  async insertRuns(runs: NewRun[]): Promise<number> {
    if (runs.length === 0) return 0;
    const n = this.insertTx(runs);
    signalWake(this.wakeDir);
    return n;
  }

  async getRun(number: number): Promise<RunDoc | null> {
    return this.readRun(number);
  }

  async listRuns(filter: RunFilter = {}): Promise<RunDoc[]> {
    const where: string[] = [];
    const params: Record<string, unknown> = {};
    if (filter.state === 'pending') {
      where.push('state IS NULL');
    } else if (filter.state !== undefined) {
      where.push('state = @state');
      params.state = filter.state;
    }
    if (filter.host !== undefined) {
      where.push('host = @host');
      params.host = filter.host;
    }
    if (filter.tag !== undefined) {
      where.push('EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(tags) THEN tags END) WHERE value = @tag)');
      params.tag = filter.tag;
    }
    if (filter.noOutputs) where.push("(outputs IS NULL OR NOT json_valid(outputs) OR json_array_length(outputs) = 0)");
    params.limit = sqlLimit(filter.limit);
    const clause = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const rows = this.stmt(
      `list-runs:${clause}`,
      `SELECT * FROM runs ${clause} ORDER BY number DESC LIMIT @limit`,
    ).all(params) as Row[];
    return rows.map(runFromRow);
  }

  async countRunsByState(): Promise<StateCounts> {
    const counts: StateCounts = { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0 };
    const rows = this.stmt('count-runs', 'SELECT state, count(*) AS n FROM runs GROUP BY state').all() as {
      state: string | null;
      n: number;
    }[];
    for (const { state, n } of rows) {
      if (state === null) counts.pending += n;
      else if ((RUN_STATES as readonly string[]).includes(state)) counts[state as RunState] += n;
      // states written by other tools that runwarden does not know are not counted
    }
    return counts;
  }


  // Tasks of a pipeline (issue 14): being built; a store that cannot do them yet says so.
  async countTasksByStage(): Promise<Record<string, TaskCounts>> {
    throw new Error('countTasksByStage: not implemented by this store yet');
  }

  async listUnstagedRuns(_limit: number): Promise<RunDoc[]> {
    return [];
  }

  async createTasks(_number: number, _tasks: readonly TaskSpec[]): Promise<number> {
    throw new Error('createTasks: not implemented by this store yet');
  }

  // ------------------------------------------------------------------------------------------------ claim

  async claimNextRun(request: ClaimRequest): Promise<RunDoc | null> {
    return this.claimTx(request, this.clock());
  }

  private claimInTx(request: ClaimRequest, now: number): RunDoc | null {
    const oldest = request.order === 'oldest';
    // Two cheap candidates, each from its own partial index; the better one wins.
    const pending = this.stmt(`claim-pending:${oldest}`, CLAIM_SQL.pending(oldest)).get() as
      | Candidate
      | undefined;
    const retry = this.stmt(`claim-retry:${oldest}`, CLAIM_SQL.retry(oldest)).get({
      now,
      exclude: JSON.stringify(excludedNumbers(request.exclude)),
    }) as
      | Candidate
      | undefined;
    const pick = pending && retry ? (before(pending, retry, oldest) ? pending : retry) : (pending ?? retry);
    if (!pick) return null;

    return this.takeRun(pick.number, request, now, undefined);
  }

  /**
   * The claim write itself, inside the caller's transaction: considering, fresh token, attempt + 1. A busy
   * attempt taken over (`process N --force`) is kept as draining for `drainMs` after its last heartbeat.
   */
  private takeRun(
    number: number,
    request: ClaimRequest,
    now: number,
    drainMs: number | undefined,
    note?: EventNote,
  ): RunDoc | null {
    const prev = this.stmt(
      'claim-prev',
      `SELECT state, host, pid, attempt, pgid, proc_start, time, draining, draining_until, n_failures
         FROM runs WHERE number = ?`,
    ).get(number) as AttemptRow & { state: RunState | null; n_failures: unknown };
    // Never backwards, whatever another tool left in the counter: past the highest attempt the history knows.
    const attempt = Math.max(countValue(prev.attempt) ?? 0, this.maxEventAttemptInTx(number)) + 1;
    const nFailures = countValue(prev.n_failures) ?? 0;
    const token = randomUUID();

    this.stmt(
      'claim-update',
      `UPDATE runs SET state = 'considering', host = @host, pid = @pid, token = @token, attempt = @attempt,
              time = @now, n_failures = @n_failures, started = NULL, ended = NULL, reason = NULL,
              next_retry = NULL, exit_code = NULL, signal = NULL, pgid = NULL, proc_start = NULL,
              targets = NULL, resources = NULL, draining = @draining, draining_until = @draining_until
        WHERE number = @number`,
    ).run({
      host: request.host,
      pid: request.pid,
      token,
      attempt,
      now,
      n_failures: nFailures,
      number,
      ...drainingAfter(prev, drainMs, now, true),
    });
    this.appendEvent(number, now, { host: request.host, attempt }, prev.state, 'considering', note);
    return this.readRun(number);
  }

  /** The run's state and token when it still matches what the caller saw; null otherwise. */
  private matching(number: number, expected: RunExpectation): (Lease & AttemptRow) | null {
    const row = this.stmt(
      'expect',
      `SELECT state, host, pid, attempt, pgid, proc_start, time, draining, draining_until, outputs, token
         FROM runs WHERE number = ?`,
    ).get(number) as (Lease & AttemptRow & { token: string | null }) | undefined;
    if (!row) return null;
    if ((row.state ?? null) !== expected.state) return null;
    if (expected.state !== null && (row.token ?? '') !== (expected.token ?? '')) return null;
    return row;
  }

  async claimRun(
    number: number,
    request: ClaimRequest,
    expected: RunExpectation,
    options: { drainMs?: number; note?: EventNote } = {},
  ): Promise<RunDoc | null> {
    const now = this.clock();
    return this.immediate(() =>
      this.matching(number, expected) ? this.takeRun(number, request, now, options.drainMs, options.note) : null,
    );
  }

  async confirmAttemptGone(number: number, gone: GoneAttempt): Promise<boolean> {
    const info = this.stmt(
      'confirm-gone',
      `UPDATE runs SET draining = NULL, draining_until = NULL
        WHERE number = @number AND draining_until IS NOT NULL AND json_valid(draining)
          AND json_extract(draining, '$.host') = @host AND json_extract(draining, '$.attempt') = @attempt`,
    ).run({ number, host: gone.host, attempt: gone.attempt });
    // The run may be eligible now rather than at draining_until: idle daemons should look.
    if (info.changes === 1) signalWake(this.wakeDir);
    return info.changes === 1;
  }

  async overrideRun(
    number: number,
    expected: RunExpectation,
    change: RunOverride,
    note: EventNote & { host: string },
  ): Promise<boolean> {
    if (change.to === 'failed' && change.next_retry === undefined) {
      throw new Error('overrideRun: next_retry is required when the run becomes failed');
    }
    const now = this.clock();
    const done = this.immediate(() => {
      const row = this.matching(number, expected);
      if (!row) return false;
      this.stmt(
        'override-run',
        `UPDATE runs SET state = @to, token = @token, time = @now, ended = @now, reason = @reason,
                n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                next_retry = @next_retry, exit_code = NULL, signal = NULL,
                host = coalesce(host, @writer), pid = coalesce(pid, 0), attempt = coalesce(@attempt, attempt, 0),
                draining = @draining, draining_until = @draining_until
          WHERE number = @number`,
      ).run({
        to: change.to,
        token: randomUUID(),
        now,
        reason: change.reason,
        n_failures: change.n_failures,
        n_interruptions: sql(change.n_interruptions),
        next_retry: change.to === 'failed' ? sql(change.next_retry) : null,
        writer: note.host,
        attempt: sql(change.attempt),
        number,
        ...drainingAfter(row, change.drainMs, now, false),
      });
      this.appendEvent(number, now, row, expected.state, change.to, note, { reason: change.reason });
      return true;
    });
    // A run failed by hand or by cleanup may be eligible at once: idle daemons should look now.
    if (done && change.to === 'failed') signalWake(this.wakeDir);
    return done;
  }

  async setRunTag(number: number, tag: string, present: boolean): Promise<RunDoc | null> {
    const updated = this.immediate(() => {
      const run = this.readRun(number);
      if (!run) return null;
      const has = run.tags.includes(tag);
      if (has === present) return run;
      const tags = present ? [...run.tags, tag] : run.tags.filter((t) => t !== tag);
      this.stmt('set-tags', 'UPDATE runs SET tags = ? WHERE number = ?').run(toJson(tags) ?? '[]', number);
      return this.readRun(number);
    });
    if (updated && !present) signalWake(this.wakeDir); // a released hold may make the run eligible
    return updated;
  }

  async listStaleRuns(limits: StaleLimits): Promise<RunDoc[]> {
    const now = this.clock();
    const rows = this.stmt(
      'list-stale',
      `SELECT * FROM runs INDEXED BY runs_state
        WHERE (state = 'considering' AND time < @considering) OR (state = 'busy' AND time < @busy)
        ORDER BY number`,
    ).all({ considering: now - limits.maxConsideringMs, busy: now - limits.maxBusyMs }) as Row[];
    return rows.map(runFromRow);
  }

  async listInvalidRuns(): Promise<RunDoc[]> {
    const rows = this.stmt('list-invalid', INVALID_PROCESSING_SQL).all() as Row[];
    return rows.map(runFromRow);
  }

  async maxEventAttempt(number: number): Promise<number> {
    return this.maxEventAttemptInTx(number);
  }

  private maxEventAttemptInTx(number: number): number {
    const row = this.stmt('max-event-attempt', 'SELECT max(attempt) AS a FROM run_events WHERE number = ?').get(
      number,
    ) as { a: unknown };
    return countValue(row.a) ?? 0;
  }

  async nextRetryAt(): Promise<number | null> {
    const row = this.stmt('next-retry', CLAIM_SQL.nextRetry).get() as { t: number | null };
    return typeof row.t === 'number' ? row.t : null;
  }

  // ----------------------------------------------------------------------------------------- fenced writes

  async heartbeatRun(number: number, token: string): Promise<boolean> {
    this.assertSameFiles();
    const now = this.clock();
    const info = this.stmt(
      'heartbeat-run',
      `UPDATE runs SET time = ? WHERE number = ? AND token = ? AND state IN ('considering', 'busy')`,
    ).run(now, number, token);
    return info.changes === 1;
  }

  async markBusy(number: number, token: string, fields: BusyFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      number,
      token,
      'busy',
      (_lease, now) =>
        this.stmt(
          'mark-busy',
          `UPDATE runs SET state = 'busy', time = @now, started = @started, targets = @targets,
                  resources = @resources
            WHERE number = @number AND token = @token`,
        ).run({
          now,
          started: sql(fields.started),
          targets: toJson(fields.targets),
          resources: toJson(fields.resources),
          number,
          token,
        }).changes,
      note,
    );
  }

  async recordProcessGroup(number: number, token: string, fields: ProcessGroupFields): Promise<boolean> {
    this.assertSameFiles();
    const now = this.clock();
    const info = this.stmt(
      'record-pgid',
      `UPDATE runs SET pgid = @pgid, proc_start = @proc_start, time = @now
        WHERE number = @number AND token = @token AND state IN ('considering', 'busy')`,
    ).run({ pgid: fields.pgid, proc_start: sql(fields.proc_start), now, number, token });
    return info.changes === 1;
  }

  async finishRun(number: number, token: string, output: RunOutput, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      number,
      token,
      'done',
      (lease, now) => {
        const existing = parseJson(lease.outputs);
        const outputs = [...(Array.isArray(existing) ? existing : []), output];
        return this.stmt(
          'finish-run',
          `UPDATE runs SET state = 'done', time = @now, ended = @now, next_retry = NULL, outputs = @outputs
            WHERE number = @number AND token = @token`,
        ).run({ now, outputs: toJson(outputs), number, token }).changes;
      },
      note,
    );
  }

  async failRun(number: number, token: string, fields: FailureFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      number,
      token,
      'failed',
      (_lease, now) =>
        this.stmt(
          'fail-run',
          `UPDATE runs SET state = 'failed', time = @now, ended = @now, reason = @reason,
                  n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                  next_retry = @next_retry, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND token = @token`,
        ).run({
          now,
          reason: fields.reason,
          n_failures: fields.n_failures,
          n_interruptions: sql(fields.n_interruptions),
          next_retry: fields.next_retry,
          exit_code: sql(fields.exit_code),
          signal: sql(fields.signal),
          number,
          token,
        }).changes,
      note,
      { reason: fields.reason, exit_code: fields.exit_code, signal: fields.signal },
    );
  }

  async abandonRun(number: number, token: string, fields: AbandonFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      number,
      token,
      'abandoned',
      (_lease, now) =>
        this.stmt(
          'abandon-run',
          `UPDATE runs SET state = 'abandoned', time = @now, ended = @now, reason = @reason,
                  n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                  next_retry = NULL, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND token = @token`,
        ).run({
          now,
          reason: fields.reason,
          n_failures: fields.n_failures,
          n_interruptions: sql(fields.n_interruptions),
          exit_code: sql(fields.exit_code),
          signal: sql(fields.signal),
          number,
          token,
        }).changes,
      note,
      { reason: fields.reason, exit_code: fields.exit_code, signal: fields.signal },
    );
  }

  async releaseRun(number: number, token: string, reason: string, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      number,
      token,
      'failed',
      (_lease, now) =>
        this.stmt(
          'release-run',
          `UPDATE runs SET state = 'failed', time = @now, ended = @now, next_retry = @now, reason = @reason,
                  n_interruptions = ${COUNT_ONE_MORE_INTERRUPTION}, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND token = @token`,
        ).run({
          now,
          reason,
          exit_code: sql(note?.exit_code),
          signal: sql(note?.signal),
          number,
          token,
        }).changes,
      note,
      { reason },
    );
  }

  async listRunEvents(number: number): Promise<RunEvent[]> {
    const rows = this.stmt('list-events', 'SELECT * FROM run_events WHERE number = ? ORDER BY id').all(
      number,
    ) as Row[];
    return rows.map(eventFromRow);
  }

  // ------------------------------------------------------------------------------------------------ hosts

  async registerHost(doc: HostDoc): Promise<void> {
    this.assertSameFiles();
    this.stmt(
      'register-host',
      `INSERT INTO hosts (host, pid, proc_start, token, state, time, started, version, slots, running, disk,
                          paused_reason)
       VALUES (@host, @pid, @proc_start, @token, @state, @time, @started, @version, @slots, @running, @disk,
               @paused_reason)
       ON CONFLICT (host) DO UPDATE SET
         pid = excluded.pid, proc_start = excluded.proc_start, token = excluded.token,
         state = excluded.state, time = excluded.time, started = excluded.started,
         version = excluded.version, slots = excluded.slots, running = excluded.running, disk = excluded.disk,
         paused_reason = excluded.paused_reason`,
    ).run({
      host: doc.host,
      pid: doc.pid,
      proc_start: sql(doc.proc_start),
      token: doc.token,
      state: doc.state,
      time: doc.time,
      started: doc.started,
      version: doc.version,
      slots: doc.slots,
      running: toJson(doc.running ?? []) ?? '[]',
      disk: toJson(doc.disk),
      paused_reason: sql(doc.paused_reason),
    });
  }

  async heartbeatHost(host: string, token: string, patch: HostPatch = {}): Promise<boolean> {
    this.assertSameFiles();
    const sets = ['time = @now'];
    const params: Record<string, unknown> = { now: this.clock(), host, token };
    if (patch.state !== undefined) {
      sets.push('state = @state');
      params.state = patch.state;
    }
    if (patch.slots !== undefined) {
      sets.push('slots = @slots');
      params.slots = patch.slots;
    }
    if (patch.running !== undefined) {
      sets.push('running = @running');
      params.running = toJson(patch.running) ?? '[]';
    }
    if (patch.disk !== undefined) {
      sets.push('disk = @disk');
      params.disk = toJson(patch.disk);
    }
    if (patch.paused_reason !== undefined) {
      sets.push('paused_reason = @paused_reason');
      params.paused_reason = patch.paused_reason;
    }
    const setClause = sets.join(', ');
    const info = this.stmt(
      `heartbeat-host:${setClause}`,
      `UPDATE hosts SET ${setClause} WHERE host = @host AND token = @token`,
    ).run(params);
    return info.changes === 1;
  }

  async getHost(host: string): Promise<HostDoc | null> {
    const row = this.stmt('get-host', 'SELECT * FROM hosts WHERE host = ?').get(host) as Row | undefined;
    return row ? hostFromRow(row) : null;
  }

  async markSilentHostsDead(silentMs: number): Promise<HostDoc[]> {
    const now = this.clock();
    return this.immediate(() => {
      const rows = this.stmt(
        'silent-hosts',
        `SELECT * FROM hosts WHERE state NOT IN ('stopped', 'dead') AND time < ?`,
      ).all(now - silentMs) as Row[];
      // A dead host runs nothing: its RUNNING list goes (the returned document keeps what it said last).
      const mark = this.stmt(
        'mark-dead',
        `UPDATE hosts SET state = 'dead', running = '[]' WHERE host = ? AND token = ? AND time = ?`,
      );
      const marked: HostDoc[] = [];
      for (const row of rows) {
        if (mark.run(row.host, row.token, row.time).changes === 1) marked.push(hostFromRow(row));
      }
      return marked;
    });
  }

  async forgetDeadHosts(silentMs: number): Promise<HostDoc[]> {
    const now = this.clock();
    return this.immediate(() => {
      const rows = this.stmt('forgettable-hosts', `SELECT * FROM hosts WHERE state = 'dead' AND time < ?`).all(
        now - silentMs,
      ) as Row[];
      const forget = this.stmt(
        'forget-host',
        `DELETE FROM hosts WHERE host = ? AND token = ? AND time = ? AND state = 'dead'`,
      );
      return rows.filter((row) => forget.run(row.host, row.token, row.time).changes === 1).map(hostFromRow);
    });
  }

  async listHosts(): Promise<HostDoc[]> {
    return (this.stmt('list-hosts', 'SELECT * FROM hosts ORDER BY host').all() as Row[]).map(hostFromRow);
  }

  // ---------------------------------------------------------------------------------------------- monitor

  async recordMonitor(sample: MonitorSample): Promise<void> {
    const minute = monitorMinute(sample.time);
    const expired = this.clock() - MONITOR_RETENTION_MS;
    this.immediate(() => {
      this.stmt(
        'record-monitor',
        `INSERT INTO monitor (host, minute, time, state, slots, running, disk)
         VALUES (@host, @minute, @time, @state, @slots, @running, @disk)
         ON CONFLICT (host, minute) DO UPDATE SET
           time = excluded.time, state = excluded.state, slots = excluded.slots,
           running = excluded.running, disk = excluded.disk`,
      ).run({
        host: sample.host,
        minute,
        time: Math.floor(sample.time),
        state: sample.state,
        slots: sample.slots,
        running: toJson(sample.running ?? []) ?? '[]',
        disk: toJson(sample.disk),
      });
      // Expiry rides on the samples themselves (about one a minute per host), by the time index: usually
      // it finds nothing or the one sample that just turned 7 days old.
      this.stmt('expire-monitor', 'DELETE FROM monitor WHERE time < ?').run(expired);
    });
  }

  async listMonitor(query: MonitorQuery): Promise<MonitorSample[]> {
    const since = monitorSince(query, this.clock());
    const rows = (
      query.host === undefined
        ? this.stmt('list-monitor', 'SELECT * FROM monitor WHERE time >= ? ORDER BY host, minute').all(since)
        : this.stmt(
            'list-monitor-host',
            'SELECT * FROM monitor WHERE host = ? AND time >= ? ORDER BY minute',
          ).all(query.host, since)
    ) as Row[];
    return rows.map(monitorFromRow);
  }

  // -------------------------------------------------------------------------------------------------- log

  async appendLog(entry: Omit<LogEntry, 'time'> & { time?: number }): Promise<void> {
    this.stmt(
      'append-log',
      `INSERT INTO log (time, host, user, priority, message, number)
       VALUES (@time, @host, @user, @priority, @message, @number)`,
    ).run({
      time: entry.time ?? this.clock(),
      host: entry.host,
      user: entry.user,
      priority: entry.priority,
      message: entry.message,
      number: sql(entry.number),
    });
  }

  async listLog(query: LogQuery = {}): Promise<LogEntry[]> {
    const where: string[] = [];
    const params: Record<string, unknown> = {};
    if (query.minPriority !== undefined) {
      where.push('priority >= @minPriority');
      params.minPriority = query.minPriority;
    }
    if (query.number !== undefined) {
      where.push('number = @number');
      params.number = query.number;
    }
    const since = logSince(query);
    if (since !== undefined) {
      where.push('time >= @since');
      params.since = since;
    }
    params.limit = sqlLimit(query.limit);
    const clause = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const rows = this.stmt(
      `list-log:${clause}`,
      `SELECT * FROM log ${clause} ORDER BY time DESC, id DESC LIMIT @limit`,
    ).all(params) as Row[];
    return rows.map(logFromRow);
  }

  // ----------------------------------------------------------------------------------------------- wake-up

  watchNewRuns(onNewRun: () => void): () => void {
    const stopWatching = watchWake(this.wakeDir, onNewRun);
    const stop = (): void => {
      this.watchers.delete(stop);
      stopWatching();
    };
    this.watchers.add(stop);
    return stop;
  }
}

/** SQLite's LIMIT for an optional limit: -1 means none. */
function sqlLimit(limit: number | undefined): number {
  if (limit === undefined) return -1;
  if (!Number.isInteger(limit) || limit < 0) {
    throw new UsageError(`limit must be a whole number ≥ 0, got ${limit}`, 'limit');
  }
  return limit;
}

/** True when candidate `a` goes before `b`: priority desc, then start per order, then number likewise. */
function before(a: Candidate, b: Candidate, oldest: boolean): boolean {
  const pa = Number(a.priority);
  const pb = Number(b.priority);
  if (pa !== pb) return pa > pb;
  const sa = Number(a.start);
  const sb = Number(b.start);
  if (sa !== sb) return oldest ? sa < sb : sa > sb;
  return oldest ? a.number < b.number : a.number > b.number;
}

/**
 * Opens (creating if needed) the SQLite runs database at `file`, its parent directory included. Throws
 * StoreUnavailableError naming the path when it cannot be opened or its schema is newer than this code.
 */
export async function openSqliteStore(file: string, options?: StoreOptions): Promise<SqliteRunStore> {
  const absolute = path.resolve(file);
  const create = options?.create ?? true;
  if (!create && !fs.existsSync(absolute)) {
    throw new StoreUnavailableError(
      `no SQLite store at ${absolute}: the file does not exist (check --store, RUNWARDEN_STORE or store: in the ` +
        `configuration; runwarden submit, daemon and demo create a new store)`,
    );
  }
  let db: Database.Database | undefined;
  try {
    if (create) fs.mkdirSync(path.dirname(absolute), { recursive: true });
    // fileMustExist: a store deleted between the check above and here is still not created.
    db = new Database(absolute, { timeout: BUSY_TIMEOUT_MS, fileMustExist: !create });
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    migrate(db);
  } catch (error) {
    try {
      db?.close();
    } catch {
      // nothing more to do
    }
    throw new StoreUnavailableError(`cannot open SQLite store at ${absolute}: ${messageOf(error)}`, {
      cause: error,
    });
  }
  try {
    fs.mkdirSync(wakeDirFor(absolute), { recursive: true });
  } catch {
    // wake-ups are best effort; polling still works
  }
  return new SqliteRunStore(db, absolute, options);
}
