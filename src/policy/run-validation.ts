// Judging run documents: those read from the store (a bad one fails its run instead of crashing the daemon)
// and those a person submits (a bad one is a usage error naming the line and field).

import { nearestKey, isPlainObject } from '../config/validate.js';
import { UsageError } from '../errors.js';
import type { NewRun } from '../store/types.js';
import { MAX_DATE_MS, isDateMs, parseIsoTime } from '../time-range.js';

/** Longest name or input accepted: both end up in argv elements and file names. */
export const MAX_TEXT_LENGTH = 4095;

/**
 * Longest params, as UTF-8 JSON: they reach the command as RUNWARDEN_PARAMS, one environment string, which
 * Linux caps at 128 KiB (MAX_ARG_STRLEN, with the name and the NUL); beyond it the spawn fails with E2BIG.
 */
export const MAX_PARAMS_BYTES = 131_072 - 'RUNWARDEN_PARAMS='.length - 1;

const SUBMIT_FIELDS = ['number', 'name', 'start', 'end', 'mode', 'tags', 'priority', 'input', 'params'] as const;

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') {
    const text = JSON.stringify(value);
    return text.length > 60 ? `${text.slice(0, 57)}..."` : text;
  }
  return String(value);
}

type Problems = { field: string; message: string }[];

function expect(problems: Problems, field: string, what: string, value: unknown): void {
  problems.push({ field, message: `${field}: expected ${what}, got ${describe(value)}` });
}

function checkText(problems: Problems, run: Record<string, unknown>, field: 'name' | 'mode' | 'input'): void {
  const value = run[field];
  if (value === undefined || value === null) return;
  if (typeof value !== 'string') return expect(problems, field, 'a string', value);
  if (field !== 'mode' && value.length > MAX_TEXT_LENGTH) {
    problems.push({ field, message: `${field}: too long (${value.length} characters; at most ${MAX_TEXT_LENGTH})` });
  }
  if (field !== 'mode' && value.includes('\0')) {
    problems.push({ field, message: `${field}: contains a NUL byte, which no command argument can carry` });
  }
}

function checkCommon(problems: Problems, run: Record<string, unknown>): void {
  checkText(problems, run, 'name');
  checkText(problems, run, 'mode');
  checkText(problems, run, 'input');
  const { tags, params } = run;
  if (tags !== undefined && tags !== null) {
    if (!Array.isArray(tags)) expect(problems, 'tags', 'a list of strings', tags);
    else tags.forEach((tag, index) => {
      if (typeof tag !== 'string') expect(problems, `tags[${index}]`, 'a string', tag);
    });
  }
  if (params !== undefined && params !== null && !isPlainObject(params)) expect(problems, 'params', 'an object', params);
  if (isPlainObject(params)) checkParamsSize(problems, params);
}

function checkParamsSize(problems: Problems, params: Record<string, unknown>): void {
  let bytes: number;
  try {
    bytes = Buffer.byteLength(JSON.stringify(params));
  } catch (error) {
    problems.push({ field: 'params', message: `params: cannot be written as JSON for RUNWARDEN_PARAMS (${(error as Error).message})` });
    return;
  }
  if (bytes > MAX_PARAMS_BYTES) {
    problems.push({
      field: 'params',
      message: `params: too large (${bytes} bytes as JSON; at most ${MAX_PARAMS_BYTES}, the limit of one environment variable)`,
    });
  }
}

/**
 * Problems with a run document read from the store; empty when it is usable. Optional fields may be absent
 * or null (documents written by other tools); tags, priority and params are optional for the same reason.
 */
export function validateRunDocument(run: unknown): string[] {
  if (!isPlainObject(run)) return [`run: expected an object, got ${describe(run)}`];
  const problems: Problems = [];
  if (typeof run.number !== 'number' || !Number.isSafeInteger(run.number) || run.number < 0) {
    expect(problems, 'number', 'a non-negative integer', run.number);
  }
  if (!isDateMs(run.start)) expect(problems, 'start', TIME_IN_RANGE, run.start);
  if (run.end !== undefined && run.end !== null && !isDateMs(run.end)) expect(problems, 'end', TIME_IN_RANGE, run.end);
  if (run.priority !== undefined && run.priority !== null && (typeof run.priority !== 'number' || !Number.isFinite(run.priority))) {
    expect(problems, 'priority', 'a number', run.priority);
  }
  checkCommon(problems, run);
  return problems.map((problem) => problem.message);
}

/** What a stored time must be: epoch ms that a date can hold. */
const TIME_IN_RANGE = `a time in epoch milliseconds within ±${MAX_DATE_MS} (the range of a date)`;

/** Epoch milliseconds from an ISO-8601 string or a number of epoch milliseconds. */
function parseTime(value: unknown): number | undefined {
  if (typeof value === 'number') return isDateMs(value) ? value : undefined;
  if (typeof value !== 'string') return undefined;
  return parseIsoTime(value);
}

function parseNumber(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'string' && /^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(value)) return Number(value);
  return undefined;
}

const TIME_ACCEPTED =
  'an ISO-8601 time (e.g. "2024-05-01T12:00:00Z") or epoch milliseconds, ' +
  'between -271821-04-20 and +275760-09-13 (the range of a date)';

/**
 * A run from `submit --file` (one JSON line) or from CLI arguments, checked and normalised. `where` starts
 * every message ("runs.jsonl:3"). A missing start takes `defaultStart` when the caller passes one (usually
 * now); without it a missing start is an error. Throws UsageError listing every problem.
 */
export function parseSubmittedRun(raw: unknown, where: string, defaultStart?: number): NewRun {
  if (!isPlainObject(raw)) throw new UsageError(`${where}: expected a JSON object describing a run, got ${describe(raw)}`);
  const problems: Problems = [];
  for (const field of Object.keys(raw)) {
    if ((SUBMIT_FIELDS as readonly string[]).includes(field)) continue;
    const near = nearestKey(field, SUBMIT_FIELDS);
    problems.push({
      field,
      message: `${field}: unknown field; ${near ? `did you mean ${near}? ` : ''}known fields: ${SUBMIT_FIELDS.join(', ')}`,
    });
  }

  const number = parseNumber(raw.number);
  if (number === undefined || !Number.isSafeInteger(number) || number < 0) {
    expect(problems, 'number', 'a non-negative integer', raw.number);
  }

  let start: number | undefined;
  if (raw.start === undefined || raw.start === null) {
    start = defaultStart;
    if (start === undefined) problems.push({ field: 'start', message: `start: missing; give ${TIME_ACCEPTED}` });
  } else {
    start = parseTime(raw.start);
    if (start === undefined) expect(problems, 'start', TIME_ACCEPTED, raw.start);
  }

  let end: number | undefined;
  if (raw.end !== undefined && raw.end !== null) {
    end = parseTime(raw.end);
    if (end === undefined) expect(problems, 'end', TIME_ACCEPTED, raw.end);
  }

  let priority: number | undefined;
  if (raw.priority !== undefined && raw.priority !== null) {
    priority = parseNumber(raw.priority);
    if (priority === undefined) expect(problems, 'priority', 'a number', raw.priority);
  }

  checkCommon(problems, raw);
  if (Array.isArray(raw.tags)) {
    raw.tags.forEach((tag, index) => {
      if (tag === '') problems.push({ field: `tags[${index}]`, message: `tags[${index}]: a tag cannot be empty` });
    });
  }

  if (problems.length > 0) {
    throw new UsageError(`${where}: ${problems.map((problem) => problem.message).join('; ')}`, problems[0].field);
  }

  const run: NewRun = { number: number as number, start: start as number };
  if (end !== undefined) run.end = end;
  if (priority !== undefined) run.priority = priority;
  for (const field of ['name', 'mode', 'input'] as const) {
    const value = raw[field];
    if (typeof value === 'string') run[field] = value;
  }
  if (Array.isArray(raw.tags)) run.tags = [...(raw.tags as string[])];
  if (isPlainObject(raw.params)) run.params = raw.params;
  return run;
}
