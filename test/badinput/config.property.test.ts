import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { CONFIG_KEYS, knownKeyPaths, type Config, type FieldKind } from '../../src/config/schema.js';
import { isPlainObject, validateConfig } from '../../src/config/validate.js';
import { ConfigError, ConfigProblems } from '../../src/errors.js';
import { SEEDS, junkValue, nastyText } from './arbitraries.js';
import { outcomeCounter } from './figures.js';

// Broken configurations: arbitrary YAML-ish objects with wrong types, unknown keys, bad durations and
// contradictions. validateConfig either returns a Config that keeps every invariant the daemon relies on, or
// throws a ConfigError naming a field of the input (or the known key it should be); never anything else.

const RUNS = Number(process.env.BADINPUT_RUNS ?? 1_500);
const options = { cwd: '/srv/runwarden', hostName: () => 'daq01' };
const KNOWN = new Set(knownKeyPaths());
const count = outcomeCounter(`config, seed ${SEEDS.config}`);

/** Values a key of each kind accepts. Durations stay apart so that no contradiction arises by chance. */
const GOOD: Record<FieldKind, fc.Arbitrary<unknown>> = {
  store: fc.constantFrom('sqlite:./runs.db', 'sqlite:/var/lib/runs.db', 'mongodb://db1,db2/runs?replicaSet=rs0'),
  string: fc.constantFrom('daq01', '127.0.0.1', 'host-ü'),
  path: fc.constantFrom('./out', '/data/processed', 'logs'),
  enum: fc.constant(undefined), // per key below
  integer: fc.integer({ min: 1, max: 9 }),
  number: fc.integer({ min: 1, max: 90 }),
  boolean: fc.boolean(),
  duration: fc.constantFrom('10m', 900, '1h30m', '2h'),
  bytes: fc.constantFrom(0, 1024, '1GiB', '500MB'),
  'string-list': fc.constantFrom(['proc', '--run', '{number}', '{output}'], ['sh', '-c', 'x {name}'], ['peaks', 'events']),
  'integer-list': fc.constantFrom([], [2, 78]),
  pair: fc.constantFrom([0.5, 1.5], [1, 1]),
  'string-map': fc.constantFrom({}, { OMP_NUM_THREADS: '4', DEBUG: 1 }),
  'count-map': fc.constantFrom({}, { 'event*': 2, '*': 7 }),
  'resource-map': fc.constantFrom({}, { cores: { start: 8, min: 4, shrink: 1.1 } }),
  'scalar-map': fc.constantFrom({}, { dataset: 'SiR2', energy: 2.5, blind: false }),
};
const ENUMS: Record<string, readonly string[]> = { order: ['newest', 'oldest'], log_level: ['debug', 'info', 'warn', 'error'] };

/** Values a key of each kind refuses, whatever the rest of the config says. */
const BAD: Record<FieldKind, readonly unknown[]> = {
  store: ['postgres://x', 'sqlite:', 'sqlite::memory:', 5, '', null],
  string: ['', 'two words', 5, [], null],
  path: ['', 5, ['a'], null],
  enum: ['sideways', 3, null],
  integer: [-1, 1.5, 'x', Number.NaN, 1e300, null],
  number: ['x', Number.NaN, Infinity, -5, null],
  boolean: ['yes', 1, null],
  duration: [-1, 'soon', '5', {}, true, Infinity, '3 parsecs', null],
  bytes: [-1, '5 parsecs', {}, true, null],
  'string-list': ['echo x', [1], {}, [null], null],
  'integer-list': [[256], ['x'], 5, [-1], null],
  pair: [[2, 1], [0, 1], 'x', [1], [1, 2, 3], null],
  'string-map': ['x', { '1A': 'v' }, { A: {} }, { A: 'nul\0' }, [], null],
  'count-map': ['x', { a: -1 }, { '': 1 }, { a: 'two' }, null],
  'resource-map': ['x', { cores: { start: 1, min: 4, shrink: 2 } }, { number: { start: 1, min: 1, shrink: 1 } }, { cores: { start: 4 } }, { cores: { start: 4, min: 1, shrink: 0.5 } }, null],
  'scalar-map': ['x', { a: null }, { a: [1] }, { a: { b: 1 } }, { a: Number.NaN }, null],
};

type Section = Record<string, FieldKind>;
const SECTIONS = Object.entries(CONFIG_KEYS).filter(([, kind]) => typeof kind === 'object') as [string, Section][];
const TOP = Object.entries(CONFIG_KEYS).filter(([, kind]) => typeof kind === 'string') as [string, FieldKind][];

function goodFor(key: string, kind: FieldKind): fc.Arbitrary<unknown> {
  return kind === 'enum' ? fc.constantFrom(...ENUMS[key]) : GOOD[kind];
}

/** A config good in every key it sets, with the timeouts far apart (check_interval small). */
const goodConfig = fc
  .record({
    ...Object.fromEntries(TOP.map(([key, kind]) => [key, goodFor(key, kind)])),
    ...Object.fromEntries(
      SECTIONS.map(([section, keys]) => [section, fc.record(Object.fromEntries(Object.entries(keys).map(([key, kind]) => [key, goodFor(key, kind)])), { requiredKeys: [] })]),
    ),
  }, { requiredKeys: [] })
  .map((raw) => {
    const timeouts = raw.timeouts as Record<string, unknown> | undefined;
    if (timeouts && 'check_interval' in timeouts) timeouts.check_interval = '1s';
    // max_busy_time must hold 3 × check_interval + 2 × signal_escalate (the lease guard's time to kill).
    if (timeouts && 'signal_escalate' in timeouts) timeouts.signal_escalate = '1s';
    // An attempt log holds at least 4 KiB (the cut marker must fit): 0 is a good value for min_free_bytes only.
    const process = raw.process as Record<string, unknown> | undefined;
    if (process && typeof process.max_log_bytes === 'number' && process.max_log_bytes < 4096) process.max_log_bytes = '1GiB';
    // A number range must hold a number: min_number ≤ max_number.
    const select = raw.select as Record<string, number> | undefined;
    if (select && select.min_number !== undefined && select.max_number !== undefined && select.min_number > select.max_number) {
      [select.min_number, select.max_number] = [select.max_number, select.min_number];
    }
    return raw;
  });

/** Every dotted path of the raw input ("process", "process.env", "process.env.A", ...). */
function inputPaths(value: unknown, prefix = '', out = new Set<string>()): Set<string> {
  if (!isPlainObject(value)) return out;
  for (const [key, inner] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${key}` : key;
    out.add(path);
    inputPaths(inner, path, out);
  }
  return out;
}

/** What the daemon relies on in a Config. */
function expectInvariants(config: Config): void {
  const t = config.timeouts;
  expect(Number.isSafeInteger(config.slots) && config.slots >= 1).toBe(true);
  for (const value of Object.values(t)) expect(Number.isFinite(value) && value > 0).toBe(true);
  for (const limit of [t.max_considering_time, t.max_busy_time, t.presumed_dead]) expect(limit).toBeGreaterThan(3 * t.check_interval);
  expect(config.retry.factor).toBeGreaterThanOrEqual(1);
  expect(config.retry.jitter[0] > 0 && config.retry.jitter[0] <= config.retry.jitter[1]).toBe(true);
  expect(Number.isSafeInteger(config.retry.max_failures) && config.retry.max_failures >= 1).toBe(true);
  expect(config.disk.max_used_percent > 0 && config.disk.max_used_percent <= 100).toBe(true);
  expect(Number.isSafeInteger(config.disk.min_free_bytes) && config.disk.min_free_bytes >= 0).toBe(true);
  for (const path of [config.process.cwd, config.process.output_root, config.process.log_dir, config.disk.path]) expect(isAbsolute(path)).toBe(true);
  expect(config.store).toMatch(/^(sqlite:\/|mongodb(\+srv)?:\/\/)/);
  expect(config.process.command.every((element) => typeof element === 'string')).toBe(true);
  for (const value of Object.values(config.process.env)) expect(typeof value === 'string' && !value.includes('\0')).toBe(true);
  for (const rule of Object.values(config.process.resources)) expect(rule.start >= rule.min && rule.min >= 1 && rule.shrink >= 1).toBe(true);
  expect(['newest', 'oldest']).toContain(config.order);
  for (const port of [config.observe.inspect_port, config.observe.metrics_port]) expect(Number.isInteger(port) && port >= 0 && port <= 65535).toBe(true);
}

/** Each problem a ConfigError reports: itself, or every one of a ConfigProblems (all problems at once). */
function problemsOf(error: ConfigError): ConfigError[] {
  if (!(error instanceof ConfigProblems)) return [error];
  expect(error.problems.length, error.message).toBeGreaterThan(1);
  expect(error.message.startsWith(`config: ${error.problems.length} problems:\n`), error.message).toBe(true);
  return error.problems;
}

/** A problem's message names its field first ("config: FIELD: …"; the config as a whole once, not twice). */
function expectNamed(problem: ConfigError): void {
  const prefix = problem.field === 'config' ? 'config: ' : `config: ${problem.field}: `;
  expect(problem.message.startsWith(prefix) && !problem.message.startsWith('config: config: config:'), problem.message).toBe(true);
}

/**
 * Validates; returns every problem of the ConfigError it threw, or undefined after checking the Config. Anything
 * else fails the test.
 */
function judge(raw: unknown): ConfigError[] | undefined {
  let config: Config;
  try {
    config = validateConfig(raw, options);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw new Error(`not a ConfigError: ${String(error)}`, { cause: error });
    const problems = problemsOf(error);
    for (const problem of problems) expectNamed(problem);
    return problems;
  }
  expectInvariants(config);
  return undefined;
}

const typo = (key: string) =>
  fc.integer({ min: 0, max: key.length - 1 }).map((at) => `${key.slice(0, at)}${key[at] === 'x' ? 'y' : 'x'}${key.slice(at + 1)}`);

describe('configuration: bad values, unknown keys, contradictions', () => {
  it(`one bad value in a good config: a ConfigError naming exactly that key (${RUNS} configs)`, () => {
    const allKeys = [...TOP.map(([key, kind]) => ({ path: [key], kind })), ...SECTIONS.flatMap(([section, keys]) => Object.entries(keys).map(([key, kind]) => ({ path: [section, key], kind })))];
    const mutation = fc.constantFrom(...allKeys).chain(({ path, kind }) => fc.record({ path: fc.constant(path), kind: fc.constant(kind), bad: fc.constantFrom(...BAD[kind]) }));
    fc.assert(
      fc.property(goodConfig, mutation, (base, { path, kind, bad }) => {
        const raw = structuredClone(base) as Record<string, Record<string, unknown>>;
        if (path.length === 1) (raw as Record<string, unknown>)[path[0]] = bad;
        else (raw[path[0]] ??= {})[path[1]] = bad;
        const problems = judge(raw);
        const dotted = path.join('.');
        // One bad value in a good config is exactly one problem.
        expect(problems?.map((p) => p.message), `${dotted} = ${JSON.stringify(bad)}`).toHaveLength(1);
        const error = problems![0];
        // The key itself, or an element or entry inside it (process.command[0], process.resources.cores.min).
        expect(error!.field === dotted || error!.field!.startsWith(`${dotted}[`) || error!.field!.startsWith(`${dotted}.`), `${dotted} → ${error!.message}`).toBe(true);
        count('one bad value', `refused (${kind})`);
      }),
      { seed: SEEDS.config, numRuns: RUNS },
    );
  });

  it(`a misspelt key: a ConfigError naming it and suggesting the known key (${RUNS} configs)`, () => {
    const misspelt = fc.constantFrom(...KNOWN).chain((path) => {
      const parts = path.split('.');
      const last = parts[parts.length - 1];
      return typo(last).map((wrong) => ({ known: path, wrong: [...parts.slice(0, -1), wrong].join('.') }));
    });
    fc.assert(
      fc.property(goodConfig, misspelt, (base, { known, wrong }) => {
        fc.pre(!KNOWN.has(wrong));
        const raw = structuredClone(base) as Record<string, Record<string, unknown>>;
        const [first, second] = wrong.split('.');
        if (second === undefined) (raw as Record<string, unknown>)[first] = 1;
        else (raw[first] = isPlainObject(raw[first]) ? raw[first] : {})[second] = 1;
        const problems = judge(raw);
        expect(problems?.map((p) => p.message)).toHaveLength(1);
        const error = problems![0];
        expect(error.field).toBe(wrong);
        const suggestion = /did you mean (\S+)\?/.exec(error!.message)?.[1];
        // A one-letter typo is always close enough to be suggested, and the suggestion is a real key.
        if (known.split('.').pop()!.length >= 3) expect(suggestion).toBeDefined();
        if (suggestion !== undefined) expect(KNOWN.has(suggestion)).toBe(true);
        count('misspelt key', suggestion === known ? 'suggested the key it came from' : suggestion ? 'suggested another known key' : 'listed the known keys');
      }),
      { seed: SEEDS.config, numRuns: RUNS },
    );
  });

  it(`arbitrary junk: a Config keeping every invariant, or a ConfigError naming a field of the input (${RUNS} configs)`, () => {
    const anyKey = fc.oneof(fc.constantFrom(...KNOWN).map((path) => path.split('.').pop()!), fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'constructor', 'toString'));
    const junkConfig = fc.oneof(
      { weight: 1, arbitrary: junkValue },
      {
        weight: 4,
        arbitrary: fc.dictionary(
          fc.oneof(fc.constantFrom(...Object.keys(CONFIG_KEYS)), anyKey),
          fc.oneof(junkValue, fc.dictionary(anyKey, fc.oneof(junkValue, nastyText, fc.dictionary(anyKey, junkValue, { maxKeys: 3 })), { maxKeys: 5 })),
          { maxKeys: 6 },
        ),
      },
      { weight: 3, arbitrary: fc.tuple(goodConfig, fc.constantFrom('1s', '10s', '1m', 3, '30m')).map(([raw, interval]) => ({ ...raw, timeouts: { ...(raw.timeouts as object), check_interval: interval } })) },
    );
    fc.assert(
      fc.property(junkConfig, (raw) => {
        const problems = judge(raw);
        if (problems === undefined) return void count('junk', 'accepted');
        const given = inputPaths(raw);
        for (const error of problems) {
          const field = error.field!.replace(/\[\d+\]/g, '');
          const parent = field.split('.').slice(0, -1).join('.');
          const named = given.has(field) ? 'a field of the input' : KNOWN.has(field) ? 'a known key' : given.has(parent) ? 'a key missing inside a given one' : field === 'config' ? 'the whole config' : undefined;
          expect(named, error.message).toBeDefined();
          count('junk', `refused, naming ${named}`);
        }
        if (problems.length > 1) count('junk', 'refused with every problem at once');
      }),
      { seed: SEEDS.config, numRuns: RUNS },
    );
  });
});

describe('broken YAML files through the real loader', () => {
  const dir = mkdtempSync(join(tmpdir(), 'runwarden-badyaml-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Ways to break a line of a YAML file. */
  const CORRUPTIONS: Record<string, (line: string) => string> = {
    'tab indentation': (line) => `\t${line}`,
    'unclosed bracket': (line) => `${line} [1, 2`,
    'unclosed quote': (line) => line.replace(/: /, ': "'),
    'stray colon': (line) => `${line}: :`,
    'bad indentation': (line) => `   ${line}`,
    'duplicate key': (line) => `${line}\n${line}`,
    'flow mapping junk': (line) => `${line} {a: 1, b`,
    'NUL and junk bytes': (line) => `${line}\0\u0001`,
    'alias to nothing': (line) => line.replace(/: .*/, ': *nothing'),
    'lost colon': (line) => line.replace(/:/, ''),
  };

  it(`${RUNS / 5} corrupted files: a ConfigError pointing at file:line:col or naming the field, never a crash`, () => {
    fc.assert(
      fc.property(goodConfig, fc.constantFrom(...Object.keys(CORRUPTIONS)), fc.nat(), (raw, corruption, at) => {
        const lines = stringify(raw).trimEnd().split('\n');
        const index = at % lines.length;
        lines[index] = CORRUPTIONS[corruption](lines[index]);
        const file = join(dir, 'runwarden.yaml');
        writeFileSync(file, `${lines.join('\n')}\n`);
        let error: unknown;
        try {
          const config = loadConfig({ file, cwd: dir, env: {}, flags: {}, hostName: () => 'daq01' });
          expectInvariants(config);
          return void count('yaml files', `still valid after ${corruption}`);
        } catch (caught) {
          error = caught;
        }
        expect(error).toBeInstanceOf(ConfigError);
        const { message } = error as ConfigError;
        if (/YAML syntax error/.test(message)) {
          expect(message).toMatch(new RegExp(`^config: ${file}:\\d+:\\d+: YAML syntax error: `));
          count('yaml files', `syntax error with line:col (${corruption})`);
        } else {
          for (const problem of problemsOf(error as ConfigError)) expectNamed(problem);
          count('yaml files', `field error (${corruption})`);
        }
      }),
      { seed: SEEDS.config, numRuns: RUNS / 5 },
    );
  });
});
