import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { repoRoot, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';
import { SEEDS, SHELL_METACHARACTERS, hugeString, loneSurrogate } from './arbitraries.js';

// Bad run documents written straight into a real SQLite file (as another tool would), mixed with good runs
// whose names, params and input paths are full of shell metacharacters and non-ASCII text, then one real
// `daemon --once`. The daemon must get through all of them: each bad run failed with a reason naming the
// problem, each good run done, its command given every string as exactly one argv element, never a shell.

const sandbox = useSandbox('runwarden-badinput-');
const GOOD_RUNS = 20;
/** The last argv element: a literal a shell would act on. */
const LITERAL = 'literal;$(touch PWNED)`touch PWNED`';

type Columns = Partial<Record<'number' | 'name' | 'start' | 'end' | 'mode' | 'tags' | 'priority' | 'input' | 'params', string | number | bigint | Buffer | null>>;
interface BadRun {
  kind: string;
  columns: Columns;
  /** What the stored reason must say: the field and the problem. */
  reason: RegExp;
  /** The state it must end in; failed or abandoned unless said otherwise. */
  settles?: RegExp;
}

const INVALID = 'preflight failed: invalid run document: ';
const notNumeric = fc.string({ unit: 'grapheme', maxLength: 12 }).map((s) => `x${s}`); // INTEGER affinity keeps it text
// TEXT affinity turns a number into text, so only a BLOB stays a non-text value in a TEXT column.
const notText = fc.uint8Array({ maxLength: 8 }).map((b) => Buffer.from(b));
const metachar = fc.constantFrom(...SHELL_METACHARACTERS);

const badKinds: fc.Arbitrary<BadRun>[] = [
  ...(['name', 'mode', 'input'] as const).map((field) =>
    notText.map((value): BadRun => ({ kind: `${field} not text`, columns: { [field]: value }, reason: new RegExp(`^${INVALID}.*${field}: expected a string`) })),
  ),
  ...(['start', 'end', 'priority'] as const).map((field) =>
    notNumeric.map((value): BadRun => ({ kind: `${field} not a number`, columns: { [field]: value }, reason: new RegExp(`^${INVALID}.*${field}: expected a number, got string`) })),
  ),
  // (Text holding "hold" is held by the schema's textual test, on purpose: it is never claimed.)
  fc.oneof(fc.constant('not json'), fc.constant('{"a": 1}'), fc.constant('"calibration"'), fc.constant('[1, "x"]')).map(
    (tags): BadRun => ({ kind: 'tags wrong', columns: { tags }, reason: new RegExp(`^${INVALID}tags: `) }),
  ),
  fc.oneof(fc.constant('"oops"'), fc.constant('[1,2]'), fc.constant('{broken'), fc.constant('null x'), metachar).map(
    (params): BadRun => ({ kind: 'params wrong', columns: { params }, reason: new RegExp(`^${INVALID}params: `) }),
  ),
  ...(['name', 'input'] as const).map((field) =>
    hugeString.map((value): BadRun => ({ kind: `${field} huge (≥ 1 MiB)`, columns: { [field]: value }, reason: new RegExp(`^${INVALID}${field}: too long \\(\\d{7,} characters; at most 4095\\)`) })),
  ),
  ...(['name', 'input'] as const).map((field) =>
    metachar.map((text): BadRun => ({ kind: `${field} with NUL`, columns: { [field]: `${text}\0after` }, reason: new RegExp(`^${INVALID}${field}: contains a NUL byte`) })),
  ),
  metachar.map((text): BadRun => ({ kind: 'input does not exist', columns: { input: `/nonexistent/${text}` }, reason: /^preflight failed: input does not exist: \/nonexistent\// })),
  fc.constant<BadRun>({ kind: 'params lacks the key the command uses', columns: { params: '{"other": 1}' }, reason: /^preflight failed: command element 6 .*\{params\.label\}: the run has no param "label"/ }),
  fc.integer({ min: 1, max: 1_000_000 }).map((n): BadRun => ({ kind: 'number negative', columns: { number: -n }, reason: new RegExp(`^${INVALID}number: expected a non-negative integer, got -${n}$`) })),
  hugeString.map((blob): BadRun => ({ kind: 'params huge (≥ 1 MiB)', columns: { params: JSON.stringify({ label: 'ok', blob }) }, reason: new RegExp(`^${INVALID}params: too large \\(\\d{7,} bytes as JSON; at most 131054`) })),
  // JavaScript cannot address such a row exactly: it is never claimed and stays pending (no reason to store).
  fc.bigInt({ min: 2n ** 53n + 1n, max: 2n ** 63n - 1n }).map((n): BadRun => ({ kind: 'number beyond 2^53', columns: { number: n }, reason: /^$/, settles: /^pending$/ })),
];
const PER_KIND = 4;

interface GoodRun {
  number: number;
  name: string;
  label: string;
  withInput: boolean;
}
const text = fc.oneof(metachar, fc.constantFrom('Zürich Ω', 'データ', '🧪🔬', 'e\u0301'), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 20 }), loneSurrogate);

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** Every file named PWNED under `dir`. */
function pwnedFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((path) => path.split('/').includes('PWNED'));
}

describe('bad run documents through a real daemon', () => {
  it(`fails ${PER_KIND} bad runs of each of ${badKinds.length} kinds with a reason naming the field and processes ${GOOD_RUNS} good ones without a shell`, async () => {
    const record = join(sandbox.dir, 'record.mjs');
    // The command writes the argv it received and who started it: /proc says what the kernel executed.
    writeFileSync(
      record,
      `import { readFileSync, writeFileSync } from 'node:fs';
const cmdline = (pid) => readFileSync('/proc/' + pid + '/cmdline', 'utf8').split('\\0').slice(0, -1);
writeFileSync(process.argv[2] + '/argv.json', JSON.stringify({ argv: process.argv.slice(2), self: cmdline('self'), ppid: process.ppid, parent: cmdline(process.ppid) }));
`,
    );
    const inputFile = join(sandbox.dir, `in put; $(touch PWNED) 'q' "dq" ü.dat`);
    writeFileSync(inputFile, 'raw data');
    const command = [process.execPath, record, '{output}', '{number}', '{name}', '{input}', '{params.label}', LITERAL];
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts: {check_interval: 1s, idle_poll: 1h, signal_escalate: 1s}
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
    );
    await sandbox.openStore(); // creates the schema

    const bad = badKinds.flatMap((kind, k) => fc.sample(kind, { seed: SEEDS.daemon + k, numRuns: PER_KIND }));
    const good = fc
      .sample(fc.record({ name: text, label: text, withInput: fc.boolean() }), { seed: SEEDS.daemon, numRuns: GOOD_RUNS })
      .map((run, i): GoodRun => ({ ...run, number: i + 1 }));
    const texts = good.flatMap((run) => [run.name, run.label]);
    console.log(
      `bad-input daemon test: seed ${SEEDS.daemon}, ${bad.length} bad and ${good.length} good runs; in the good runs' ` +
        `${texts.length} names and labels: ${texts.filter((t) => (SHELL_METACHARACTERS as readonly string[]).includes(t)).length} shell metacharacter strings, ` +
        `${texts.filter((t) => /[^\x00-\x7f]/.test(t)).length} non-ASCII, ${texts.filter((t) => new RegExp(LONE_SURROGATE.source).test(t)).length} with a lone surrogate; ` +
        `${good.filter((run) => run.withInput).length} with the input file`,
    );

    const db = new Database(join(sandbox.dir, 'runs.db'));
    const insert = (columns: Columns) => {
      const names = Object.keys(columns);
      db.prepare(`INSERT INTO runs (${names.map((n) => `"${n}"`).join(', ')}) VALUES (${names.map((n) => `@${n}`).join(', ')})`).run(columns);
    };
    const start = Date.UTC(2026, 0, 1);
    bad.forEach((run, i) => {
      // Higher priority than the good runs: the bad ones are claimed first, and the daemon must go on after them.
      insert({ number: 1000 + i, start: start + i, priority: 1, params: '{"label": "ok"}', ...run.columns });
    });
    for (const run of good) {
      insert({
        number: run.number,
        start: start + run.number,
        name: run.name,
        params: JSON.stringify({ label: run.label }),
        ...(run.withInput ? { input: inputFile } : {}),
      });
    }

    const daemon = sandbox.run(['daemon', '--once', '--slots', '4']);
    const result = await daemon;
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).not.toMatch(/fatal|TypeError|uncaught/i);

    // Looked up by the exact number (a BigInt binds exactly; a JavaScript number beyond 2^53 would not).
    // the processing of a run is its process task's (none yet: pending)
    const lookup = db.prepare(
      `SELECT t.state, t.reason, r.name FROM runs AS r LEFT JOIN tasks AS t ON t.number = r.number AND t.stage = 'process' WHERE r.number = ?`,
    );
    const rowOf = (number: number | bigint) => lookup.get(number) as { state: string | null; reason: string | null; name: unknown } | undefined;

    const outcomes: Record<string, Record<string, number>> = {};
    bad.forEach((run, i) => {
      const row = rowOf((run.columns.number as number | bigint | undefined) ?? 1000 + i);
      const state = row === undefined ? 'no row' : (row.state ?? 'pending');
      (outcomes[run.kind] ??= {})[state] = (outcomes[run.kind][state] ?? 0) + 1;
      expect({ kind: run.kind, state }).toEqual({ kind: run.kind, state: expect.stringMatching(run.settles ?? /^(failed|abandoned)$/) });
      expect(row?.reason ?? '', run.kind).toMatch(run.reason);
    });

    for (const run of good) {
      const row = rowOf(run.number);
      expect({ number: run.number, state: row?.state, reason: row?.reason }).toEqual({ number: run.number, state: 'done', reason: null });
      // Text crosses SQLite and argv as UTF-8: nothing changes but a lone surrogate, which no UTF-8 can carry
      // (SQLite reads its three bytes back as three U+FFFD; in params it is JSON-escaped, and argv gets one U+FFFD).
      const name = row?.name as string;
      expect(name).toBe(run.name.replace(LONE_SURROGATE, '\ufffd\ufffd\ufffd'));
      const outputDir = join(sandbox.dir, 'out', String(run.number).padStart(6, '0'));
      const seen = JSON.parse(readFileSync(join(outputDir, 'argv.json'), 'utf8')) as { argv: string[]; self: string[]; ppid: number; parent: string[] };
      const expected = [outputDir, String(run.number), name, run.withInput ? inputFile : '', run.label.replace(LONE_SURROGATE, '\ufffd'), LITERAL];
      expect(seen.argv).toEqual(expected);
      // What the kernel executed is the command itself, not /bin/sh -c, started by the daemon.
      expect(seen.self).toEqual([process.execPath, record, ...expected]);
      expect(seen.ppid).toBe(daemon.pid);
      expect(seen.parent.some((arg) => arg.endsWith('src/cli/main.ts'))).toBe(true);
    }
    db.close();
    expect(pwnedFiles(sandbox.dir)).toEqual([]);
    expect(pwnedFiles(repoRoot).length).toBe(0);
    console.log(`bad-input daemon outcomes by kind:\n${JSON.stringify(outcomes, null, 1)}`);
  });
});
