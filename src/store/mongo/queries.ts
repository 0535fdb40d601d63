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
// - A run's tasks live in `tasks.<stage>` (DESIGN §9): every processing field of the first wave's
//   `processing`, plus `needs`, `ready` (every needed task done) and `blocked`. A stage name is checked
//   (stagePath) before it becomes part of a field path. Every change that touches several tasks of a run
//   (finish → ready, abandon → blocked, retry → unblocked) is one update of the run's document, computed
//   from the document as the update finds it, so two hosts writing two tasks of one run cannot both miss it.

import type { Document } from 'mongodb';

import { UsageError } from '../../errors.js';
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
  TaskSpec,
} from '../run-store.js';
import { MONITOR_RETENTION_MS, logSince } from '../run-store.js';
import type { EventNote, RunOutput } from '../types.js';
import { DEFAULT_STAGE } from '../types.js';
import type { RunSelector } from '../../config/schema.js';
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

/** Tags that keep every task of a run from being claimed. */
export const HELD_TAGS: readonly string[] = ['hold', 'abandon'];
/** States in which an attempt is still running and its owner may write. */
export const LIVE_STATES: readonly string[] = ['considering', 'busy'];

/** Tags that keep `stage`'s task from being claimed: the run-wide ones and `hold:<stage>`. */
export function heldTags(stage: string): string[] {
  return [...HELD_TAGS, `hold:${stage}`];
}

/** Fields of a task that describe one attempt's outcome; a new claim clears them. */
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

/** What a stage name may be (config validates the same): it becomes part of field paths here. */
const STAGE_NAME = /^[a-z][a-z0-9_]{0,39}$/;

/** `stage` when it is a valid stage name; a UsageError naming it otherwise. */
export function checkStage(stage: unknown, field = 'stage'): string {
  if (typeof stage !== 'string' || !STAGE_NAME.test(stage)) {
    throw new UsageError(
      `${field}: ${JSON.stringify(stage)} is not a stage name (a lowercase letter, then up to 39 lowercase ` +
        'letters, digits or _)',
      field,
    );
  }
  return stage;
}

/** The path of `stage`'s task (`tasks.<stage>`), or of one of its fields. */
export function taskPath(stage: string, field?: string): string {
  const base = `tasks.${checkStage(stage)}`;
  return field === undefined ? base : `${base}.${field}`;
}

/** `$tasks.<stage>.<field>`: the field as an aggregation expression. */
function ref(stage: string, field?: string): string {
  return `$${taskPath(stage, field)}`;
}

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

/** The run's tasks when `tasks` is a document, else an empty one. */
const TASKS: Document = { $cond: [{ $eq: [{ $type: '$tasks' }, 'object'] }, '$tasks', {}] };

/** The run's stage list when it is one, else an empty list. */
const STAGE_LIST: Document = { $cond: [{ $isArray: '$stages' }, '$stages', []] };

/**
 * `stage`'s task when it is a document; a task the run does not have yet (an operator's or `process N`'s write
 * to a run no daemon gave tasks) starts as one needing nothing.
 */
function currentTask(stage: string): Document {
  return {
    $cond: [{ $eq: [{ $type: ref(stage) }, 'object'] }, ref(stage), { needs: [], ready: true }],
  };
}

/**
 * Top-level field stamped with the server's time when a change may have made a task eligible (a task done,
 * an override to failed, a hold released): change streams and pollers of other processes watch it.
 */
export const WAKE_FIELD = 'wake_at';

/** `$set` stage that rebuilds `stage`'s task from its current fields and `fields`, and counts one more event. */
function setTask(stage: string, fields: Document, countEvent: boolean, wake = false): Document {
  const set: Document = {
    tasks: { $mergeObjects: [TASKS, { [checkStage(stage)]: { $mergeObjects: [currentTask(stage), fields] } }] },
  };
  if (countEvent) set.event_seq = { $add: [numberOr('$event_seq', 0), 1] };
  if (wake) set[WAKE_FIELD] = '$$NOW';
  return { $set: set };
}

function unsetTask(stage: string, fields: readonly string[]): Document[] {
  return fields.length === 0 ? [] : [{ $unset: fields.map((f) => taskPath(stage, f)) }];
}

/** Appends `stage` to the run's stage list when a write created its task (claimRun/overrideRun on a new task). */
function listStage(stage: string): Document {
  return {
    $set: {
      stages: {
        $cond: [
          { $in: [literal(stage), STAGE_LIST] },
          STAGE_LIST,
          { $concatArrays: [STAGE_LIST, [literal(stage)]] },
        ],
      },
    },
  };
}

/**
 * A transition of `stage`'s task: records the state it leaves (so the event can be written from the returned
 * document), the new state, and the server's time as the lease heartbeat. `unset` lists fields it clears.
 */
function transition(stage: string, to: string, fields: Document, unset: readonly string[] = [], wake = false): Pipeline {
  return [
    setTask(
      stage,
      {
        previous_state: { $ifNull: [ref(stage, 'state'), null] },
        state: literal(to),
        time: '$$NOW',
        // what this write did to the tasks below, for its event (set by the block stages that follow)
        event_detail: null,
        ...fields,
      },
      true,
      wake,
    ),
    ...unsetTask(stage, unset),
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

// --------------------------------------------------------------------------------------- pipeline of tasks

/** The state of the run's task named by the expression `name` (e.g. `$$n`), missing when it has none. */
function stateOfTask(name: unknown): Document {
  return {
    $let: {
      vars: {
        m: { $arrayElemAt: [{ $filter: { input: { $objectToArray: TASKS }, as: 'o', cond: { $eq: ['$$o.k', name] } } }, 0] },
      },
      in: '$$m.v.state',
    },
  };
}

/** The list held by the expression `value` when it is one, else an empty list. */
function listOr(value: string): Document {
  return { $cond: [{ $isArray: value }, value, []] };
}

/** True when every stage named in the list `needs` (an expression) has a done task in this run. */
function allDone(needs: string): Document {
  return { $allElementsTrue: [{ $map: { input: listOr(needs), as: 'n', in: { $eq: [stateOfTask('$$n'), 'done'] } } }] };
}

/** The task `$$t.v` without its `blocked` field. */
const WITHOUT_BLOCK: Document = {
  $arrayToObject: { $filter: { input: { $objectToArray: '$$t.v' }, as: 'f', cond: { $ne: ['$$f.k', 'blocked'] } } },
};

/** Rebuilds every task of the run with `each` (an expression over `$$t.k`, the stage, and `$$t.v`, the task). */
function everyTask(each: Document): Document {
  return {
    $set: {
      tasks: {
        $arrayToObject: {
          $map: {
            input: { $objectToArray: TASKS },
            as: 't',
            in: { k: '$$t.k', v: { $cond: [{ $eq: [{ $type: '$$t.v' }, 'object'] }, each, '$$t.v'] } },
          },
        },
      },
    },
  };
}

/**
 * Recomputes every task's `ready` (all its needs done) from the document as this stage finds it: placed after
 * the transition that changed a task, so the change is seen (a finish makes its downstream ready; a done task
 * retried by hand makes them wait again).
 */
const RECOMPUTE_READY: Document = everyTask({ $mergeObjects: ['$$t.v', { ready: allDone('$$t.v.needs') }] });

/** Clears every block `stage` set on the run's tasks. */
function clearBlocksBy(stage: string): Document {
  return everyTask({
    $cond: [{ $eq: ['$$t.v.blocked.stage', literal(checkStage(stage))] }, WITHOUT_BLOCK, '$$t.v'],
  });
}

/** The stages at or below the stage named by the expression `start`: the closure of `needs`, in the update. */
function closureBelow(start: unknown): Document {
  // each round adds the tasks needing one already found; a run has no more rounds than tasks
  return {
    $reduce: {
      input: { $range: [0, { $size: { $objectToArray: TASKS } }] },
      initialValue: [start],
      in: {
        $setUnion: [
          '$$value',
          {
            $map: {
              input: {
                $filter: {
                  input: { $objectToArray: TASKS },
                  as: 'd',
                  cond: {
                    $anyElementTrue: [
                      { $map: { input: listOr('$$d.v.needs'), as: 'n', in: { $in: ['$$n', '$$value'] } } },
                    ],
                  },
                },
              },
              as: 'd',
              in: '$$d.k',
            },
          },
        ],
      },
    },
  };
}

/**
 * Blocks every task below an abandoned task of the run (needing it, directly or further down) that is not
 * done, abandoned or live and not blocked yet, naming that stage and its reason; computed in the update from
 * the document as it stands, so it holds whichever write came last.
 */
const APPLY_BLOCKS: Pipeline = [
  {
    $set: {
      _blocks: {
        $map: {
          input: { $filter: { input: { $objectToArray: TASKS }, as: 'a', cond: { $eq: ['$$a.v.state', 'abandoned'] } } },
          as: 'a',
          in: { stage: '$$a.k', reason: { $ifNull: ['$$a.v.reason', 'abandoned'] }, below: closureBelow('$$a.k') },
        },
      },
    },
  },
  everyTask({
    $let: {
      vars: {
        by: {
          $filter: {
            input: '$_blocks',
            as: 'b',
            cond: { $and: [{ $ne: ['$$b.stage', '$$t.k'] }, { $in: ['$$t.k', '$$b.below'] }] },
          },
        },
      },
      in: {
        $cond: [
          {
            $and: [
              { $gt: [{ $size: '$$by' }, 0] },
              { $not: [{ $in: [{ $ifNull: ['$$t.v.state', null] }, ['done', 'abandoned', 'considering', 'busy']] }] },
              { $ne: [{ $type: '$$t.v.blocked' }, 'object'] },
            ],
          },
          {
            $mergeObjects: [
              '$$t.v',
              {
                blocked: {
                  stage: { $arrayElemAt: ['$$by.stage', 0] },
                  reason: { $arrayElemAt: ['$$by.reason', 0] },
                  time: '$$NOW',
                },
              },
            ],
          },
          '$$t.v',
        ],
      },
    },
  }),
  { $unset: ['_blocks'] },
];

/** The names of the run's tasks whose task passes `cond` (over `$$t.k` and `$$t.v`). */
function tasksWhere(cond: Document): Document {
  return {
    $map: { input: { $filter: { input: { $objectToArray: TASKS }, as: 't', cond } }, as: 't', in: '$$t.k' },
  };
}

/** `stage`'s event detail: `{ [key]: list }` when the list is not empty, else null. */
function eventDetail(stage: string, key: string, list: unknown): Document {
  return setTask(stage, { event_detail: { $cond: [{ $gt: [{ $size: list }, 0] }, { [key]: list }, null] } }, false);
}

/**
 * `stage`'s task abandoned: blocks the tasks below, and records which (event_detail.blocked) for the event:
 * those now blocked by this stage at this write's time.
 */
function blockBelow(stage: string): Pipeline {
  const now = tasksWhere({
    $and: [{ $eq: ['$$t.v.blocked.stage', literal(stage)] }, { $eq: ['$$t.v.blocked.time', '$$NOW'] }],
  });
  return [...APPLY_BLOCKS, eventDetail(stage, 'blocked', now)];
}

/**
 * `stage`'s task no longer abandoned (retried by hand, or done after all): clears the blocks it set, blocks
 * again what is still below another abandoned task, and records the tasks no longer blocked
 * (event_detail.unblocked) for the event.
 */
function unblockBelow(stage: string): Pipeline {
  const unblocked = {
    $filter: {
      input: '$_unblock',
      as: 'u',
      cond: {
        $not: [
          {
            $anyElementTrue: [
              {
                $map: {
                  input: { $objectToArray: TASKS },
                  as: 'o',
                  in: { $and: [{ $eq: ['$$o.k', '$$u'] }, { $eq: [{ $type: '$$o.v.blocked' }, 'object'] }] },
                },
              },
            ],
          },
        ],
      },
    },
  };
  return [
    { $set: { _unblock: tasksWhere({ $eq: ['$$t.v.blocked.stage', literal(checkStage(stage))] }) } },
    clearBlocksBy(stage),
    ...APPLY_BLOCKS,
    eventDetail(stage, 'unblocked', unblocked),
    { $unset: ['_unblock'] },
  ];
}

/** The tasks of a new run (insertRun): pending, ready when they need nothing, in pipeline order. */
export function newTasksDoc(tasks: readonly TaskSpec[]): { tasks: Document; stages: string[] } {
  const doc: Document = {};
  const stages: string[] = [];
  for (const spec of tasks) {
    const stage = checkStage(spec.stage);
    if (stage in doc) continue;
    const needs = spec.needs.map((need) => checkStage(need, `needs of ${stage}`));
    doc[stage] = { needs, ready: needs.length === 0 };
    stages.push(stage);
  }
  return { tasks: doc, stages };
}

/**
 * createTasks: adds each task the run does not have (pending; ready when its needs are done as the document
 * stands), blocks those below an abandoned task, appends the new stages to `stages` and marks the run staged.
 * Tasks that exist are left alone.
 */
export function createTasksUpdate(tasks: readonly TaskSpec[]): Pipeline {
  const stages: Pipeline = [];
  const names: string[] = [];
  for (const spec of tasks) {
    const stage = checkStage(spec.stage);
    if (names.includes(stage)) continue;
    names.push(stage);
    const needs = spec.needs.map((need) => checkStage(need, `needs of ${stage}`));
    const ready = { $allElementsTrue: [needs.map((need) => ({ $eq: [ref(need, 'state'), 'done'] }))] };
    const fresh = { needs: literal(needs), ready };
    stages.push({
      $set: { tasks: { $mergeObjects: [TASKS, { [stage]: { $ifNull: [ref(stage), fresh] } }] } },
    });
  }
  // a task created below an abandoned one is blocked at once
  stages.push(...APPLY_BLOCKS);
  stages.push({
    $set: {
      stages: {
        $concatArrays: [
          STAGE_LIST,
          { $filter: { input: literal(names), as: 'n', cond: { $not: [{ $in: ['$$n', STAGE_LIST] }] } } },
        ],
      },
      staged: true,
    },
  });
  return stages;
}

/** Runs no daemon or submit gave tasks yet (listUnstagedRuns). */
export const UNSTAGED_FILTER: Filter = { staged: { $ne: true } };

/**
 * First-wave documents a store upgrade turns into one `process` task: a run with a processing state (never-
 * processed runs stay unstaged: a daemon gives them the tasks of its own stages).
 */
export const UPGRADE_FILTER: Filter = {
  staged: { $ne: true },
  processing: { $type: 'object' },
  'processing.state': { $ne: null },
};

/** `processing` becomes `tasks.process` (needing nothing, so ready), the run staged; in one update. */
export const UPGRADE_UPDATE: Pipeline = [
  {
    $set: {
      tasks: {
        $mergeObjects: [TASKS, { [DEFAULT_STAGE]: { $mergeObjects: ['$processing', { needs: [], ready: true }] } }],
      },
      stages: {
        $cond: [
          { $in: [DEFAULT_STAGE, STAGE_LIST] },
          STAGE_LIST,
          { $concatArrays: [[literal(DEFAULT_STAGE)], STAGE_LIST] },
        ],
      },
      staged: true,
    },
  },
  { $unset: ['processing'] },
];

// ------------------------------------------------------------------------------------------- drain fence

/** True (an aggregation expression) while the task's previous attempt may still be stopping. */
function drainingInForce(stage: string): Document {
  return {
    $and: [
      { $eq: [{ $type: ref(stage, 'draining.until') }, 'date'] },
      { $gt: [ref(stage, 'draining.until'), '$$NOW'] },
    ],
  };
}

/**
 * The `draining` record a write taking the task away leaves (issue 12): a busy attempt becomes the record,
 * until its last heartbeat + drainMs (server time); otherwise the current record stays when it is still in
 * force (or always, for an override), and is set to null when a claim finds it expired.
 */
function drainingAfter(stage: string, drainMs: number | undefined, keepExpired: boolean): Document {
  const kept = keepExpired
    ? { $ifNull: [ref(stage, 'draining'), null] }
    : { $cond: [drainingInForce(stage), ref(stage, 'draining'), null] };
  if (drainMs === undefined) return kept;
  const lastBeat = { $cond: [{ $eq: [{ $type: ref(stage, 'time') }, 'date'] }, ref(stage, 'time'), '$$NOW'] };
  return {
    $cond: [
      { $eq: [ref(stage, 'state'), 'busy'] },
      {
        host: ref(stage, 'host'),
        pid: ref(stage, 'pid'),
        attempt: ref(stage, 'attempt'),
        pgid: ref(stage, 'pgid'),
        proc_start: ref(stage, 'proc_start'),
        until: { $add: [lastBeat, literal(drainMs)] },
      },
      kept,
    ],
  };
}

/** The task whose draining record names `gone` (host and attempt): confirmAttemptGone clears it. */
export function drainingFilter(number: number, gone: { host: string; attempt: number }, stage = DEFAULT_STAGE): Filter {
  return { number, [taskPath(stage, 'draining.host')]: gone.host, [taskPath(stage, 'draining.attempt')]: gone.attempt };
}

/** Clears the draining record and stamps the wake-up field: the task may be eligible now. */
export function confirmGoneUpdate(stage = DEFAULT_STAGE): Pipeline {
  return [setTask(stage, { draining: null }, false, true)];
}

// ------------------------------------------------------------------------------------------------ claim

/** The conditions of one selector as a query (policy/pipeline matchesSelector, on the run's fields). */
export function selectorFilter(selector: RunSelector): Filter[] {
  const and: Filter[] = [];
  if (selector.tags && selector.tags.length > 0) and.push({ tags: { $all: [...selector.tags] } });
  if (selector.not_tags && selector.not_tags.length > 0) and.push({ tags: { $nin: [...selector.not_tags] } });
  if (selector.modes) and.push({ mode: { $in: [...selector.modes] } });
  if (selector.min_number !== undefined) and.push({ number: { $gte: selector.min_number } });
  if (selector.max_number !== undefined) and.push({ number: { $lte: selector.max_number } });
  for (const [key, value] of Object.entries(selector.params ?? {})) {
    // compared as the value itself (an array holding it is not equal), whatever the key's characters
    const params = { $cond: [{ $eq: [{ $type: '$params' }, 'object'] }, '$params', {}] };
    const entry = { $filter: { input: { $objectToArray: params }, as: 'p', cond: { $eq: ['$$p.k', literal(key)] } } };
    const found = { $let: { vars: { m: { $arrayElemAt: [entry, 0] } }, in: '$$m.v' } };
    // scalars only: an array holding the value is not equal to it
    and.push({ $expr: { $and: [{ $in: [{ $type: found }, ['string', 'bool', 'int', 'long', 'double', 'decimal']] }, { $eq: [found, literal(value)] }] } });
  }
  if (selector.require_end) and.push({ end: { $type: 'date' } });
  return and;
}

/**
 * Tasks of `stage` a fresh daemon may take: the run not tagged hold/abandon/hold:<stage> and passing every
 * selector; the task ready (every need done) and not blocked; never claimed, or failed with a next_retry the
 * server's clock has reached and no previous attempt still draining.
 */
export function claimFilter(
  exclude: readonly number[] = [],
  stage = DEFAULT_STAGE,
  select: readonly RunSelector[] = [],
): Filter {
  const filter: Filter = {
    ...(exclude.length > 0 ? { number: { $nin: [...exclude] } } : {}),
    tags: { $nin: heldTags(stage) },
    [taskPath(stage, 'ready')]: true,
    [taskPath(stage, 'blocked')]: null,
    $or: [
      { [taskPath(stage, 'state')]: null },
      {
        [taskPath(stage, 'state')]: 'failed',
        [taskPath(stage, 'next_retry')]: { $type: 'date' },
        // a counter another tool left unreadable is repaired by cleanup first, so an attempt never goes back
        [taskPath(stage, 'attempt')]: COUNT,
        [taskPath(stage, 'n_failures')]: COUNT,
        // and no previous attempt still draining
        $expr: { $and: [{ $lte: [ref(stage, 'next_retry'), '$$NOW'] }, { $not: [drainingInForce(stage)] }] },
      },
    ],
  };
  const and = select.flatMap(selectorFilter);
  if (and.length > 0) filter.$and = and;
  return filter;
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
export function claimUpdate(
  request: ClaimRequest,
  token: string,
  drainMs?: number,
  minAttempt = 0,
  stage = DEFAULT_STAGE,
): Pipeline {
  return [
    ...transition(
      stage,
      'considering',
      {
        host: literal(request.host),
        pid: literal(request.pid),
        token: literal(token),
        // past the stored counter (digits as text included) and past `minAttempt`, the task's history
        attempt: { $add: [{ $max: [countOf(ref(stage, 'attempt')), literal(minAttempt)] }, 1] },
        n_failures: countOf(ref(stage, 'n_failures')),
        draining: drainingAfter(stage, drainMs, false),
      },
      ATTEMPT_FIELDS,
    ),
    listStage(stage),
  ];
}

/**
 * `process N`'s claim of one task (claimRun): the claim write, then `ready` recomputed for every task (a done
 * task taken again makes the tasks below it wait until it is done again).
 */
export function claimRunUpdate(
  request: ClaimRequest,
  token: string,
  drainMs: number | undefined,
  minAttempt: number,
  stage = DEFAULT_STAGE,
): Pipeline {
  return [...claimUpdate(request, token, drainMs, minAttempt, stage), RECOMPUTE_READY];
}

/**
 * The task when it is still as the caller saw it (state and, for a processed task, token). A run without that
 * task matches nothing: which tasks a run gets is its config's (createTasks), never an operator write's.
 */
export function expectationFilter(number: number, expected: RunExpectation, stage = DEFAULT_STAGE): Filter {
  if (expected.state === null) {
    return { number, [taskPath(stage)]: { $type: 'object' }, [taskPath(stage, 'state')]: null };
  }
  const token = expected.token ?? '';
  // SQLite compares tokens with null read as '': a processed task without a token matches an empty one
  return {
    number,
    [taskPath(stage, 'state')]: expected.state,
    [taskPath(stage, 'token')]: token === '' ? { $in: [null, ''] } : token,
  };
}

/**
 * Failed tasks a claim could take once due (not held or blocked, every need done), with no previous attempt
 * draining: nextRetryAt's next_retry.
 */
export function nextRetryFilter(stage = DEFAULT_STAGE): Filter {
  return {
    [taskPath(stage, 'state')]: 'failed',
    tags: { $nin: heldTags(stage) },
    [taskPath(stage, 'ready')]: true,
    [taskPath(stage, 'blocked')]: null,
    [taskPath(stage, 'next_retry')]: { $type: 'date' },
    $expr: { $not: [drainingInForce(stage)] },
  };
}

export function nextRetrySort(stage = DEFAULT_STAGE): SortSpec {
  return { [taskPath(stage, 'next_retry')]: 1 };
}

/** Failed tasks not held or blocked that wait for a previous attempt: eligible at max(next_retry, until). */
export function drainingRetryFilter(stage = DEFAULT_STAGE): Filter {
  return {
    [taskPath(stage, 'state')]: 'failed',
    tags: { $nin: heldTags(stage) },
    [taskPath(stage, 'ready')]: true,
    [taskPath(stage, 'blocked')]: null,
    [taskPath(stage, 'next_retry')]: { $type: 'date' },
    $expr: drainingInForce(stage),
  };
}

export function drainingRetrySort(stage = DEFAULT_STAGE): SortSpec {
  return { [taskPath(stage, 'draining.until')]: 1 };
}

// ----------------------------------------------------------------------------------------- fenced writes

/** The owner's task: its token, in a live state. Every write of an attempt is conditioned on this. */
export function fencedFilter(number: number, token: string, stage = DEFAULT_STAGE): Filter {
  return { number, [taskPath(stage, 'token')]: token, [taskPath(stage, 'state')]: { $in: [...LIVE_STATES] } };
}

export function heartbeatUpdate(stage = DEFAULT_STAGE): Pipeline {
  return [setTask(stage, { time: '$$NOW' }, false)];
}

export function markBusyUpdate(fields: BusyFields, stage = DEFAULT_STAGE): Pipeline {
  const extra = optional({ targets: fields.targets, resources: fields.resources });
  return transition(
    stage,
    'busy',
    { started: literal(toDate(fields.started, 'started')), ...extra.set },
    extra.unset,
  );
}

export function processGroupUpdate(fields: ProcessGroupFields, stage = DEFAULT_STAGE): Pipeline {
  const extra = optional({ proc_start: fields.proc_start });
  return [
    setTask(stage, { pgid: literal(fields.pgid), time: '$$NOW', ...extra.set }, false),
    ...unsetTask(stage, extra.unset),
  ];
}

/**
 * done, ended now, and the output (stamped with the stage) appended to `outputs` (a malformed `outputs`
 * becomes a list); in the same update every task below becomes ready when all its needs are done, blocks
 * this stage set are cleared, and the wake-up field is stamped (a downstream task may be eligible now).
 */
export function finishUpdate(output: RunOutput, stage = DEFAULT_STAGE): Pipeline {
  // a task done waits for nothing: a block of its own (taken by `process --force`) goes too
  const stages = transition(stage, 'done', { ended: '$$NOW' }, ['next_retry', 'blocked'], true);
  const registered = {
    location: output.location,
    stage,
    host: output.host,
    attempt: output.attempt,
    at: toDate(output.at, 'at'),
  };
  stages.push({
    $set: {
      outputs: { $concatArrays: [{ $cond: [{ $isArray: '$outputs' }, '$outputs', []] }, [literal(registered)]] },
    },
  });
  stages.push(...unblockBelow(stage), RECOMPUTE_READY);
  return stages;
}

/** `n_interruptions` set when the caller gives it; absent keeps the stored count (mergeObjects). */
function interruptionCount(value: number | undefined): Document {
  return value === undefined ? {} : { n_interruptions: literal(value) };
}

export function failUpdate(fields: FailureFields, stage = DEFAULT_STAGE): Pipeline {
  const extra = optional({ exit_code: fields.exit_code, signal: fields.signal });
  return transition(
    stage,
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

/** Abandoned; in the same update every task below that is not done, abandoned or live gets blocked. */
export function abandonUpdate(fields: AbandonFields, stage = DEFAULT_STAGE): Pipeline {
  const extra = optional({ exit_code: fields.exit_code, signal: fields.signal });
  return [
    ...transition(
      stage,
      'abandoned',
      {
        ended: '$$NOW',
        reason: literal(fields.reason),
        n_failures: literal(fields.n_failures),
        ...interruptionCount(fields.n_interruptions),
        ...extra.set,
      },
      ['next_retry', ...extra.unset],
    ),
    ...blockBelow(stage),
  ];
}

/**
 * Hands the task back: failed, eligible again at once by the server's clock, n_failures unchanged, one more
 * interruption counted (a count another tool wrote as something else starts again at 1).
 */
export function releaseUpdate(reason: string, note?: EventNote, stage = DEFAULT_STAGE): Pipeline {
  const extra = optional({ exit_code: note?.exit_code, signal: note?.signal });
  const current = ref(stage, 'n_interruptions');
  const counted = { $cond: [{ $and: [{ $isNumber: current }, { $gte: [current, 0] }] }, current, 0] };
  return transition(
    stage,
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
 * An operator's or cleaner's write: the new state with a fresh token (so the owner is fenced out); a task
 * never processed gets the writer as its host, pid 0 and attempt 0. A task failed this way may be eligible at
 * once, so the write also stamps the wake-up field, and clears the blocks it set below (a retry upstream);
 * one abandoned this way blocks the tasks below. `ready` is recomputed for every task (a done task retried
 * by hand makes its downstream wait again).
 */
export function overrideUpdate(change: RunOverride, token: string, writer: string, stage = DEFAULT_STAGE): Pipeline {
  const failed = change.to === 'failed';
  if (failed && change.next_retry === undefined) {
    throw new Error('overrideRun: next_retry is required when the run becomes failed');
  }
  return [
    ...transition(
      stage,
      change.to,
      {
        token: literal(token),
        ended: '$$NOW',
        reason: literal(change.reason),
        n_failures: literal(change.n_failures),
        ...interruptionCount(change.n_interruptions),
        ...(failed ? { next_retry: literal(toDate(change.next_retry as number, 'next_retry')) } : {}),
        host: { $ifNull: [ref(stage, 'host'), literal(writer)] },
        pid: { $ifNull: [ref(stage, 'pid'), 0] },
        attempt: change.attempt !== undefined ? literal(change.attempt) : { $ifNull: [ref(stage, 'attempt'), 0] },
        draining: drainingAfter(stage, change.drainMs, true),
      },
      ['exit_code', 'signal', ...(failed ? [] : ['next_retry'])],
      failed,
    ),
    listStage(stage),
    ...(failed ? unblockBelow(stage) : blockBelow(stage)),
    RECOMPUTE_READY,
  ];
}

/** Adds the tag once or removes every copy; a malformed `tags` is treated as empty. */
export function setTagUpdate(tag: string, present: boolean): Pipeline {
  const tags = { $cond: [{ $isArray: '$tags' }, '$tags', []] };
  const value = present
    ? { $cond: [{ $in: [literal(tag), tags] }, tags, { $concatArrays: [tags, [literal(tag)]] }] }
    : { $filter: { input: tags, as: 'tag', cond: { $ne: ['$$tag', literal(tag)] } } };
  return [{ $set: present ? { tags: value } : { tags: value, [WAKE_FIELD]: '$$NOW' } }];
}

/** Leases of `stage` older than the limits by the server's clock: considering past maxConsideringMs, busy past maxBusyMs. */
export function staleFilter(limits: StaleLimits, stage = DEFAULT_STAGE): Filter {
  const olderThan = (ms: number): Document => ({ $lt: [ref(stage, 'time'), { $subtract: ['$$NOW', ms] }] });
  return {
    [taskPath(stage, 'time')]: { $type: 'date' },
    $or: [
      { [taskPath(stage, 'state')]: 'considering', $expr: olderThan(limits.maxConsideringMs) },
      { [taskPath(stage, 'state')]: 'busy', $expr: olderThan(limits.maxBusyMs) },
    ],
  };
}

/**
 * Tasks of `stage` that are not a valid state (decode's processingProblems, in a repairable or unknown
 * state): an unknown state; considering or busy without a token, host or lease date; failed without a
 * next_retry date; considering, busy or failed with an attempt or n_failures that is not a whole number.
 */
export function invalidProcessingFilter(stage = DEFAULT_STAGE): Filter {
  const f = (field: string): string => taskPath(stage, field);
  return {
    [f('state')]: { $ne: null },
    $or: [
      { [f('state')]: { $nin: [...RUN_STATES] } },
      {
        [f('state')]: { $in: [...LIVE_STATES] },
        $nor: [
          {
            [f('token')]: { $type: 'string', $ne: '' },
            [f('host')]: { $type: 'string', $ne: '' },
            [f('time')]: LEASE_DATE,
          },
        ],
      },
      { [f('state')]: 'failed', $nor: [{ [f('next_retry')]: LEASE_DATE }] },
      {
        [f('state')]: { $in: [...REPAIRABLE_STATES] },
        $nor: [{ [f('attempt')]: COUNT, [f('n_failures')]: COUNT }],
      },
    ],
  };
}

// ------------------------------------------------------------------------------------------------ listing

/** A run that has no task (inserted by another tool, or with an empty pipeline): one pending view. */
const NO_TASKS: Filter = { $or: [{ stages: { $exists: false } }, { stages: { $size: 0 } }] };

/** The task conditions of a listing for one stage (state incl. pending/blocked, host), as a query. */
function taskConditions(filter: RunFilter, stage: string): Filter {
  const query: Filter = { [taskPath(stage)]: { $type: 'object' } };
  if (filter.state === 'blocked') query[taskPath(stage, 'blocked')] = { $type: 'object' };
  else if (filter.state !== undefined) {
    // a blocked task is listed (and counted) as blocked, not in its own state
    query[taskPath(stage, 'blocked')] = null;
    query[taskPath(stage, 'state')] = filter.state === 'pending' ? null : filter.state;
  }
  if (filter.host !== undefined) query[taskPath(stage, 'host')] = filter.host;
  return query;
}

/**
 * The runs holding at least one task a listing shows, among `stages` (every stage the store knows, or the
 * one asked for); the views themselves are picked per task afterwards (taskListed).
 */
export function listRunsFilter(filter: RunFilter, stages: readonly string[] = [DEFAULT_STAGE]): Filter {
  const query: Filter = {};
  if (filter.tag !== undefined) query.tags = filter.tag;
  const and: Filter[] = [];
  if (filter.noOutputs) and.push({ $or: [{ outputs: { $not: { $type: 'array' } } }, { outputs: { $size: 0 } }] });
  const branches = stages.map((stage) => taskConditions(filter, stage));
  // a run without tasks is one pending view with no processing
  if (filter.stage === undefined && filter.host === undefined && (filter.state === undefined || filter.state === 'pending')) {
    branches.push(NO_TASKS);
  }
  // a store without stages has no task to list (an empty $or is refused by the server)
  and.push(branches.length === 0 ? { number: { $in: [] } } : branches.length === 1 ? branches[0]! : { $or: branches });
  if (and.length > 0) query.$and = and;
  return query;
}

export const LIST_RUNS_SORT: SortSpec = { number: -1 };

/** One row per (stage, state, blocked) of every task; a run without tasks is one row with no stage. */
export const COUNT_TASKS: Pipeline = [
  {
    $project: {
      _id: 0,
      t: {
        $let: {
          vars: { all: { $objectToArray: TASKS } },
          in: {
            $cond: [
              { $gt: [{ $size: '$$all' }, 0] },
              {
                $map: {
                  input: '$$all',
                  as: 'x',
                  in: {
                    stage: '$$x.k',
                    state: { $ifNull: ['$$x.v.state', null] },
                    blocked: { $eq: [{ $type: '$$x.v.blocked' }, 'object'] },
                  },
                },
              },
              [{ stage: null, state: null, blocked: false }],
            ],
          },
        },
      },
    },
  },
  { $unwind: '$t' },
  { $group: { _id: { stage: '$t.stage', state: '$t.state', blocked: '$t.blocked' }, n: { $sum: 1 } } },
];

export const EVENTS_SORT: SortSpec = { seq: 1, time: 1, _id: 1 };

/** Events of one run, of every stage or of one (a first-wave event has no stage: it is `process`'s). */
export function eventsFilter(number: number, stage?: string): Filter {
  if (stage === undefined) return { number };
  return { number, stage: stage === DEFAULT_STAGE ? { $in: [DEFAULT_STAGE, null] } : checkStage(stage) };
}

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
 * Indexes created at start (createIndexes is idempotent); each stage's own come from stageIndexes. The first
 * wave's indexes on `processing.*` are left where they exist (a store upgraded in place) and serve nothing.
 */
export const INDEXES: readonly IndexSpec[] = [
  { collection: COLLECTIONS.runs, key: { number: 1 }, name: 'number_unique', unique: true },
  // the stages the store knows (distinct), and the runs holding one
  { collection: COLLECTIONS.runs, key: { stages: 1, number: -1 }, name: 'stages_number' },
  // listUnstagedRuns: staged ≠ true is two index intervals around `true`
  { collection: COLLECTIONS.runs, key: { staged: 1, number: 1 }, name: 'staged_number' },
  { collection: COLLECTIONS.runs, key: { tags: 1, number: -1 }, name: 'tags_number' },
  {
    collection: COLLECTIONS.runs,
    key: { [WAKE_FIELD]: -1 },
    name: WAKE_FIELD,
    partialFilterExpression: { [WAKE_FIELD]: { $exists: true } },
  },
  { collection: COLLECTIONS.events, key: { number: 1, seq: 1, time: 1, _id: 1 }, name: 'run_order' },
  { collection: COLLECTIONS.events, key: { number: 1, stage: 1, attempt: -1 }, name: 'task_attempt' },
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

/**
 * The indexes of one stage's tasks, created when the store opens for every stage it holds and on a claim of a
 * stage it has not seen. The claim of a stage is an $or of two equalities on its task's state; each branch
 * walks a claim index (partial: ready tasks only) in sort order and the server merges them. A collection
 * holds at most 64 indexes: three per stage leave room for about fifteen stages.
 */
export function stageIndexes(stage: string): IndexSpec[] {
  const state = taskPath(stage, 'state');
  const ready = { [taskPath(stage, 'ready')]: true };
  return [
    {
      collection: COLLECTIONS.runs,
      key: { [state]: 1, priority: -1, start: -1, number: -1 },
      name: `claim_newest_${stage}`,
      partialFilterExpression: ready,
    },
    {
      collection: COLLECTIONS.runs,
      key: { [state]: 1, priority: -1, start: 1, number: 1 },
      name: `claim_oldest_${stage}`,
      partialFilterExpression: ready,
    },
    // stale leases (state, time), listings by state, nextRetryAt's failed tasks
    { collection: COLLECTIONS.runs, key: { [state]: 1, [taskPath(stage, 'time')]: 1 }, name: `state_time_${stage}` },
  ];
}
