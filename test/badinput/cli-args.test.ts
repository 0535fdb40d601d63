import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { numberArgument } from '../../src/cli/submit.js';
import { UsageError } from '../../src/errors.js';
import { useSandbox } from '../helpers/sandbox.js';
import { SEEDS, SHELL_METACHARACTERS } from './arbitraries.js';

// Wrong command-line arguments to every command, beyond the cases of test/integration/cli.test.ts: exit 2, a
// message naming the argument, flag, field or file line, and the store left exactly as it was.

const sandbox = useSandbox('runwarden-badargs-');
/** CLI processes at once: each is a tsx start-up, mostly CPU. */
const PARALLEL = 4;

/** Every row of every table: equal before and after means nothing was written. */
function fingerprint(file: string): string {
  const db = new Database(file, { readonly: true });
  try {
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
    const hash = createHash('sha256');
    for (const table of tables) {
      const rows = (db.prepare(`SELECT * FROM "${table}"`).raw().all() as unknown[]).map((row) => JSON.stringify(row)).sort();
      hash.update(`${table}:${rows.join('\n')}`);
    }
    return hash.digest('hex');
  } finally {
    db.close();
  }
}

async function inBatches<T, R>(items: T[], size: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += size) results.push(...(await Promise.all(items.slice(i, i + size).map(work))));
  return results;
}

interface Case {
  args: string[];
  /** What stderr must name. */
  names: RegExp;
  env?: Record<string, string>;
}

describe('wrong CLI arguments', () => {
  it('exit 2, name the argument, and leave the store untouched', async () => {
    const db = join(sandbox.dir, 'runs.db');
    const store = ['--store', `sqlite:${db}`];
    expect((await sandbox.run(['submit', '1', ...store])).exitCode).toBe(0);
    expect((await sandbox.run(['submit', '2', '--name', 'two', ...store])).exitCode).toBe(0);
    const files: Record<string, string> = {
      'not-json.jsonl': '{"number": 10}\n{"number": 11,\n',
      'misspelt.jsonl': '{"number": 10}\n{"nubmer": 11}\n',
      'array.jsonl': '[1, 2]\n',
      'empty.jsonl': '\n# only a comment\n',
      'nul.jsonl': '{"number": 12, "name": "a\\u0000b"}\n',
      'huge-params.jsonl': `${JSON.stringify({ number: 13, params: { blob: 'x'.repeat(200_000) } })}\n`,
      'repeats.jsonl': '{"number": 14}\n{"number": 14}\n',
      'exists.jsonl': '{"number": 15}\n{"number": 1}\n',
      'bad-start.jsonl': '{"number": 16, "start": "2024-02-30T25:00:00Z"}\n',
      'syntax.yaml': 'store: sqlite:./runs.db\nprocess:\n  command: ["a", "b"\n',
      'tab.yaml': 'process:\n\tcommand: [a]\n',
      // An alias inside its own anchor with a toString key: was a TypeError and exit 1.
      'cycle.yaml': 'store: &a {toString: 1, self: *a}\n',
      'contradiction.yaml': 'timeouts: {check_interval: 100s}\n',
    };
    for (const [name, text] of Object.entries(files)) writeFileSync(join(sandbox.dir, name), text);

    const cases: Case[] = [
      // submit
      { args: ['submit', '-5', ...store], names: /number: expected a non-negative integer run number, got "-5"/ },
      { args: ['submit', '99999999999999999999', ...store], names: /number: .* got "99999999999999999999"/ },
      { args: ['submit', '3', '--start', '2024-13-45', ...store], names: /start: expected an ISO-8601 time/ },
      { args: ['submit', '3', '--priority', 'high', ...store], names: /priority: expected a number, got "high"/ },
      { args: ['submit', '3', '--param', '=v', ...store], names: /--param: expected key=value, got "=v"/ },
      { args: ['submit', '3', '--tag', '', ...store], names: /tags\[0\]: a tag cannot be empty/ },
      { args: ['submit', '3', '--name', 'n'.repeat(5000), ...store], names: /name: too long \(5000 characters; at most 4095\)/ },
      { args: ['submit', '3', '--file', 'x.jsonl', ...store], names: /give a run number or --file, not both/ },
      { args: ['submit', ...store], names: /give a run number or --file/ }, // was exit 1
      { args: ['submit', '--file', 'x.jsonl', '--name', 'a', ...store], names: /mutually exclusive|file.*name|name.*file/i },
      { args: ['submit', '--file', 'missing.jsonl', ...store], names: /--file missing\.jsonl: ENOENT/ },
      { args: ['submit', '--file', 'not-json.jsonl', ...store], names: /not-json\.jsonl:2: not valid JSON/ },
      { args: ['submit', '--file', 'misspelt.jsonl', ...store], names: /misspelt\.jsonl:2: nubmer: unknown field; did you mean number\?/ },
      { args: ['submit', '--file', 'array.jsonl', ...store], names: /array\.jsonl:1: expected a JSON object/ },
      { args: ['submit', '--file', 'empty.jsonl', ...store], names: /empty\.jsonl: no runs in it/ },
      { args: ['submit', '--file', 'nul.jsonl', ...store], names: /nul\.jsonl:1: name: contains a NUL byte/ },
      { args: ['submit', '--file', 'huge-params.jsonl', ...store], names: /huge-params\.jsonl:1: params: too large \(2000\d\d bytes as JSON; at most 131054/ },
      { args: ['submit', '--file', 'repeats.jsonl', ...store], names: /run 14 already exists/ },
      { args: ['submit', '--file', 'exists.jsonl', ...store], names: /run 1 already exists/ },
      { args: ['submit', '--file', 'bad-start.jsonl', ...store], names: /bad-start\.jsonl:1: start: expected an ISO-8601 time/ },
      // list, show, logs and the operator commands
      { args: ['list', '--limit', '-1', ...store], names: /--limit: expected an integer ≥ 1, got "-1"/ },
      { args: ['show', 'abc', ...store], names: /number: expected a non-negative integer run number, got "abc"/ },
      { args: ['show', ...store], names: /show <number>[\s\S]*number .*\[required\]/ },
      { args: ['fail', ...store], names: /number: name the runs \(fail <runs> \[reason\.\.\]\), or select them with --state or --tag/ },
      { args: ['abandon', '-1', ...store], names: /number: .* got "-1"/ },
      { args: ['hold', '', ...store], names: /number: .* got ""/ },
      { args: ['logs', '1', '--attempt', '0', ...store], names: /--attempt: expected an integer ≥ 1, got "0"/ },
      { args: ['logs', '1', '--attempt', 'abc', ...store], names: /--attempt: expected an integer ≥ 1, got "abc"/ },
      { args: ['inspect', '--port', 'abc', ...store], names: /--port: expected an integer from 1 to 65535, got "abc"/ },
      // daemon and the global options
      { args: ['daemon', '--slots', '0', ...store], names: /slots: expected an integer ≥ 1, got 0 \(set by --slots\)/ },
      { args: ['daemon', '--order', 'sideways', ...store], names: /order.*sideways|sideways.*order/i },
      { args: ['daemon', '--set', 'unknown.key=1', ...store], names: /unknown: unknown key/ },
      { args: ['daemon', '--set', 'novalue', ...store], names: /--set "novalue": expected KEY=VALUE/ },
      { args: ['list', '--set', 'timeouts.check_interval=-5s', ...store], names: /timeouts\.check_interval: .*set by --set timeouts\.check_interval/ },
      { args: ['list', '--set', 'timeouts.check_interval=100s', ...store], names: /timeouts\.max_considering_time: .*3 × timeouts\.check_interval/ },
      { args: ['list', '--store', 'bogus:'], names: /config: store: expected "sqlite:PATH"/ },
      { args: ['list', '--config', 'nope.yaml', ...store], names: /config: file not found: .*nope\.yaml/ },
      { args: ['status', '--bogus-flag', ...store], names: /Unknown arguments?: bogus-flag/ },
      { args: ['lsit', ...store], names: /Did you mean list/ },
      { args: ['list', ...store], env: { RUNWARDEN_SLOTS: 'zero' }, names: /slots: .* got "zero" \(set by RUNWARDEN_SLOTS\)/ },
      { args: ['list', ...store], env: { RUNWARDEN_TIMEOUTS__IDLE_POLL: 'often' }, names: /timeouts\.idle_poll: not a duration.*set by RUNWARDEN_TIMEOUTS__IDLE_POLL/ },
      { args: ['list', '--config', 'syntax.yaml', ...store], names: /syntax\.yaml:\d+:\d+: YAML syntax error/ },
      { args: ['list', '--config', 'tab.yaml', ...store], names: /tab\.yaml:2:\d+: YAML syntax error/ },
      { args: ['list', '--config', 'cycle.yaml'], names: /config: store: expected .* got object that cannot be shown as JSON/ },
      { args: ['list', '--config', 'contradiction.yaml', ...store], names: /timeouts\.max_considering_time: .*timeouts\.check_interval set by .*contradiction\.yaml/ },
    ];

    const before = fingerprint(db);
    const results = await inBatches(cases, PARALLEL, async (c) => ({ c, result: await sandbox.run(c.args, c.env ? { env: c.env } : {}) }));
    const wrong = results
      .filter(({ c, result }) => result.exitCode !== 2 || !c.names.test(result.stderr))
      .map(({ c, result }) => ({ args: c.args.filter((a) => !a.startsWith('sqlite:') && a !== '--store').map((a) => a.slice(0, 40)), code: result.exitCode, stderr: result.stderr.slice(-300) }));
    expect(wrong).toEqual([]);
    expect(fingerprint(db)).toBe(before);
    console.log(`bad-input CLI: ${cases.length} wrong invocations, all exit 2, store unchanged`);
  }, 120_000);

  // In process, many cases: the run number every command takes (the table above sends a few through the CLI).
  it('numberArgument: anything but decimal digits of a safe integer is a UsageError naming the number', () => {
    const text = fc.oneof(
      fc.constantFrom(...SHELL_METACHARACTERS, '', ' 7', '7 ', '+7', '0x10', '1e3', '٣', '７', '9007199254740993'),
      fc.string({ unit: 'grapheme', maxLength: 12 }),
      fc.double().map(String),
      fc.bigInt().map(String),
    );
    let refused = 0;
    fc.assert(
      fc.property(text, (value) => {
        const valid = /^\d+$/.test(value) && Number.isSafeInteger(Number(value));
        if (valid) return void expect(numberArgument(value)).toBe(Number(value));
        refused++;
        expect(() => numberArgument(value)).toThrow(UsageError);
        expect(() => numberArgument(value)).toThrow(`number: expected a non-negative integer run number, got ${JSON.stringify(value)}`);
      }),
      { seed: SEEDS.cli, numRuns: 2_000 },
    );
    console.log(`bad-input CLI: numberArgument refused ${refused} of 2000 generated run numbers (seed ${SEEDS.cli})`);
  });

  it('an unopenable store is a runtime error: exit 1, the location named, never a password', async () => {
    writeFileSync(join(sandbox.dir, 'a-file'), 'x');
    const cases = [
      { args: ['list', '--store', `sqlite:${join(sandbox.dir, 'a-file', 'runs.db')}`], names: join(sandbox.dir, 'a-file', 'runs.db') },
      { args: ['submit', '5', '--store', `sqlite:${sandbox.dir}`], names: sandbox.dir },
      // A closed loopback port; the URL's short server selection keeps the wait short.
      { args: ['status', '--store', 'mongodb://op:s3cret@127.0.0.1:1/runs?serverSelectionTimeoutMS=300'], names: '127.0.0.1:1' },
    ];
    for (const c of cases) {
      const result = await sandbox.run(c.args);
      expect({ args: c.args, code: result.exitCode }).toEqual({ args: c.args, code: 1 });
      expect(result.stderr).toContain(c.names);
      expect(result.stderr).not.toContain('s3cret');
    }
  });
});
