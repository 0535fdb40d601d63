// Store-neutral documents (DESIGN §3). Times are epoch milliseconds in the domain; a backend may
// store them differently (MongoDB uses Date) but hands these shapes back.

export const RUN_STATES = ['considering', 'busy', 'done', 'failed', 'abandoned'] as const;
export type RunState = (typeof RUN_STATES)[number];

export const HOST_STATES = ['starting', 'idle', 'busy', 'disk_full', 'paused', 'stopping', 'stopped', 'dead'] as const;
export type HostState = (typeof HOST_STATES)[number];

export interface RunOutput {
  location: string;
  /** The stage whose task wrote it; read as `process` when absent (a first-wave store). */
  stage?: string;
  host: string;
  attempt: number;
  at: number;
}

/**
 * The attempt a run was taken from while it was busy (an operator's fail/abandon, cleanup's stale takeover,
 * `process N --force`): its command may still be running. No attempt of the run starts a command while this
 * record is set and `until` has not passed; the old owner clears it (confirmAttemptGone) once its command is
 * gone. Never holds the old lease token.
 */
export interface DrainingAttempt {
  host: string;
  /** The old owner's pid (the daemon or foreground `process N`). */
  pid: number;
  attempt: number;
  /** The old command's process group and its start time, when they were recorded. */
  pgid?: number;
  proc_start?: number;
  /**
   * Store time by which the old command is gone for certain: its last lease heartbeat plus the drain limit
   * (max_busy_time and the kill escalation), since an owner that cannot renew its lease kills its command.
   */
  until: number;
}

/** The processing sub-document; absent on a run nobody has touched yet. */
export interface Processing {
  state: RunState;
  /**
   * What is wrong with a processing document another tool wrote (a state runwarden does not know, `busy`
   * without a token, `failed` without next_retry, a count that is not a number): never stored; cleanup
   * repairs such a run naming these, and `show` prints them.
   */
  problems?: string[];
  host: string;
  pid: number;
  /** Process group of the running command and its start time (from /proc), so a restart can find it. */
  pgid?: number;
  proc_start?: number;
  /** Lease token of the current attempt; every write of that attempt is conditioned on it. */
  token: string;
  attempt: number;
  /** Last write by the owner: the lease heartbeat. */
  time: number;
  started?: number;
  ended?: number;
  n_failures: number;
  /**
   * Attempts ended by something the command did not cause (its host restarted, stopped, was presumed dead or
   * could not start it): never counted in n_failures, limited by retry.max_interruptions. Read as 0 when absent.
   */
  n_interruptions?: number;
  reason?: string;
  next_retry?: number;
  exit_code?: number;
  signal?: string;
  targets?: string[];
  resources?: Record<string, number>;
  /** The previous attempt, taken away while busy, whose command may still be stopping. */
  draining?: DrainingAttempt;
}

/** The stage of a first-wave store, and of a config with a `process:` block and no `stages:`. */
export const DEFAULT_STAGE = 'process';

/** Names one task: one stage of one run (DESIGN §9). */
export interface TaskKey {
  number: number;
  stage: string;
}

/**
 * A task as every store method names it: a bare number names the run's `process` task (the first wave's one
 * stage), so single-stage callers and first-wave stores keep working unchanged.
 */
export type TaskRef = number | TaskKey;

export function taskKeyOf(ref: TaskRef): TaskKey {
  return typeof ref === 'number' ? { number: ref, stage: DEFAULT_STAGE } : ref;
}

/** Why a task waits for an operator: a stage it needs (directly or further up) was abandoned. */
export interface TaskBlock {
  /** The abandoned stage upstream. */
  stage: string;
  reason: string;
  /** Store time when the block was set. */
  time: number;
}

/**
 * One stage of one run (DESIGN §9): created when the run is submitted (or first seen by a daemon) for every
 * stage whose selection matches it. It becomes eligible once every stage in `needs` has a done task.
 */
export interface TaskDoc {
  stage: string;
  /** Stages of the same run whose tasks must be done before this one is claimed; fixed when created. */
  needs: string[];
  /** Set while an upstream task is abandoned: never claimed until a retry upstream clears it. */
  blocked?: TaskBlock;
  /** Absent while the task has never been claimed (pending). */
  processing?: Processing;
}

export interface RunDoc {
  number: number;
  name?: string;
  /** Start of data taking, epoch ms; orders selection after priority. */
  start: number;
  end?: number;
  mode?: string;
  tags: string[];
  priority: number;
  input?: string;
  params: Record<string, unknown>;
  outputs: RunOutput[];
  /**
   * The stage this view of the run is about: the task a claim took, the stage a caller asked for, or by
   * default the run's `process` task (else its first task in pipeline order). `processing` is that task's.
   */
  stage?: string;
  /** The processing document of `stage`'s task; absent when that task was never claimed. */
  processing?: Processing;
  /** Set when `stage`'s task is blocked by an abandoned upstream task. */
  blocked?: TaskBlock;
  /**
   * Every task of the run, in pipeline order (upstream first). Empty for a run no daemon or submit has yet
   * given tasks (inserted by another tool): a daemon creates them under its configured stages.
   */
  tasks?: TaskDoc[];
  /**
   * Problems found reading a document another tool wrote badly (wrong types, invalid JSON); the fields
   * concerned hold safe defaults. Never stored: the daemon fails such a run with these as the reason.
   */
  invalid?: string[];
}

/** What `submit` hands the store: a run that has never been processed. */
export type NewRun = Omit<RunDoc, 'processing' | 'outputs' | 'tags' | 'priority' | 'params'> &
  Partial<Pick<RunDoc, 'tags' | 'priority' | 'params'>>;

export interface RunEvent {
  number: number;
  /** The stage of the task the event belongs to; `process` for events of a first-wave store. */
  stage?: string;
  time: number;
  host: string;
  attempt: number;
  /** State before; null when the run had no processing document. */
  from: RunState | null;
  to: RunState;
  reason?: string;
  exit_code?: number;
  signal?: string;
  duration_ms?: number;
  detail?: Record<string, unknown>;
}

/**
 * The part of an event the caller supplies; the store fills number, time, attempt, from, to, and host (the
 * run's owner) unless `host` names another writer (an operator's or a cleaning host's).
 */
export type EventNote = Pick<RunEvent, 'reason' | 'exit_code' | 'signal' | 'duration_ms' | 'detail'> & {
  host?: string;
};

export interface DiskFigures {
  path: string;
  used_percent: number;
  free_bytes: number;
}

export interface HostDoc {
  host: string;
  pid: number;
  proc_start?: number;
  token: string;
  state: HostState;
  time: number;
  started: number;
  version: string;
  slots: number;
  running: number[];
  disk?: DiskFigures;
  /** Why the host claims nothing while its state is `paused` (a host-level fault, e.g. an unwritable log_dir). */
  paused_reason?: string;
}

/** Operator log priorities, as in bootstrax: 0 debug, 1 info, 2 warning, 3 error, 4 fatal. */
export type LogPriority = 0 | 1 | 2 | 3 | 4;

export interface LogEntry {
  time: number;
  host: string;
  user: string;
  priority: LogPriority;
  message: string;
  number?: number;
}

/**
 * One minute of a host's status (DESIGN §3 monitor): what its daemon saw when it took the sample. A store
 * keeps at most one per host and minute (the later sample of a minute replaces the earlier) for 7 days.
 */
export interface MonitorSample {
  host: string;
  /** When the daemon took the sample, epoch ms (its own clock); the sample covers that UTC minute. */
  time: number;
  state: HostState;
  slots: number;
  /** Numbers of the runs the host was processing. */
  running: number[];
  /** The output disk as last measured; absent until the daemon first measured it. */
  disk?: DiskFigures;
}
