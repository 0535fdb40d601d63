import fc from 'fast-check';

// Generators of bad input shared by the bad-input tests: text that breaks shells, encodings and limits, and
// junk values of every type. Each test runs them with a fixed seed (printed), so a failure can be replayed.

/** Seeds of the properties; change one to explore, keep it fixed in CI. */
export const SEEDS = { decode: 20_261_203, config: 4_242, submit: 77, daemon: 1_312, cli: 909 } as const;

/** Strings a shell would act on. Each must reach the command as one argv element, untouched. */
export const SHELL_METACHARACTERS = [
  '; rm -rf $(touch PWNED)',
  '`touch PWNED`',
  'x | touch PWNED',
  'x && touch PWNED',
  'x || touch PWNED; exit 1',
  'first line\nsecond; touch PWNED',
  `"double" 'single' \\"escaped\\"`,
  '$HOME ${PATH} $((6*7))',
  '*',
  '?[a-z]* ~/.*',
  '> PWNED 2>&1 < /etc/passwd',
  '$(touch PWNED)',
  '-rf',
  '--help',
  ' leading and trailing spaces ',
  '\t\ttabs\r\n',
] as const;

const NON_ASCII = ['Zürich Ω', 'データ取得', '🧪🔬 run', 'e\u0301', '\u200b\u200d', 'אבג', '\ufeffbom', '\u{1F468}\u200D\u{1F469}\u200D\u{1F467}'];

/** A lone UTF-16 surrogate, which no UTF-8 text (SQLite, BSON, argv) can carry. */
export const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((code) => `x${String.fromCharCode(code)}y`);

/** A string of at least 1 MiB (a short random unit repeated, so generation stays cheap). */
export const hugeString = fc
  .tuple(fc.string({ minLength: 1, maxLength: 3, unit: 'grapheme' }), fc.integer({ min: 0, max: 4096 }))
  .map(([unit, extra]) => unit.repeat(Math.ceil((1 << 20) / unit.length) + extra));

/** Text that is hard on shells, encodings and limits. */
export const nastyText = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...SHELL_METACHARACTERS) },
  { weight: 2, arbitrary: fc.constantFrom(...NON_ASCII) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 10 }).map((s) => `${s}\0${s}`) },
  { weight: 1, arbitrary: loneSurrogate },
  { weight: 1, arbitrary: fc.integer({ min: 4090, max: 5000 }).map((n) => 'n'.repeat(n)) },
  { weight: 1, arbitrary: hugeString },
);

/** Numbers that trip naive checks. */
export const nastyNumber = fc.oneof(
  fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, -1, 0.5, -2.5, 2 ** 53, 2 ** 53 + 2, 1e300, -1e300, Number.MIN_VALUE),
  fc.integer(),
  fc.double(),
);

/** Any value a document may hold: every JSON-ish type, dates (valid and not), BigInts, nested junk. */
export const junkValue = fc.oneof(
  { weight: 3, arbitrary: fc.anything({ withBigInt: true, withDate: true, maxDepth: 3 }) },
  { weight: 2, arbitrary: nastyText },
  { weight: 2, arbitrary: nastyNumber },
  { weight: 1, arbitrary: fc.constantFrom(null, undefined, true, false, [], {}, new Date(Number.NaN)) },
  { weight: 1, arbitrary: fc.bigInt() },
);

/** A value as better-sqlite3 hands it back from a column: NULL, INTEGER, REAL, TEXT or BLOB. */
export const sqliteValue = fc.oneof(
  { weight: 2, arbitrary: fc.constant(null) },
  { weight: 2, arbitrary: nastyNumber },
  { weight: 1, arbitrary: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) },
  { weight: 3, arbitrary: nastyText },
  { weight: 3, arbitrary: fc.jsonValue().map((value) => JSON.stringify(value)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 16 }).map((bytes) => Buffer.from(bytes)) },
);

/** The run fields a document carries (DESIGN §3). */
export const RUN_FIELDS = ['number', 'name', 'start', 'end', 'mode', 'tags', 'priority', 'input', 'params', 'outputs'] as const;

/** The processing columns of the SQLite runs table. */
const PROCESSING_COLUMNS = ['state', 'host', 'pid', 'pgid', 'proc_start', 'token', 'attempt', 'time', 'started', 'ended', 'n_failures', 'reason', 'next_retry', 'exit_code', 'signal', 'targets', 'resources'] as const;

/** States a processing document may hold, known ones and bogus ones. */
export const processingState = fc.oneof(
  fc.constantFrom('considering', 'busy', 'done', 'failed', 'abandoned'),
  fc.constantFrom('running', 'DONE', '', 'pending', 'null'),
  nastyText,
);

/** Good values per field, so that a document is often good in all but a few fields. */
const goodValue: Record<(typeof RUN_FIELDS)[number], fc.Arbitrary<unknown>> = {
  number: fc.integer({ min: 0, max: 1_000_000 }),
  name: fc.string({ unit: 'grapheme', maxLength: 30 }),
  start: fc.integer({ min: 0, max: 2_000_000_000_000 }),
  end: fc.integer({ min: 0, max: 2_000_000_000_000 }),
  mode: fc.string({ maxLength: 10 }),
  tags: fc.array(fc.string({ maxLength: 8 }), { maxLength: 3 }),
  priority: fc.integer({ min: -10, max: 10 }),
  input: fc.string({ maxLength: 30 }),
  params: fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
  outputs: fc.constant([]),
};

/** A raw SQLite row of the runs table: each column absent, good, or any value SQLite can hold. */
export const rawSqliteRow = fc
  .record(
    Object.fromEntries([
      ...RUN_FIELDS.map((field) => [
        field,
        field === 'number'
          ? // INTEGER PRIMARY KEY: SQLite refuses anything but a 64-bit integer here.
            fc.oneof(goodValue.number, fc.integer({ min: -1000, max: -1 }), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }))
          : fc.oneof(
              goodValue[field].map((v) => (typeof v === 'object' ? JSON.stringify(v) : v)),
              // start is NOT NULL in the schema: no row can lack it.
              field === 'start' ? sqliteValue.filter((v) => v !== null) : sqliteValue,
            ),
      ]),
      ...PROCESSING_COLUMNS.map((column) => [column, column === 'state' ? fc.option(processingState) : sqliteValue]),
    ]) as Record<string, fc.Arbitrary<unknown>>,
    { requiredKeys: ['number', 'start'] },
  );

/** A raw MongoDB run document: any field missing, good, or junk; sometimes a bogus processing sub-document. */
export const rawMongoDoc = fc.record(
  {
    ...(Object.fromEntries(
      RUN_FIELDS.map((field) => [
        field,
        fc.oneof(
          field === 'start' || field === 'end' ? fc.date({ noInvalidDate: false }) : goodValue[field],
          goodValue[field],
          junkValue,
        ),
      ]),
    ) as Record<string, fc.Arbitrary<unknown>>),
    processing: fc.oneof(
      junkValue,
      fc.record(
        {
          state: fc.oneof(processingState, junkValue),
          host: junkValue,
          pid: junkValue,
          token: junkValue,
          attempt: junkValue,
          time: fc.oneof(fc.date({ noInvalidDate: false }), junkValue),
          n_failures: junkValue,
          next_retry: fc.oneof(fc.date({ noInvalidDate: false }), junkValue),
          targets: junkValue,
          resources: junkValue,
        },
        { requiredKeys: [] },
      ),
    ),
  },
  { requiredKeys: [] },
);

/** A run document that is good in most fields and junk in a few (or missing them). */
export function mostlyGoodRun(fields: readonly (typeof RUN_FIELDS)[number][] = RUN_FIELDS) {
  return fc.record(
    Object.fromEntries(
      fields.map((field) => [field, fc.oneof({ weight: 6, arbitrary: goodValue[field] }, { weight: 1, arbitrary: junkValue })]),
    ) as Record<string, fc.Arbitrary<unknown>>,
    { requiredKeys: [] },
  );
}
