import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isPlainObject } from '../../src/config/validate.js';
import { UsageError } from '../../src/errors.js';
import { MAX_PARAMS_BYTES, MAX_TEXT_LENGTH, parseSubmittedRun, validateRunDocument } from '../../src/policy/run-validation.js';
import { checkNewRun } from '../../src/store/decode.js';
import { runFromDoc } from '../../src/store/mongo/documents.js';
import { runFromRow, runView, taskFromRow } from '../../src/store/sqlite/rows.js';
import { RUN_STATES, type RunDoc } from '../../src/store/types.js';
import { RUN_FIELDS, SEEDS, junkValue, mostlyGoodRun, rawMongoDoc, rawSqliteRow } from './arbitraries.js';
import { outcomeCounter } from './figures.js';

// Run documents written straight into the store by another tool, at the decoding layer: whatever a row or a
// document holds, decoding never throws, and the run is either usable or its problems (the daemon's failure
// reason) each name a field. An independent oracle says which fields are bad, so a decoder that silently
// drops or converts a bad value fails here.

const RUNS = Number(process.env.BADINPUT_RUNS ?? 1_500);
const count = outcomeCounter(`decode, seed ${SEEDS.decode}`);

const FIELD_NAMES = [...RUN_FIELDS, 'processing', 'run'];
const PROBLEM = new RegExp(`^(${FIELD_NAMES.join('|')})(\\[\\d+\\])?: \\S`);

/** The field a problem names ("tags[2]: …" names tags). */
function fieldOf(problem: string): string {
  return PROBLEM.exec(problem)?.[1] ?? `UNNAMED(${problem.slice(0, 60)})`;
}

const present = (value: unknown) => value !== null && value !== undefined;
const finiteNumber = (value: unknown) =>
  (typeof value === 'number' && Number.isFinite(value)) || (typeof value === 'bigint' && Number.isFinite(Number(value)));
/** A time in epoch ms that a Date can hold (±8.64e15). */
const dateNumber = (value: unknown) => finiteNumber(value) && Math.abs(Number(value)) <= 8.64e15;
const runNumber = (value: unknown) =>
  (typeof value === 'number' || typeof value === 'bigint') && Number.isSafeInteger(Number(value)) && Number(value) >= 0;
const parsed = (value: unknown): unknown => {
  try {
    return typeof value === 'string' ? (JSON.parse(value) as unknown) : undefined;
  } catch {
    return undefined;
  }
};
/** params reach the command as RUNWARDEN_PARAMS: a plain object whose JSON fits one environment string. */
const goodParams = (value: unknown) => {
  if (!isPlainObject(value)) return false;
  try {
    return Buffer.byteLength(JSON.stringify(value)) <= MAX_PARAMS_BYTES;
  } catch {
    return false; // a BigInt (a MongoDB Long) has no JSON
  }
};
const stringList = (value: unknown) => Array.isArray(value) && value.every((item) => typeof item === 'string');
const validDate = (value: unknown) => value instanceof Date && Number.isFinite(value.getTime());
/** name and input end up in argv elements: strings of bounded length without NUL. */
const badText = (field: string, value: unknown) =>
  present(value) &&
  (typeof value !== 'string' || (field !== 'mode' && (value.length > MAX_TEXT_LENGTH || value.includes('\0'))));

/** The oracle: fields of a raw SQLite row that must be reported. */
function badSqliteFields(row: Record<string, unknown>): Set<string> {
  const bad = new Set<string>();
  if (!runNumber(row.number)) bad.add('number');
  if (!dateNumber(row.start)) bad.add('start');
  if (present(row.end) && !dateNumber(row.end)) bad.add('end');
  if (present(row.priority) && !finiteNumber(row.priority)) bad.add('priority');
  for (const field of ['name', 'mode', 'input']) if (badText(field, row[field])) bad.add(field);
  if (present(row.tags) && !stringList(parsed(row.tags))) bad.add('tags');
  if (present(row.params) && !goodParams(parsed(row.params))) bad.add('params');
  return bad;
}

/** The oracle: fields of a raw MongoDB document that must be reported. */
function badMongoFields(doc: Record<string, unknown>): Set<string> {
  const bad = new Set<string>();
  if (!runNumber(doc.number)) bad.add('number');
  if (!(validDate(doc.start) || dateNumber(doc.start))) bad.add('start');
  if (present(doc.end) && !(validDate(doc.end) || dateNumber(doc.end))) bad.add('end');
  if (present(doc.priority) && !finiteNumber(doc.priority)) bad.add('priority');
  for (const field of ['name', 'mode', 'input']) if (badText(field, doc[field])) bad.add(field);
  if (present(doc.tags) && !stringList(doc.tags)) bad.add('tags');
  if (present(doc.params) && !goodParams(doc.params)) bad.add('params');
  const p = doc.processing;
  if (present(p) && (typeof p !== 'object' || Array.isArray(p) || p instanceof Date)) bad.add('processing');
  return bad;
}

/** What the daemon relies on in a run that passed preflight's document check. */
function expectUsable(run: RunDoc): void {
  expect(Number.isSafeInteger(run.number) && run.number >= 0).toBe(true);
  expect(Number.isFinite(run.start)).toBe(true);
  if (run.end !== undefined) expect(Number.isFinite(run.end)).toBe(true);
  expect(stringList(run.tags)).toBe(true);
  expect(Number.isFinite(run.priority)).toBe(true);
  expect(isPlainObject(run.params)).toBe(true);
  for (const field of ['name', 'mode', 'input'] as const) {
    if (run[field] !== undefined) expect(badText(field, run[field])).toBe(false);
  }
  for (const output of run.outputs) {
    expect(typeof output.location === 'string' && typeof output.host === 'string').toBe(true);
    expect(Number.isFinite(output.attempt) && Number.isFinite(output.at)).toBe(true);
  }
  const p = run.processing;
  if (p !== undefined) {
    expect(typeof p.state === 'string' && typeof p.host === 'string' && typeof p.token === 'string').toBe(true);
    for (const value of [p.pid, p.attempt, p.time, p.n_failures]) expect(Number.isFinite(value)).toBe(true);
  }
}

/** The property shared by both backends. */
function checkDecoded(group: string, decode: () => RunDoc, oracle: Set<string>): void {
  const run = decode();
  // Documents carry no undefined keys (put's contract): what is absent is absent.
  expect(Object.entries(run).filter(([, value]) => value === undefined)).toEqual([]);
  const problems = [...(run.invalid ?? []), ...validateRunDocument(run)];
  for (const problem of problems) {
    expect(problem).toMatch(PROBLEM);
    // A reason is stored and shown: bounded whatever the value (1 MiB strings are cut).
    expect(problem.length).toBeLessThan(300);
  }
  const named = new Set(problems.map(fieldOf));
  expect([...named].sort()).toEqual([...oracle].sort());
  if (problems.length === 0) {
    expectUsable(run);
    count(group, 'usable');
  } else {
    count(group, 'invalid');
    for (const field of named) count(group, `names ${field}`);
  }
  if (run.processing !== undefined) {
    const known = (RUN_STATES as readonly string[]).includes(run.processing.state);
    count(group, known ? 'processing with a known state' : 'processing with an unknown state');
  }
}

describe('decoding run documents written by other tools', () => {
  it(`SQLite rows: never throws; usable, or every problem names the bad field (${RUNS} rows)`, () => {
    fc.assert(
      fc.property(rawSqliteRow, (row) => {
        count('sqlite rows', 'tried');
        // the processing columns are the run's process task's (schema 5): decoded as its view
        checkDecoded('sqlite rows', () => runView(runFromRow(row), [taskFromRow({ ...row, stage: 'process' })]), badSqliteFields(row));
      }),
      { seed: SEEDS.decode, numRuns: RUNS },
    );
  });

  it(`MongoDB documents: never throws; usable, or every problem names the bad field (${RUNS} documents)`, () => {
    fc.assert(
      fc.property(rawMongoDoc, (doc) => {
        count('mongo docs', 'tried');
        checkDecoded('mongo docs', () => runFromDoc(doc), badMongoFields(doc));
      }),
      { seed: SEEDS.decode, numRuns: RUNS },
    );
  });

  it('MongoDB: a date beyond what Date holds (an invalid Date from the driver) is reported, not thrown', () => {
    const run = runFromDoc({ number: 3, start: new Date(Number.NaN), end: new Date(Number.NaN), params: new Date(Number.NaN) });
    expect(run.invalid).toEqual([
      'start: expected a date, got an invalid date',
      'params: expected an object, got an invalid date',
      'end: expected a date, got an invalid date',
    ]);
  });

  it('MongoDB: a number stored as text or a missing start is reported, not silently converted', () => {
    expect(runFromDoc({ number: '12', start: new Date(0) }).invalid).toEqual(['number: expected an integer, got string "12"']);
    expect(runFromDoc({ number: 12 }).invalid).toEqual(['start: missing; expected a date']);
  });
});

describe('validating run documents', () => {
  const anyDocument = fc.oneof(
    { weight: 4, arbitrary: mostlyGoodRun() },
    { weight: 2, arbitrary: fc.dictionary(fc.constantFrom(...RUN_FIELDS, 'processing', 'extra'), junkValue) },
    { weight: 1, arbitrary: junkValue },
  );

  it(`validateRunDocument: every problem names a field of the document (${RUNS} documents)`, () => {
    fc.assert(
      fc.property(anyDocument, (doc) => {
        count('validateRunDocument', 'tried');
        const problems = validateRunDocument(doc);
        for (const problem of problems) expect(problem).toMatch(PROBLEM);
        count('validateRunDocument', problems.length === 0 ? 'valid' : 'invalid');
      }),
      { seed: SEEDS.decode, numRuns: RUNS },
    );
  });

  // A JSON line of `submit --file`: any keys (known, misspelt, unknown), any values.
  const SUBMIT_FIELDS = RUN_FIELDS.filter((f) => f !== 'outputs');
  const submittedLine = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.tuple(mostlyGoodRun(SUBMIT_FIELDS), fc.option(fc.constantFrom('nubmer', 'strat', 'outputs'), { freq: 4 })).map(
        ([run, extra]) => (extra === null ? run : { ...run, [extra]: 1 }),
      ),
    },
    {
      weight: 2,
      arbitrary: fc.dictionary(
        fc.oneof(fc.constantFrom(...SUBMIT_FIELDS), fc.constantFrom('nubmer', 'strat', 'tag', 'param', 'x'), fc.string({ unit: 'grapheme', maxLength: 12 })),
        fc.oneof(junkValue, fc.constantFrom('2024-05-01T12:00:00Z', '12', ' 7 ', '1e3', '-3', 'yesterday')),
        { maxKeys: 6 },
      ),
    },
    { weight: 1, arbitrary: junkValue },
  );

  it(`parseSubmittedRun: a UsageError naming a field of the line, or a run every store accepts (${RUNS} lines)`, () => {
    fc.assert(
      fc.property(submittedLine, (raw) => {
        count('submit lines', 'tried');
        let run;
        try {
          run = parseSubmittedRun(raw, 'runs.jsonl:3', 0);
        } catch (error) {
          expect(error).toBeInstanceOf(UsageError);
          const { message, field } = error as UsageError;
          expect(message.startsWith('runs.jsonl:3: ')).toBe(true);
          if (field !== undefined) {
            // The field named is a known one or one the line really has.
            expect([...RUN_FIELDS, ...(isPlainObject(raw) ? Object.keys(raw) : [])]).toContain(field.replace(/\[\d+\]$/, ''));
            expect(message).toContain(`${field}: `);
          } else {
            expect(isPlainObject(raw)).toBe(false);
          }
          count('submit lines', 'refused');
          return;
        }
        expect(() => checkNewRun(run)).not.toThrow();
        expect(validateRunDocument({ tags: [], priority: 0, params: {}, ...run })).toEqual([]);
        count('submit lines', 'accepted');
      }),
      { seed: SEEDS.submit, numRuns: RUNS },
    );
  });
});
