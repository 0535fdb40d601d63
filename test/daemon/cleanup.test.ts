import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { defaultConfig, type Config } from '../../src/config/schema.js';
import { cleanupPass, type CleanupReport } from '../../src/daemon/cleanup.js';
import { LeaseObservations } from '../../src/daemon/lease-observations.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunDoc } from '../../src/store/types.js';
import { repoRoot, tempDir, waitFor } from '../helpers/cli.js';
import { startTsxWorker } from '../helpers/tsx-worker.js';

// The cleanup pass against a real SQLite file. Stale leases are made by a second store on the same file whose
// clock runs in the past (the owner's last heartbeat), so nothing here waits for a limit to pass.

const HOUR = 3_600_000;
const VERSION = 'test';
const cleanupWorker = join(repoRoot, 'test/daemon/fixtures/cleanup-worker.ts');

let dir: string;
let cleanup: () => void;
let db: string;
const stores: RunStore[] = [];

beforeEach(() => {
  ({ dir, cleanup } = tempDir('runwarden-cleanup-'));
  db = join(dir, 'runs.db');
});

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  cleanup();
});

async function open(clock?: () => number): Promise<RunStore> {
  const s = await openStore(`sqlite:${db}`, clock ? { clock } : {});
  stores.push(s);
  return s;
}

function config(host: string, patch: (c: Config) => void = () => {}): Config {
  const c = defaultConfig(dir, host);
  patch(c);
  return c;
}

function deps(store: RunStore, host: string, patch?: (c: Config) => void) {
  return { store, config: config(host, patch), host, random: () => 0.5, clock: Date.now };
}

/** A store whose every write happened `ago` ms before now: the owner's last heartbeat. */
function openPast(ago: number): Promise<RunStore> {
  return open(() => Date.now() - ago);
}

/** Claims a pending run for `host` (and marks it busy) through `s`; returns the claimed document. */
async function claim(s: RunStore, number: number, host: string, busy: boolean): Promise<RunDoc> {
  const run = (await s.claimRun(number, { host, pid: 4_000_000, order: 'newest' }, { state: null, token: null }))!;
  if (busy) expect(await s.markBusy(number, run.processing!.token, { started: Date.now() - HOUR })).toBe(true);
  return (await s.getRun(number))!;
}

async function failedEvents(s: RunStore, number: number) {
  return (await s.listRunEvents(number)).filter((e) => e.to === 'failed');
}

function raw(s: RunStore): Database.Database {
  return (s as unknown as { db: Database.Database }).db;
}

describe('cleanupPass', () => {
  it('fails stale considering and busy runs of another host, naming host, state and time; fresh stay', async () => {
    const now = await open();
    const hourAgo = await openPast(HOUR);
    const ninetyAgo = await openPast(90_000);
    for (const n of [1, 2, 3, 4, 5]) await now.insertRun({ number: n, start: n });
    const one = await claim(hourAgo, 1, 'ghost', false);
    const two = await claim(hourAgo, 2, 'ghost', true);
    await claim(ninetyAgo, 3, 'ghost', true); // busy 90 s: within max_busy_time (2m)
    await claim(ninetyAgo, 4, 'ghost', false); // considering 90 s: past max_considering_time (1m)
    await claim(now, 5, 'alive', true);
    await hourAgo.registerHost({
      host: 'ghost', pid: 4_000_000, token: 'g', state: 'busy', time: Date.now() - HOUR, started: 0,
      version: VERSION, slots: 1, running: [1, 2, 3, 4],
    });
    await now.registerHost({
      host: 'alive', pid: 4_000_001, token: 'a', state: 'busy', time: Date.now(), started: 0,
      version: VERSION, slots: 1, running: [5],
    });

    const ghostTime = (await now.getHost('ghost'))!.time;
    const before = Date.now();
    const report = await cleanupPass(deps(now, 'cleaner'));
    const after = Date.now();

    expect(report.deadHosts).toEqual([{ host: 'ghost', silentSince: expect.any(Number) }]);
    expect(report.repairs.map((r) => [r.number, r.kind, r.from, r.to])).toEqual([
      [1, 'stale', 'considering', 'failed'],
      [2, 'stale', 'busy', 'failed'],
      [4, 'stale', 'considering', 'failed'],
    ]);
    expect(report.lost).toEqual([]);
    expect(report.errors).toEqual([]);

    const p2 = (await now.getRun(2))!.processing!;
    // A silent host interrupted the run: not the run's failure (issue 12 fault 4).
    expect(p2).toMatchObject({ state: 'failed', n_failures: 0, n_interruptions: 1, host: 'ghost' });
    const iso = new Date(two.processing!.time).toISOString();
    expect(p2.reason).toContain(`host ghost said it was busy at ${iso} (1h ago), then nothing`);
    expect(p2.reason).toContain('timeouts.max_busy_time');
    expect((await now.getRun(1))!.processing!.reason).toContain(
      `host ghost said it was considering at ${new Date(one.processing!.time).toISOString()}`,
    );
    // eligible again at once: an interruption waits for no backoff
    expect(p2.next_retry!).toBeGreaterThanOrEqual(before);
    expect(p2.next_retry!).toBeLessThanOrEqual(after);
    // The owner's lease is gone: its next heartbeat is refused.
    expect(await hourAgo.heartbeatRun(2, two.processing!.token)).toBe(false);
    expect((await now.listRunEvents(2)).at(-1)).toMatchObject({
      host: 'cleaner',
      from: 'busy',
      to: 'failed',
      detail: { by: 'cleanup', kind: 'stale', interruption: 'presumed_dead', owner: 'ghost' },
    });
    for (const n of [3, 5]) expect((await now.getRun(n))!.processing!.state).toBe('busy');
    expect((await now.getHost('ghost'))!.state).toBe('dead');
    expect((await now.getHost('alive'))!.state).toBe('busy');

    const warnings = await now.listLog({ minPriority: 2 });
    expect(warnings.find((e) => e.number === undefined)).toMatchObject({
      host: 'cleaner',
      priority: 2,
      message: `host ghost presumed dead: silent since ${new Date(ghostTime).toISOString()}`,
    });
    expect(warnings.filter((e) => e.number !== undefined).map((e) => e.number).sort()).toEqual([1, 2, 4]);

    // A second pass finds nothing left to do.
    const again = await cleanupPass(deps(now, 'cleaner'));
    expect(again).toEqual({ deadHosts: [], forgottenHosts: [], repairs: [], lost: [], errors: [] });
  });

  it('abandons a stale run whose interruption reaches retry.max_interruptions, with both reasons', async () => {
    const now = await open();
    const hourAgo = await openPast(HOUR);
    await now.insertRun({ number: 7, start: 7 });
    const first = await claim(hourAgo, 7, 'ghost', true);
    await hourAgo.failRun(7, first.processing!.token, { reason: 'x', n_failures: 2, n_interruptions: 2, next_retry: 0 });
    const failed = (await hourAgo.getRun(7))!;
    await hourAgo.claimRun(7, { host: 'ghost', pid: 1, order: 'newest' }, {
      state: 'failed',
      token: failed.processing!.token,
    });

    // max_failures 3 is not what decides: the silent host interrupted the run, it did not fail
    const report = await cleanupPass(
      deps(now, 'cleaner', (c) => {
        c.retry.max_failures = 3;
        c.retry.max_interruptions = 3;
      }),
    );
    expect(report.repairs.map((r) => [r.number, r.to])).toEqual([[7, 'abandoned']]);
    const p = (await now.getRun(7))!.processing!;
    expect(p.state).toBe('abandoned');
    expect(p.n_failures).toBe(2);
    expect(p.n_interruptions).toBe(3);
    expect(p.reason).toMatch(
      /^gave up: 3 interruptions reached retry\.max_interruptions \(3\): its host keeps going away while it runs; last interruption: host ghost said it was considering at /,
    );
  });

  it('fails a done run without a registered output only when process.require_output is on', async () => {
    const now = await open();
    for (const n of [11, 12]) {
      await now.insertRun({ number: n, start: n });
      const run = await claim(now, n, 'alpha', true);
      const output = { location: `/out/${n}`, host: 'alpha', attempt: 1, at: Date.now() };
      expect(await now.finishRun(n, run.processing!.token, output)).toBe(true);
    }
    // Another tool lost run 11's output record.
    raw(now).prepare(`UPDATE runs SET outputs = '[]' WHERE number = 11`).run();

    const relaxed = await cleanupPass(deps(now, 'cleaner', (c) => (c.process.require_output = false)));
    expect(relaxed.repairs).toEqual([]);
    expect((await now.getRun(11))!.processing!.state).toBe('done');

    const strict = await cleanupPass(deps(now, 'cleaner'));
    expect(strict.repairs.map((r) => [r.number, r.kind, r.from, r.to])).toEqual([[11, 'no_output', 'done', 'failed']]);
    const p = (await now.getRun(11))!.processing!;
    expect(p).toMatchObject({ state: 'failed', n_failures: 1 });
    expect(p.reason).toContain('done without a registered output');
    expect((await now.listRunEvents(11)).at(-1)).toMatchObject({ detail: { by: 'cleanup', kind: 'no_output' } });
    expect((await now.getRun(12))!.processing!.state).toBe('done');
  });

  it('abandons runs tagged abandon, pending or failed, and leaves already abandoned ones alone', async () => {
    const now = await open();
    await now.insertRun({ number: 21, start: 21, tags: ['abandon'] });
    await now.insertRun({ number: 22, start: 22 });
    await now.insertRun({ number: 23, start: 23, tags: ['abandon'] });
    await now.insertRun({ number: 24, start: 24 });
    const run = await claim(now, 22, 'alpha', true);
    await now.failRun(22, run.processing!.token, { reason: 'x', n_failures: 2, next_retry: Date.now() + HOUR });
    await now.setRunTag(22, 'abandon', true);
    await now.overrideRun(23, { state: null, token: null }, { to: 'abandoned', reason: 'by hand', n_failures: 0 }, {
      host: 'ops',
    });
    const eventsOf23 = (await now.listRunEvents(23)).length;

    const report = await cleanupPass(deps(now, 'cleaner'));
    expect(report.repairs.map((r) => [r.number, r.kind, r.from, r.to])).toEqual([
      [22, 'tagged_abandon', 'failed', 'abandoned'],
      [21, 'tagged_abandon', 'pending', 'abandoned'],
    ]);
    expect((await now.getRun(21))!.processing).toMatchObject({ state: 'abandoned', n_failures: 0 });
    expect((await now.getRun(22))!.processing).toMatchObject({ state: 'abandoned', n_failures: 2 });
    expect((await now.getRun(22))!.processing!.reason).toBe('tagged abandon; abandoned by cleanup on host cleaner');
    expect((await now.getRun(23))!.processing!.reason).toBe('by hand');
    expect(await now.listRunEvents(23)).toHaveLength(eventsOf23);
    expect((await now.getRun(24))!.processing).toBeUndefined();
  });

  it("with a daemon's lease observations: stale only once seen unchanged for the limit on the monotonic clock", async () => {
    const now = await open();
    const hourAgo = await openPast(HOUR);
    for (const n of [41, 42, 43]) await now.insertRun({ number: n, start: n });
    const dead = await claim(hourAgo, 41, 'ghost', true); // owner gone: the lease never changes again
    const beating = await claim(hourAgo, 42, 'ghost', true); // owner alive, its heartbeats written with an old clock
    await claim(hourAgo, 43, 'cleaner', true); // this daemon's own live run, pid as the claim wrote it
    let monotonic = 0;
    const observations = new LeaseObservations(() => monotonic);
    const watched = {
      ...deps(now, 'cleaner'),
      observations,
      ownLiveRuns: () => [43],
      pid: 4_000_000,
    };
    let beatClock = Date.now() - HOUR;
    const beat = await open(() => (beatClock += 1_000));
    const passAt = async (ms: number) => {
      monotonic = ms;
      expect(await beat.heartbeatRun(42, beating.processing!.token)).toBe(true);
      return cleanupPass(watched);
    };

    // All three look an hour old to the store; nothing is failed before it was watched for max_busy_time (2m).
    expect((await passAt(0)).repairs).toEqual([]);
    expect((await passAt(119_999)).repairs).toEqual([]);
    const report = await passAt(120_000);
    expect(report.repairs.map((r) => [r.number, r.kind, r.from, r.to])).toEqual([[41, 'stale', 'busy', 'failed']]);
    expect(report.repairs[0]!.reason).toContain('(seen unchanged for 2m)');
    expect(await hourAgo.heartbeatRun(41, dead.processing!.token)).toBe(false);
    for (const ms of [240_000, 10 * HOUR]) expect((await passAt(ms)).repairs).toEqual([]);
    expect((await now.getRun(42))!.processing).toMatchObject({ state: 'busy', attempt: 1, n_failures: 0 });
    expect((await now.getRun(43))!.processing).toMatchObject({ state: 'busy', attempt: 1, n_failures: 0 });
    // Bounded: only the live runs of the latest pass are remembered.
    expect(observations.size).toBe(2);
  });

  it('reports a run it cannot repair and goes on with the others', async () => {
    const now = await open();
    const hourAgo = await openPast(HOUR);
    for (const n of [31, 32, 33]) {
      await now.insertRun({ number: n, start: n });
      await claim(hourAgo, n, 'ghost', true);
    }
    const broken = new Proxy(now, {
      get(target, key, receiver) {
        if (key === 'overrideRun') {
          return (...args: Parameters<RunStore['overrideRun']>) =>
            args[0] === 32 ? Promise.reject(new Error('disk I/O error')) : target.overrideRun(...args);
        }
        const value = Reflect.get(target, key, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const report = await cleanupPass(deps(broken, 'cleaner'));
    expect(report.errors).toEqual([{ number: 32, kind: 'stale', error: 'disk I/O error' }]);
    expect(report.repairs.map((r) => r.number)).toEqual([31, 33]);
    expect((await now.getRun(32))!.processing!.state).toBe('busy');
  });

  it('two cleaners racing on one file fail each stale run exactly once and mark each host dead once', async () => {
    const numbers = await staleRunsOfSilentHosts(100, 30);
    const a = await open();
    const b = await open();
    const [ra, rb] = await Promise.all([cleanupPass(deps(a, 'alpha')), cleanupPass(deps(b, 'beta'))]);
    // Both read the same stale runs before either wrote: the race was real, and the loser wrote nothing.
    expect(ra.lost.length + rb.lost.length).toBeGreaterThan(0);
    await expectRepairedOnce(a, numbers, [ra, rb]);
  });

  it('two cleaner processes racing on one file fail each stale run exactly once', async () => {
    const numbers = await staleRunsOfSilentHosts(200, 40);
    const go = join(dir, 'go');
    const workers = ['alpha', 'beta'].map((host) => startTsxWorker(cleanupWorker, [db, host, go]));
    try {
      await waitFor(() => workers.every((w) => w.lines.includes('ready')), 'both cleaners to be ready');
      writeFileSync(go, '');
      const codes = await Promise.all(workers.map((w) => w.done));
      expect(codes, workers.map((w) => w.stderr.join('')).join('\n')).toEqual([0, 0]);
    } finally {
      for (const w of workers) w.child.kill('SIGKILL');
      await Promise.all(workers.map((w) => w.done.catch(() => null)));
    }
    const reports = workers.map((w) => JSON.parse(w.lines.at(-1)!) as CleanupReport);
    await expectRepairedOnce(await open(), numbers, reports);
  });
});

/**
 * `count` runs from `first` on, claimed an hour ago (busy if even) by the silent hosts ghost0..2, which said they
 * were busy an hour ago; every fifth run is tagged abandon. Returns the run numbers.
 */
async function staleRunsOfSilentHosts(first: number, count: number): Promise<number[]> {
  const hourAgo = await openPast(HOUR);
  const numbers = Array.from({ length: count }, (_, i) => first + i);
  for (const n of numbers) {
    await hourAgo.insertRun({ number: n, start: n, ...(n % 5 === 0 ? { tags: ['abandon'] } : {}) });
    await claim(hourAgo, n, `ghost${n % 3}`, n % 2 === 0);
  }
  for (const h of ['ghost0', 'ghost1', 'ghost2']) {
    await hourAgo.registerHost({
      host: h, pid: 4_000_000, token: h, state: 'busy', time: Date.now() - HOUR, started: 0,
      version: VERSION, slots: 1, running: [],
    });
  }
  return numbers;
}

/** Every run repaired by exactly one cleaner (one failed or abandoned event each), every host marked dead once. */
async function expectRepairedOnce(s: RunStore, numbers: number[], reports: CleanupReport[]) {
  for (const n of numbers) {
    const events = await s.listRunEvents(n);
    const repairs = events.filter((e) => e.to === 'failed' || e.to === 'abandoned');
    const tagged = n % 5 === 0;
    // A tagged run is failed as stale first, then abandoned for its tag: by whichever cleaner got there.
    const expected = tagged ? ['failed', 'abandoned'] : ['failed'];
    expect({ n, repairs: repairs.map((e) => e.to) }).toEqual({ n, repairs: expected });
    expect(await failedEvents(s, n)).toHaveLength(1);
  }
  const repaired = reports.flatMap((r) => r.repairs.map((x) => `${x.number}:${x.kind}`)).sort();
  const expected = numbers.flatMap((n) => (n % 5 === 0 ? [`${n}:stale`, `${n}:tagged_abandon`] : [`${n}:stale`]));
  expected.sort();
  expect(repaired).toEqual(expected);
  expect(reports.flatMap((r) => r.deadHosts.map((h) => h.host)).sort()).toEqual(['ghost0', 'ghost1', 'ghost2']);
  expect(reports.flatMap((r) => r.errors)).toEqual([]);
}

describe('cleanupPass on a pipeline', () => {
  it("repairs a stale task by itself, under its stage's retry policy, leaving the run's other tasks alone", async () => {
    const now = await open();
    const hourAgo = await openPast(HOUR);
    const tasks = [
      { stage: 'process', needs: [] },
      { stage: 'compress', needs: ['process'] },
    ];
    await now.insertRun({ number: 1, start: 1 }, tasks);
    // process done by a host that is gone now; its compress task then stale in busy on that host
    const p = (await now.claimRun(1, { host: 'ghost', pid: 4_000_000, order: 'newest' }, { state: null, token: null }))!;
    expect(await now.markBusy(1, p.processing!.token, { started: Date.now() })).toBe(true);
    expect(
      await now.finishRun(1, p.processing!.token, { location: '/out/process/000001', host: 'ghost', attempt: 1, at: Date.now() }),
    ).toBe(true);
    const compress = { number: 1, stage: 'compress' };
    const c = (await hourAgo.claimRun(compress, { host: 'ghost', pid: 4_000_000, order: 'newest' }, { state: null, token: null }))!;
    expect(c.stage).toBe('compress');
    expect(await hourAgo.markBusy(compress, c.processing!.token, { started: Date.now() - HOUR })).toBe(true);

    const staged = (cfg: Config) => {
      const base = { ...cfg.process, cwd: dir, env: {}, check: [], select: {} };
      cfg.stages = [
        { ...base, name: 'process', needs: [], depth: 0, slots: 1, timeouts: { ...cfg.timeouts }, retry: { ...cfg.retry } },
        {
          ...base,
          name: 'compress',
          needs: ['process'],
          depth: 1,
          slots: 1,
          timeouts: { ...cfg.timeouts },
          retry: { ...cfg.retry, max_interruptions: 1 },
        },
      ];
    };
    const report = await cleanupPass(deps(now, 'cleaner', staged));
    expect(report.repairs.map((r) => [r.number, r.stage, r.kind, r.to])).toEqual([[1, 'compress', 'stale', 'abandoned']]);
    expect(report.repairs[0]!.reason).toMatch(/host ghost said it was busy/);
    // the stage's own max_interruptions (1) gave it up; the process task is untouched
    expect((await now.getRun(1, 'compress'))!.processing).toMatchObject({ state: 'abandoned', n_interruptions: 1 });
    expect((await now.getRun(1, 'process'))!.processing).toMatchObject({ state: 'done', token: p.processing!.token });
    expect((await now.listRunEvents(1, 'compress')).at(-1)).toMatchObject({ stage: 'compress', to: 'abandoned', host: 'cleaner' });
  });
});
