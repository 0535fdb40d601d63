// Document ⇄ domain conversion for the MongoDB backend. Times are BSON dates in the database and epoch ms in
// the domain. Reading is defensive, like the SQLite rows: a document another tool wrote badly never throws
// here; the bad field is reported in `invalid` (or left out) and later validation fails the run with it.

import { UsageError } from '../../errors.js';
import { isDateMs } from '../../time-range.js';
import type {
  HostDoc,
  HostState,
  LogEntry,
  LogPriority,
  MonitorSample,
  NewRun,
  Processing,
  RunDoc,
  RunEvent,
  RunState,
  TaskBlock,
  TaskDoc,
} from '../types.js';
import { DEFAULT_STAGE } from '../types.js';

import {
  checkNewRun,
  describeRaw,
  diskFrom,
  isObject,
  monitorSampleFrom,
  num,
  numberArray,
  outputList,
  processingFrom,
  put,
  str,
  stringArray,
} from '../decode.js';

/** A document as the driver hands it over. */
export type MongoDoc = Record<string, unknown>;


/** Epoch ms of a BSON date; a plain number written by another tool is taken as epoch ms. */
export function millis(value: unknown): number | undefined {
  if (value instanceof Date) {
    const t = value.getTime();
    return Number.isFinite(t) ? t : undefined;
  }
  return num(value);
}

/** Epoch ms of a BSON date only: what the lease queries compare with $$NOW (a number there is no lease time). */
function dateOnlyMillis(value: unknown): number | undefined {
  return value instanceof Date ? millis(value) : undefined;
}

/** Epoch ms of a run's date field; a number beyond what a date holds is no date. */
function dateMillis(value: unknown): number | undefined {
  const ms = millis(value);
  return isDateMs(ms) ? ms : undefined;
}

/** A BSON date for epoch ms; refuses what Date cannot hold (beyond ±8.64e15 ms). */
export function toDate(ms: number, field: string): Date {
  const date = new Date(Math.floor(ms));
  if (!Number.isFinite(date.getTime())) throw new UsageError(`${field}: ${ms} is not a time in epoch ms`, field);
  return date;
}









// -------------------------------------------------------------------------------------------------- runs

/**
 * The document `insertRun` writes for a new run, with `tasks` (built by queries' newTasksDoc) and staged;
 * validates what SQLite's backend validates.
 */
export function newRunDoc(run: NewRun, tasks: { tasks: MongoDoc; stages: string[] }): MongoDoc {
  checkNewRun(run);
  const doc: MongoDoc = {
    number: run.number,
    start: toDate(run.start, 'start'),
    tags: [...(run.tags ?? [])],
    priority: run.priority ?? 0,
    params: run.params ?? {},
    outputs: [],
    tasks: tasks.tasks,
    stages: tasks.stages,
    staged: true,
  };
  if (run.name !== undefined && run.name !== null) doc.name = run.name;
  if (run.end !== undefined && run.end !== null) doc.end = toDate(run.end, 'end');
  if (run.mode !== undefined && run.mode !== null) doc.mode = run.mode;
  if (run.input !== undefined && run.input !== null) doc.input = run.input;
  return doc;
}

/** The run's task documents by stage; empty when `tasks` is not a document. */
function taskFields(doc: MongoDoc): Record<string, unknown> {
  return isObject(doc.tasks) ? doc.tasks : {};
}

/**
 * The run's stages in pipeline order: every stage after the stages it needs, otherwise in the order of the
 * run's `stages` list (the order they were created in), then any others by name.
 */
export function pipelineOrder(doc: MongoDoc): string[] {
  const tasks = taskFields(doc);
  const listed = Array.isArray(doc.stages) ? doc.stages.filter((s): s is string => typeof s === 'string') : [];
  const names = [...new Set([...listed.filter((s) => s in tasks), ...Object.keys(tasks).sort()])];
  const needsOf = (stage: string): string[] => {
    const task = tasks[stage];
    const needs = isObject(task) && Array.isArray(task.needs) ? task.needs : [];
    return needs.filter((n): n is string => typeof n === 'string' && n !== stage && names.includes(n));
  };
  const ordered: string[] = [];
  const placed = new Set<string>();
  while (ordered.length < names.length) {
    // the first stage (in listed order) whose needs are all placed; a cycle another tool wrote takes the first
    const next = names.find((s) => !placed.has(s) && needsOf(s).every((n) => placed.has(n))) ??
      names.find((s) => !placed.has(s)) as string;
    ordered.push(next);
    placed.add(next);
  }
  return ordered;
}

/** The block of a task when it is a readable one. */
function blockFrom(value: unknown): TaskBlock | undefined {
  if (!isObject(value)) return undefined;
  return { stage: str(value.stage) ?? '', reason: str(value.reason) ?? '', time: millis(value.time) ?? 0 };
}

/** The processing document of a task sub-document; absent unless it has a state. */
function taskProcessing(task: Record<string, unknown>): Processing | undefined {
  if (task.state === null || task.state === undefined) return undefined;
  return processingFrom(task, millis, undefined, dateOnlyMillis);
}

/**
 * The run as the domain sees it from one stage's task (RunDoc.stage/processing/blocked), with every task in
 * pipeline order. Without `stage`: its `process` task, else its first task. A stage the run has no task of
 * gives a view with no stage and no processing.
 */
export function runFromDoc(doc: MongoDoc, stage?: string): RunDoc {
  const invalid: string[] = [];
  const field = <T>(name: string, expected: string, check: (v: unknown) => T | undefined, fallback: T): T => {
    const raw = doc[name];
    if (raw === null || raw === undefined) return fallback;
    const value = check(raw);
    if (value === undefined) {
      invalid.push(`${name}: expected ${expected}, got ${describeRaw(raw)}`);
      return fallback;
    }
    return value;
  };
  // Writes address a run by its number: one stored as text or missing is reported, not silently converted.
  if (typeof doc.number !== 'number' && typeof doc.number !== 'bigint') {
    invalid.push(`number: expected an integer, got ${describeRaw(doc.number)}`);
  }
  if (doc.start === null || doc.start === undefined) invalid.push('start: missing; expected a date');
  const run: RunDoc = {
    number: num(doc.number) ?? Number(doc.number),
    start: field('start', 'a date', dateMillis, 0),
    tags: field(
      'tags',
      'an array of strings',
      (v) => (Array.isArray(v) && v.every((t) => typeof t === 'string') ? [...(v as string[])] : undefined),
      [],
    ),
    priority: field('priority', 'a number', num, 0),
    params: field('params', 'an object', (v) => (isObject(v) ? v : undefined), {}),
    outputs: outputList(doc.outputs, millis),
  };
  for (const name of ['name', 'mode', 'input'] as const) {
    if (doc[name] !== null && doc[name] !== undefined && typeof doc[name] !== 'string') {
      invalid.push(`${name}: expected a string, got ${describeRaw(doc[name])}`);
    }
  }
  put(run, 'name', str(doc.name));
  put(run, 'end', field<number | undefined>('end', 'a date', dateMillis, undefined));
  put(run, 'mode', str(doc.mode));
  put(run, 'input', str(doc.input));

  // a first-wave processing document not yet upgraded (another tool's) is shown as invalid, never as a task
  const p = doc.processing;
  if (p !== null && p !== undefined && !isObject(p)) {
    invalid.push(`processing: expected an object, got ${describeRaw(p)}`);
  }
  if (doc.tasks !== null && doc.tasks !== undefined && !isObject(doc.tasks)) {
    invalid.push(`tasks: expected an object, got ${describeRaw(doc.tasks)}`);
  }
  const fields = taskFields(doc);
  const tasks: TaskDoc[] = [];
  for (const name of pipelineOrder(doc)) {
    const raw = fields[name];
    if (!isObject(raw)) {
      invalid.push(`tasks.${name}: expected an object, got ${describeRaw(raw)}`);
      tasks.push({ stage: name, needs: [] });
      continue;
    }
    const task: TaskDoc = { stage: name, needs: stringArray(raw.needs) ?? [] };
    put(task, 'blocked', blockFrom(raw.blocked));
    put(task, 'processing', taskProcessing(raw));
    tasks.push(task);
  }
  run.tasks = tasks;
  const viewed =
    stage ?? (tasks.some((t) => t.stage === DEFAULT_STAGE) ? DEFAULT_STAGE : tasks[0]?.stage);
  const task = tasks.find((t) => t.stage === viewed);
  if (task !== undefined) {
    run.stage = task.stage;
    put(run, 'processing', task.processing);
    put(run, 'blocked', task.blocked);
  }
  if (invalid.length > 0) run.invalid = invalid;
  return run;
}

/** `stage`'s task sub-document when it is one. */
function taskOf(doc: MongoDoc, stage: string): Record<string, unknown> | undefined {
  const task = taskFields(doc)[stage];
  return isObject(task) ? task : undefined;
}

/** The state a task had before its latest transition (written by every transition), null when it had none. */
export function previousStateOf(doc: MongoDoc, stage = DEFAULT_STAGE): RunState | null {
  const task = taskOf(doc, stage);
  if (task === undefined || typeof task.previous_state !== 'string') return null;
  return task.previous_state as RunState;
}

/** The task's processing time (server time of its latest write) in epoch ms; 0 when missing. */
export function processingTimeOf(doc: MongoDoc, stage = DEFAULT_STAGE): number {
  return millis(taskOf(doc, stage)?.time) ?? 0;
}

// ------------------------------------------------------------------------------------------------ events

export function eventFromDoc(doc: MongoDoc): RunEvent {
  const ev: RunEvent = {
    number: num(doc.number) ?? 0,
    // an event of a first-wave store has no stage: it is the `process` task's
    stage: str(doc.stage) ?? DEFAULT_STAGE,
    time: millis(doc.time) ?? 0,
    host: str(doc.host) ?? '',
    attempt: num(doc.attempt) ?? 0,
    from: doc.from === null || doc.from === undefined ? null : (String(doc.from) as RunState),
    to: String(doc.to) as RunState,
  };
  put(ev, 'reason', str(doc.reason));
  put(ev, 'exit_code', num(doc.exit_code));
  put(ev, 'signal', str(doc.signal));
  put(ev, 'duration_ms', num(doc.duration_ms));
  if (isObject(doc.detail)) ev.detail = doc.detail;
  return ev;
}

/** The run_events document for `event`; `seq` is the run's event counter after the transition. */
export function eventDoc(event: RunEvent, seq: number | undefined): MongoDoc {
  const doc: MongoDoc = {
    number: event.number,
    stage: event.stage ?? DEFAULT_STAGE,
    time: new Date(event.time),
    host: event.host,
    attempt: event.attempt,
    from: event.from,
    to: event.to,
  };
  if (seq !== undefined) doc.seq = seq;
  for (const key of ['reason', 'exit_code', 'signal', 'duration_ms', 'detail'] as const) {
    if (event[key] !== undefined && event[key] !== null) doc[key] = event[key];
  }
  return doc;
}

// ------------------------------------------------------------------------------------------------- hosts

export function hostDoc(host: HostDoc): MongoDoc {
  const doc: MongoDoc = {
    host: host.host,
    pid: host.pid,
    token: host.token,
    state: host.state,
    time: toDate(host.time, 'time'),
    started: toDate(host.started, 'started'),
    version: host.version,
    slots: host.slots,
    running: [...(host.running ?? [])],
  };
  if (host.proc_start !== undefined && host.proc_start !== null) doc.proc_start = host.proc_start;
  if (host.disk !== undefined && host.disk !== null) doc.disk = { ...host.disk };
  if (host.paused_reason !== undefined && host.paused_reason !== null) doc.paused_reason = host.paused_reason;
  return doc;
}

export function hostFromDoc(doc: MongoDoc): HostDoc {
  const host: HostDoc = {
    host: str(doc.host) ?? String(doc.host),
    pid: num(doc.pid) ?? 0,
    token: str(doc.token) ?? '',
    state: String(doc.state) as HostState,
    time: millis(doc.time) ?? 0,
    started: millis(doc.started) ?? 0,
    version: str(doc.version) ?? '',
    slots: num(doc.slots) ?? 0,
    running: numberArray(doc.running) ?? [],
  };
  put(host, 'proc_start', num(doc.proc_start));
  put(host, 'disk', diskFrom(doc.disk));
  put(host, 'paused_reason', str(doc.paused_reason));
  return host;
}

// ----------------------------------------------------------------------------------------------- monitor

/** The monitor document of a sample; `minute` is its key with the host, `time` drives the TTL index. */
export function monitorDoc(sample: MonitorSample, minute: number): MongoDoc {
  const doc: MongoDoc = {
    host: sample.host,
    minute: toDate(minute, 'time'),
    time: toDate(sample.time, 'time'),
    state: sample.state,
    slots: sample.slots,
    running: [...(sample.running ?? [])],
  };
  if (sample.disk !== undefined && sample.disk !== null) doc.disk = { ...sample.disk };
  return doc;
}

export function monitorFromDoc(doc: MongoDoc): MonitorSample {
  return monitorSampleFrom(doc, millis);
}

// --------------------------------------------------------------------------------------------------- log

export function logDoc(entry: LogEntry): MongoDoc {
  const doc: MongoDoc = {
    time: toDate(entry.time, 'time'),
    host: entry.host,
    user: entry.user,
    priority: entry.priority,
    message: entry.message,
  };
  if (entry.number !== undefined && entry.number !== null) doc.number = entry.number;
  return doc;
}

export function logFromDoc(doc: MongoDoc): LogEntry {
  const entry: LogEntry = {
    time: millis(doc.time) ?? 0,
    host: str(doc.host) ?? '',
    user: str(doc.user) ?? '',
    priority: (num(doc.priority) ?? 1) as LogPriority,
    message: str(doc.message) ?? String(doc.message),
  };
  put(entry, 'number', num(doc.number));
  return entry;
}
