import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LOG_TAIL_BYTES, readLogTail, readTopSnapshot } from '../../src/cli/top-snapshot.js';
import {
  allotRows,
  displayWidth,
  fitWidth,
  lastOutputLine,
  renderTop,
  type TopSnapshot,
  type TopView,
} from '../../src/cli/top-view.js';
import { printable } from '../../src/policy/terminal-text.js';
import { openStore } from '../../src/store/open-store.js';
import type { StateCounts } from '../../src/store/run-store.js';
import type { HostDoc, RunDoc } from '../../src/store/types.js';
import { tempDir } from '../helpers/cli.js';

// The frame `runwarden top` draws, as a pure function of a snapshot, a terminal size and the time.

const NOW = Date.UTC(2026, 0, 15, 12, 0, 0);
const SECOND = 1000;

function host(name: string, extra: Partial<HostDoc> = {}): HostDoc {
  return {
    host: name,
    pid: 100,
    token: 't',
    state: 'busy',
    time: NOW - 3 * SECOND,
    started: NOW - 3_600_000,
    version: '0.1.0',
    slots: 4,
    running: [1, 2],
    disk: { path: '/data', used_percent: 41.6, free_bytes: 512 * 2 ** 30 },
    ...extra,
  };
}

function busyRun(number: number, extra: Partial<RunDoc['processing']> = {}): RunDoc {
  return {
    number,
    start: NOW - 86_400_000,
    tags: [],
    priority: 0,
    params: {},
    outputs: [],
    processing: {
      state: 'busy',
      host: 'daq01',
      pid: 100,
      token: `t${number}`,
      attempt: 2,
      time: NOW - SECOND,
      started: NOW - 125 * SECOND,
      n_failures: 1,
      ...extra,
    },
  };
}

function failedRun(number: number, reason: string, extra: Partial<RunDoc['processing']> = {}): RunDoc {
  return busyRun(number, {
    state: 'failed',
    time: NOW - 40 * SECOND,
    reason,
    n_failures: 2,
    next_retry: NOW + 300 * SECOND,
    ...extra,
  });
}

function counts(partial: Partial<StateCounts> = {}): StateCounts {
  return { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, ...partial };
}

function view(snapshot: TopSnapshot | null, extra: Partial<TopView> = {}): TopView {
  return { location: 'sqlite:/srv/runwarden/runs.db', snapshot, intervalMs: 1000, live: true, ...extra };
}

function snapshotOf(parts: Partial<TopSnapshot> = {}): TopSnapshot {
  const busy = parts.busy ?? [];
  const failures = parts.failures ?? [];
  return {
    hosts: [],
    busy,
    failures,
    counts: counts({
      busy: busy.length,
      failed: failures.filter((r) => r.processing?.state === 'failed').length,
      abandoned: failures.filter((r) => r.processing?.state === 'abandoned').length,
    }),
    readAt: NOW,
    ...parts,
  };
}

function expectFits(lines: string[], columns: number, rows: number): void {
  expect(lines.length).toBeLessThanOrEqual(rows);
  for (const line of lines) expect(displayWidth(line), JSON.stringify(line)).toBeLessThanOrEqual(columns);
}

describe('renderTop', () => {
  it('an ordinary day fits 80x24 and shows every part', () => {
    const snapshot = snapshotOf({
      hosts: [host('daq01'), host('daq02', { state: 'idle', running: [], time: NOW - 12 * SECOND }), host('old', { state: 'dead', disk: undefined })],
      busy: [
        { run: busyRun(1042), lastOutput: 'processing chunk 17 of 40' },
        { run: busyRun(1041, { host: 'daq02', attempt: 1 }), lastOutput: null },
      ],
      failures: [
        failedRun(1039, 'exit code 3: calibration missing for run 1039'),
        failedRun(1020, 'host stopped', { next_retry: NOW - 5 * SECOND }),
        failedRun(1001, 'gave up: 10 failures reached retry.max_failures (10); last failure: stalled', {
          state: 'abandoned',
          next_retry: undefined,
        }),
      ],
    });
    snapshot.counts = counts({ pending: 12, busy: 2, done: 830, failed: 2, abandoned: 1 });
    const lines = renderTop(view(snapshot), { columns: 80, rows: 24 }, NOW);
    expectFits(lines, 80, 24);
    expect(lines[0]).toMatch(/^runwarden top  sqlite:\/srv\/runwarden\/runs\.db +2026-01-15 12:00:00Z$/);
    expect(lines[0]).toHaveLength(80);
    expect(lines[1]).toBe('runs  pending 12  considering 0  busy 2  done 830  failed 2  abandoned 1');
    expect(lines).toContainEqual(expect.stringMatching(/^daq01 +busy +3s ago +2\/4 +42% used, 512GiB free$/));
    expect(lines).toContainEqual(expect.stringMatching(/^daq02 +idle +12s ago +0\/4/));
    // A dead host runs nothing, whatever its document still lists (issue 13).
    expect(lines).toContainEqual(expect.stringMatching(/^old +dead +3s ago +0\/4 +-$/));
    expect(lines).toContainEqual(expect.stringMatching(/^1042 +2 +daq01 +2m5s +processing chunk 17 of 40$/));
    // Another host's attempt log is not on this host.
    expect(lines).toContainEqual(expect.stringMatching(/^1041 +1 +daq02 +2m5s +-$/));
    expect(lines).toContainEqual(expect.stringMatching(/^1039 +retry in 5m +2 +daq01 +40s ago +exit code 3: calibration missing fo…$/));
    expect(lines).toContainEqual(expect.stringMatching(/^1020 +retry due +2 +daq01 +40s ago +host stopped$/));
    // A run given up on shows the failure that tipped it first, then why it was given up on (issue 13).
    expect(lines).toContainEqual(expect.stringMatching(/^1001 +abandoned +2 +daq01 +40s ago +stalled \(gave up: 10 failures reach…$/));
    expect(lines.at(-1)).toBe('q or ^C quits · refreshed every 1s');
    expect(lines.some((l) => l.startsWith('…'))).toBe(false);
  });

  it('a paused host says why, cut to fit', () => {
    const reason = 'process.log_dir: cannot create or write /data/logs: EACCES: permission denied';
    const lines = renderTop(
      view(snapshotOf({ hosts: [host('daq01', { state: 'paused', running: [], paused_reason: reason })] })),
      { columns: 80, rows: 24 },
      NOW,
    );
    expectFits(lines, 80, 24);
    expect(lines).toContainEqual(expect.stringMatching(/^daq01 +paused: process\.log_dir: cannot create… +3s ago +0\/4/));
  });

  it('an empty store says so in each section', () => {
    const lines = renderTop(view(snapshotOf()), { columns: 80, rows: 24 }, NOW);
    expect(lines).toEqual([
      expect.stringMatching(/^runwarden top /),
      'runs  pending 0  considering 0  busy 0  done 0  failed 0  abandoned 0',
      '',
      'no hosts have registered yet',
      '',
      'no run is busy',
      '',
      'no failed or abandoned runs',
      'q or ^C quits · refreshed every 1s',
    ]);
  });

  it('before the first reading, and after a failed one, the status line says what is going on', () => {
    const waiting = renderTop(view(null, { error: 'database is locked' }), { columns: 80, rows: 24 }, NOW);
    expect(waiting[1]).toBe('waiting for the first reading of the store…');
    expect(waiting.at(-1)).toBe('store error, trying again every 1s: database is locked');
    const stale = renderTop(
      view({ ...snapshotOf({ hosts: [host('daq01')] }), readAt: NOW - 7 * SECOND }, { error: 'no such table: hosts\nat x' }),
      { columns: 80, rows: 24 },
      NOW,
    );
    expect(stale).toContainEqual(expect.stringMatching(/^daq01 +busy/));
    expect(stale.at(-1)).toBe('store error, trying again every 1s (data from 7s ago): no such table: hosts at x');
    expect(renderTop(view(snapshotOf(), { intervalMs: 250 }), { columns: 80, rows: 24 }, NOW).at(-1)).toBe(
      'q or ^C quits · refreshed every 250ms',
    );
  });

  it('long text is cut with an ellipsis, never wrapped', () => {
    const long = `${'x'.repeat(300)}END`;
    const snapshot = snapshotOf({
      hosts: [host(`host-with-a-very-long-name-${'h'.repeat(50)}`)],
      busy: [{ run: busyRun(7), lastOutput: long }],
      failures: [failedRun(6, long)],
    });
    for (const columns of [80, 40, 20, 5, 1]) {
      const lines = renderTop(view(snapshot, { location: `sqlite:/very/${'deep/'.repeat(30)}runs.db` }), { columns, rows: 24 }, NOW);
      expectFits(lines, columns, 24);
      expect(lines.join('\n')).not.toContain('END');
    }
    const lines = renderTop(view(snapshot, { location: `sqlite:/very/${'deep/'.repeat(30)}runs.db` }), { columns: 80, rows: 24 }, NOW);
    // The end of the location says more than its start; host names have a column cap.
    expect(lines[0]).toMatch(/^runwarden top  …(deep\/)+runs\.db +2026-01-15 12:00:00Z$/);
    expect(lines).toContainEqual(expect.stringMatching(/^host-with-a-very-lo… +busy/));
    expect(lines).toContainEqual(expect.stringMatching(/^7 +2 +daq01 +2m5s +x+…$/));
    expect(lines.find((l) => l.startsWith('7 '))).toHaveLength(80);
  });

  it('many runs: each section shows what fits and counts the rest, and failures are not crowded out', () => {
    const busy = Array.from({ length: 500 }, (_, i) => ({ run: busyRun(5000 - i), lastOutput: `line ${i}` }));
    const failures = Array.from({ length: 200 }, (_, i) => failedRun(4000 - i, `reason ${i}`));
    const snapshot = snapshotOf({ hosts: [host('daq01'), host('daq02')], busy, failures });
    snapshot.counts = counts({ busy: 500, failed: 250, abandoned: 50 });
    const lines = renderTop(view(snapshot), { columns: 80, rows: 24 }, NOW);
    expectFits(lines, 80, 24);
    expect(lines).toHaveLength(24);
    const busyShown = lines.filter((l) => /^\d+ +2 +daq01 +2m5s +line \d+$/.test(l)).length;
    const failuresShown = lines.filter((l) => /^\d+ +retry in 5m /.test(l)).length;
    expect(busyShown).toBeGreaterThan(0);
    expect(failuresShown).toBeGreaterThan(0);
    expect(lines).toContain(`… ${500 - busyShown} more busy runs (runwarden list --state busy)`);
    // 300 in the store, of which the snapshot read 200: the count is the store's.
    expect(lines).toContain(`… ${300 - failuresShown} more failed or abandoned (runwarden list --state failed|abandoned)`);
    expect(lines).toContainEqual(expect.stringMatching(/^daq02 +busy/));
    // The newest busy run comes first, and the rows shown are the first ones.
    expect(lines.find((l) => /^\d+ +2 +daq01/.test(l))).toMatch(/^5000 /);
  });

  it('a busy count larger than what was read is counted as not shown, even when the rows would fit', () => {
    const snapshot = snapshotOf({ busy: [{ run: busyRun(3), lastOutput: '' }] });
    snapshot.counts = counts({ busy: 4 });
    const lines = renderTop(view(snapshot), { columns: 80, rows: 24 }, NOW);
    expect(lines).toContainEqual(expect.stringMatching(/^3 +2 +daq01 +2m5s +\(no output yet\)$/));
    expect(lines).toContain('… 3 more busy runs (runwarden list --state busy)');
  });

  it('fewer rows drop the lower sections first; the title and the status line stay', () => {
    const snapshot = snapshotOf({
      hosts: [host('daq01')],
      busy: [{ run: busyRun(9), lastOutput: 'out' }],
      failures: [failedRun(8, 'why')],
    });
    const at = (rows: number) => renderTop(view(snapshot), { columns: 80, rows }, NOW);
    expect(at(0)).toEqual([]);
    expect(at(1)).toEqual(['q or ^C quits · refreshed every 1s']);
    expect(at(2)).toEqual([expect.stringMatching(/^runwarden top /), 'q or ^C quits · refreshed every 1s']);
    expect(at(3)[1]).toMatch(/^runs  pending/);
    const hostsOnly = at(6);
    expect(hostsOnly.slice(2, 5)).toEqual(['', expect.stringMatching(/^HOST +STATE/), expect.stringMatching(/^daq01 /)]);
    expect(hostsOnly.join('\n')).not.toMatch(/BUSY|FAILED/);
    expect(at(9).join('\n')).toMatch(/BUSY/);
    expect(at(9).join('\n')).not.toMatch(/FAILED/);
    expect(at(12).join('\n')).toMatch(/FAILED[\s\S]*^8 +retry in 5m/m);
    for (let rows = 0; rows <= 30; rows++) expectFits(at(rows), 80, rows);
  });

  it('a printed frame (--once) has no status line', () => {
    const lines = renderTop(view(snapshotOf(), { live: false }), { columns: 80, rows: 24 }, NOW);
    expect(lines.at(-1)).toBe('no failed or abandoned runs');
    expect(renderTop(view(snapshotOf(), { live: false }), { columns: 80, rows: 1 }, NOW)).toEqual([
      expect.stringMatching(/^runwarden top /),
    ]);
  });

  it('whatever the data and the size, every line fits and nothing reaches the terminal as a control character', () => {
    const text = fc.string({ unit: fc.oneof(fc.constantFrom('\x1b', '\r', '\n', '\t', '\x9b', '\u202e', '\x07', '[', ']', '日'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })), maxLength: 120 });
    const run = fc.record({ number: fc.nat(10_000_000), output: fc.option(text), reason: text, host: text });
    fc.assert(
      fc.property(
        fc.array(text, { maxLength: 5 }),
        fc.array(run, { maxLength: 40 }),
        fc.array(run, { maxLength: 40 }),
        fc.integer({ min: 1, max: 200 }),
        fc.integer({ min: 0, max: 60 }),
        fc.option(text),
        (hostNames, busy, failures, columns, rows, error) => {
          const snapshot = snapshotOf({
            hosts: hostNames.map((name) => host(name)),
            busy: busy.map((r) => ({ run: busyRun(r.number, { host: r.host }), lastOutput: r.output })),
            failures: failures.map((r) => failedRun(r.number, r.reason, { host: r.host })),
          });
          const lines = renderTop(view(snapshot, error === null ? {} : { error }), { columns, rows }, NOW);
          expectFits(lines, columns, rows);
          for (const line of lines) expect(line).not.toMatch(/[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('allotRows', () => {
  it.each([
    // wanted rows per section, rows available → rows given
    [[3, 4, 3], 20, [3, 4, 3]],
    [[3, 4, 3], 10, [3, 4, 3]],
    [[3, 4, 3], 9, [3, 3, 3]],
    [[3, 4, 3], 8, [3, 4, 0]],
    [[3, 4, 3], 5, [3, 0, 0]],
    [[3, 4, 3], 2, [0, 0, 0]],
    [[2, 2, 2], 6, [2, 2, 2]],
    [[4, 100, 100], 20, [4, 8, 8]],
    [[4, 100, 100], 21, [4, 9, 8]],
  ])('wanted %j in %i rows → %j', (wanted, available, given) => {
    expect(allotRows(wanted, available)).toEqual(given);
  });
});

describe('printable and lastOutputLine', () => {
  it.each([
    ['\x1b[31mred\x1b[0m text', 'red text'],
    ['\x1b]2;PWNED\x07step 3', 'step 3'],
    ['\x1b]0;title\x1b\\after', 'after'],
    ['a\x1b[2J\x1b[Hb', 'ab'],
    ['bell\x07 and \x9b31m c1', 'bell and c1'],
    ['right-to-left \u202eevil', 'right-to-left evil'],
    ['tabs\tand\nnewlines\r\n  and spaces ', 'tabs and newlines and spaces'],
    ['\x1bc reset', 'reset'],
    ['naïve 日本語 ok', 'naïve 日本語 ok'],
  ])('printable(%j) = %j', (input, expected) => {
    expect(printable(input)).toBe(expected);
  });

  it.each([
    ['=== runwarden 2026 start argv=["x"]\nfirst\nsecond\n', 'second'],
    ['=== runwarden 2026 start argv=["x"]\n', ''],
    ['a\nlast\n\n\n', 'last'],
    ['progress 10%\rprogress 20%\rprogress 30%', 'progress 30%'],
    ['done 100%\r\n', 'done 100%'],
    ['real line\n\x1b[0m\n', 'real line'],
    ['out\n=== runwarden 2026 exit code=0 signal=null duration_ms=5 leftovers=0\n', 'out'],
    ['', ''],
  ])('lastOutputLine(%j) = %j', (tail, expected) => {
    expect(lastOutputLine(tail)).toBe(expected);
  });

  it('fitWidth counts wide characters as two columns', () => {
    expect(fitWidth('日本語日本語', 7)).toBe('日本語…');
    expect(displayWidth(fitWidth('日本語日本語', 7))).toBe(7);
    expect(fitWidth('abc', 3)).toBe('abc');
    expect(fitWidth('abcd', 3)).toBe('ab…');
  });
});

describe('reading a snapshot', () => {
  let dir: string;
  let cleanup: () => void;
  beforeEach(() => {
    ({ dir, cleanup } = tempDir());
  });
  afterEach(() => cleanup());

  it('reads only the end of a large log; a missing log is null', () => {
    const file = join(dir, 'attempt-1.log');
    writeFileSync(file, `${'early line\n'.repeat(200_000)}the last line\n`);
    const tail = readLogTail(file);
    expect(tail).not.toBeNull();
    expect(Buffer.byteLength(tail ?? '')).toBe(LOG_TAIL_BYTES);
    expect(lastOutputLine(tail ?? '')).toBe('the last line');
    expect(readLogTail(join(dir, 'elsewhere.log'))).toBeNull();
  });

  it('a FIFO or a symbolic link where the log should be is null, without blocking', () => {
    const fifo = join(dir, 'attempt-2.log');
    execFileSync('mkfifo', [fifo]);
    expect(readLogTail(fifo)).toBeNull();
    const target = join(dir, 'secret.txt');
    writeFileSync(target, 'not a log\n');
    symlinkSync(target, join(dir, 'attempt-3.log'));
    expect(readLogTail(join(dir, 'attempt-3.log'))).toBeNull();
  });

  it('from a real store: busy runs with the last line of their attempt log, failures newest first', async () => {
    let storeTime = NOW - 60 * SECOND;
    const store = await openStore(`sqlite:${join(dir, 'runs.db')}`, { clock: () => storeTime });
    try {
      for (const number of [1, 2, 3, 4]) await store.insertRun({ number, start: NOW });
      const claim = async () => {
        const run = await store.claimNextRun({ host: 'here', pid: process.pid, order: 'newest' });
        if (!run?.processing) throw new Error('nothing claimed');
        return run;
      };
      const busyHere = await claim(); // 4
      await store.markBusy(busyHere.number, busyHere.processing!.token, { started: storeTime });
      const busyElsewhere = await claim(); // 3: its log is on another host
      await store.markBusy(busyElsewhere.number, busyElsewhere.processing!.token, { started: storeTime });
      const failedFirst = await claim(); // 2
      await store.failRun(failedFirst.number, failedFirst.processing!.token, { reason: 'first', n_failures: 1, next_retry: storeTime + 3_600_000 });
      const failedLater = await claim(); // 1
      storeTime += SECOND; // run 1's failure is written after run 2's
      await store.abandonRun(failedLater.number, failedLater.processing!.token, { reason: 'later', n_failures: 1 });
      mkdirSync(join(dir, 'logs', '4'), { recursive: true });
      writeFileSync(join(dir, 'logs', '4', 'attempt-1.log'), '=== runwarden x start\nhello\n\x1b[1mworking on it\x1b[0m\n');

      const snapshot = await readTopSnapshot(store, join(dir, 'logs'), () => NOW);
      expect(snapshot.readAt).toBe(NOW);
      expect(snapshot.counts).toMatchObject({ busy: 2, failed: 1, abandoned: 1 });
      expect(snapshot.busy.map((b) => [b.run.number, b.lastOutput])).toEqual([
        [4, 'working on it'],
        [3, null],
      ]);
      expect(snapshot.failures.map((r) => r.number)).toEqual([1, 2]);
    } finally {
      await store.close();
    }
    // A closed store fails the reading: the live view shows that on its status line.
    await expect(readTopSnapshot(store, join(dir, 'logs'))).rejects.toThrow();
  });
});
