// Row ⇄ document conversion for the SQLite backend. Reading is defensive: a row written by another tool
// (wrong types, invalid JSON) never throws here; the bad value is left out or replaced by an empty default,
// and later validation of the run fails it with a reason.

import type {
  HostDoc,
  HostState,
  LogEntry,
  LogPriority,
  MonitorSample,
  RunDoc,
  RunEvent,
  RunState,
  TaskDoc,
} from '../types.js';
import { DEFAULT_STAGE } from '../types.js';

import { isDateMs } from '../../time-range.js';
import {
  OUT_OF_DATE_RANGE,
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

export type Row = Record<string, unknown>;

/** A value better-sqlite3 can bind. */
export type SqlValue = string | number | bigint | Buffer | null;

export function parseJson(text: unknown): unknown {
  if (typeof text !== 'string') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** JSON text for a column; never throws (cycles or BigInt become null). */
export function toJson(value: unknown): string | null {
  if (value === undefined) return null;
  try {
    return JSON.stringify(value) ?? null;
  } catch {
    return null;
  }
}

export function sql(value: unknown): SqlValue {
  if (value === undefined || value === null) return null;
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (typeof value === 'number' || typeof value === 'string' || typeof value === 'bigint') return value;
  if (Buffer.isBuffer(value)) return value;
  return toJson(value);
}

export function runFromRow(row: Row): RunDoc {
  const invalid: string[] = [];
  /** A JSON column that must hold `expected`; anything else is reported and replaced by the default. */
  const jsonColumn = <T>(field: string, expected: string, check: (v: unknown) => T | undefined, fallback: T): T => {
    if (row[field] === null || row[field] === undefined) return fallback;
    const parsed = parseJson(row[field]);
    const value = parsed === undefined ? undefined : check(parsed);
    if (value === undefined) {
      invalid.push(
        parsed === undefined
          ? `${field}: not valid JSON (${describeRaw(row[field])})`
          : `${field}: expected ${expected}, got ${describeRaw(parsed)}`,
      );
      return fallback;
    }
    return value;
  };
  const numberColumn = <T extends number | undefined>(field: string, fallback: T): number | T => {
    const value = num(row[field]);
    if (value === undefined && row[field] !== null && row[field] !== undefined) {
      invalid.push(`${field}: expected a number, got ${describeRaw(row[field])}`);
    }
    return value ?? fallback;
  };
  /** A time column: a number a date can hold; one beyond is kept (shown as an invalid time) and reported. */
  const timeColumn = <T extends number | undefined>(field: string, fallback: T): number | T => {
    const value = numberColumn(field, fallback);
    if (value !== undefined && !isDateMs(value)) invalid.push(`${field}: ${OUT_OF_DATE_RANGE}, got ${value}`);
    return value;
  };
  const doc: RunDoc = {
    number: num(row.number) ?? Number(row.number),
    start: timeColumn('start', 0),
    tags: jsonColumn(
      'tags',
      'an array of strings',
      (v) => (Array.isArray(v) && v.every((t) => typeof t === 'string') ? (v as string[]) : undefined),
      [],
    ),
    priority: numberColumn('priority', 0),
    params: jsonColumn('params', 'an object', (v) => (isObject(v) ? v : undefined), {}),
    outputs: outputList(parseJson(row.outputs)),
  };
  for (const field of ['name', 'mode', 'input'] as const) {
    if (row[field] !== null && row[field] !== undefined && typeof row[field] !== 'string') {
      invalid.push(`${field}: expected a string, got ${describeRaw(row[field])}`);
    }
  }
  put(doc, 'end', timeColumn('end', undefined));
  if (invalid.length > 0) doc.invalid = invalid;
  put(doc, 'name', str(row.name));
  put(doc, 'mode', str(row.mode));
  put(doc, 'input', str(row.input));

  return doc;
}

/** A row of `tasks` as its TaskDoc; the processing document is absent while the task was never claimed. */
export function taskFromRow(row: Row): TaskDoc {
  const task: TaskDoc = {
    stage: str(row.stage) ?? String(row.stage),
    needs: stringArray(parseJson(row.needs)) ?? [],
  };
  const blocked = parseJson(row.blocked);
  if (isObject(blocked)) {
    task.blocked = {
      stage: str(blocked.stage) ?? '',
      reason: str(blocked.reason) ?? '',
      time: num(blocked.time) ?? 0,
    };
  }
  if (row.state !== null && row.state !== undefined) task.processing = processingFrom(row, num, parseJson);
  return task;
}

/**
 * Orders a run's tasks upstream first (pipeline order): each after every task it needs, otherwise as created.
 */
export function pipelineOrder(tasks: TaskDoc[]): TaskDoc[] {
  const placed = new Set<string>();
  const ordered: TaskDoc[] = [];
  const present = new Set(tasks.map((t) => t.stage));
  let rest = tasks;
  while (rest.length > 0) {
    const next = rest.find((t) => t.needs.every((need) => placed.has(need) || !present.has(need))) ?? rest[0]!;
    ordered.push(next);
    placed.add(next.stage);
    rest = rest.filter((t) => t !== next);
  }
  return ordered;
}

/**
 * The run viewed from one task (RunDoc.stage/processing/blocked) with every task in `tasks`: `stage`, else the
 * `process` task, else the first in pipeline order. Without such a task (a stage the run has no task of, or a
 * run without tasks) the view has no `stage`.
 */
export function runView(run: RunDoc, tasks: TaskDoc[], stage?: string): RunDoc {
  const ordered = pipelineOrder(tasks);
  const doc: RunDoc = { ...run, tasks: ordered };
  const viewed =
    stage !== undefined
      ? ordered.find((t) => t.stage === stage)
      : (ordered.find((t) => t.stage === DEFAULT_STAGE) ?? ordered[0]);
  if (viewed) {
    doc.stage = viewed.stage;
    if (viewed.processing) doc.processing = viewed.processing;
    if (viewed.blocked) doc.blocked = viewed.blocked;
  }
  return doc;
}

export function eventFromRow(row: Row): RunEvent {
  const ev: RunEvent = {
    number: num(row.number) ?? 0,
    time: num(row.time) ?? 0,
    host: str(row.host) ?? '',
    attempt: num(row.attempt) ?? 0,
    from: row.from_state === null || row.from_state === undefined ? null : (String(row.from_state) as RunState),
    to: String(row.to_state) as RunState,
  };
  // events of a first-wave store have no stage: they are its `process` task's
  ev.stage = str(row.stage) ?? DEFAULT_STAGE;
  put(ev, 'reason', str(row.reason));
  put(ev, 'exit_code', num(row.exit_code));
  put(ev, 'signal', str(row.signal));
  put(ev, 'duration_ms', num(row.duration_ms));
  const detail = parseJson(row.detail);
  if (isObject(detail)) ev.detail = detail;
  return ev;
}

export function hostFromRow(row: Row): HostDoc {
  const doc: HostDoc = {
    host: str(row.host) ?? String(row.host),
    pid: num(row.pid) ?? 0,
    token: str(row.token) ?? '',
    state: String(row.state) as HostState,
    time: num(row.time) ?? 0,
    started: num(row.started) ?? 0,
    version: str(row.version) ?? '',
    slots: num(row.slots) ?? 0,
    running: numberArray(parseJson(row.running)) ?? [],
  };
  put(doc, 'proc_start', num(row.proc_start));
  put(doc, 'disk', diskFrom(parseJson(row.disk)));
  put(doc, 'paused_reason', str(row.paused_reason));
  return doc;
}

export function monitorFromRow(row: Row): MonitorSample {
  return monitorSampleFrom(row, num, parseJson);
}

export function logFromRow(row: Row): LogEntry {
  const entry: LogEntry = {
    time: num(row.time) ?? 0,
    host: str(row.host) ?? '',
    user: str(row.user) ?? '',
    priority: (num(row.priority) ?? 1) as LogPriority,
    message: str(row.message) ?? String(row.message),
  };
  put(entry, 'number', num(row.number));
  return entry;
}
