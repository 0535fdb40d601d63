import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { parseSubmittedRun, validateRunDocument } from '../../src/policy/run-validation.js';

const valid = { number: 42, start: 1_714_564_800_000, tags: [], priority: 0, params: {}, outputs: [] };

describe('validateRunDocument', () => {
  it.each([
    ['a minimal document', { number: 0, start: 0 }],
    ['a full document', { ...valid, name: 'r', mode: 'tpc', input: '/raw/42', end: 1, tags: ['hold'], params: { a: 1 }, processing: { state: 'busy' } }],
    ['nulls from other tools', { ...valid, name: null, end: null, mode: null, input: null, tags: null, params: null, priority: null }],
    ['a negative start (before 1970)', { ...valid, start: -5 }],
    ['a name of 4095 characters', { ...valid, name: 'x'.repeat(4095) }],
  ])('accepts %s', (_case, run) => {
    expect(validateRunDocument(run)).toEqual([]);
  });

  it.each([
    ['not an object', 'run 42', ['run: expected an object, got "run 42"']],
    ['null', null, ['run: expected an object, got null']],
    ['number missing', { start: 0 }, ['number: expected a non-negative integer, got nothing']],
    ['number negative', { ...valid, number: -1 }, ['number: expected a non-negative integer, got -1']],
    ['number fraction', { ...valid, number: 1.5 }, ['number: expected a non-negative integer, got 1.5']],
    ['number unsafe', { ...valid, number: 2 ** 53 }, ['number: expected a non-negative integer, got 9007199254740992']],
    ['number string', { ...valid, number: '42' }, ['number: expected a non-negative integer, got "42"']],
    ['start missing', { number: 1 }, ['start: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got nothing']],
    ['start NaN', { ...valid, start: Number.NaN }, ['start: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got NaN']],
    ['start string', { ...valid, start: '2024-05-01' }, ['start: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got "2024-05-01"']],
    ['start beyond a date', { ...valid, start: 1e20 }, ['start: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got 100000000000000000000']],
    ['end infinite', { ...valid, end: Number.POSITIVE_INFINITY }, ['end: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got Infinity']],
    ['priority string', { ...valid, priority: 'high' }, ['priority: expected a number, got "high"']],
    ['tags not a list', { ...valid, tags: 'hold' }, ['tags: expected a list of strings, got "hold"']],
    ['tag not a string', { ...valid, tags: ['ok', 3] }, ['tags[1]: expected a string, got 3']],
    ['params a string', { ...valid, params: 'x=1' }, ['params: expected an object, got "x=1"']],
    ['params a list', { ...valid, params: [1] }, ['params: expected an object, got an array']],
    ['name not a string', { ...valid, name: 5 }, ['name: expected a string, got 5']],
    ['mode not a string', { ...valid, mode: {} }, ['mode: expected a string, got an object']],
    ['input not a string', { ...valid, input: ['a'] }, ['input: expected a string, got an array']],
    ['name too long', { ...valid, name: 'x'.repeat(4096) }, ['name: too long (4096 characters; at most 4095)']],
    ['input too long', { ...valid, input: 'x'.repeat(5000) }, ['input: too long (5000 characters; at most 4095)']],
    ['input with NUL', { ...valid, input: '/raw/\0' }, ['input: contains a NUL byte, which no command argument can carry']],
    ['name with NUL', { ...valid, name: 'a\0' }, ['name: contains a NUL byte, which no command argument can carry']],
    ['several problems', { number: -1, start: 'x', params: 1 }, [
      'number: expected a non-negative integer, got -1',
      'start: expected a time in epoch milliseconds within ±8640000000000000 (the range of a date), got "x"',
      'params: expected an object, got 1',
    ]],
  ])('reports %s', (_case, run, problems) => {
    expect(validateRunDocument(run)).toEqual(problems);
  });
});

describe('parseSubmittedRun', () => {
  it.each([
    ['epoch ms start', { number: 7, start: 1_714_564_800_000 }, { number: 7, start: 1_714_564_800_000 }],
    ['ISO start in UTC', { number: 7, start: '2024-05-01T12:00:00Z' }, { number: 7, start: Date.UTC(2024, 4, 1, 12) }],
    ['ISO start with an offset', { number: 7, start: '2024-05-01T14:00:00+02:00' }, { number: 7, start: Date.UTC(2024, 4, 1, 12) }],
    ['ISO start with a compact offset', { number: 7, start: '2024-05-01T14:00+0200' }, { number: 7, start: Date.UTC(2024, 4, 1, 12) }],
    ['ISO start with fractions', { number: 7, start: '2024-05-01T12:00:00.250Z' }, { number: 7, start: Date.UTC(2024, 4, 1, 12, 0, 0, 250) }],
    ['ISO date alone is UTC midnight', { number: 7, start: '2024-05-01' }, { number: 7, start: Date.UTC(2024, 4, 1) }],
    ['a space instead of T', { number: 7, start: '2024-05-01 12:00:00z' }, { number: 7, start: Date.UTC(2024, 4, 1, 12) }],
    ['numeric strings from the command line', { number: '7', start: 5, priority: '-2.5' }, { number: 7, start: 5, priority: -2.5 }],
    [
      'every field',
      { number: 7, start: 1, end: '2024-05-01T00:00:00Z', name: 'n', mode: 'tpc', input: '/raw', tags: ['hold'], priority: 3, params: { a: [1] } },
      { number: 7, start: 1, end: Date.UTC(2024, 4, 1), name: 'n', mode: 'tpc', input: '/raw', tags: ['hold'], priority: 3, params: { a: [1] } },
    ],
    ['null optional fields are absent', { number: 7, start: 1, end: null, priority: null, name: null }, { number: 7, start: 1 }],
  ])('accepts %s', (_case, raw, run) => {
    expect(parseSubmittedRun(raw, 'runs.jsonl:1')).toEqual(run);
  });

  it('takes the caller’s default start only when start is missing', () => {
    expect(parseSubmittedRun({ number: 1 }, 'argv', 99)).toEqual({ number: 1, start: 99 });
    expect(parseSubmittedRun({ number: 1, start: 5 }, 'argv', 99)).toEqual({ number: 1, start: 5 });
  });

  it.each([
    ['not an object', '42', 'runs.jsonl:3: expected a JSON object describing a run, got "42"', undefined],
    ['priority a word', { number: 1, start: 1, priority: 'high' }, 'runs.jsonl:3: priority: expected a number, got "high"', 'priority'],
    ['unknown field, near', { number: 1, start: 1, prority: 2 }, 'runs.jsonl:3: prority: unknown field; did you mean priority? known fields: number, name, start', 'prority'],
    ['unknown field, far', { number: 1, start: 1, zzzzzzz: 2 }, 'runs.jsonl:3: zzzzzzz: unknown field; known fields', 'zzzzzzz'],
    ['processing may not be submitted', { number: 1, start: 1, processing: {} }, 'processing: unknown field', 'processing'],
    ['number missing', { start: 1 }, 'runs.jsonl:3: number: expected a non-negative integer, got nothing', 'number'],
    ['number negative', { number: -3, start: 1 }, 'number: expected a non-negative integer, got -3', 'number'],
    ['number fraction string', { number: '1.5', start: 1 }, 'number: expected a non-negative integer, got "1.5"', 'number'],
    ['start missing without a default', { number: 1 }, 'runs.jsonl:3: start: missing; give an ISO-8601 time', 'start'],
    ['start in words', { number: 1, start: 'March 5' }, 'start: expected an ISO-8601 time (e.g. "2024-05-01T12:00:00Z") or epoch milliseconds, between -271821-04-20 and +275760-09-13 (the range of a date), got "March 5"', 'start'],
    ['start impossible date', { number: 1, start: '2024-13-45' }, 'start: expected an ISO-8601 time', 'start'],
    ['end a boolean', { number: 1, start: 1, end: true }, 'end: expected an ISO-8601 time', 'end'],
    ['start beyond a date', { number: 1, start: 8.64e15 + 1 }, 'start: expected an ISO-8601 time', 'start'],
    ['end before any date', { number: 1, start: 1, end: -1e300 }, 'end: expected an ISO-8601 time', 'end'],
    ['tags a string', { number: 1, start: 1, tags: 'hold' }, 'tags: expected a list of strings, got "hold"', 'tags'],
    ['tag empty', { number: 1, start: 1, tags: [''] }, 'tags[0]: a tag cannot be empty', 'tags[0]'],
    ['params a string', { number: 1, start: 1, params: 'a=1' }, 'params: expected an object, got "a=1"', 'params'],
    ['input with NUL', { number: 1, start: 1, input: 'a\0b' }, 'input: contains a NUL byte', 'input'],
    ['name too long', { number: 1, start: 1, name: 'n'.repeat(4096) }, 'name: too long', 'name'],
    ['several problems at once', { number: 'x', start: 1, priority: 'high' }, 'runs.jsonl:3: number: expected a non-negative integer, got "x"; priority: expected a number, got "high"', 'number'],
  ])('refuses %s', (_case, raw, message, field) => {
    let caught: unknown;
    try {
      parseSubmittedRun(raw, 'runs.jsonl:3');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(UsageError);
    const error = caught as UsageError;
    expect(error.message.startsWith('runs.jsonl:3: ')).toBe(true);
    expect(error.message).toContain(message);
    expect(error.field).toBe(field);
    expect(error.exitCode).toBe(2);
  });

  it('copies tags rather than sharing the caller’s array', () => {
    const tags = ['hold'];
    const run = parseSubmittedRun({ number: 1, start: 1, tags }, 'x');
    tags.push('later');
    expect(run.tags).toEqual(['hold']);
  });
});
