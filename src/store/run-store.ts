import { UsageError } from '../errors.js';
import { isDateMs } from '../time-range.js';
import type {
  EventNote,
  HostDoc,
  LogEntry,
  LogPriority,
  MonitorSample,
  NewRun,
  RunDoc,
  RunEvent,
  RunOutput,
  RunState,
  TaskRef,
} from './types.js';
import type { RunSelector } from '../config/schema.js';

export type SelectionOrder = 'newest' | 'oldest';

/** What a store creates for one stage of a run: the task, and the stages it waits for. */
export interface TaskSpec {
  stage: string;
  needs: string[];
}

/** The first wave's pipeline: one stage, `process`, needing nothing. */
export const PROCESS_ONLY: readonly TaskSpec[] = [{ stage: 'process', needs: [] }];

/** One stage a claim may take a task of, and what that task's run must pass. */
export interface StageClaim {
  stage: string;
  /** The stage's depth in the pipeline (longest chain of needs above it): deeper stages are taken first. */
  depth: number;
  /** Selectors the task's run must all pass (the daemon's `select` and the stage's). */
  select?: readonly RunSelector[];
}

export interface ClaimRequest {
  host: string;
  pid: number;
  /**
   * The stages this claim may take a task of (those with a free slot on the claiming host); absent: the
   * `process` stage only (the first wave). Among eligible tasks the order is priority (desc), then depth
   * (desc: finish runs before starting new ones), then `start` per `order`.
   */
  stages?: readonly StageClaim[];
  /** After priority (desc): `newest` takes the latest `start` first (bootstrax), `oldest` the earliest. */
  order: SelectionOrder;
  /**
   * Tasks the claimer still has an actor for (claimNextRun never takes them): a task failed by hand while its
   * attempt is still stopping on this host is not claimed again here until that attempt has ended. Unlike
   * elsewhere, a bare number here excludes every task of that run (the first wave's callers meant the run).
   */
  exclude?: readonly TaskRef[];
}

export interface RunFilter {
  /**
   * `pending` selects tasks never claimed (and runs without any task yet); `blocked` tasks blocked by an
   * abandoned upstream task. One view is listed per matching task (see RunStore.listRuns).
   */
  state?: RunState | 'pending' | 'blocked';
  /** Only this stage's tasks. */
  stage?: string;
  /** The host named in the run's processing document. */
  host?: string;
  /** Runs whose tags include this tag. */
  tag?: string;
  /** Runs with no registered output (cleanup: `done` runs whose output was never registered). */
  noOutputs?: boolean;
  limit?: number;
}

/** What a caller saw of a run before an operator or repair write: the write happens only if it still holds. */
export interface RunExpectation {
  /** The run's state; null for a run never processed. */
  state: RunState | null;
  /** The attempt's lease token; null for a run never processed. */
  token: string | null;
}

/**
 * A write that takes a run away from whoever holds it (operator `fail`/`abandon`/`retry`, cleanup repairs).
 * It gives the run a fresh token, so a live owner's next fenced write or lease heartbeat fails and the owner
 * stops its command without writing anything more.
 */
export interface RunOverride {
  to: 'failed' | 'abandoned';
  reason: string;
  n_failures: number;
  /** The interruption count to store; absent keeps the run's count. */
  n_interruptions?: number;
  /** Required when `to` is failed: when the run becomes eligible again. */
  next_retry?: number;
  /**
   * How long after the owner's last heartbeat its command may still run (drainLimitMs): a busy run taken
   * away keeps its attempt as `processing.draining` until then, or until the owner confirms it gone. Every
   * daemon and operator write passes it; without it a busy run is taken with no fence (tests only).
   */
  drainMs?: number;
  /**
   * The attempt counter to write (a repair of an unreadable one: the highest attempt the run's history
   * knows); without it the stored counter is kept.
   */
  attempt?: number;
}

/** Names the attempt whose command is confirmed gone; only a draining record naming it is cleared. */
export interface GoneAttempt {
  host: string;
  attempt: number;
}

/** Limits of the cleanup pass, as durations: the backend measures them against its own clock. */
export interface StaleLimits {
  maxConsideringMs: number;
  maxBusyMs: number;
}

export type StateCounts = Record<RunState | 'pending', number>;

/** Tasks of one stage by state; a blocked task counts as `blocked`, not in its own state. */
export type TaskCounts = StateCounts & { blocked: number };

export interface BusyFields {
  started: number;
  targets?: string[];
  resources?: Record<string, number>;
}

/** The command's process group; processing.pid stays the claiming daemon's pid. */
export interface ProcessGroupFields {
  pgid: number;
  proc_start?: number;
}

export interface FailureFields {
  reason: string;
  /** The failure count after this failure (unchanged when the attempt was interrupted). */
  n_failures: number;
  /** The interruption count after this write; absent keeps the run's count. */
  n_interruptions?: number;
  next_retry: number;
  exit_code?: number;
  signal?: string;
}

export interface AbandonFields {
  reason: string;
  n_failures: number;
  /** The interruption count after this write; absent keeps the run's count. */
  n_interruptions?: number;
  exit_code?: number;
  signal?: string;
}

/** `paused_reason: null` clears the reason (the host resumed). */
export type HostPatch = Partial<Pick<HostDoc, 'state' | 'running' | 'disk' | 'slots'>> & {
  paused_reason?: string | null;
};

export interface LogQuery {
  limit?: number;
  minPriority?: LogPriority;
  number?: number;
  /** Only entries written at or after this time (epoch ms); a value that is not a time is a UsageError. */
  sinceMs?: number;
}

/** `query.sinceMs` checked: undefined when absent; a value no Date holds is a UsageError. */
export function logSince(query: LogQuery): number | undefined {
  if (query.sinceMs === undefined) return undefined;
  if (!isDateMs(query.sinceMs)) {
    throw new UsageError(`sinceMs: ${query.sinceMs} is not a time in epoch ms`, 'sinceMs');
  }
  return query.sinceMs;
}

/** Which monitor samples to list: those of one host (or every host) taken at or after `sinceMs`. */
export interface MonitorQuery {
  host?: string;
  sinceMs: number;
}

/** How long monitor samples are kept (DESIGN §3): older ones are deleted and never listed. */
export const MONITOR_RETENTION_MS = 7 * 24 * 3_600_000;

const MINUTE_MS = 60_000;

/** Start (epoch ms) of the UTC minute a sample taken at `time` covers; the key of a host's samples. */
export function monitorMinute(time: number): number {
  if (!Number.isFinite(time)) throw new UsageError(`time: ${time} is not a time in epoch ms`, 'time');
  return Math.floor(time / MINUTE_MS) * MINUTE_MS;
}

/** The earliest sample time `query` lists when the store's clock says `now`: never beyond the retention. */
export function monitorSince(query: MonitorQuery, now: number): number {
  if (!Number.isFinite(query.sinceMs)) {
    throw new UsageError(`sinceMs: ${query.sinceMs} is not a time in epoch ms`, 'sinceMs');
  }
  return Math.max(query.sinceMs, now - MONITOR_RETENTION_MS);
}

/**
 * The runs database. One function per operation (graphile-worker's habit). Every write after a claim is
 * fenced: it names the attempt's lease token and returns false, writing nothing, when the token no longer
 * matches (the run was failed, abandoned or taken over by someone else). A fenced write that succeeds
 * appends its run_events entry in the same transaction where the backend allows it.
 */
export interface RunStore {
  readonly kind: 'sqlite' | 'mongodb';
  /** Where the store is, for messages; never contains a password. */
  readonly location: string;
  /** How watchNewRuns learns of new runs (wake-up files, a change stream, polling), for the start-up log. */
  readonly wakeUpMethod: string;
  close(): Promise<void>;
  /**
   * Throws StoreReplacedError when the store this process opened is no longer the one at its location: a
   * SQLite file (or its -wal/-shm companion) deleted, renamed or replaced since it was opened. A daemon checks
   * it at every host heartbeat and before each claim, and SQLite refuses every processing write while it fails.
   * MongoDB has no equivalent (a server is reached by address): there it never throws.
   */
  verifyIdentity(): Promise<void>;

  /**
   * Inserts the run with one pending task per entry of `tasks` (default PROCESS_ONLY), in one write, and
   * marks it staged. `[]` inserts a run with no task (it matches no stage), staged all the same.
   */
  insertRun(run: NewRun, tasks?: readonly TaskSpec[]): Promise<RunDoc>;
  /**
   * All or nothing; a duplicate number throws DuplicateRunError naming it. `tasks` as in insertRun, or a
   * function giving each run its own (selection per stage).
   */
  insertRuns(runs: NewRun[], tasks?: readonly TaskSpec[] | ((run: NewRun) => readonly TaskSpec[])): Promise<number>;
  /**
   * The run viewed from one stage's task (RunDoc.stage/processing/blocked), with every task in `tasks`.
   * Without `stage`: its `process` task, else its first task in pipeline order.
   */
  getRun(number: number, stage?: string): Promise<RunDoc | null>;
  /**
   * One view per matching task (a run without any task yet is one view with no processing, matching
   * `pending`): newest number first, a run's tasks in pipeline order. A first-wave store lists as before.
   */
  listRuns(filter?: RunFilter): Promise<RunDoc[]>;
  /** Tasks over every stage by state (a run without tasks counts as one pending). */
  countRunsByState(): Promise<StateCounts>;
  /** Tasks per stage by state. */
  countTasksByStage(): Promise<Record<string, TaskCounts>>;

  /**
   * Runs no daemon or submit has given tasks yet (inserted by another tool, or pending in a first-wave store
   * being upgraded), lowest number first: a daemon gives them tasks under its stages with createTasks.
   */
  listUnstagedRuns(limit: number): Promise<RunDoc[]>;
  /**
   * Creates the run's missing tasks (one per entry, each pending) and marks the run staged, in one write;
   * idempotent (tasks that exist are left alone), so two daemons meeting the same new run agree. Returns how
   * many tasks it created; 0 for a run that does not exist.
   */
  createTasks(number: number, tasks: readonly TaskSpec[]): Promise<number>;

  /**
   * Atomically takes the first eligible task of the request's stages: its run not tagged hold/abandon and
   * passing the stage's selectors; the task not blocked, every task it needs done; never claimed, or failed
   * with next_retry ≤ now and no previous attempt still draining (see Processing.draining). Order: priority
   * desc, then stage depth desc, then start per `order`. Sets state considering, host, pid, attempt+1, a fresh
   * token and time in one write. Returns the run viewed from that task; null when nothing is eligible.
   */
  claimNextRun(request: ClaimRequest): Promise<RunDoc | null>;
  /**
   * Earliest next_retry among failed tasks (of `stages`, default all) that are not held or blocked, so an
   * idle daemon knows when to look again.
   */
  nextRetryAt(stages?: readonly string[]): Promise<number | null>;

  // Fenced writes name the task and its lease token; they write nothing and return false when the token no
  // longer matches.
  heartbeatRun(task: TaskRef, token: string): Promise<boolean>;
  markBusy(task: TaskRef, token: string, fields: BusyFields, note?: EventNote): Promise<boolean>;
  recordProcessGroup(task: TaskRef, token: string, fields: ProcessGroupFields): Promise<boolean>;
  /**
   * Done, and registers `output` (stamped with the task's stage). In the same write, every task of the run
   * that needs this stage and now has all its needs done becomes eligible.
   */
  finishRun(task: TaskRef, token: string, output: RunOutput, note?: EventNote): Promise<boolean>;
  failRun(task: TaskRef, token: string, fields: FailureFields, note?: EventNote): Promise<boolean>;
  /**
   * Abandoned. In the same write every task below it (needing it, directly or further down) that is not
   * done, abandoned or live gets `blocked` naming this stage and the reason.
   */
  abandonRun(task: TaskRef, token: string, fields: AbandonFields, note?: EventNote): Promise<boolean>;
  /**
   * Hands a task back unharmed (host stopping): failed, next_retry now, n_failures unchanged, one more
   * interruption counted (n_interruptions + 1).
   */
  releaseRun(task: TaskRef, token: string, reason: string, note?: EventNote): Promise<boolean>;

  /**
   * Claims one given run (`runwarden process N`) when it is still as `expected`: like claimNextRun, one write
   * with a fresh token, whatever its state or tags; the caller decides what may be taken. Null when the run
   * changed in between (or does not exist). Taking a busy run records its attempt as draining for `drainMs`
   * after its last heartbeat; a draining record still in force is kept (the new attempt must wait for it
   * before it starts a command), an expired one is cleared. `note` goes into the claim's run_events entry
   * (who forced it and why).
   */
  claimRun(
    task: TaskRef,
    request: ClaimRequest,
    expected: RunExpectation,
    options?: { drainMs?: number; note?: EventNote },
  ): Promise<RunDoc | null>;
  /**
   * The old owner's word that the command of `gone` has ended: clears the run's draining record when it
   * names that host and attempt (one conditional write). False when there was no such record.
   */
  confirmAttemptGone(task: TaskRef, gone: GoneAttempt): Promise<boolean>;
  /**
   * Compare-and-set for operator and cleanup writes: when the run is still in `expected` (state and token),
   * applies `change` with a fresh token and appends the event (its host is `note.host`, the writer). False,
   * writing nothing, when the run changed in between: two cleaners never both fail one stale run. A busy
   * run's attempt is kept as draining (see claimRun); from other states a draining record is kept as it is.
   * An override to abandoned blocks the tasks below (as abandonRun); an override to failed (an operator's
   * retry) clears every block this stage set on the run's other tasks, in the same write.
   */
  overrideRun(
    task: TaskRef,
    expected: RunExpectation,
    change: RunOverride,
    note: EventNote & { host: string },
  ): Promise<boolean>;
  /** Adds (`present` true) or removes a tag; returns the run as it is now, or null when it does not exist. */
  setRunTag(number: number, tag: string, present: boolean): Promise<RunDoc | null>;
  /** Tasks `considering` whose lease is older than maxConsideringMs, or `busy` older than maxBusyMs (views). */
  listStaleRuns(limits: StaleLimits): Promise<RunDoc[]>;
  /**
   * Runs whose processing document is not a valid state (written by another tool): a state runwarden does
   * not know; considering or busy without a token, host or time; failed without next_retry; or considering,
   * busy or failed with an attempt or n_failures that is not a whole number. Exactly the runs whose decoded
   * `processing.problems` is not empty in those states (done and abandoned are final and left alone).
   */
  listInvalidRuns(): Promise<RunDoc[]>;
  /** The highest attempt number the task's history (run_events) records; 0 when none. */
  maxEventAttempt(task: TaskRef): Promise<number>;

  /** Oldest first; every stage's events, or only `stage`'s. */
  listRunEvents(number: number, stage?: string): Promise<RunEvent[]>;

  /** Creates or replaces the host's document. */
  registerHost(doc: HostDoc): Promise<void>;
  /** Refreshes time (and the patch) when the token still matches; false once another daemon took over. */
  heartbeatHost(host: string, token: string, patch?: HostPatch): Promise<boolean>;
  getHost(host: string): Promise<HostDoc | null>;
  /**
   * Marks every host that is not stopped or dead and has been silent for longer than `silentMs` as dead, each
   * with one conditional write; returns the hosts this call marked (another cleaner may have marked others).
   */
  markSilentHostsDead(silentMs: number): Promise<HostDoc[]>;
  listHosts(): Promise<HostDoc[]>;
  /**
   * Removes the documents of hosts that are dead and have been silent for longer than `silentMs` (each with one
   * conditional delete, so a host that came back meanwhile stays); returns what was removed.
   */
  forgetDeadHosts(silentMs: number): Promise<HostDoc[]>;

  /**
   * Stores a host's status for the minute of `sample.time`. Idempotent per host and minute: a second sample
   * of the same minute replaces the first (the latest status of a minute wins). The caller decides how
   * often to sample; the store keeps no state of its own about it.
   */
  recordMonitor(sample: MonitorSample): Promise<void>;
  /**
   * Samples taken at or after `sinceMs` (and within MONITOR_RETENTION_MS of the store's clock), ordered by
   * host, then time.
   */
  listMonitor(query: MonitorQuery): Promise<MonitorSample[]>;

  appendLog(entry: Omit<LogEntry, 'time'> & { time?: number }): Promise<void>;
  /** Newest first. */
  listLog(query?: LogQuery): Promise<LogEntry[]>;

  /**
   * Calls `onNewRun` soon after any process inserts a run into this store, or makes one eligible by hand
   * (an override to failed, a hold released), so an idle daemon wakes at once instead of at its next poll.
   * Returns the function that stops watching.
   */
  watchNewRuns(onNewRun: () => void): () => void;
}

export interface StoreOptions {
  /** Clock for every time the store writes; injected by tests. Defaults to Date.now. */
  clock?: () => number;
  /** How often watchNewRuns polls where the backend has no push notification (timeouts.idle_poll). */
  idlePollMs?: number;
  /**
   * Whether opening may create the store (a SQLite file and its directories). Default true: the daemon, submit
   * and demo create it. Commands that only read or change existing runs pass false, so a mistyped path is
   * refused (StoreUnavailableError naming it) instead of showing an empty, healthy store.
   */
  create?: boolean;
}
