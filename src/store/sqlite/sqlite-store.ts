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
import { MONITOR_RETENTION_MS, PROCESS_ONLY, logSince, monitorMinute, monitorSince } from '../run-store.js';
import type { StageClaim, TaskCounts, TaskSpec } from '../run-store.js';
import type { RunSelector } from '../../config/schema.js';
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
  TaskBlock,
  TaskDoc,
  TaskKey,
  TaskRef,
} from '../types.js';
import { DEFAULT_STAGE, RUN_STATES, taskKeyOf } from '../types.js';
import {
  eventFromRow,
  hostFromRow,
  logFromRow,
  monitorFromRow,
  parseJson,
  runFromRow,
  runView,
  sql,
  taskFromRow,
  toJson,
  type Row,
} from './rows.js';
import { migrate } from './schema.js';
import { signalWake, wakeDirFor, watchWake } from './wake.js';
import { MAX_DATE_MS } from '../../time-range.js';
import { checkNewRun, countValue, stringArray } from '../decode.js';

/** How long a statement waits for another process's write lock before failing with SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 10_000;

/** A release counts one more interruption; a count another tool wrote as something else starts again at 1. */
const COUNT_ONE_MORE_INTERRUPTION =
  "CASE WHEN typeof(n_interruptions) = 'integer' AND n_interruptions >= 0 THEN n_interruptions + 1 ELSE 1 END";

/** States in which an attempt is still running and its owner may write. */
const LIVE_STATES: readonly string[] = ['considering', 'busy'];

// A number beyond 2^53 (written by another tool) reads back rounded and would address another row, or none:
// such a run is never claimed (it stays pending, shown by list) instead of crashing every daemon that tries.
const ADDRESSABLE_RUN = `number BETWEEN ${-Number.MAX_SAFE_INTEGER} AND ${Number.MAX_SAFE_INTEGER}`;
const ADDRESSABLE = `t.${ADDRESSABLE_RUN}`;

/** A run's tags, or none when another tool wrote something that is not a JSON array. */
const RUN_TAGS = `(CASE WHEN json_valid(r.tags) AND json_type(r.tags) = 'array' THEN r.tags ELSE '[]' END)`;
const RUN_PARAMS = `(CASE WHEN json_valid(r.params) AND json_type(r.params) = 'object' THEN r.params ELSE '{}' END)`;

/**
 * SQL conditions on the joined run row `r` for one selector (policy's matchesSelector, in SQL), binding its
 * values into `params` under names starting with `p`.
 */
function selectorConditions(selector: RunSelector, p: string, params: Record<string, unknown>): string[] {
  const conditions: string[] = [];
  if (selector.tags !== undefined && selector.tags.length > 0) {
    params[`${p}tags`] = JSON.stringify(selector.tags);
    conditions.push(
      `NOT EXISTS (SELECT 1 FROM json_each(@${p}tags) AS w WHERE w.value NOT IN (SELECT value FROM json_each(${RUN_TAGS})))`,
    );
  }
  if (selector.not_tags !== undefined && selector.not_tags.length > 0) {
    params[`${p}not_tags`] = JSON.stringify(selector.not_tags);
    conditions.push(
      `NOT EXISTS (SELECT 1 FROM json_each(${RUN_TAGS}) AS h WHERE h.value IN (SELECT value FROM json_each(@${p}not_tags)))`,
    );
  }
  if (selector.modes !== undefined) {
    params[`${p}modes`] = JSON.stringify(selector.modes);
    conditions.push(`typeof(r.mode) = 'text' AND r.mode IN (SELECT value FROM json_each(@${p}modes))`);
  }
  if (selector.min_number !== undefined) {
    params[`${p}min`] = selector.min_number;
    conditions.push(`r.number >= @${p}min`);
  }
  if (selector.max_number !== undefined) {
    params[`${p}max`] = selector.max_number;
    conditions.push(`r.number <= @${p}max`);
  }
  Object.entries(selector.params ?? {}).forEach(([key, value], i) => {
    params[`${p}k${i}`] = key;
    let match: string;
    if (typeof value === 'boolean') {
      match = `q.type = '${value ? 'true' : 'false'}'`;
    } else {
      params[`${p}v${i}`] = value;
      match = `q.type ${typeof value === 'number' ? "IN ('integer', 'real')" : "= 'text'"} AND q.atom = @${p}v${i}`;
    }
    conditions.push(`EXISTS (SELECT 1 FROM json_each(${RUN_PARAMS}) AS q WHERE q.key = @${p}k${i} AND ${match})`);
  });
  if (selector.require_end) conditions.push(`typeof(r."end") IN ('integer', 'real')`);
  return conditions;
}

/**
 * The claim's one statement and its parameters, exported so a test can check its plan. For every stage asked
 * for, two candidates: the first pending task and the first retry-due failed task, each the first entry of a
 * partial index in claim order (INDEXED BY pins them: the planner has no statistics on a young database), the
 * run joined for the selection; then the best of those few by priority, depth, start. Nothing is sorted but
 * the candidates themselves. A task whose previous attempt may still be stopping (draining_until in the
 * future) is not a candidate.
 */
export function claimStatement(
  stages: readonly StageClaim[],
  oldest: boolean,
  now: number,
  exclude: readonly TaskRef[] = [],
): { text: string; params: Record<string, unknown> } {
  const dir = oldest ? 'ASC' : 'DESC';
  const params: Record<string, unknown> = {
    now,
    exclude_runs: JSON.stringify(exclude.filter((ref) => typeof ref === 'number')),
    exclude_tasks: JSON.stringify(
      exclude.flatMap((ref) => (typeof ref === 'number' ? [] : [`${ref.number}/${ref.stage}`])),
    ),
  };
  const parts: string[] = [];
  stages.forEach((claim, i) => {
    params[`s${i}`] = claim.stage;
    params[`d${i}`] = claim.depth;
    const selection = (claim.select ?? []).flatMap((selector, j) =>
      selector ? selectorConditions(selector, `s${i}x${j}`, params) : [],
    );
    for (const kind of ['pending', 'retry'] as const) {
      const index = `tasks_${kind}_${oldest ? 'oldest' : 'newest'}`;
      const due =
        kind === 'pending'
          ? 't.state IS NULL'
          : `t.state = 'failed' AND t.next_retry <= @now AND (t.draining_until IS NULL OR t.draining_until <= @now)`;
      const where = [
        `t.stage = @s${i}`,
        due,
        't.held = 0 AND t.ready = 1 AND t.blocked IS NULL',
        ADDRESSABLE,
        't.number NOT IN (SELECT value FROM json_each(@exclude_runs))',
        `(t.number || '/' || t.stage) NOT IN (SELECT value FROM json_each(@exclude_tasks))`,
        ...selection,
      ];
      parts.push(`SELECT * FROM (SELECT t.number, t.stage, t.priority, t.start, @d${i} AS depth
          FROM tasks AS t INDEXED BY ${index} CROSS JOIN runs AS r ON r.number = t.number
         WHERE ${where.join('\n           AND ')}
         ORDER BY t.priority DESC, t.start ${dir}, t.number ${dir} LIMIT 1)`);
    }
  });
  const text = `SELECT number, stage FROM (
      ${parts.join('\n      UNION ALL\n      ')})
    ORDER BY priority DESC, depth DESC, start ${dir}, number ${dir} LIMIT 1`;
  return { text, params };
}

/**
 * The earliest time a failed task (of `stages`, or any) may be claimed: its next_retry, or later while a
 * previous attempt drains. `@stages` is a JSON array; `@all` 1 ignores it.
 */
export const NEXT_RETRY_SQL = `SELECT min(t) AS t FROM (
    SELECT * FROM (SELECT next_retry AS t FROM tasks INDEXED BY tasks_next_retry
      WHERE state = 'failed' AND held = 0 AND ready = 1 AND blocked IS NULL AND draining_until IS NULL
        AND next_retry IS NOT NULL AND (@all = 1 OR stage IN (SELECT value FROM json_each(@stages)))
      ORDER BY next_retry LIMIT 1)
    UNION ALL
    SELECT max(next_retry, draining_until) AS t FROM tasks INDEXED BY tasks_draining
      WHERE draining_until IS NOT NULL AND state = 'failed' AND held = 0 AND ready = 1 AND blocked IS NULL
        AND next_retry IS NOT NULL AND (@all = 1 OR stage IN (SELECT value FROM json_each(@stages))))`;

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
export const INVALID_PROCESSING_SQL = `SELECT number, stage FROM tasks INDEXED BY tasks_state
  WHERE (state < 'abandoned' OR (state > 'abandoned' AND state < 'done') OR state > 'done')
    AND (state NOT IN ('considering', 'busy', 'failed') OR typeof(state) != 'text'
      OR (state IN ('considering', 'busy') AND NOT (${isText('token')} AND ${isText('host')} AND ${isTime('time')}))
      OR (state = 'failed' AND NOT ${isTime('next_retry')})
      OR NOT (${isCount('attempt')} AND ${isCount('n_failures')}))
  ORDER BY number, stage`;

interface Lease {
  state: string;
  host: string | null;
  attempt: number | null;
}

/** A run's task as the pipeline writes need it: what it needs, its state, and its block. */
interface TaskLink {
  stage: string;
  needs: string[];
  state: string | null;
  reason: string | null;
  blocked: string | null;
}

/** States in which a task below an abandoned one is left unblocked: finished, or its attempt still live. */
const NEVER_BLOCKED: readonly (string | null)[] = ['done', 'abandoned', 'considering', 'busy'];

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
  private readonly insertTx: (runs: NewRun[], tasksOf: (run: NewRun) => readonly TaskSpec[]) => number;
  private readonly insertOneTx: (run: NewRun, tasks: readonly TaskSpec[]) => RunDoc | null;

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
    this.insertTx = db.transaction((runs: NewRun[], tasksOf: (run: NewRun) => readonly TaskSpec[]) => {
      const insert = this.stmt(
        'insert-run',
        `INSERT INTO runs (number, name, start, "end", mode, tags, priority, input, params, outputs, staged)
         VALUES (@number, @name, @start, @end, @mode, @tags, @priority, @input, @params, '[]', 1)`,
      );
      for (const run of runs) {
        try {
          insert.run(this.newRunRow(run));
        } catch (error) {
          if (isPrimaryKeyViolation(error)) throw new DuplicateRunError(run.number);
          throw error;
        }
        this.insertTasks(run.number, tasksOf(run));
      }
      return runs.length;
    }).immediate;
    // insert and read back in one transaction, so the caller sees the run as inserted, not as claimed by a
    // quicker process a moment later
    this.insertOneTx = db.transaction((run: NewRun, tasks: readonly TaskSpec[]) => {
      this.insertTx([run], () => tasks);
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

  // ------------------------------------------------------------------------------------------------ views

  private runRow(number: number): Row | undefined {
    return this.stmt('get-run', 'SELECT * FROM runs WHERE number = ?').get(number) as Row | undefined;
  }

  private taskRows(number: number): Row[] {
    return this.stmt('get-tasks', 'SELECT * FROM tasks WHERE number = ? ORDER BY rowid').all(number) as Row[];
  }

  /** The run viewed from `stage`'s task (default: its process task, else its first), every task included. */
  private readRun(number: number, stage?: string): RunDoc | null {
    const row = this.runRow(number);
    return row ? runView(runFromRow(row), this.taskRows(number).map(taskFromRow), stage) : null;
  }

  /** Views of the given (number, stage) pairs, in that order, reading each run once. */
  private views(keys: ReadonlyArray<{ number: number; stage: string | null }>): RunDoc[] {
    const runs = new Map<number, { run: RunDoc; tasks: TaskDoc[] } | null>();
    const docs: RunDoc[] = [];
    for (const key of keys) {
      let entry = runs.get(key.number);
      if (entry === undefined) {
        const row = this.runRow(key.number);
        entry = row ? { run: runFromRow(row), tasks: this.taskRows(key.number).map(taskFromRow) } : null;
        runs.set(key.number, entry);
      }
      if (entry) docs.push(runView(entry.run, entry.tasks, key.stage ?? undefined));
    }
    return docs;
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

  // --------------------------------------------------------------------------------------- pipeline links

  /**
   * Creates the tasks in `specs` the run does not have yet (pending; priority, start and held are copied from
   * the run by a trigger), marks the run staged, and brings readiness and blocks up to date. Inside the
   * caller's transaction. Returns how many tasks it created.
   */
  private insertTasks(number: number, specs: readonly TaskSpec[]): number {
    const insert = this.stmt(
      'insert-task',
      `INSERT OR IGNORE INTO tasks (number, stage, needs, ready) VALUES (@number, @stage, @needs, 0)`,
    );
    let created = 0;
    for (const spec of specs) {
      if (typeof spec.stage !== 'string' || spec.stage === '') {
        throw new UsageError(`tasks: a stage name must be a non-empty string, got ${JSON.stringify(spec.stage)}`, 'stage');
      }
      created += insert.run({ number, stage: spec.stage, needs: toJson([...spec.needs]) ?? '[]' }).changes;
    }
    this.stmt('mark-staged', 'UPDATE runs SET staged = 1 WHERE number = ? AND staged IS NOT 1').run(number);
    if (created > 0) {
      this.refreshReady(number);
      this.applyBlocks(number, this.clock());
    }
    return created;
  }

  /** Sets `ready` on every task of the run to whether every stage it needs has a done task. */
  private refreshReady(number: number): void {
    const readiness = `(CASE WHEN json_valid(tasks.needs) THEN NOT EXISTS (
        SELECT 1 FROM json_each(tasks.needs) AS n
         WHERE NOT EXISTS (SELECT 1 FROM tasks AS u WHERE u.number = tasks.number AND u.stage = n.value
                                                       AND u.state = 'done')) ELSE 0 END)`;
    this.stmt(
      'refresh-ready',
      `UPDATE tasks SET ready = ${readiness} WHERE number = ? AND ready IS NOT ${readiness}`,
    ).run(number);
  }

  private links(number: number): TaskLink[] {
    const rows = this.stmt(
      'task-links',
      'SELECT stage, needs, state, reason, blocked FROM tasks WHERE number = ? ORDER BY rowid',
    ).all(number) as Array<Omit<TaskLink, 'needs'> & { needs: unknown }>;
    return rows.map((row) => ({ ...row, stage: String(row.stage), needs: stringArray(parseJson(row.needs)) ?? [] }));
  }

  /** Every stage below `stage` in the run (needing it directly or further down). */
  private static downstream(links: readonly TaskLink[], stage: string): TaskLink[] {
    const below = new Set<string>([stage]);
    let grew = true;
    while (grew) {
      grew = false;
      for (const link of links) {
        if (!below.has(link.stage) && link.needs.some((need) => below.has(need))) {
          below.add(link.stage);
          grew = true;
        }
      }
    }
    return links.filter((link) => link.stage !== stage && below.has(link.stage));
  }

  /**
   * Blocks every task below an abandoned task of the run that is not finished or live and not blocked yet,
   * naming the abandoned stage and its reason. Returns the stages blocked, by the stage that blocks them.
   */
  private applyBlocks(number: number, now: number): Map<string, string[]> {
    const links = this.links(number);
    const blocked = new Map<string, string[]>();
    const set = this.stmt(
      'block-task',
      'UPDATE tasks SET blocked = @blocked WHERE number = @number AND stage = @stage AND blocked IS NULL',
    );
    for (const upstream of links.filter((link) => link.state === 'abandoned')) {
      for (const below of SqliteRunStore.downstream(links, upstream.stage)) {
        if (NEVER_BLOCKED.includes(below.state) || below.blocked !== null) continue;
        const block: TaskBlock = { stage: upstream.stage, reason: upstream.reason ?? 'abandoned', time: now };
        set.run({ blocked: toJson(block), number, stage: below.stage });
        below.blocked = toJson(block);
        blocked.set(upstream.stage, [...(blocked.get(upstream.stage) ?? []), below.stage]);
      }
    }
    return blocked;
  }

  /**
   * Clears the blocks `stage` set on the run's tasks (it is no longer abandoned); a task still below another
   * abandoned task is blocked again by that one. Returns the stages no longer blocked.
   */
  private clearBlocks(number: number, stage: string, now: number): string[] {
    const cleared = (
      this.stmt(
        'blocked-by',
        `SELECT stage FROM tasks WHERE number = @number AND blocked IS NOT NULL
            AND json_valid(blocked) AND json_extract(blocked, '$.stage') = @stage`,
      ).all({ number, stage }) as { stage: string }[]
    ).map((row) => row.stage);
    if (cleared.length === 0) return [];
    this.stmt(
      'unblock',
      `UPDATE tasks SET blocked = NULL WHERE number = @number AND blocked IS NOT NULL
          AND json_valid(blocked) AND json_extract(blocked, '$.stage') = @stage`,
    ).run({ number, stage });
    const still = new Set([...this.applyBlocks(number, now).values()].flat());
    return cleared.filter((s) => !still.has(s));
  }

  /**
   * What follows a change of a task's state, in its transaction: readiness of the run's other tasks (a task
   * done, or no longer done), and blocks (abandoned: the tasks below are blocked; failed again after being
   * abandoned: their blocks go). Returns the event detail that records the blocks set or cleared.
   */
  private afterStateChange(key: TaskKey, to: RunState, now: number): Record<string, unknown> | undefined {
    this.refreshReady(key.number);
    if (to === 'abandoned') {
      const blocked = this.applyBlocks(key.number, now).get(key.stage);
      return blocked && blocked.length > 0 ? { blocked } : undefined;
    }
    if (to === 'done') {
      // an operator's `process --force` of a blocked task: once done it waits for nothing
      this.stmt('done-unblock', 'UPDATE tasks SET blocked = NULL WHERE number = ? AND stage = ?').run(
        key.number,
        key.stage,
      );
    }
    const unblocked = this.clearBlocks(key.number, key.stage, now);
    return unblocked.length > 0 ? { unblocked } : undefined;
  }

  // --------------------------------------------------------------------------------------------- history

  private appendEvent(
    key: TaskKey,
    now: number,
    lease: { host: string | null; attempt: number | null },
    from: RunState | null,
    to: RunState,
    note: EventNote | undefined,
    defaults: EventNote = {},
    extraDetail?: Record<string, unknown>,
  ): void {
    const detail = note?.detail ?? defaults.detail;
    this.stmt(
      'insert-event',
      `INSERT INTO run_events
         (number, stage, time, host, attempt, from_state, to_state, reason, exit_code, signal, duration_ms, detail)
       VALUES (@number, @stage, @time, @host, @attempt, @from, @to, @reason, @exit_code, @signal, @duration_ms,
               @detail)`,
    ).run({
      number: key.number,
      stage: key.stage,
      time: now,
      host: note?.host ?? lease.host ?? '',
      attempt: lease.attempt ?? 0,
      from,
      to,
      reason: sql(note?.reason ?? defaults.reason),
      exit_code: sql(note?.exit_code ?? defaults.exit_code),
      signal: sql(note?.signal ?? defaults.signal),
      duration_ms: sql(note?.duration_ms ?? defaults.duration_ms),
      detail: toJson(extraDetail ? { ...(detail ?? {}), ...extraDetail } : detail),
    });
  }

  /** The lease row when `token` is the current attempt's token and the attempt is still live. */
  private liveLease(key: TaskKey, token: string): Lease | null {
    const row = this.stmt(
      'lease',
      'SELECT state, host, attempt FROM tasks WHERE number = ? AND stage = ? AND token = ?',
    ).get(key.number, key.stage, token) as Lease | undefined;
    if (!row || !LIVE_STATES.includes(row.state)) return null;
    return row;
  }

  /**
   * The common shape of a fenced state change: check the lease, apply `update` (which must itself be
   * conditioned on number, stage and token), bring the run's other tasks up to date, append the event. False,
   * writing nothing, when the lease is gone.
   */
  private fencedTransition(
    task: TaskRef,
    token: string,
    to: RunState,
    update: (key: TaskKey, lease: Lease, now: number) => number,
    note: EventNote | undefined,
    defaults?: EventNote,
  ): boolean {
    if (typeof token !== 'string') return false;
    const key = taskKeyOf(task);
    const now = this.clock();
    return this.immediate(() => {
      const lease = this.liveLease(key, token);
      if (!lease) return false;
      if (update(key, lease, now) !== 1) return false;
      const links = this.afterStateChange(key, to, now);
      this.appendEvent(key, now, lease, lease.state as RunState, to, note, defaults, links);
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

  async insertRun(run: NewRun, tasks: readonly TaskSpec[] = PROCESS_ONLY): Promise<RunDoc> {
    const doc = this.insertOneTx(run, tasks);
    signalWake(this.wakeDir);
    if (!doc) throw new Error(`run ${run.number} vanished right after it was inserted`);
    return doc;
  }

  async insertRuns(
    runs: NewRun[],
    tasks: readonly TaskSpec[] | ((run: NewRun) => readonly TaskSpec[]) = PROCESS_ONLY,
  ): Promise<number> {
    if (runs.length === 0) return 0;
    const n = this.insertTx(runs, typeof tasks === 'function' ? tasks : () => tasks);
    signalWake(this.wakeDir);
    return n;
  }

  async getRun(number: number, stage?: string): Promise<RunDoc | null> {
    return this.readRun(number, stage);
  }

  async listRuns(filter: RunFilter = {}): Promise<RunDoc[]> {
    const taskConditions: string[] = [];
    const runConditions: string[] = [];
    const params: Record<string, unknown> = {};
    if (filter.state === 'pending') {
      taskConditions.push('t.state IS NULL AND t.blocked IS NULL');
    } else if (filter.state === 'blocked') {
      taskConditions.push('t.blocked IS NOT NULL');
    } else if (filter.state !== undefined) {
      taskConditions.push('t.state = @state AND t.blocked IS NULL');
      params.state = filter.state;
    }
    if (filter.host !== undefined) {
      taskConditions.push('t.host = @host');
      params.host = filter.host;
    }
    if (filter.stage !== undefined) params.stage = filter.stage;
    if (filter.tag !== undefined) {
      runConditions.push(
        'EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(r.tags) THEN r.tags END) WHERE value = @tag)',
      );
      params.tag = filter.tag;
    }
    if (filter.noOutputs) {
      runConditions.push('(r.outputs IS NULL OR NOT json_valid(r.outputs) OR json_array_length(r.outputs) = 0)');
    }
    params.limit = sqlLimit(filter.limit);
    const where = (conditions: string[]): string => (conditions.length ? `WHERE ${conditions.join(' AND ')}` : '');
    let text: string;
    if (taskConditions.length > 0) {
      // A state or host names tasks: walk their index newest number first (no sort); the runs only for tags
      // and outputs. `pending` also lists the runs nobody gave tasks yet, one view each.
      if (filter.stage !== undefined) taskConditions.push('t.stage = @stage');
      const join = runConditions.length > 0 ? 'JOIN runs AS r ON r.number = t.number' : '';
      text = `SELECT t.number AS number, t.stage AS stage, t.rowid AS k FROM tasks AS t ${join}
               ${where([...taskConditions, ...runConditions])}`;
      if (filter.state === 'pending' && filter.host === undefined && filter.stage === undefined) {
        text += `
        UNION ALL
        SELECT r.number AS number, NULL AS stage, 0 AS k FROM runs AS r INDEXED BY runs_unstaged
         ${where(['r.staged = 0', ...runConditions])}`;
      }
      text += '\n ORDER BY number DESC, k DESC LIMIT @limit';
    } else {
      // Otherwise the runs newest first, each with its tasks (or, without a stage asked for, none).
      const join =
        filter.stage !== undefined
          ? 'CROSS JOIN tasks AS t ON t.number = r.number AND t.stage = @stage'
          : 'LEFT JOIN tasks AS t ON t.number = r.number';
      text = `SELECT r.number AS number, t.stage AS stage, -t.rowid AS k FROM runs AS r ${join}
               ${where(runConditions)} ORDER BY r.number DESC, k DESC LIMIT @limit`;
    }
    const keys = this.stmt(`list-runs:${text}`, text).all(params) as Array<{ number: number; stage: string | null }>;
    return inPipelineOrder(this.views(keys));
  }

  async countRunsByState(): Promise<StateCounts> {
    const counts: StateCounts = { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0 };
    const rows = this.stmt('count-tasks', 'SELECT state, count(*) AS n FROM tasks GROUP BY state').all() as {
      state: string | null;
      n: number;
    }[];
    for (const { state, n } of rows) {
      if (state === null) counts.pending += n;
      else if ((RUN_STATES as readonly string[]).includes(state)) counts[state as RunState] += n;
      // states written by other tools that runwarden does not know are not counted
    }
    // runs nobody gave tasks yet, one pending each (from their partial index, not a walk of every run)
    const taskless = this.stmt(
      'count-unstaged',
      'SELECT count(*) AS n FROM runs INDEXED BY runs_unstaged WHERE staged = 0',
    ).get() as { n: number };
    counts.pending += taskless.n;
    return counts;
  }

  async countTasksByStage(): Promise<Record<string, TaskCounts>> {
    const rows = this.stmt(
      'count-by-stage',
      `SELECT stage, CASE WHEN blocked IS NOT NULL THEN 'blocked' ELSE coalesce(state, 'pending') END AS s,
              count(*) AS n
         FROM tasks GROUP BY stage, s ORDER BY stage`,
    ).all() as { stage: string; s: string; n: number }[];
    const counts: Record<string, TaskCounts> = {};
    for (const { stage, s, n } of rows) {
      const of = (counts[stage] ??= {
        pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0,
      });
      if (Object.hasOwn(of, s)) of[s as keyof TaskCounts] += n;
    }
    return counts;
  }

  async listUnstagedRuns(limit: number): Promise<RunDoc[]> {
    const rows = this.stmt(
      'list-unstaged',
      `SELECT number FROM runs INDEXED BY runs_unstaged WHERE staged = 0 AND ${ADDRESSABLE_RUN} ORDER BY number LIMIT ?`,
    ).all(sqlLimit(limit)) as { number: number }[];
    return this.views(rows.map((row) => ({ number: row.number, stage: null })));
  }

  async createTasks(number: number, tasks: readonly TaskSpec[]): Promise<number> {
    const created = this.immediate(() => (this.runRow(number) ? this.insertTasks(number, tasks) : 0));
    if (created > 0) signalWake(this.wakeDir);
    return created;
  }

  // ------------------------------------------------------------------------------------------------ claim

  async claimNextRun(request: ClaimRequest): Promise<RunDoc | null> {
    return this.claimTx(request, this.clock());
  }

  /**
   * A claim that names no stages comes from a first-wave caller, whose one stage is `process`: runs nobody gave
   * tasks yet (inserted by another tool) get their process task first, as a daemon with a first-wave config
   * would give them.
   */
  private stageForFirstWave(request: ClaimRequest): void {
    if (request.stages !== undefined) return;
    const unstaged = this.stmt(
      'unstaged-any',
      `SELECT number FROM runs INDEXED BY runs_unstaged WHERE staged = 0 AND ${ADDRESSABLE_RUN}`,
    ).all() as { number: number }[];
    for (const { number } of unstaged) this.insertTasks(number, PROCESS_ONLY);
  }

  private claimInTx(request: ClaimRequest, now: number): RunDoc | null {
    this.stageForFirstWave(request);
    const stages = request.stages ?? [{ stage: DEFAULT_STAGE, depth: 0 }];
    if (stages.length === 0) return null;
    const { text, params } = claimStatement(stages, request.order === 'oldest', now, request.exclude);
    const pick = this.stmt(`claim:${text}`, text).get(params) as { number: number; stage: string } | undefined;
    if (!pick) return null;
    return this.takeTask({ number: pick.number, stage: pick.stage }, request, now, undefined);
  }

  /**
   * The claim write itself, inside the caller's transaction: considering, fresh token, attempt + 1. A busy
   * attempt taken over (`process N --force`) is kept as draining for `drainMs` after its last heartbeat.
   */
  private takeTask(
    key: TaskKey,
    request: ClaimRequest,
    now: number,
    drainMs: number | undefined,
    note?: EventNote,
  ): RunDoc | null {
    const prev = this.stmt(
      'claim-prev',
      `SELECT state, host, pid, attempt, pgid, proc_start, time, draining, draining_until, n_failures
         FROM tasks WHERE number = ? AND stage = ?`,
    ).get(key.number, key.stage) as (AttemptRow & { state: RunState | null; n_failures: unknown }) | undefined;
    if (!prev) return null;
    // Never backwards, whatever another tool left in the counter: past the highest attempt the history knows.
    const attempt = Math.max(countValue(prev.attempt) ?? 0, this.maxEventAttemptInTx(key)) + 1;
    const nFailures = countValue(prev.n_failures) ?? 0;
    const token = randomUUID();

    this.stmt(
      'claim-update',
      `UPDATE tasks SET state = 'considering', host = @host, pid = @pid, token = @token, attempt = @attempt,
              time = @now, n_failures = @n_failures, started = NULL, ended = NULL, reason = NULL,
              next_retry = NULL, exit_code = NULL, signal = NULL, pgid = NULL, proc_start = NULL,
              targets = NULL, resources = NULL, draining = @draining, draining_until = @draining_until
        WHERE number = @number AND stage = @stage`,
    ).run({
      host: request.host,
      pid: request.pid,
      token,
      attempt,
      now,
      n_failures: nFailures,
      number: key.number,
      stage: key.stage,
      ...drainingAfter(prev, drainMs, now, true),
    });
    // a done task claimed again (`process N --force`) no longer lets the tasks below it go
    if (prev.state === 'done') this.refreshReady(key.number);
    this.appendEvent(key, now, { host: request.host, attempt }, prev.state, 'considering', note);
    return this.readRun(key.number, key.stage);
  }

  /** The task's state and token when it still matches what the caller saw; null otherwise. */
  private matching(key: TaskKey, expected: RunExpectation): (AttemptRow & { token: string | null }) | null {
    const row = this.stmt(
      'expect',
      `SELECT state, host, pid, attempt, pgid, proc_start, time, draining, draining_until, token
         FROM tasks WHERE number = ? AND stage = ?`,
    ).get(key.number, key.stage) as (AttemptRow & { token: string | null }) | undefined;
    if (!row) return null;
    if ((row.state ?? null) !== expected.state) return null;
    if (expected.state !== null && (row.token ?? '') !== (expected.token ?? '')) return null;
    return row;
  }

  async claimRun(
    task: TaskRef,
    request: ClaimRequest,
    expected: RunExpectation,
    options: { drainMs?: number; note?: EventNote } = {},
  ): Promise<RunDoc | null> {
    const key = taskKeyOf(task);
    const now = this.clock();
    // A run without the task (never given tasks) is not claimed here: which tasks it gets is its config's.
    return this.immediate(() =>
      this.matching(key, expected) ? this.takeTask(key, request, now, options.drainMs, options.note) : null,
    );
  }

  async confirmAttemptGone(task: TaskRef, gone: GoneAttempt): Promise<boolean> {
    const key = taskKeyOf(task);
    const info = this.stmt(
      'confirm-gone',
      `UPDATE tasks SET draining = NULL, draining_until = NULL
        WHERE number = @number AND stage = @stage AND draining_until IS NOT NULL AND json_valid(draining)
          AND json_extract(draining, '$.host') = @host AND json_extract(draining, '$.attempt') = @attempt`,
    ).run({ number: key.number, stage: key.stage, host: gone.host, attempt: gone.attempt });
    // The task may be eligible now rather than at draining_until: idle daemons should look.
    if (info.changes === 1) signalWake(this.wakeDir);
    return info.changes === 1;
  }

  async overrideRun(
    task: TaskRef,
    expected: RunExpectation,
    change: RunOverride,
    note: EventNote & { host: string },
  ): Promise<boolean> {
    if (change.to === 'failed' && change.next_retry === undefined) {
      throw new Error('overrideRun: next_retry is required when the run becomes failed');
    }
    const key = taskKeyOf(task);
    const now = this.clock();
    const done = this.immediate(() => {
      const row = this.matching(key, expected);
      if (!row) return false;
      this.stmt(
        'override-run',
        `UPDATE tasks SET state = @to, token = @token, time = @now, ended = @now, reason = @reason,
                n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                next_retry = @next_retry, exit_code = NULL, signal = NULL,
                host = coalesce(host, @writer), pid = coalesce(pid, 0), attempt = coalesce(@attempt, attempt, 0),
                draining = @draining, draining_until = @draining_until
          WHERE number = @number AND stage = @stage`,
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
        number: key.number,
        stage: key.stage,
        ...drainingAfter(row, change.drainMs, now, false),
      });
      const links = this.afterStateChange(key, change.to, now);
      this.appendEvent(
        key,
        now,
        { host: typeof row.host === 'string' ? row.host : null, attempt: finiteNumber(row.attempt) ?? null },
        expected.state,
        change.to,
        note,
        { reason: change.reason },
        links,
      );
      return true;
    });
    // A task failed by hand or by cleanup may be eligible at once: idle daemons should look now.
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
    const keys = this.stmt(
      'list-stale',
      `SELECT number, stage FROM tasks INDEXED BY tasks_state
        WHERE (state = 'considering' AND time < @considering) OR (state = 'busy' AND time < @busy)
        ORDER BY number, stage`,
    ).all({ considering: now - limits.maxConsideringMs, busy: now - limits.maxBusyMs }) as TaskKey[];
    return this.views(keys);
  }

  async listInvalidRuns(): Promise<RunDoc[]> {
    return this.views(this.stmt('list-invalid', INVALID_PROCESSING_SQL).all() as TaskKey[]);
  }

  async maxEventAttempt(task: TaskRef): Promise<number> {
    return this.maxEventAttemptInTx(taskKeyOf(task));
  }

  private maxEventAttemptInTx(key: TaskKey): number {
    const row = this.stmt(
      'max-event-attempt',
      `SELECT max(attempt) AS a FROM run_events WHERE number = ? AND coalesce(stage, '${DEFAULT_STAGE}') = ?`,
    ).get(key.number, key.stage) as { a: unknown };
    return countValue(row.a) ?? 0;
  }

  async nextRetryAt(stages?: readonly string[]): Promise<number | null> {
    const row = this.stmt('next-retry', NEXT_RETRY_SQL).get({
      all: stages === undefined ? 1 : 0,
      stages: JSON.stringify(stages ?? []),
    }) as { t: number | null };
    return typeof row.t === 'number' ? row.t : null;
  }

  // ----------------------------------------------------------------------------------------- fenced writes

  async heartbeatRun(task: TaskRef, token: string): Promise<boolean> {
    this.assertSameFiles();
    const key = taskKeyOf(task);
    const info = this.stmt(
      'heartbeat-run',
      `UPDATE tasks SET time = ? WHERE number = ? AND stage = ? AND token = ? AND state IN ('considering', 'busy')`,
    ).run(this.clock(), key.number, key.stage, token);
    return info.changes === 1;
  }

  async markBusy(task: TaskRef, token: string, fields: BusyFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      task,
      token,
      'busy',
      (key, _lease, now) =>
        this.stmt(
          'mark-busy',
          `UPDATE tasks SET state = 'busy', time = @now, started = @started, targets = @targets,
                  resources = @resources
            WHERE number = @number AND stage = @stage AND token = @token`,
        ).run({
          now,
          started: sql(fields.started),
          targets: toJson(fields.targets),
          resources: toJson(fields.resources),
          ...key,
          token,
        }).changes,
      note,
    );
  }

  async recordProcessGroup(task: TaskRef, token: string, fields: ProcessGroupFields): Promise<boolean> {
    this.assertSameFiles();
    const key = taskKeyOf(task);
    const info = this.stmt(
      'record-pgid',
      `UPDATE tasks SET pgid = @pgid, proc_start = @proc_start, time = @now
        WHERE number = @number AND stage = @stage AND token = @token AND state IN ('considering', 'busy')`,
    ).run({ pgid: fields.pgid, proc_start: sql(fields.proc_start), now: this.clock(), ...key, token });
    return info.changes === 1;
  }

  async finishRun(task: TaskRef, token: string, output: RunOutput, note?: EventNote): Promise<boolean> {
    const done = this.fencedTransition(
      task,
      token,
      'done',
      (key, _lease, now) => {
        const row = this.stmt('run-outputs', 'SELECT outputs FROM runs WHERE number = ?').get(key.number) as
          | { outputs: unknown }
          | undefined;
        const existing = parseJson(row?.outputs);
        const outputs = [...(Array.isArray(existing) ? existing : []), { ...output, stage: key.stage }];
        this.stmt('set-outputs', 'UPDATE runs SET outputs = ? WHERE number = ?').run(toJson(outputs), key.number);
        return this.stmt(
          'finish-run',
          `UPDATE tasks SET state = 'done', time = @now, ended = @now, next_retry = NULL
            WHERE number = @number AND stage = @stage AND token = @token`,
        ).run({ now, ...key, token }).changes;
      },
      note,
    );
    // tasks below it may be eligible now
    if (done) signalWake(this.wakeDir);
    return done;
  }

  async failRun(task: TaskRef, token: string, fields: FailureFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      task,
      token,
      'failed',
      (key, _lease, now) =>
        this.stmt(
          'fail-run',
          `UPDATE tasks SET state = 'failed', time = @now, ended = @now, reason = @reason,
                  n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                  next_retry = @next_retry, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND stage = @stage AND token = @token`,
        ).run({
          now,
          reason: fields.reason,
          n_failures: fields.n_failures,
          n_interruptions: sql(fields.n_interruptions),
          next_retry: fields.next_retry,
          exit_code: sql(fields.exit_code),
          signal: sql(fields.signal),
          ...key,
          token,
        }).changes,
      note,
      { reason: fields.reason, exit_code: fields.exit_code, signal: fields.signal },
    );
  }

  async abandonRun(task: TaskRef, token: string, fields: AbandonFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      task,
      token,
      'abandoned',
      (key, _lease, now) =>
        this.stmt(
          'abandon-run',
          `UPDATE tasks SET state = 'abandoned', time = @now, ended = @now, reason = @reason,
                  n_failures = @n_failures, n_interruptions = coalesce(@n_interruptions, n_interruptions),
                  next_retry = NULL, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND stage = @stage AND token = @token`,
        ).run({
          now,
          reason: fields.reason,
          n_failures: fields.n_failures,
          n_interruptions: sql(fields.n_interruptions),
          exit_code: sql(fields.exit_code),
          signal: sql(fields.signal),
          ...key,
          token,
        }).changes,
      note,
      { reason: fields.reason, exit_code: fields.exit_code, signal: fields.signal },
    );
  }

  async releaseRun(task: TaskRef, token: string, reason: string, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(
      task,
      token,
      'failed',
      (key, _lease, now) =>
        this.stmt(
          'release-run',
          `UPDATE tasks SET state = 'failed', time = @now, ended = @now, next_retry = @now, reason = @reason,
                  n_interruptions = ${COUNT_ONE_MORE_INTERRUPTION}, exit_code = @exit_code, signal = @signal
            WHERE number = @number AND stage = @stage AND token = @token`,
        ).run({
          now,
          reason,
          exit_code: sql(note?.exit_code),
          signal: sql(note?.signal),
          ...key,
          token,
        }).changes,
      note,
      { reason },
    );
  }

  async listRunEvents(number: number, stage?: string): Promise<RunEvent[]> {
    const rows = (
      stage === undefined
        ? this.stmt('list-events', 'SELECT * FROM run_events WHERE number = ? ORDER BY id').all(number)
        : this.stmt(
            'list-stage-events',
            `SELECT * FROM run_events WHERE number = ? AND coalesce(stage, '${DEFAULT_STAGE}') = ? ORDER BY id`,
          ).all(number, stage)
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

/** Views listed newest run first, each run's tasks in pipeline order (as its `tasks` lists them). */
function inPipelineOrder(docs: RunDoc[]): RunDoc[] {
  const position = (doc: RunDoc): number => doc.tasks?.findIndex((t) => t.stage === doc.stage) ?? -1;
  return docs
    .map((doc, i) => ({ doc, i }))
    .sort((a, b) => (a.doc.number === b.doc.number ? position(a.doc) - position(b.doc) : a.i - b.i))
    .map(({ doc }) => doc);
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
