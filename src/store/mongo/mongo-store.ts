// The MongoDB backend of RunStore (DESIGN §3, §4), for several hosts on one replica set. A claim is one
// findOneAndUpdate; every later write of the attempt is conditioned on its lease token. Lease times are the
// server's clock ($$NOW), so hosts with skewed clocks agree. The run document is the source of truth: a
// transition updates it first and then appends its run_events entry (no multi-document transaction, so the
// same code runs on a standalone server; see docs/deployment.md).

import { randomUUID } from 'node:crypto';

import {
  MongoClient,
  ObjectId,
  type Collection,
  type Db,
  type Document,
  type MongoClientOptions,
} from 'mongodb';

import { DuplicateRunError, StoreUnavailableError, UsageError } from '../../errors.js';
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
  TaskCounts,
  TaskSpec,
} from '../run-store.js';
import { excludedNumbers, monitorMinute, monitorSince } from '../run-store.js';
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
import { countValue } from '../decode.js';
import {
  eventDoc,
  eventFromDoc,
  hostDoc,
  hostFromDoc,
  logDoc,
  logFromDoc,
  millis,
  monitorDoc,
  monitorFromDoc,
  newRunDoc,
  previousStateOf,
  processingTimeOf,
  runFromDoc,
  type MongoDoc,
} from './documents.js';
import {
  abandonUpdate,
  claimFilter,
  claimSort,
  claimUpdate,
  COLLECTIONS,
  confirmGoneUpdate,
  COUNT_BY_STATE,
  DRAINING_RETRY_SORT,
  drainingFilter,
  drainingRetryFilter,
  EVENTS_SORT,
  expectationFilter,
  failUpdate,
  fencedFilter,
  finishUpdate,
  heartbeatUpdate,
  hostFenceFilter,
  hostHeartbeatUpdate,
  HOSTS_SORT,
  INDEXES,
  LIST_RUNS_SORT,
  listRunsFilter,
  LOG_SORT,
  logFilter,
  MARK_DEAD_UPDATE,
  markBusyUpdate,
  markDeadFilter,
  forgettableHostsFilter,
  listMonitorFilter,
  monitorFilter,
  MONITOR_SORT,
  NEXT_RETRY_SORT,
  nextRetryFilter,
  overrideUpdate,
  processGroupUpdate,
  releaseUpdate,
  setTagUpdate,
  silentHostsFilter,
  staleFilter,
  invalidProcessingFilter,
  type Pipeline,
} from './queries.js';
import { parseMongoUrl, scrub, type MongoUrl } from './url.js';
import { DEFAULT_POLL_MS, RunWakeUps, topologyFromHello, type Topology } from './wake.js';

/** How long opening waits for a server, unless the URL sets serverSelectionTimeoutMS. */
export const DEFAULT_SERVER_SELECTION_MS = 5_000;

/** Error codes from the server that matter here. */
const DUPLICATE_KEY = 11000;
const UNAUTHORIZED = 13;
const COMMAND_NOT_FOUND = 59;

export interface MongoStoreOptions extends StoreOptions {
  /** Used when the URL does not set serverSelectionTimeoutMS. */
  serverSelectionTimeoutMs?: number;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function codeOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
}

/** The batch index of the first duplicate-key error (0 for a single insert), or -1 for any other error. */
function duplicateIndex(error: unknown): number {
  if (typeof error !== 'object' || error === null) return -1;
  if ('writeErrors' in error) {
    for (const item of [error.writeErrors].flat()) {
      if (codeOf(item) === DUPLICATE_KEY) {
        return typeof item === 'object' && item !== null && 'index' in item && typeof item.index === 'number'
          ? item.index
          : 0;
      }
    }
  }
  return codeOf(error) === DUPLICATE_KEY ? 0 : -1;
}

/** MongoDB's limit(0) means "no limit"; the interface's limit 0 means nothing. */
function checkLimit(limit: number | undefined): number | undefined {
  if (limit === undefined) return undefined;
  if (!Number.isInteger(limit) || limit < 0) {
    throw new UsageError(`limit must be a whole number ≥ 0, got ${limit}`, 'limit');
  }
  return limit;
}

export class MongoRunStore implements RunStore {
  readonly kind = 'mongodb' as const;
  readonly location: string;
  /** The database holding the five collections. */
  readonly database: string;

  private readonly runs: Collection<Document>;
  private readonly events: Collection<Document>;
  private readonly hosts: Collection<Document>;
  private readonly monitor: Collection<Document>;
  private readonly log: Collection<Document>;
  private readonly wakeUps: RunWakeUps;
  private readonly clock: () => number;

  /** Use openMongoStore(); the constructor expects a connected client with the indexes in place. */
  constructor(
    private readonly client: MongoClient,
    db: Db,
    url: MongoUrl,
    topology: Topology,
    options: MongoStoreOptions = {},
  ) {
    // the conformance suite wants the kind first; a mongodb+srv URL keeps its own scheme after it
    this.location = url.masked;
    this.database = db.databaseName;
    this.runs = db.collection(COLLECTIONS.runs);
    this.events = db.collection(COLLECTIONS.events);
    this.hosts = db.collection(COLLECTIONS.hosts);
    this.monitor = db.collection(COLLECTIONS.monitor);
    this.log = db.collection(COLLECTIONS.log);
    this.wakeUps = new RunWakeUps(this.runs, topology, options.idlePollMs ?? DEFAULT_POLL_MS);
    const clock = options.clock ?? Date.now;
    this.clock = () => Math.floor(clock());
  }

  get wakeUpMethod(): string {
    return this.wakeUps.method;
  }

  /** A server is reached by its address, not opened as a file: nothing can be swapped under this process. */
  async verifyIdentity(): Promise<void> {}

  async close(): Promise<void> {
    await this.wakeUps.close();
    await this.client.close();
  }

  // ------------------------------------------------------------------------------------------------- runs

  async insertRun(run: NewRun): Promise<RunDoc> {
    const doc = newRunDoc(run);
    try {
      await this.runs.insertOne(doc);
    } catch (error) {
      if (duplicateIndex(error) >= 0) throw new DuplicateRunError(run.number);
      throw error;
    }
    this.wakeUps.notify();
    return runFromDoc(doc);
  }

  /**
   * All or nothing against runs that exist when it starts and numbers the batch repeats. A run with the same
   * number inserted by another process in between makes the batch fail part way: what this call inserted is
   * taken back (except a run a daemon claimed in that instant) and DuplicateRunError names the number.
   */
  async insertRuns(runs: NewRun[]): Promise<number> {
    if (runs.length === 0) return 0;
    const docs = runs.map(newRunDoc);
    const numbers = runs.map((r) => r.number);
    const existing = await this.runs
      .find({ number: { $in: [...new Set(numbers)] } }, { projection: { number: 1 } })
      .toArray();
    const taken = new Set(existing.map((d) => d.number as unknown));
    const seen = new Set<number>();
    for (const n of numbers) {
      if (taken.has(n) || seen.has(n)) throw new DuplicateRunError(n);
      seen.add(n);
    }
    const ids = docs.map((doc) => {
      const id = new ObjectId();
      doc._id = id;
      return id;
    });
    try {
      await this.runs.insertMany(docs, { ordered: true });
    } catch (error) {
      await this.runs.deleteMany({ _id: { $in: ids }, 'processing.state': null }).catch(() => undefined);
      const index = duplicateIndex(error);
      if (index >= 0) throw new DuplicateRunError(numbers[index] ?? numbers[0]);
      throw error;
    }
    this.wakeUps.notify();
    return runs.length;
  }

  async getRun(number: number): Promise<RunDoc | null> {
    const doc = await this.runs.findOne({ number });
    return doc ? runFromDoc(doc) : null;
  }

  async listRuns(filter: RunFilter = {}): Promise<RunDoc[]> {
    const limit = checkLimit(filter.limit);
    if (limit === 0) return [];
    let cursor = this.runs.find(listRunsFilter(filter)).sort(LIST_RUNS_SORT);
    if (limit !== undefined) cursor = cursor.limit(limit);
    return (await cursor.toArray()).map(runFromDoc);
  }

  async countRunsByState(): Promise<StateCounts> {
    const counts: StateCounts = { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0 };
    const rows = await this.runs.aggregate<{ _id: unknown; n: number }>(COUNT_BY_STATE).toArray();
    for (const { _id: state, n } of rows) {
      if (state === null || state === undefined) counts.pending += n;
      else if (typeof state === 'string' && (RUN_STATES as readonly string[]).includes(state)) {
        counts[state as RunState] += n;
      }
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
    const after = await this.runs.findOneAndUpdate(claimFilter(excludedNumbers(request.exclude)), claimUpdate(request, randomUUID()), {
      sort: claimSort(request.order),
      returnDocument: 'after',
    });
    if (!after) return null;
    await this.appendEvent(after, previousStateOf(after), 'considering', undefined);
    return runFromDoc(after);
  }

  async claimRun(
    number: number,
    request: ClaimRequest,
    expected: RunExpectation,
    options: { drainMs?: number; note?: EventNote } = {},
  ): Promise<RunDoc | null> {
    const minAttempt = await this.maxEventAttempt(number);
    const after = await this.runs.findOneAndUpdate(
      expectationFilter(number, expected),
      claimUpdate(request, randomUUID(), options.drainMs, minAttempt),
      { returnDocument: 'after' },
    );
    if (!after) return null;
    await this.appendEvent(after, expected.state, 'considering', options.note);
    return runFromDoc(after);
  }

  async confirmAttemptGone(number: number, gone: GoneAttempt): Promise<boolean> {
    const result = await this.runs.updateOne(drainingFilter(number, gone), confirmGoneUpdate());
    if (result.matchedCount !== 1) return false;
    this.wakeUps.notify(); // eligible now rather than at the draining record's end
    return true;
  }

  async overrideRun(
    number: number,
    expected: RunExpectation,
    change: RunOverride,
    note: EventNote & { host: string },
  ): Promise<boolean> {
    const update = overrideUpdate(change, randomUUID(), note.host);
    const after = await this.runs.findOneAndUpdate(expectationFilter(number, expected), update, {
      returnDocument: 'after',
    });
    if (!after) return false;
    await this.appendEvent(after, expected.state, change.to, note, { reason: change.reason });
    // a run failed by hand or by cleanup may be eligible at once: idle daemons here should look now
    if (change.to === 'failed') this.wakeUps.notify();
    return true;
  }

  async setRunTag(number: number, tag: string, present: boolean): Promise<RunDoc | null> {
    const after = await this.runs.findOneAndUpdate({ number }, setTagUpdate(tag, present), {
      returnDocument: 'after',
    });
    if (!after) return null;
    if (!present) this.wakeUps.notify(); // a released hold may make the run eligible
    return runFromDoc(after);
  }

  async listStaleRuns(limits: StaleLimits): Promise<RunDoc[]> {
    const docs = await this.runs.find(staleFilter(limits)).sort({ number: 1 }).toArray();
    return docs.map(runFromDoc);
  }

  async listInvalidRuns(): Promise<RunDoc[]> {
    const docs = await this.runs.find(invalidProcessingFilter()).sort({ number: 1 }).toArray();
    return docs.map(runFromDoc);
  }

  async maxEventAttempt(number: number): Promise<number> {
    const last = await this.events.findOne({ number }, { sort: { attempt: -1 }, projection: { attempt: 1 } });
    return countValue(last?.attempt) ?? 0;
  }

  async nextRetryAt(): Promise<number | null> {
    const [ready, draining] = await Promise.all([
      this.runs.findOne(nextRetryFilter(), { sort: NEXT_RETRY_SORT, projection: { 'processing.next_retry': 1 } }),
      // runs waiting for a previous attempt to stop are eligible at max(next_retry, draining.until)
      this.runs.findOne(drainingRetryFilter(), {
        sort: DRAINING_RETRY_SORT,
        projection: { 'processing.next_retry': 1, 'processing.draining.until': 1 },
      }),
    ]);
    const times: number[] = [];
    const readyAt = millis((ready?.processing as Record<string, unknown> | undefined)?.next_retry);
    if (readyAt !== undefined) times.push(readyAt);
    const p = draining?.processing as Record<string, unknown> | undefined;
    const retryAt = millis(p?.next_retry);
    const until = millis((p?.draining as Record<string, unknown> | undefined)?.until);
    if (retryAt !== undefined && until !== undefined) times.push(Math.max(retryAt, until));
    return times.length > 0 ? Math.min(...times) : null;
  }

  // ----------------------------------------------------------------------------------------- fenced writes

  /**
   * Appends the run_events entry of a transition from the run as the transition left it: its server time,
   * its owner (unless the note names another writer) and its event counter, which orders a run's events.
   */
  private async appendEvent(
    after: MongoDoc,
    from: RunState | null,
    to: RunState,
    note: EventNote | undefined,
    defaults: EventNote = {},
  ): Promise<void> {
    const run = runFromDoc(after);
    const event: RunEvent = {
      number: run.number,
      time: processingTimeOf(after),
      host: note?.host ?? run.processing?.host ?? '',
      attempt: run.processing?.attempt ?? 0,
      from,
      to,
    };
    for (const key of ['reason', 'exit_code', 'signal', 'duration_ms', 'detail'] as const) {
      const value = note?.[key] ?? defaults[key];
      if (value !== undefined) (event as unknown as Record<string, unknown>)[key] = value;
    }
    const seq = typeof after.event_seq === 'number' ? after.event_seq : undefined;
    try {
      await this.events.insertOne(eventDoc(event, seq));
    } catch (error) {
      throw new Error(
        `run ${run.number} is now ${to}, but its run_events entry could not be written: ${messageOf(error)}`,
        { cause: error },
      );
    }
  }

  /** One conditional write on the owner's token in a live state, then the event. False when the lease is gone. */
  private async fencedTransition(
    number: number,
    token: string,
    to: RunState,
    update: () => Pipeline,
    note: EventNote | undefined,
    defaults?: EventNote,
  ): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const after = await this.runs.findOneAndUpdate(fencedFilter(number, token), update(), {
      returnDocument: 'after',
    });
    if (!after) return false;
    await this.appendEvent(after, previousStateOf(after), to, note, defaults);
    return true;
  }

  async heartbeatRun(number: number, token: string): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const result = await this.runs.updateOne(fencedFilter(number, token), heartbeatUpdate());
    return result.matchedCount === 1;
  }

  async markBusy(number: number, token: string, fields: BusyFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(number, token, 'busy', () => markBusyUpdate(fields), note);
  }

  async recordProcessGroup(number: number, token: string, fields: ProcessGroupFields): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const result = await this.runs.updateOne(fencedFilter(number, token), processGroupUpdate(fields));
    return result.matchedCount === 1;
  }

  async finishRun(number: number, token: string, output: RunOutput, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(number, token, 'done', () => finishUpdate(output), note);
  }

  async failRun(number: number, token: string, fields: FailureFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(number, token, 'failed', () => failUpdate(fields), note, {
      reason: fields.reason,
      exit_code: fields.exit_code,
      signal: fields.signal,
    });
  }

  async abandonRun(number: number, token: string, fields: AbandonFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(number, token, 'abandoned', () => abandonUpdate(fields), note, {
      reason: fields.reason,
      exit_code: fields.exit_code,
      signal: fields.signal,
    });
  }

  async releaseRun(number: number, token: string, reason: string, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(number, token, 'failed', () => releaseUpdate(reason, note), note, { reason });
  }

  async listRunEvents(number: number): Promise<RunEvent[]> {
    const docs = await this.events.find({ number }).sort(EVENTS_SORT).toArray();
    return docs.map(eventFromDoc);
  }

  // ------------------------------------------------------------------------------------------------ hosts

  async registerHost(doc: HostDoc): Promise<void> {
    await this.hosts.replaceOne({ host: doc.host }, hostDoc(doc), { upsert: true });
  }

  async heartbeatHost(host: string, token: string, patch: HostPatch = {}): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const result = await this.hosts.updateOne(hostFenceFilter(host, token), hostHeartbeatUpdate(patch));
    return result.matchedCount === 1;
  }

  async getHost(host: string): Promise<HostDoc | null> {
    const doc = await this.hosts.findOne({ host });
    return doc ? hostFromDoc(doc) : null;
  }

  async markSilentHostsDead(silentMs: number): Promise<HostDoc[]> {
    const silent = await this.hosts.find(silentHostsFilter(silentMs)).sort(HOSTS_SORT).toArray();
    const marked: HostDoc[] = [];
    for (const doc of silent) {
      const result = await this.hosts.updateOne(markDeadFilter(doc.host, doc.token, doc.time), MARK_DEAD_UPDATE);
      if (result.matchedCount === 1) marked.push(hostFromDoc(doc));
    }
    return marked;
  }

  async forgetDeadHosts(silentMs: number): Promise<HostDoc[]> {
    const dead = await this.hosts.find(forgettableHostsFilter(silentMs)).sort(HOSTS_SORT).toArray();
    const forgotten: HostDoc[] = [];
    for (const doc of dead) {
      const result = await this.hosts.deleteOne({ ...markDeadFilter(doc.host, doc.token, doc.time), state: 'dead' });
      if (result.deletedCount === 1) forgotten.push(hostFromDoc(doc));
    }
    return forgotten;
  }

  async listHosts(): Promise<HostDoc[]> {
    return (await this.hosts.find({}).sort(HOSTS_SORT).toArray()).map(hostFromDoc);
  }

  // ---------------------------------------------------------------------------------------------- monitor

  /** One document per host and minute, replaced by a later sample of that minute; the TTL index expires it. */
  async recordMonitor(sample: MonitorSample): Promise<void> {
    const minute = monitorMinute(sample.time);
    const doc = monitorDoc(sample, minute);
    await this.monitor.replaceOne(monitorFilter(sample.host, doc.minute as Date), doc, { upsert: true });
  }

  /** The TTL monitor deletes about once a minute, so the retention is applied here too. */
  async listMonitor(query: MonitorQuery): Promise<MonitorSample[]> {
    const since = new Date(monitorSince(query, this.clock()));
    const docs = await this.monitor.find(listMonitorFilter(query.host, since)).sort(MONITOR_SORT).toArray();
    return docs.map(monitorFromDoc);
  }

  // -------------------------------------------------------------------------------------------------- log

  async appendLog(entry: Omit<LogEntry, 'time'> & { time?: number }): Promise<void> {
    await this.log.insertOne(logDoc({ ...entry, time: entry.time ?? this.clock() }));
  }

  async listLog(query: LogQuery = {}): Promise<LogEntry[]> {
    const limit = checkLimit(query.limit);
    if (limit === 0) return [];
    let cursor = this.log.find(logFilter(query)).sort(LOG_SORT);
    if (limit !== undefined) cursor = cursor.limit(limit);
    return (await cursor.toArray()).map(logFromDoc);
  }

  // ----------------------------------------------------------------------------------------------- wake-up

  watchNewRuns(onNewRun: () => void): () => void {
    return this.wakeUps.watch(onNewRun);
  }
}

// --------------------------------------------------------------------------------------------------- open

/** What went wrong opening the store, naming hosts, port and database, never the password. */
export function describeOpenFailure(error: unknown, url: MongoUrl): string {
  const where = `${url.srv ? 'the SRV name ' : ''}${url.hosts.join(',')}`;
  const name = typeof error === 'object' && error !== null && 'name' in error ? String(error.name) : '';
  const reason = scrub(messageOf(error), url);
  const code = codeOf(error);
  if (/ServerSelection|Network|Timeout|TopologyClosed/.test(name) || /ENOTFOUND|ECONNREFUSED|EAI_AGAIN/.test(reason)) {
    return (
      `cannot reach MongoDB at ${where} (database ${url.database}): ${reason}; check that the server is ` +
      'running and that the store URL names the right hosts and ports'
    );
  }
  if (code === 18 || code === UNAUTHORIZED || /Auth/i.test(name) || /auth/i.test(reason)) {
    return (
      `MongoDB at ${where} refused runwarden (database ${url.database}): ${reason}; check the user, the ` +
      'password and authSource in the store URL'
    );
  }
  return `cannot open the MongoDB store at ${where} (database ${url.database}): ${reason}`;
}

/** Creates the indexes (idempotent). A user without the right to create them works with what exists. */
async function ensureIndexes(db: Db): Promise<void> {
  const byCollection = new Map<string, (typeof INDEXES)[number][]>();
  for (const spec of INDEXES) byCollection.set(spec.collection, [...(byCollection.get(spec.collection) ?? []), spec]);
  for (const [collection, specs] of byCollection) {
    try {
      await db.collection(collection).createIndexes(
        specs.map(({ key, name, unique, expireAfterSeconds, partialFilterExpression }) => ({
          key,
          name,
          ...(unique ? { unique } : {}),
          ...(expireAfterSeconds !== undefined ? { expireAfterSeconds } : {}),
          ...(partialFilterExpression ? { partialFilterExpression } : {}),
        })),
      );
    } catch (error) {
      if (codeOf(error) === UNAUTHORIZED) continue;
      throw new Error(`creating the indexes of ${collection}: ${messageOf(error)}`, { cause: error });
    }
  }
}

/** `hello`, or `isMaster` on servers older than 4.4.2 that do not know it yet. */
async function helloOf(db: Db): Promise<Document> {
  try {
    return await db.command({ hello: 1 });
  } catch (error) {
    if (codeOf(error) !== COMMAND_NOT_FOUND) throw error;
    return db.command({ isMaster: 1 });
  }
}

/**
 * Connects to the MongoDB deployment named by `url` (database from the URL's path, default `runwarden`),
 * creates the indexes and learns whether change streams are available. Throws UsageError for a URL the
 * driver cannot parse and StoreUnavailableError, naming host:port and database but never the password, when
 * the server cannot be reached or refuses.
 */
export async function openMongoStore(url: string, options: MongoStoreOptions = {}): Promise<MongoRunStore> {
  const parsed = parseMongoUrl(url);
  const clientOptions: MongoClientOptions = { appName: 'runwarden' };
  if (!parsed.options.has('serverselectiontimeoutms')) {
    clientOptions.serverSelectionTimeoutMS = options.serverSelectionTimeoutMs ?? DEFAULT_SERVER_SELECTION_MS;
  }
  let client: MongoClient;
  try {
    client = new MongoClient(url, clientOptions);
  } catch (error) {
    throw new UsageError(`store: cannot use ${parsed.masked}: ${scrub(messageOf(error), parsed)}`, 'store');
  }
  try {
    await client.connect();
    const db = client.db(parsed.database);
    const hello = await helloOf(db);
    await ensureIndexes(db);
    return new MongoRunStore(client, db, parsed, topologyFromHello(hello), options);
  } catch (error) {
    await client.close().catch(() => undefined);
    throw new StoreUnavailableError(describeOpenFailure(error, parsed), { cause: error });
  }
}
