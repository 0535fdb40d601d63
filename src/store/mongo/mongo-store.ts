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
  StageClaim,
  StaleLimits,
  StateCounts,
  StoreOptions,
  TaskCounts,
  TaskSpec,
} from '../run-store.js';
import { monitorMinute, monitorSince, PROCESS_ONLY } from '../run-store.js';
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
  TaskKey,
  TaskRef,
} from '../types.js';
import { DEFAULT_STAGE, RUN_STATES, taskKeyOf } from '../types.js';
import { countValue, isObject, num } from '../decode.js';
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
  checkStage,
  claimFilter,
  claimSort,
  claimRunUpdate,
  claimUpdate,
  COLLECTIONS,
  confirmGoneUpdate,
  COUNT_TASKS,
  createTasksUpdate,
  drainingFilter,
  drainingRetryFilter,
  drainingRetrySort,
  EVENTS_SORT,
  eventsFilter,
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
  newTasksDoc,
  nextRetryFilter,
  nextRetrySort,
  overrideUpdate,
  processGroupUpdate,
  releaseUpdate,
  setTagUpdate,
  silentHostsFilter,
  stageIndexes,
  staleFilter,
  invalidProcessingFilter,
  UNSTAGED_FILTER,
  UPGRADE_FILTER,
  UPGRADE_UPDATE,
  type Filter,
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

/** How often a claim over several stages picks again after other claimers won its pick. */
const MAX_CLAIM_ROUNDS = 20;

/** The task a method names, its stage checked before it becomes part of a field path. */
function keyOf(task: TaskRef): TaskKey {
  const key = taskKeyOf(task);
  checkStage(key.stage);
  return key;
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

  /**
   * Upgrades first-wave documents in place, in one idempotent update: a run's `processing` becomes its
   * `process` task and the run is staged; never-processed runs stay unstaged (a daemon gives them the tasks of
   * its stages). Then creates the indexes of every stage the store holds. openMongoStore calls it.
   */
  async upgrade(): Promise<number> {
    let upgraded = 0;
    try {
      upgraded = (await this.runs.updateMany(UPGRADE_FILTER, UPGRADE_UPDATE)).modifiedCount ?? 0;
    } catch (error) {
      // a user who may only read (a face's `list`) sees the store as it is; a daemon's first write tells
      if (codeOf(error) !== UNAUTHORIZED) throw error;
    }
    await this.ensureStageIndexes(await this.knownStages());
    return upgraded;
  }

  /** Stages whose indexes this process has created (or found it may not create). */
  private readonly indexedStages = new Set<string>();

  /** Creates the indexes of `stages` this process has not yet made sure of (createIndexes is idempotent). */
  private async ensureStageIndexes(stages: readonly string[]): Promise<void> {
    const missing = stages.filter((stage) => !this.indexedStages.has(stage));
    if (missing.length === 0) return;
    const specs = missing.flatMap(stageIndexes);
    try {
      await this.runs.createIndexes(
        specs.map(({ key, name, partialFilterExpression }) => ({
          key,
          name,
          ...(partialFilterExpression ? { partialFilterExpression } : {}),
        })),
      );
    } catch (error) {
      // a user without the right to create indexes works with what exists
      if (codeOf(error) !== UNAUTHORIZED) {
        throw new Error(`creating the indexes of stages ${missing.join(', ')}: ${messageOf(error)}`, { cause: error });
      }
    }
    for (const stage of missing) this.indexedStages.add(stage);
  }

  /** Every stage some run of the store has a task of. */
  private async knownStages(): Promise<string[]> {
    const values = await this.runs.distinct('stages');
    return values.filter((v): v is string => typeof v === 'string').sort();
  }

  async insertRun(run: NewRun, tasks: readonly TaskSpec[] = PROCESS_ONLY): Promise<RunDoc> {
    const doc = newRunDoc(run, newTasksDoc(tasks));
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
  async insertRuns(
    runs: NewRun[],
    tasks: readonly TaskSpec[] | ((run: NewRun) => readonly TaskSpec[]) = PROCESS_ONLY,
  ): Promise<number> {
    if (runs.length === 0) return 0;
    const docs = runs.map((run) => newRunDoc(run, newTasksDoc(typeof tasks === 'function' ? tasks(run) : tasks)));
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
      // a run whose task a daemon claimed in that instant stays (its task has a state now)
      const untouched = { $expr: { $not: [{ $anyElementTrue: [{ $map: {
        input: { $objectToArray: { $ifNull: ['$tasks', {}] } }, as: 't', in: { $ne: [{ $ifNull: ['$$t.v.state', null] }, null] },
      } }] }] } };
      await this.runs.deleteMany({ _id: { $in: ids }, ...untouched }).catch(() => undefined);
      const index = duplicateIndex(error);
      if (index >= 0) throw new DuplicateRunError(numbers[index] ?? numbers[0]);
      throw error;
    }
    this.wakeUps.notify();
    return runs.length;
  }

  async getRun(number: number, stage?: string): Promise<RunDoc | null> {
    if (stage !== undefined) checkStage(stage);
    const doc = await this.runs.findOne({ number });
    return doc ? runFromDoc(doc, stage) : null;
  }

  /** The views of `doc` a listing shows: one per task passing the filter, or one for a run without tasks. */
  private viewsOf(doc: MongoDoc, filter: RunFilter): RunDoc[] {
    const whole = runFromDoc(doc);
    const tasks = whole.tasks ?? [];
    if (tasks.length === 0) {
      const pendingAll = filter.stage === undefined && filter.host === undefined;
      return pendingAll && (filter.state === undefined || filter.state === 'pending') ? [whole] : [];
    }
    return tasks
      .filter((task) => {
        if (filter.stage !== undefined && task.stage !== filter.stage) return false;
        if (filter.state === 'blocked') {
          if (task.blocked === undefined) return false;
        } else if (filter.state !== undefined) {
          if (task.blocked !== undefined) return false;
          if ((task.processing?.state ?? 'pending') !== filter.state) return false;
        }
        return filter.host === undefined || task.processing?.host === filter.host;
      })
      .map((task) => runFromDoc(doc, task.stage));
  }

  async listRuns(filter: RunFilter = {}): Promise<RunDoc[]> {
    const limit = checkLimit(filter.limit);
    if (limit === 0) return [];
    const stages = filter.stage !== undefined ? [checkStage(filter.stage)] : await this.knownStages();
    // every run found gives at least one view, so `limit` runs give enough
    let cursor = this.runs.find(listRunsFilter(filter, stages)).sort(LIST_RUNS_SORT);
    if (limit !== undefined) cursor = cursor.limit(limit);
    const views = (await cursor.toArray()).flatMap((doc) => this.viewsOf(doc, filter));
    return limit !== undefined ? views.slice(0, limit) : views;
  }

  /** Every task's (stage, state, blocked) row; a run without tasks is a row with no stage. */
  private async taskRows(): Promise<Array<{ stage: unknown; state: unknown; blocked: boolean; n: number }>> {
    const rows = await this.runs
      .aggregate<{ _id: { stage?: unknown; state?: unknown; blocked?: unknown }; n: number }>(COUNT_TASKS)
      .toArray();
    return rows.map(({ _id, n }) => ({ stage: _id.stage, state: _id.state, blocked: _id.blocked === true, n }));
  }

  async countRunsByState(): Promise<StateCounts> {
    const counts: StateCounts = { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0 };
    for (const { state, n } of await this.taskRows()) {
      if (state === null || state === undefined) counts.pending += n;
      else if (typeof state === 'string' && (RUN_STATES as readonly string[]).includes(state)) {
        counts[state as RunState] += n;
      }
      // states written by other tools that runwarden does not know are not counted
    }
    return counts;
  }

  async countTasksByStage(): Promise<Record<string, TaskCounts>> {
    const counts: Record<string, TaskCounts> = {};
    for (const { stage, state, blocked, n } of await this.taskRows()) {
      if (typeof stage !== 'string') continue; // a run without tasks belongs to no stage
      const row = (counts[stage] ??= {
        pending: 0,
        considering: 0,
        busy: 0,
        done: 0,
        failed: 0,
        abandoned: 0,
        blocked: 0,
      });
      if (blocked) row.blocked += n;
      else if (state === null || state === undefined) row.pending += n;
      else if (typeof state === 'string' && (RUN_STATES as readonly string[]).includes(state)) {
        row[state as RunState] += n;
      }
    }
    return counts;
  }

  async listUnstagedRuns(limit: number): Promise<RunDoc[]> {
    const n = checkLimit(limit);
    if (n === 0) return [];
    const docs = await this.runs.find(UNSTAGED_FILTER).sort({ number: 1 }).limit(n as number).toArray();
    return docs.map((doc) => runFromDoc(doc));
  }

  async createTasks(number: number, tasks: readonly TaskSpec[]): Promise<number> {
    const update = createTasksUpdate(tasks);
    const before = await this.runs.findOneAndUpdate({ number }, update, { returnDocument: 'before' });
    if (!before) return 0;
    const had = isObject(before.tasks) ? before.tasks : {};
    const created = new Set(tasks.map((t) => t.stage).filter((stage) => !(stage in had))).size;
    if (created > 0) this.wakeUps.notify();
    return created;
  }

  // ------------------------------------------------------------------------------------------------ claim

  /** The stages a request may claim from (the first wave's `process` alone when it names none). */
  private static stagesOf(request: ClaimRequest): StageClaim[] {
    const stages = request.stages ?? [{ stage: DEFAULT_STAGE, depth: 0 }];
    for (const claim of stages) checkStage(claim.stage);
    return [...stages];
  }

  /**
   * The request's excluded run numbers for `stage`: a task names its stage, a bare number the whole run (a
   * claimer with an actor for it takes nothing of it).
   */
  private static excludedFor(request: ClaimRequest, stage: string): number[] {
    return (request.exclude ?? [])
      .filter((ref) => typeof ref === 'number' || ref.stage === stage)
      .map((ref) => taskKeyOf(ref).number);
  }

  /** One conditional claim of `stage`'s task, narrowed by `extra` (a picked run); the event; the view. */
  private async claimStage(request: ClaimRequest, claim: StageClaim, extra: Filter = {}): Promise<RunDoc | null> {
    const filter = { ...claimFilter(MongoRunStore.excludedFor(request, claim.stage), claim.stage, claim.select), ...extra };
    const after = await this.runs.findOneAndUpdate(
      filter,
      claimUpdate(request, randomUUID(), undefined, 0, claim.stage),
      { sort: claimSort(request.order), returnDocument: 'after' },
    );
    if (!after) return null;
    await this.appendEvent(after, claim.stage, previousStateOf(after, claim.stage), 'considering', undefined);
    return runFromDoc(after, claim.stage);
  }

  /**
   * One stage: one findOneAndUpdate, as in the first wave. Several: per stage one index-served find of its
   * best candidate, the best of those by priority, depth, start and number, then the conditional claim of
   * that task (the whole eligibility filter again); another claimer having won it, pick again.
   */
  async claimNextRun(request: ClaimRequest): Promise<RunDoc | null> {
    // a claim that names no stages comes from a first-wave caller, whose one stage is `process`: runs nobody
    // gave tasks yet (inserted by another tool) get their process task first, as a first-wave daemon would
    if (request.stages === undefined) await this.runs.updateMany(UNSTAGED_FILTER, createTasksUpdate(PROCESS_ONLY));
    const stages = MongoRunStore.stagesOf(request);
    if (stages.length === 0) return null;
    await this.ensureStageIndexes(stages.map((s) => s.stage));
    if (stages.length === 1) return this.claimStage(request, stages[0] as StageClaim);
    const sign = request.order === 'oldest' ? 1 : -1;
    for (let round = 0; round < MAX_CLAIM_ROUNDS; round += 1) {
      const found = await Promise.all(
        stages.map(async (claim) => {
          const doc = await this.runs.findOne(
            claimFilter(MongoRunStore.excludedFor(request, claim.stage), claim.stage, claim.select),
            { sort: claimSort(request.order), projection: { number: 1, priority: 1, start: 1 } },
          );
          return doc ? { claim, number: doc.number as number, priority: num(doc.priority) ?? 0, start: millis(doc.start) ?? 0 } : null;
        }),
      );
      const candidates = found.filter((c) => c !== null);
      if (candidates.length === 0) return null;
      candidates.sort(
        (a, b) =>
          b.priority - a.priority ||
          b.claim.depth - a.claim.depth ||
          sign * (a.start - b.start) ||
          sign * (a.number - b.number),
      );
      const best = candidates[0]!;
      const claimed = await this.claimStage(request, best.claim, { number: best.number });
      if (claimed) return claimed;
    }
    return null;
  }

  async claimRun(
    task: TaskRef,
    request: ClaimRequest,
    expected: RunExpectation,
    options: { drainMs?: number; note?: EventNote } = {},
  ): Promise<RunDoc | null> {
    const { number, stage } = keyOf(task);
    const minAttempt = await this.maxEventAttempt(task);
    const after = await this.runs.findOneAndUpdate(
      expectationFilter(number, expected, stage),
      claimRunUpdate(request, randomUUID(), options.drainMs, minAttempt, stage),
      { returnDocument: 'after' },
    );
    if (!after) return null;
    await this.appendEvent(after, stage, expected.state, 'considering', options.note);
    return runFromDoc(after, stage);
  }

  async confirmAttemptGone(task: TaskRef, gone: GoneAttempt): Promise<boolean> {
    const { number, stage } = keyOf(task);
    const result = await this.runs.updateOne(drainingFilter(number, gone, stage), confirmGoneUpdate(stage));
    if (result.matchedCount !== 1) return false;
    this.wakeUps.notify(); // eligible now rather than at the draining record's end
    return true;
  }

  async overrideRun(
    task: TaskRef,
    expected: RunExpectation,
    change: RunOverride,
    note: EventNote & { host: string },
  ): Promise<boolean> {
    const { number, stage } = keyOf(task);
    const update = overrideUpdate(change, randomUUID(), note.host, stage);
    const after = await this.runs.findOneAndUpdate(expectationFilter(number, expected, stage), update, {
      returnDocument: 'after',
    });
    if (!after) return false;
    await this.appendEvent(after, stage, expected.state, change.to, note, { reason: change.reason });
    // a task failed by hand or by cleanup may be eligible at once: idle daemons here should look now
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

  /** The views of every stage's tasks `filterOf` selects, by number then pipeline order. */
  private async tasksWhere(filterOf: (stage: string) => Filter): Promise<RunDoc[]> {
    const views: RunDoc[] = [];
    for (const stage of await this.knownStages()) {
      const docs = await this.runs.find(filterOf(stage)).sort({ number: 1 }).toArray();
      views.push(...docs.map((doc) => runFromDoc(doc, stage)));
    }
    const rank = (view: RunDoc): number => (view.tasks ?? []).findIndex((t) => t.stage === view.stage);
    return views.sort((a, b) => a.number - b.number || rank(a) - rank(b));
  }

  async listStaleRuns(limits: StaleLimits): Promise<RunDoc[]> {
    return this.tasksWhere((stage) => staleFilter(limits, stage));
  }

  async listInvalidRuns(): Promise<RunDoc[]> {
    return this.tasksWhere((stage) => invalidProcessingFilter(stage));
  }

  async maxEventAttempt(task: TaskRef): Promise<number> {
    const { number, stage } = keyOf(task);
    const last = await this.events.findOne(eventsFilter(number, stage), {
      sort: { attempt: -1 },
      projection: { attempt: 1 },
    });
    return countValue(last?.attempt) ?? 0;
  }

  async nextRetryAt(stages?: readonly string[]): Promise<number | null> {
    const names = stages !== undefined ? stages.map((s) => checkStage(s)) : await this.knownStages();
    const times: number[] = [];
    for (const stage of names) {
      const [ready, draining] = await Promise.all([
        this.runs.findOne(nextRetryFilter(stage), { sort: nextRetrySort(stage), projection: { tasks: 1 } }),
        // tasks waiting for a previous attempt to stop are eligible at max(next_retry, draining.until)
        this.runs.findOne(drainingRetryFilter(stage), { sort: drainingRetrySort(stage), projection: { tasks: 1 } }),
      ]);
      const readyAt = ready ? runFromDoc(ready, stage).processing?.next_retry : undefined;
      if (readyAt !== undefined) times.push(readyAt);
      const p = draining ? runFromDoc(draining, stage).processing : undefined;
      if (p?.next_retry !== undefined && p.draining?.until !== undefined) {
        times.push(Math.max(p.next_retry, p.draining.until));
      }
    }
    return times.length > 0 ? Math.min(...times) : null;
  }

  // ----------------------------------------------------------------------------------------- fenced writes

  /**
   * Appends the run_events entry of a transition of `stage`'s task from the run as the transition left it:
   * its server time, its owner (unless the note names another writer) and the run's event counter, which
   * orders a run's events over all its stages.
   */
  private async appendEvent(
    after: MongoDoc,
    stage: string,
    from: RunState | null,
    to: RunState,
    note: EventNote | undefined,
    defaults: EventNote = {},
  ): Promise<void> {
    const run = runFromDoc(after, stage);
    const event: RunEvent = {
      number: run.number,
      stage,
      time: processingTimeOf(after, stage),
      host: note?.host ?? run.processing?.host ?? '',
      attempt: run.processing?.attempt ?? 0,
      from,
      to,
    };
    for (const key of ['reason', 'exit_code', 'signal', 'duration_ms', 'detail'] as const) {
      const value = note?.[key] ?? defaults[key];
      if (value !== undefined) (event as unknown as Record<string, unknown>)[key] = value;
    }
    // the tasks below this write blocked or unblocked, which the write recorded in the task
    const task = isObject(after.tasks) ? after.tasks[stage] : undefined;
    const blocks = isObject(task) && isObject(task.event_detail) ? task.event_detail : undefined;
    if (blocks) event.detail = { ...(event.detail ?? {}), ...blocks };
    const seq = typeof after.event_seq === 'number' ? after.event_seq : undefined;
    try {
      await this.events.insertOne(eventDoc(event, seq));
    } catch (error) {
      throw new Error(
        `run ${run.number} (${stage}) is now ${to}, but its run_events entry could not be written: ${messageOf(error)}`,
        { cause: error },
      );
    }
  }

  /** One conditional write on the owner's token in a live state, then the event. False when the lease is gone. */
  private async fencedTransition(
    task: TaskRef,
    token: string,
    to: RunState,
    update: (stage: string) => Pipeline,
    note: EventNote | undefined,
    defaults?: EventNote,
  ): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const { number, stage } = keyOf(task);
    const after = await this.runs.findOneAndUpdate(fencedFilter(number, token, stage), update(stage), {
      returnDocument: 'after',
    });
    if (!after) return false;
    await this.appendEvent(after, stage, previousStateOf(after, stage), to, note, defaults);
    return true;
  }

  async heartbeatRun(task: TaskRef, token: string): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const { number, stage } = keyOf(task);
    const result = await this.runs.updateOne(fencedFilter(number, token, stage), heartbeatUpdate(stage));
    return result.matchedCount === 1;
  }

  async markBusy(task: TaskRef, token: string, fields: BusyFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(task, token, 'busy', (stage) => markBusyUpdate(fields, stage), note);
  }

  async recordProcessGroup(task: TaskRef, token: string, fields: ProcessGroupFields): Promise<boolean> {
    if (typeof token !== 'string') return false;
    const { number, stage } = keyOf(task);
    const result = await this.runs.updateOne(fencedFilter(number, token, stage), processGroupUpdate(fields, stage));
    return result.matchedCount === 1;
  }

  async finishRun(task: TaskRef, token: string, output: RunOutput, note?: EventNote): Promise<boolean> {
    const done = await this.fencedTransition(task, token, 'done', (stage) => finishUpdate(output, stage), note);
    if (done) this.wakeUps.notify(); // a task below may be eligible now
    return done;
  }

  async failRun(task: TaskRef, token: string, fields: FailureFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(task, token, 'failed', (stage) => failUpdate(fields, stage), note, {
      reason: fields.reason,
      exit_code: fields.exit_code,
      signal: fields.signal,
    });
  }

  async abandonRun(task: TaskRef, token: string, fields: AbandonFields, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(task, token, 'abandoned', (stage) => abandonUpdate(fields, stage), note, {
      reason: fields.reason,
      exit_code: fields.exit_code,
      signal: fields.signal,
    });
  }

  async releaseRun(task: TaskRef, token: string, reason: string, note?: EventNote): Promise<boolean> {
    return this.fencedTransition(task, token, 'failed', (stage) => releaseUpdate(reason, note, stage), note, {
      reason,
    });
  }

  async listRunEvents(number: number, stage?: string): Promise<RunEvent[]> {
    const docs = await this.events.find(eventsFilter(number, stage)).sort(EVENTS_SORT).toArray();
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
    const store = new MongoRunStore(client, db, parsed, topologyFromHello(hello), options);
    await store.upgrade();
    return store;
  } catch (error) {
    await client.close().catch(() => undefined);
    throw new StoreUnavailableError(describeOpenFailure(error, parsed), { cause: error });
  }
}
