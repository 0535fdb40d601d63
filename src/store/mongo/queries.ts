// Every filter, sort and update document the MongoDB backend sends, built by plain functions so tests can
// check their meaning with an independent implementation of the query language (mingo) without a server.
//
// Rules that keep these documents right on a real server:
// - Lease and staleness times are the server's `$$NOW` (update pipelines and `$expr`, MongoDB ≥ 4.2), so
//   hosts with skewed clocks agree on who holds a lease.
// - Every value that comes from the client is wrapped in `$literal` inside a pipeline: a reason such as
//   "$HOME is unset" would otherwise be read as a field path.
// - A sub-document is rebuilt with `$mergeObjects` rather than a nested `$set` spec, whose merge-or-replace
//   meaning differs between implementations; fields are removed with a separate `$unset` stage.
// - Comparisons of a field against `$$NOW` first require the field to be a date: in BSON order a missing or
//   numeric value sorts below every date and would otherwise count as "long ago".

import type { Document } from 'mongodb';

import type {
  AbandonFields,
  BusyFields,
  ClaimRequest,
  FailureFields,
  HostPatch,
  LogQuery,
  ProcessGroupFields,
  RunExpectation,
  RunFilter,
  RunOverride,
  SelectionOrder,
  StaleLimits,
} from '../run-store.js';
import { MONITOR_RETENTION_MS, logSince } from '../run-store.js';
import type { EventNote, RunOutput } from '../types.js';
import { MAX_DATE_MS } from '../../time-range.js';
import { REPAIRABLE_STATES } from '../decode.js';
import { RUN_STATES } from '../types.js';
import { toDate } from './documents.js';

export type Filter = Document;
export type Pipeline = Document[];
export type SortSpec = Record<string, 1 | -1>;

/** Collection names (DESIGN §3). */
export const COLLECTIONS = {
  runs: 'runs',
  events: 'run_events',
  hosts: 'hosts',
  monitor: 'monitor',
  log: 'log',
} as const;

/** Tags that keep a run from being claimed. */
export const HELD_TAGS: readonly string[] = ['hold', 'abandon'];
/** States in which an attempt is still running and its owner may write. */
export const LIVE_STATES: readonly string[] = ['considering', 'busy'];

/** Fields of `processing` that describe one attempt's outcome; a new claim clears them. */
const ATTEMPT_FIELDS = [
  'started',
  'ended',
  'reason',
  'next_retry',
  'exit_code',
  'signal',
  'pgid',
  'proc_start',
  'targets',
  'resources',
] as const;

function literal(value: unknown): Document {
  return { $literal: value };
}

/** `$field` as a whole number when it holds one or its digits as text ("7", another tool's), else 0. */
function countOf(path: string): Document {
  return { $max: [0, { $convert: { input: path, to: 'long', onError: 0, onNull: 0 } }] };
}

/** A whole number ≥ 0 (decode's countValue for numbers). */
const COUNT: Document = { $type: 'number', $gte: 0, $lte: Number.MAX_SAFE_INTEGER, $mod: [1, 0] };
/** A BSON date within what a JavaScript Date holds. */
const LEASE_DATE: Document = { $type: 'date', $gte: new Date(-MAX_DATE_MS), $lte: new Date(MAX_DATE_MS) };

/** `$field` when it holds a number, else `fallback`. */
function numberOr(path: string, fallback: number): Document {
  return { $cond: [{ $isNumber: path }, path, fallback] };
}

/** The run's processing sub-document when it is one, else an empty document. */
const CURRENT_PROCESSING: Document = {
  $cond: [{ $eq: [{ $type: '$processing' }, 'object'] }, '$processing', {}],
};

/**
 * Top-level field stamped with the server's time when a change by hand may have made the run eligible (an
 * override to failed, a hold released): change streams and pollers of other processes watch it.
 */
export const WAKE_FIELD = 'wake_at';

/** `$set` stage that rebuilds `processing` from its current fields and `fields`, and counts one more event. */
function setProcessing(fields: Document, countEvent: boolean, wake = false): Document {
  const set: Document = { processing: { $mergeObjects: [CURRENT_PROCESSING, fields] } };
  if (countEvent) set.event_seq = { $add: [numberOr('$event_seq', 0), 1] };
  if (wake) set[WAKE_FIELD] = '$$NOW';
  return { $set: set };
}

function unsetProcessing(fields: readonly string[]): Document[] {
  return fields.length === 0 ? [] : [{ $unset: fields.map((f) => `processing.${f}`) }];
}

/**
 * A transition: records the state it leaves (so the event can be written from the returned document),
 * the new state, and the server's time as the lease heartbeat. `unset` lists fields it clears.
 */
function transition(to: string, fields: Document, unset: readonly string[] = [], wake = false): Pipeline {
  return [
    setProcessing(
      {
        previous_state: { $ifNull: ['$processing.state', null] },
        state: literal(to),
        time: '$$NOW',
        ...fields,
      },
      true,
      wake,
    ),
    ...unsetProcessing(unset),
  ];
}

/** Optional client values: set when given, otherwise listed for removal. */
function optional(values: Record<string, unknown>): { set: Document; unset: string[] } {
  const set: Document = {};
  const unset: string[] = [];
  for (const [key, value] of Object.entries(values)) {
    if (value === undefined || value === null) unset.push(key);
    else set[key] = literal(value);
  }
  return { set, unset };
}

// ------------------------------------------------------------------------------------------- drain fence

/** True (an aggregation expression) while the run's previous attempt may still be stopping. */
const DRAINING_IN_FORCE: Document = {
  $and: [
    { $eq: [{ $type: '$processing.draining.until' }, 'date'] },
    { $gt: ['$processing.draining.until', '$$NOW'] },
  ],
};

/**
 * The `processing.draining` a write taking the run away leaves (issue 12): a busy attempt becomes the record,
 * until its last heartbeat + drainMs (server time); otherwise the current record stays when it is still in
 * force (or always, for an override), and is set to null when a claim finds it expired.
 */
function drainingAfter(drainMs: number | undefined, keepExpired: boolean): Document {
  const kept = keepExpired
    ? { $ifNull: ['$processing.draining', null] }
    : { $cond: [DRAINING_IN_FORCE, '$processing.draining', null] };
  if (drainMs === undefined) return kept;
  const lastBeat = { $cond: [{ $eq: [{ $type: '$processing.time' }, 'date'] }, '$processing.time', '$$NOW'] };
  return {
    $cond: [
      { $eq: ['$processing.state', 'busy'] },
      {
        host: '$processing.host',
        pid: '$processing.pid',
        attempt: '$processing.attempt',
        pgid: '$processing.pgid',
        proc_start: '$processing.proc_start',
        until: { $add: [lastBeat, literal(drainMs)] },
      },
      kept,
    ],
  };
}

/** The runs whose draining record names `gone` (host and attempt): confirmAttemptGone clears it. */
export function drainingFilter(number: number, gone: { host: string; attempt: number }): Filter {
  return { number, 'processing.draining.host': gone.host, 'processing.draining.attempt': gone.attempt };
}

/** Clears the draining record and stamps the wake-up field: the run may be eligible now. */
export function confirmGoneUpdate(): Pipeline {
  return [setProcessing({ draining: null }, false, true)];
}

// ------------------------------------------------------------------------------------------------ claim

/**
 * Runs a fresh daemon may take: not tagged hold/abandon, and either never processed (no processing state)
 * or failed with a next_retry that the server's clock has reached.
 */
export function claimFilter(exclude: readonly number[] = []): Filter {
  return {
    ...(exclude.length > 0 ? { number: { $nin: [...exclude] } } : {}),
    tags: { $nin: [...HELD_TAGS] },
    $or: [
      { 'processing.state': null },
      {
        'processing.state': 'failed',
        'processing.next_retry': { $type: 'date' },
        // a counter another tool left unreadable is repaired by cleanup first, so an attempt never goes back
        'processing.attempt': COUNT,
        'processing.n_failures': COUNT,
        // and no previous attempt still draining
        $expr: { $and: [{ $lte: ['$processing.next_retry', '$$NOW'] }, { $not: [DRAINING_IN_FORCE] }] },
      },
    ],
  };
}

/** Priority desc, then start (newest first by default, as bootstrax), then number likewise. */
export function claimSort(order: SelectionOrder): SortSpec {
  const direction = order === 'oldest' ? 1 : -1;
  return { priority: -1, start: direction, number: direction };
}

/**
 * The claim write: considering, owner host and pid, a fresh token, attempt + 1, server time, n_failures kept;
 * the previous attempt's outcome is cleared. One update, so a claim is all or nothing.
 */
export function claimUpdate(request: ClaimRequest, token: string, drainMs?: number, minAttempt = 0): Pipeline {
  return transition(
    'considering',
    {
      host: literal(request.host),
      pid: literal(request.pid),
      token: literal(token),
      // past the stored counter (digits as text included) and past `minAttempt`, the run's history
      attempt: { $add: [{ $max: [countOf('$processing.attempt'), literal(minAttempt)] }, 1] },
      n_failures: countOf('$processing.n_failures'),
      draining: drainingAfter(drainMs, false),
    },
    ATTEMPT_FIELDS,
  );
}

/** The run `number` when it is still as the caller saw it (state and, for a processed run, token). */
export function expectationFilter(number: number, expected: RunExpectation): Filter {
  if (expected.state === null) return { number, 'processing.state': null };
  const token = expected.token ?? '';
  // SQLite compares tokens with null read as '': a processed run without a token matches an empty one
  return {
    number,
    'processing.state': expected.state,
    'processing.token': token === '' ? { $in: [null, ''] } : token,
  };
}

/** Failed runs that are not held, with no previous attempt still draining: nextRetryAt's next_retry. */
export function nextRetryFilter(): Filter {
  return {
    'processing.state': 'failed',
    tags: { $nin: [...HELD_TAGS] },
    'processing.next_retry': { $type: 'date' },
    $expr: { $not: [DRAINING_IN_FORCE] },
  };
}

export const NEXT_RETRY_SORT: SortSpec = { 'processing.next_retry': 1 };

/** Failed runs that are not held and wait for a previous attempt to stop: eligible at max(next_retry, until). */
export function drainingRetryFilter(): Filter {
  return {
    'processing.state': 'failed',
    tags: { $nin: [...HELD_TAGS] },
    'processing.next_retry': { $type: 'date' },
    $expr: DRAINING_IN_FORCE,
  };
}

export const DRAINING_RETRY_SORT: SortSpec = { 'processing.draining.until': 1 };

// ----------------------------------------------------------------------------------------- fenced writes

/** The owner's run: its token, in a live state. Every write of an attempt is conditioned on this. */
export function fencedFilter(number: number, token: string): Filter {
  return { number, 'processing.token': token, 'processing.state': { $in: [...LIVE_STATES] } };
}

export function heartbeatUpdate(): Pipeline {
  return [setProcessing({ time: '$$NOW' }, false)];
}

export function markBusyUpdate(fields: BusyFields): Pipeline {
  const extra = optional({ targets: fields.targets, resources: fields.resources });
  return transition('busy', { started: literal(toDate(fields.started, 'started')), ...extra.set }, extra.unset);
}

export function processGroupUpdate(fields: ProcessGroupFields): Pipeline {
  const extra = optional({ proc_start: fields.proc_start });
  return [
    setProcessing({ pgid: literal(fields.pgid), time: '$$NOW', ...extra.set }, false),
    ...unsetProcessing(extra.unset),
  ];
}

/** done, ended now, and the output appended to `outputs` (a malformed `outputs` becomes a list). */
export function finishUpdate(output: RunOutput): Pipeline {
  const stages = transition('done', { ended: '$$NOW' }, ['next_retry']);
  const registered = {
    location: output.location,
    host: output.host,
    attempt: output.attempt,
    at: toDate(output.at, 'at'),
  };
  stages.push({
    $set: {
      outputs: { $concatArrays: [{ $cond: [{ $isArray: '$outputs' }, '$outputs', []] }, [literal(registered)]] },
    },
  });
  return stages;
}

/** `n_interruptions` set when the caller gives it; absent keeps the stored count (mergeObjects). */
function interruptionCount(value: number | undefined): Document {
  return value === undefined ? {} : { n_interruptions: literal(value) };
}

export function failUpdate(fields: FailureFields): Pipeline {
  const extra = optional({ exit_code: fields.exit_code, signal: fields.signal });
  return transition(
    'failed',
    {
      ended: '$$NOW',
      reason: literal(fields.reason),
      n_failures: literal(fields.n_failures),
      ...interruptionCount(fields.n_interruptions),
      // the caller's clock decided when to retry; stored as given
      next_retry: literal(toDate(fields.next_retry, 'next_retry')),
      ...extra.set,
    },
    extra.unset,
  );
}

export function abandonUpdate(fields: AbandonFields): Pipeline {
  const extra = optional({ exit_code: fields.exit_code, signal: fields.signal });
  return transition(
    'abandoned',
    {
      ended: '$$NOW',
      reason: literal(fields.reason),
      n_failures: literal(fields.n_failures),
      ...interruptionCount(fields.n_interruptions),
      ...extra.set,
    },
    ['next_retry', ...extra.unset],
  );
}

/**
 * Hands the run back: failed, eligible again at once by the server's clock, n_failures unchanged, one more
 * interruption counted (a count another tool wrote as something else starts again at 1).
 */
export function releaseUpdate(reason: string, note?: EventNote): Pipeline {
  const extra = optional({ exit_code: note?.exit_code, signal: note?.signal });
  const counted = {
    $cond: [
      { $and: [{ $isNumber: '$processing.n_interruptions' }, { $gte: ['$processing.n_interruptions', 0] }] },
      '$processing.n_interruptions',
      0,
    ],
  };
  return transition(
    'failed',
    {
      ended: '$$NOW',
      next_retry: '$$NOW',
      reason: literal(reason),
      n_interruptions: { $add: [counted, 1] },
      ...extra.set,
    },
    extra.unset,
  );
}

// ---------------------------------------------------------------------------------- operator and repair

/**
 * An operator's or cleaner's write: the new state with a fresh token (so the owner is fenced out); a run
 * never processed gets the writer as its host, pid 0 and attempt 0. A run failed this way may be eligible at
 * once, so the write also stamps the wake-up field.
 */
export function overrideUpdate(change: RunOverride, token: string, writer: string): Pipeline {
  const failed = change.to === 'failed';
  if (failed && change.next_retry === undefined) {
    throw new Error('overrideRun: next_retry is required when the run becomes failed');
  }
  return transition(
    change.to,
    {
      token: literal(token),
      ended: '$$NOW',
      reason: literal(change.reason),
      n_failures: literal(change.n_failures),
      ...interruptionCount(change.n_interruptions),
      ...(failed ? { next_retry: literal(toDate(change.next_retry as number, 'next_retry')) } : {}),
      host: { $ifNull: ['$processing.host', literal(writer)] },
      pid: { $ifNull: ['$processing.pid', 0] },
      attempt: change.attempt !== undefined ? literal(change.attempt) : { $ifNull: ['$processing.attempt', 0] },
      draining: drainingAfter(change.drainMs, true),
    },
    ['exit_code', 'signal', ...(failed ? [] : ['next_retry'])],
    failed,
  );
}

/** Adds the tag once or removes every copy; a malformed `tags` is treated as empty. */
export function setTagUpdate(tag: string, present: boolean): Pipeline {
  const tags = { $cond: [{ $isArray: '$tags' }, '$tags', []] };
  const value = present
    ? { $cond: [{ $in: [literal(tag), tags] }, tags, { $concatArrays: [tags, [literal(tag)]] }] }
    : { $filter: { input: tags, as: 'tag', cond: { $ne: ['$$tag', literal(tag)] } } };
  return [{ $set: present ? { tags: value } : { tags: value, [WAKE_FIELD]: '$$NOW' } }];
}

/** Leases older than the limits by the server's clock: considering past maxConsideringMs, busy past maxBusyMs. */
export function staleFilter(limits: StaleLimits): Filter {
  const olderThan = (ms: number): Document => ({ $lt: ['$processing.time', { $subtract: ['$$NOW', ms] }] });
  return {
    'processing.time': { $type: 'date' },
    $or: [
      { 'processing.state': 'considering', $expr: olderThan(limits.maxConsideringMs) },
      { 'processing.state': 'busy', $expr: olderThan(limits.maxBusyMs) },
    ],
  };
}

/**
 * Runs whose processing document is not a valid state (decode's processingProblems, in a repairable or
 * unknown state): an unknown state; considering or busy without a token, host or lease date; failed without a
 * next_retry date; considering, busy or failed with an attempt or n_failures that is not a whole number.
 */
export function invalidProcessingFilter(): Filter {
  return {
    'processing.state': { $ne: null },
    $or: [
      { 'processing.state': { $nin: [...RUN_STATES] } },
      {
        'processing.state': { $in: [...LIVE_STATES] },
        $nor: [
          {
            'processing.token': { $type: 'string', $ne: '' },
            'processing.host': { $type: 'string', $ne: '' },
            'processing.time': LEASE_DATE,
          },
        ],
      },
      { 'processing.state': 'failed', $nor: [{ 'processing.next_retry': LEASE_DATE }] },
      {
        'processing.state': { $in: [...REPAIRABLE_STATES] },
        $nor: [{ 'processing.attempt': COUNT, 'processing.n_failures': COUNT }],
      },
    ],
  };
}

// ------------------------------------------------------------------------------------------------ listing

export function listRunsFilter(filter: RunFilter): Filter {
  const query: Filter = {};
  if (filter.state === 'pending') query['processing.state'] = null;
  else if (filter.state !== undefined) query['processing.state'] = filter.state;
  if (filter.host !== undefined) query['processing.host'] = filter.host;
  if (filter.tag !== undefined) query.tags = filter.tag;
  if (filter.noOutputs) query.$or = [{ outputs: { $not: { $type: 'array' } } }, { outputs: { $size: 0 } }];
  return query;
}

export const LIST_RUNS_SORT: SortSpec = { number: -1 };

/** One row per processing state; null is pending (no processing state). */
export const COUNT_BY_STATE: Pipeline = [{ $group: { _id: '$processing.state', n: { $sum: 1 } } }];

export const EVENTS_SORT: SortSpec = { seq: 1, time: 1, _id: 1 };

// ------------------------------------------------------------------------------------------------- hosts

export function hostFenceFilter(host: string, token: string): Filter {
  return { host, token };
}

export function hostHeartbeatUpdate(patch: HostPatch): Pipeline {
  const set: Document = { time: '$$NOW' };
  if (patch.state !== undefined) set.state = literal(patch.state);
  if (patch.slots !== undefined) set.slots = literal(patch.slots);
  if (patch.running !== undefined) set.running = literal([...patch.running]);
  if (patch.disk !== undefined) set.disk = literal({ ...patch.disk });
  const stages: Pipeline = [{ $set: set }];
  if (patch.paused_reason === null) stages.push({ $unset: ['paused_reason'] });
  else if (patch.paused_reason !== undefined) set.paused_reason = literal(patch.paused_reason);
  return stages;
}

/** Hosts not stopped or dead whose last heartbeat is older than `silentMs` by the server's clock. */
export function silentHostsFilter(silentMs: number): Filter {
  return {
    state: { $nin: ['stopped', 'dead'] },
    time: { $type: 'date' },
    $expr: { $lt: ['$time', { $subtract: ['$$NOW', silentMs] }] },
  };
}

/** Dead hosts silent for longer than `silentMs` by the server's clock: cleanup forgets them. */
export function forgettableHostsFilter(silentMs: number): Filter {
  return {
    state: 'dead',
    time: { $type: 'date' },
    $expr: { $lt: ['$time', { $subtract: ['$$NOW', silentMs] }] },
  };
}

/** Marks one silent host dead only if it has not written since it was read (same token and time). */
export function markDeadFilter(host: string, token: unknown, time: unknown): Filter {
  return { host, token, time };
}

/** A dead host runs nothing: its RUNNING list goes with the state. */
export const MARK_DEAD_UPDATE: Document = { $set: { state: 'dead', running: [] } };

export const HOSTS_SORT: SortSpec = { host: 1 };

/** The minute a monitor document covers: at most one document per host per minute (DESIGN §3). */
export function monitorFilter(host: string, minute: Date): Filter {
  return { host, minute };
}

/** Samples of one host (or all) taken at or after `since` (a date, so numeric times of other tools stay out). */
export function listMonitorFilter(host: string | undefined, since: Date): Filter {
  return { ...(host !== undefined ? { host } : {}), time: { $type: 'date', $gte: since } };
}

export const MONITOR_SORT: SortSpec = { host: 1, minute: 1 };

// --------------------------------------------------------------------------------------------------- log

export function logFilter(query: LogQuery): Filter {
  const filter: Filter = {};
  if (query.minPriority !== undefined) filter.priority = { $gte: query.minPriority };
  if (query.number !== undefined) filter.number = query.number;
  const since = logSince(query);
  if (since !== undefined) filter.time = { $gte: new Date(since) };
  return filter;
}

export const LOG_SORT: SortSpec = { time: -1, _id: -1 };

// ----------------------------------------------------------------------------------------------- indexes

export interface IndexSpec {
  collection: string;
  key: SortSpec;
  name: string;
  unique?: boolean;
  expireAfterSeconds?: number;
  partialFilterExpression?: Document;
}

/** How long the monitor collection keeps host status documents. */
export const MONITOR_TTL_SECONDS = MONITOR_RETENTION_MS / 1000;

/**
 * Indexes created at start (createIndexes is idempotent). The claim filter is an $or of two equalities on
 * processing.state; each branch walks its claim index in sort order and the server merges them.
 */
export const INDEXES: readonly IndexSpec[] = [
  { collection: COLLECTIONS.runs, key: { number: 1 }, name: 'number_unique', unique: true },
  {
    collection: COLLECTIONS.runs,
    key: { 'processing.state': 1, priority: -1, start: -1, number: -1 },
    name: 'claim_newest',
  },
  {
    collection: COLLECTIONS.runs,
    key: { 'processing.state': 1, priority: -1, start: 1, number: 1 },
    name: 'claim_oldest',
  },
  { collection: COLLECTIONS.runs, key: { 'processing.state': 1, 'processing.time': 1 }, name: 'stale' },
  { collection: COLLECTIONS.runs, key: { 'processing.state': 1, 'processing.next_retry': 1 }, name: 'next_retry' },
  { collection: COLLECTIONS.runs, key: { 'processing.state': 1, number: -1 }, name: 'state_number' },
  { collection: COLLECTIONS.runs, key: { 'processing.host': 1, number: -1 }, name: 'host_number' },
  { collection: COLLECTIONS.runs, key: { tags: 1, number: -1 }, name: 'tags_number' },
  {
    collection: COLLECTIONS.runs,
    key: { [WAKE_FIELD]: -1 },
    name: WAKE_FIELD,
    partialFilterExpression: { [WAKE_FIELD]: { $exists: true } },
  },
  { collection: COLLECTIONS.events, key: { number: 1, seq: 1, time: 1, _id: 1 }, name: 'run_order' },
  { collection: COLLECTIONS.hosts, key: { host: 1 }, name: 'host_unique', unique: true },
  {
    collection: COLLECTIONS.monitor,
    key: { time: 1 },
    name: 'expire_after_7_days',
    expireAfterSeconds: MONITOR_TTL_SECONDS,
  },
  { collection: COLLECTIONS.monitor, key: { host: 1, minute: 1 }, name: 'host_minute', unique: true },
  { collection: COLLECTIONS.log, key: { time: -1, _id: -1 }, name: 'time' },
  {
    collection: COLLECTIONS.log,
    key: { number: 1, time: -1, _id: -1 },
    name: 'number_time',
    partialFilterExpression: { number: { $exists: true } },
  },
];
