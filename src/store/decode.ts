// Defensive decoding shared by the backends: a document or row another tool wrote badly never throws while it
// is read; a bad value is left out or replaced by an empty default, and later validation fails the run with
// a reason. Also the checks every backend applies to a new run before it is written.

import { UsageError } from '../errors.js';
import { MAX_DATE_MS, isDateMs } from '../time-range.js';
import { RUN_STATES } from './types.js';
import type {
  DiskFigures,
  DrainingAttempt,
  HostState,
  MonitorSample,
  NewRun,
  Processing,
  RunOutput,
  RunState,
} from './types.js';

export function num(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'bigint') return Number(value);
  return undefined;
}

export function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** A plain object: not null, not an array, not a (BSON) date. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

export function stringArray(value: unknown): string[] | undefined {
  if (!Array.isArray(value)) return undefined;
  return value.filter((v): v is string => typeof v === 'string');
}

export function numberArray(value: unknown): number[] | undefined {
  if (!Array.isArray(value)) return undefined;
  return value.filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
}

export function numberMap(value: unknown): Record<string, number> | undefined {
  if (!isObject(value)) return undefined;
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  }
  return out;
}

/** The outputs list; entries without a location are dropped. `time` reads the backend's time values. */
export function outputList(value: unknown, time: (value: unknown) => number | undefined = num): RunOutput[] {
  if (!Array.isArray(value)) return [];
  const out: RunOutput[] = [];
  for (const item of value) {
    if (!isObject(item) || typeof item.location !== 'string') continue;
    const output: RunOutput = {
      location: item.location,
      host: str(item.host) ?? '',
      attempt: num(item.attempt) ?? 0,
      at: time(item.at) ?? 0,
    };
    // the stage whose task wrote it; absent in a first-wave store (read as `process`)
    put(output, 'stage', str(item.stage));
    out.push(output);
  }
  return out;
}

/** Sets `key` only when the value is present, so documents carry no `undefined` keys. */
export function put<T extends object, K extends keyof T>(target: T, key: K, value: T[K] | undefined): void {
  if (value !== undefined) target[key] = value;
}

/** A short description of a bad value for a reason: `string "oops"`, `array [1,2]`, `date 2024-…`. */
export function describeRaw(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  // A BSON date beyond what Date holds arrives as an invalid Date, whose toISOString throws.
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'an invalid date' : `date ${value.toISOString()}`;
  const kind = Array.isArray(value) ? 'array' : typeof value;
  let text: string;
  try {
    text = typeof value === 'string' || typeof value === 'object' ? JSON.stringify(value) : String(value);
  } catch {
    text = String(value);
  }
  return `${kind} ${text.length > 40 ? `${text.slice(0, 39)}…` : text}`;
}

/** How a decoded time field beyond what a date holds is described in `invalid` and `problems`. */
export const OUT_OF_DATE_RANGE = `outside the range of a date (±${MAX_DATE_MS} ms)`;

/** What every backend refuses in a new run, each as a UsageError naming the field. */
export function checkNewRun(run: NewRun): void {
  if (!Number.isSafeInteger(run.number)) {
    throw new UsageError(`run number must be an integer, got ${String(run.number)}`, 'number');
  }
  if (!isDateMs(run.start)) {
    throw new UsageError(`run ${run.number}: start must be a time in epoch ms within ±${MAX_DATE_MS}`, 'start');
  }
  if (run.end !== undefined && run.end !== null && !isDateMs(run.end)) {
    throw new UsageError(`run ${run.number}: end must be a time in epoch ms within ±${MAX_DATE_MS}`, 'end');
  }
  if (run.tags !== undefined && (!Array.isArray(run.tags) || run.tags.some((t) => typeof t !== 'string'))) {
    throw new UsageError(`run ${run.number}: tags must be a list of strings`, 'tags');
  }
  if (run.priority !== undefined && (typeof run.priority !== 'number' || !Number.isFinite(run.priority))) {
    throw new UsageError(`run ${run.number}: priority must be a number`, 'priority');
  }
}

/**
 * The processing sub-document from a backend's fields. `time` reads the backend's time values (numbers in
 * SQLite, dates in MongoDB); `structured` turns a stored list or map into a value (SQLite keeps JSON text).
 */
export function processingFrom(
  fields: Record<string, unknown>,
  time: (value: unknown) => number | undefined,
  structured: (value: unknown) => unknown = (value) => value,
  /** Reads a lease time as the backend's queries accept it (MongoDB: dates only); `time` by default. */
  leaseTime: (value: unknown) => number | undefined = time,
): Processing {
  const p: Processing = {
    // An unknown state written by another tool is handed back as is: it is never eligible for a claim,
    // and showing it truthfully beats hiding it.
    state: String(fields.state) as RunState,
    host: str(fields.host) ?? '',
    pid: num(fields.pid) ?? 0,
    token: str(fields.token) ?? '',
    // A count another tool wrote as text ("7") is read as its number, never as 0: attempts never go back.
    attempt: countValue(fields.attempt) ?? 0,
    time: time(fields.time) ?? 0,
    n_failures: countValue(fields.n_failures) ?? 0,
    // absent in rows written before interruptions were counted
    n_interruptions: countValue(fields.n_interruptions) ?? 0,
  };
  put(p, 'pgid', num(fields.pgid));
  put(p, 'proc_start', num(fields.proc_start));
  put(p, 'started', time(fields.started));
  put(p, 'ended', time(fields.ended));
  put(p, 'reason', str(fields.reason));
  put(p, 'next_retry', time(fields.next_retry));
  put(p, 'exit_code', num(fields.exit_code));
  put(p, 'signal', str(fields.signal));
  put(p, 'targets', stringArray(structured(fields.targets)));
  put(p, 'resources', numberMap(structured(fields.resources)));
  put(p, 'draining', drainingFrom(structured(fields.draining), time));
  const problems = processingProblems(fields, leaseTime);
  if (problems.length > 0) p.problems = problems;
  return p;
}

/** A whole number ≥ 0 from a number, a bigint or decimal digits as text; anything else is no count. */
export function countValue(value: unknown): number | undefined {
  if (typeof value === 'string' && /^\s*\d{1,15}\s*$/.test(value)) return Number(value);
  const n = num(value);
  return n !== undefined && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** States whose processing document cleanup repairs when it is invalid; done and abandoned are final. */
export const REPAIRABLE_STATES: readonly string[] = ['considering', 'busy', 'failed'];

/**
 * What makes a processing document (another tool wrote it, or half of it) not a valid state: the problems
 * cleanup names when it repairs the run, and `show` prints. Empty for a valid document. The backends' queries
 * for invalid documents (listInvalidRuns) select exactly the documents with a problem in a repairable or
 * unknown state.
 */
export function processingProblems(
  fields: Record<string, unknown>,
  time: (value: unknown) => number | undefined,
): string[] {
  const problems: string[] = [];
  const raw = fields.state;
  const state = typeof raw === 'string' && (RUN_STATES as readonly string[]).includes(raw) ? raw : undefined;
  if (state === undefined) problems.push(`unknown state ${describeRaw(raw)}`);
  const timeField = (field: string) => {
    const value = fields[field];
    if (value === null || value === undefined) return problems.push(`${state} without ${field}`);
    const ms = time(value);
    if (ms === undefined) return problems.push(`${field}: not a time (${describeRaw(value)})`);
    if (!isDateMs(ms)) return problems.push(`${field}: ${OUT_OF_DATE_RANGE}, got ${ms}`);
    return 0;
  };
  if (state === 'considering' || state === 'busy') {
    for (const field of ['token', 'host'] as const) {
      const value = fields[field];
      if (value === null || value === undefined || value === '') problems.push(`${state} without ${field}`);
      else if (typeof value !== 'string') problems.push(`${field}: not text (${describeRaw(value)})`);
    }
    timeField('time');
  }
  if (state === 'failed') timeField('next_retry');
  // Shown for every state; repaired only in considering, busy, failed and unknown ones (done and abandoned
  // are final: a later retry's claim still goes past the history's highest attempt).
  for (const field of ['attempt', 'n_failures'] as const) {
    const value = fields[field];
    if (value === null || value === undefined) problems.push(`${state ?? 'processing'} without ${field}`);
    else if (typeof value === 'string' && countValue(value) !== undefined) {
      problems.push(`${field}: stored as text (${describeRaw(value)})`);
    } else if (countValue(value) === undefined) {
      problems.push(`${field}: not a whole number ≥ 0 (${describeRaw(value)})`);
    }
  }
  return problems;
}

/** A draining record from a stored object; anything without a host, an attempt and a time is none. */
export function drainingFrom(
  value: unknown,
  time: (value: unknown) => number | undefined,
): DrainingAttempt | undefined {
  if (!isObject(value)) return undefined;
  const host = str(value.host);
  const attempt = num(value.attempt);
  const until = time(value.until);
  if (host === undefined || attempt === undefined || until === undefined) return undefined;
  const d: DrainingAttempt = { host, pid: num(value.pid) ?? 0, attempt, until };
  put(d, 'pgid', num(value.pgid));
  put(d, 'proc_start', num(value.proc_start));
  return d;
}

/** Disk figures from a stored object; anything else is no figures. */
export function diskFrom(value: unknown): DiskFigures | undefined {
  if (!isObject(value)) return undefined;
  return {
    path: str(value.path) ?? '',
    used_percent: num(value.used_percent) ?? 0,
    free_bytes: num(value.free_bytes) ?? 0,
  };
}

/** A monitor sample from a backend's fields; `time` and `structured` as for processingFrom. */
export function monitorSampleFrom(
  fields: Record<string, unknown>,
  time: (value: unknown) => number | undefined,
  structured: (value: unknown) => unknown = (value) => value,
): MonitorSample {
  const sample: MonitorSample = {
    host: str(fields.host) ?? String(fields.host),
    time: time(fields.time) ?? 0,
    state: String(fields.state) as HostState,
    slots: num(fields.slots) ?? 0,
    running: numberArray(structured(fields.running)) ?? [],
  };
  put(sample, 'disk', diskFrom(structured(fields.disk)));
  return sample;
}
