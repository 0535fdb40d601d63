// The RunStore conformance suite: every backend runs it unchanged. It talks to the store only through the
// RunStore interface (no SQL), uses real time with wide margins (next_retry an hour in the past or future)
// and never asserts wall-clock durations.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { DuplicateRunError, UsageError } from '../../src/errors.js';
import type { RunSelector } from '../../src/config/schema.js';
import {
  MONITOR_RETENTION_MS,
  monitorMinute,
  type ClaimRequest,
  type RunStore,
  type StageClaim,
  type TaskCounts,
  type TaskSpec,
} from '../../src/store/run-store.js';
import type { HostDoc, MonitorSample, NewRun, RunDoc } from '../../src/store/types.js';

/** One claimer's take in a race: what it claimed, with the token each claim got. */
export type RaceTake = Array<{ number: number; token: string }>;
/**
 * Writes processing fields as another tool would, bypassing the store (null clears a field); dates are given
 * as Date and stored as the backend stores times. Backends without it skip the cases that need it.
 */
export type WriteProcessing = (number: number, fields: Record<string, unknown>, stage?: string) => Promise<void>;

export type OpenForTest = () => Promise<{
  store: RunStore;
  cleanup: () => Promise<void>;
  /**
   * Claimers racing on the same backing store from separate connections, each claiming until nothing is left.
   * A backend whose calls run one after another in this process (better-sqlite3 is synchronous) must provide
   * it, with separate processes; without it the race is Promise.all over the one store (an async driver).
   */
  race?: (hosts: string[]) => Promise<RaceTake[]>;
  writeProcessing?: WriteProcessing;
  /** Inserts a run as another tool would (no tasks; not staged). Backends without it skip the cases. */
  insertUnstaged?: (run: NewRun) => Promise<void>;
}>;

const HOUR = 3_600_000;
/** Allowed distance between a time the store wrote and this process's clock (a server clock may differ). */
const SLACK = 60_000;
const T0 = Date.UTC(2024, 0, 1);

function run(number: number, extra: Partial<NewRun> = {}): NewRun {
  return { number, start: T0 + number * 1000, ...extra };
}

function claimer(host = 'alpha', order: ClaimRequest['order'] = 'newest', pid = 4242): ClaimRequest {
  return { host, pid, order };
}

function expectNow(t: number | undefined): void {
  expect(typeof t).toBe('number');
  expect(Math.abs((t as number) - Date.now())).toBeLessThan(SLACK);
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Claims `number` (which must be the only eligible run) and returns the claimed doc. */
async function claimOnly(store: RunStore, number: number, request = claimer()): Promise<RunDoc> {
  const doc = await store.claimNextRun(request);
  expect(doc?.number).toBe(number);
  return doc as RunDoc;
}

function hostDoc(host: string, token: string, extra: Partial<HostDoc> = {}): HostDoc {
  return {
    host,
    pid: 100,
    proc_start: 12345,
    token,
    state: 'starting',
    time: Date.now(),
    started: Date.now(),
    version: '0.1.0',
    slots: 2,
    running: [],
    ...extra,
  };
}

/** What a backend can do beyond the first wave; every case it cannot do yet is skipped. */
export interface ConformanceOptions {
  /** Tasks of a pipeline (issue 14): stages, needs, blocks, task views. */
  tasks?: boolean;
}

export function runStoreConformance(name: string, open: OpenForTest, options: ConformanceOptions = {}): void {
  /** A first-wave run as inserted: with tasks, viewed from its one pending `process` task. */
  const asInserted = <T extends object>(doc: T): T =>
    options.tasks ? { ...doc, stage: 'process', tasks: [{ stage: 'process', needs: [] }] } : doc;
  /** An output as registered by a run's `process` task: with tasks, stamped with that stage. */
  const stamped = <T extends object>(out: T): T => (options.tasks ? { ...out, stage: 'process' } : out);

  describe(`RunStore conformance: ${name}`, () => {
    let store: RunStore;
    let cleanup: () => Promise<void>;
    let race: ((hosts: string[]) => Promise<RaceTake[]>) | undefined;
    let writeProcessing: WriteProcessing | undefined;
    let insertUnstaged: ((run: NewRun) => Promise<void>) | undefined;

    beforeEach(async () => {
      ({ store, cleanup, race, writeProcessing, insertUnstaged } = await open());
    });
    afterEach(async () => {
      await cleanup();
    });

    describe('identity', () => {
      it('names its kind and location', () => {
        expect(['sqlite', 'mongodb']).toContain(store.kind);
        // mongodb+srv: URLs are shown as written (password masked)
        expect(store.location).toMatch(new RegExp(`^${store.kind}(\\+srv)?:`));
      });
    });

    describe('insert, get, list, count', () => {
      it('inserts a run with defaults and reads it back', async () => {
        const doc = await store.insertRun({ number: 7, start: T0 });
        expect(doc).toEqual(asInserted({ number: 7, start: T0, tags: [], priority: 0, params: {}, outputs: [] }));
        expect(doc.processing).toBeUndefined();
        expect(await store.getRun(7)).toEqual(doc);
      });

      it('keeps every field it is given', async () => {
        const full: NewRun = {
          number: 12,
          name: 'run; rm -rf /',
          start: T0,
          end: T0 + 60_000,
          mode: 'background',
          tags: ['calibration', 'blinded'],
          priority: 5,
          input: '/data/raw/000012',
          params: { threshold: 3, nested: { a: [1, 2] }, label: 'x' },
        };
        const doc = await store.insertRun(full);
        expect(doc).toEqual(asInserted({ ...full, outputs: [] }));
        expect(await store.getRun(12)).toEqual(asInserted({ ...full, outputs: [] }));
      });

      it('returns null for an unknown run', async () => {
        expect(await store.getRun(999)).toBeNull();
      });

      it('refuses a duplicate number with DuplicateRunError', async () => {
        await store.insertRun(run(1, { name: 'first' }));
        const error = await store.insertRun(run(1, { name: 'second' })).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(DuplicateRunError);
        expect((error as DuplicateRunError).number).toBe(1);
        expect((await store.getRun(1))?.name).toBe('first');
      });

      it('inserts a batch and returns the count', async () => {
        expect(await store.insertRuns([run(1), run(2), run(3)])).toBe(3);
        expect(await store.insertRuns([])).toBe(0);
        expect((await store.listRuns()).map((r) => r.number)).toEqual([3, 2, 1]);
      });

      it('inserts a batch all or nothing when one collides with an existing run', async () => {
        await store.insertRun(run(5, { name: 'old' }));
        const error = await store.insertRuns([run(4), run(5), run(6)]).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(DuplicateRunError);
        expect((error as DuplicateRunError).number).toBe(5);
        expect((await store.listRuns()).map((r) => r.number)).toEqual([5]);
        expect((await store.getRun(5))?.name).toBe('old');
      });

      it('inserts a batch all or nothing when it repeats a number itself', async () => {
        const error = await store.insertRuns([run(8), run(9), run(8), run(10)]).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(DuplicateRunError);
        expect((error as DuplicateRunError).number).toBe(8);
        expect(await store.listRuns()).toEqual([]);
      });

      it('lists newest number first, filtered by state, host and limit', async () => {
        await store.insertRuns([1, 2, 3, 4, 5].map((n) => run(n)));
        // claims take the newest start first: 5, then 4, then 3
        const a = await store.claimNextRun(claimer('alpha'));
        const b = await store.claimNextRun(claimer('beta'));
        const c = await store.claimNextRun(claimer('alpha'));
        expect([a?.number, b?.number, c?.number]).toEqual([5, 4, 3]);
        expect(await store.markBusy(4, b!.processing!.token, { started: Date.now() })).toBe(true);

        expect((await store.listRuns()).map((r) => r.number)).toEqual([5, 4, 3, 2, 1]);
        expect((await store.listRuns({ limit: 2 })).map((r) => r.number)).toEqual([5, 4]);
        expect((await store.listRuns({ state: 'pending' })).map((r) => r.number)).toEqual([2, 1]);
        expect((await store.listRuns({ state: 'considering' })).map((r) => r.number)).toEqual([5, 3]);
        expect((await store.listRuns({ state: 'busy' })).map((r) => r.number)).toEqual([4]);
        expect(await store.listRuns({ state: 'done' })).toEqual([]);
        expect((await store.listRuns({ host: 'alpha' })).map((r) => r.number)).toEqual([5, 3]);
        expect((await store.listRuns({ host: 'alpha', limit: 1 })).map((r) => r.number)).toEqual([5]);
        expect((await store.listRuns({ host: 'beta', state: 'busy' })).map((r) => r.number)).toEqual([4]);
        expect(await store.listRuns({ host: 'beta', state: 'considering' })).toEqual([]);
      });

      it('counts runs per state with every key present', async () => {
        expect(await store.countRunsByState()).toEqual({
          pending: 0,
          considering: 0,
          busy: 0,
          done: 0,
          failed: 0,
          abandoned: 0,
        });
        await store.insertRuns([1, 2, 3, 4, 5, 6].map((n) => run(n)));
        const r6 = await claimOnlyNewest(store, 6);
        const r5 = await claimOnlyNewest(store, 5);
        const r4 = await claimOnlyNewest(store, 4);
        const r3 = await claimOnlyNewest(store, 3);
        expect(await store.markBusy(6, r6.processing!.token, { started: Date.now() })).toBe(true);
        expect(await store.finishRun(5, r5.processing!.token, output(5, 1))).toBe(true);
        expect(
          await store.failRun(4, r4.processing!.token, { reason: 'x', n_failures: 1, next_retry: Date.now() + HOUR }),
        ).toBe(true);
        expect(await store.abandonRun(3, r3.processing!.token, { reason: 'y', n_failures: 10 })).toBe(true);
        expect(await store.countRunsByState()).toEqual({
          pending: 2,
          considering: 0,
          busy: 1,
          done: 1,
          failed: 1,
          abandoned: 1,
        });
      });
    });

    describe('claim', () => {
      it('returns null when nothing is eligible', async () => {
        expect(await store.claimNextRun(claimer())).toBeNull();
      });

      it('sets considering, host, pid, attempt 1, a token, time and n_failures 0 on a fresh run', async () => {
        await store.insertRun(run(1, { params: { a: 1 } }));
        const doc = await store.claimNextRun(claimer('alpha', 'newest', 777));
        expect(doc).not.toBeNull();
        const p = doc!.processing!;
        expect(p.state).toBe('considering');
        expect(p.host).toBe('alpha');
        expect(p.pid).toBe(777);
        expect(p.attempt).toBe(1);
        expect(p.n_failures).toBe(0);
        expect(typeof p.token).toBe('string');
        expect(p.token.length).toBeGreaterThanOrEqual(8);
        expectNow(p.time);
        expect(p.next_retry).toBeUndefined();
        expect(p.ended).toBeUndefined();
        expect(doc!.params).toEqual({ a: 1 });
        expect(await store.getRun(1)).toEqual(doc);
        expect(await store.claimNextRun(claimer())).toBeNull();
      });

      it('orders by priority desc, then start desc (newest)', async () => {
        await store.insertRuns([
          { number: 1, start: T0 + 10 },
          { number: 2, start: T0 + 30 },
          { number: 3, start: T0 + 20 },
          { number: 4, start: T0 + 5, priority: 1 },
          { number: 5, start: T0 + 1, priority: 1 },
          { number: 6, start: T0 + 99, priority: -1 },
        ]);
        const order: number[] = [];
        for (;;) {
          const doc = await store.claimNextRun(claimer('alpha', 'newest'));
          if (!doc) break;
          order.push(doc.number);
        }
        expect(order).toEqual([4, 5, 2, 3, 1, 6]);
      });

      it('orders by priority desc, then start asc (oldest)', async () => {
        await store.insertRuns([
          { number: 1, start: T0 + 10 },
          { number: 2, start: T0 + 30 },
          { number: 3, start: T0 + 20 },
          { number: 4, start: T0 + 5, priority: 1 },
          { number: 5, start: T0 + 1, priority: 1 },
          { number: 6, start: T0 + 0, priority: -1 },
        ]);
        const order: number[] = [];
        for (;;) {
          const doc = await store.claimNextRun(claimer('alpha', 'oldest'));
          if (!doc) break;
          order.push(doc.number);
        }
        expect(order).toEqual([5, 4, 1, 3, 2, 6]);
      });

      it('skips runs tagged hold or abandon', async () => {
        await store.insertRuns([
          run(1, { tags: ['hold'] }),
          run(2, { tags: ['x', 'abandon'] }),
          run(3, { tags: ['holdover', 'abandoned-not'] }),
          run(4, { tags: ['hold'], priority: 100 }),
        ]);
        const doc = await store.claimNextRun(claimer());
        expect(doc?.number).toBe(3);
        expect(await store.claimNextRun(claimer())).toBeNull();
        expect((await store.listRuns({ state: 'pending' })).map((r) => r.number)).toEqual([4, 2, 1]);
      });

      it('takes a failed run again only once next_retry has passed', async () => {
        await store.insertRuns([run(1), run(2)]);
        const a = await claimOnlyNewest(store, 2);
        const b = await claimOnlyNewest(store, 1);
        const later = Date.now() + HOUR;
        expect(
          await store.failRun(2, a.processing!.token, { reason: 'later', n_failures: 1, next_retry: later }),
        ).toBe(true);
        expect(await store.claimNextRun(claimer())).toBeNull();
        expect(await store.nextRetryAt()).toBe(later);

        const earlier = Date.now() - HOUR;
        expect(
          await store.failRun(1, b.processing!.token, {
            reason: 'crashed',
            n_failures: 3,
            next_retry: earlier,
            exit_code: 2,
          }),
        ).toBe(true);
        expect(await store.nextRetryAt()).toBe(earlier);

        const again = await store.claimNextRun(claimer('beta', 'newest', 9));
        expect(again?.number).toBe(1);
        const p = again!.processing!;
        expect(p.state).toBe('considering');
        expect(p.attempt).toBe(2);
        expect(p.n_failures).toBe(3);
        expect(p.host).toBe('beta');
        expect(p.pid).toBe(9);
        expect(p.token).not.toBe(b.processing!.token);
        // the previous attempt's outcome is gone from the processing document
        expect(p.reason).toBeUndefined();
        expect(p.next_retry).toBeUndefined();
        expect(p.exit_code).toBeUndefined();
        expect(p.ended).toBeUndefined();

        expect(await store.claimNextRun(claimer())).toBeNull();
        expect(await store.nextRetryAt()).toBe(later);
      });

      it('never takes a run the claimer says it still has an actor for', async () => {
        await store.insertRuns([run(1), run(2)]);
        const a = await claimOnlyNewest(store, 2);
        const b = await claimOnlyNewest(store, 1);
        for (const [number, doc] of [[2, a], [1, b]] as const) {
          const failure = { reason: 'x', n_failures: 1, next_retry: Date.now() - HOUR };
          expect(await store.failRun(number, doc.processing!.token, failure)).toBe(true);
        }
        expect(await store.claimNextRun({ ...claimer(), exclude: [1, 2] })).toBeNull();
        expect((await store.claimNextRun({ ...claimer(), exclude: [2] }))?.number).toBe(1);
        expect((await store.claimNextRun({ ...claimer(), exclude: [] }))?.number).toBe(2);
      });

      it('prefers a retry-ready failed run over a pending one of lower priority and vice versa', async () => {
        await store.insertRuns([run(1, { priority: 2 }), run(2, { priority: 1 }), run(3, { priority: 3 })]);
        const first = await claimOnlyNewest(store, 3);
        expect(
          await store.failRun(3, first.processing!.token, {
            reason: 'r',
            n_failures: 1,
            next_retry: Date.now() - HOUR,
          }),
        ).toBe(true);
        await store.insertRun(run(5, { priority: 5 }));
        expect((await store.claimNextRun(claimer()))?.number).toBe(5);
        expect((await store.claimNextRun(claimer()))?.number).toBe(3);
        expect((await store.claimNextRun(claimer()))?.number).toBe(1);
        expect((await store.claimNextRun(claimer()))?.number).toBe(2);
      });

      it('never gives the same run to two concurrent claimers', async () => {
        const numbers = Array.from({ length: 40 }, (_, i) => i + 1);
        await store.insertRuns(numbers.map((n) => run(n)));
        const hosts = ['h0', 'h1', 'h2'];
        const takes: RaceTake[] = race
          ? await race(hosts)
          : await (async () => {
              // 60 claims at once over an async driver: 40 win, 20 find nothing left.
              const results = await Promise.all(
                Array.from({ length: 60 }, (_, i) => store.claimNextRun(claimer(hosts[i % 3], 'newest', 1000 + i))),
              );
              expect(results.filter((r) => r === null)).toHaveLength(20);
              return hosts.map((host) =>
                results
                  .filter((r): r is RunDoc => r !== null && r.processing!.host === host)
                  .map((r) => ({ number: r.number, token: r.processing!.token })),
              );
            })();
        const claimed = takes.flat().map((t) => t.number);
        expect(claimed).toHaveLength(40);
        expect(new Set(claimed).size).toBe(40);
        expect([...claimed].sort((x, y) => x - y)).toEqual(numbers);
        expect(new Set(takes.flat().map((t) => t.token)).size).toBe(40);
        // It was a race: more than one claimer won runs.
        expect(takes.filter((t) => t.length > 0).length, JSON.stringify(takes.map((t) => t.length))).toBeGreaterThan(1);
        // The store agrees with each winner: its host, its token, one claim event.
        for (const [i, take] of takes.entries()) {
          for (const { number, token } of take) {
            const p = (await store.getRun(number))!.processing!;
            expect({ host: p.host, token: p.token, attempt: p.attempt }).toEqual({ host: hosts[i], token, attempt: 1 });
            expect((await store.listRunEvents(number)).map((e) => e.to)).toEqual(['considering']);
          }
        }
      });
    });

    describe('fenced writes', () => {
      it('heartbeatRun refreshes time with the right token only', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        expect(await store.heartbeatRun(1, token)).toBe(true);
        const after = await store.getRun(1);
        expectNow(after!.processing!.time);
        expect(after!.processing!.time).toBeGreaterThanOrEqual(doc.processing!.time);
        expect(after!.processing!.state).toBe('considering');
        expect(await store.heartbeatRun(1, 'not-the-token')).toBe(false);
        expect(await store.heartbeatRun(2, token)).toBe(false);
        expect(await store.listRunEvents(1)).toHaveLength(1);
      });

      it('markBusy sets busy, started, targets and resources', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const started = Date.now();
        expect(
          await store.markBusy(
            1,
            doc.processing!.token,
            { started, targets: ['raw', 'peaks'], resources: { cores: 4 } },
            { detail: { preflight: 'ok' } },
          ),
        ).toBe(true);
        const p = (await store.getRun(1))!.processing!;
        expect(p.state).toBe('busy');
        expect(p.started).toBe(started);
        expect(p.targets).toEqual(['raw', 'peaks']);
        expect(p.resources).toEqual({ cores: 4 });
        expect(p.token).toBe(doc.processing!.token);
        expect(p.attempt).toBe(1);
        expectNow(p.time);
        const events = await store.listRunEvents(1);
        expect(events.at(-1)).toMatchObject({ from: 'considering', to: 'busy', detail: { preflight: 'ok' } });
      });

      it("recordProcessGroup sets pgid and proc_start, keeps the claimer's pid, and appends no event", async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        const claimer = doc.processing!.pid;
        expect(await store.markBusy(1, token, { started: Date.now() })).toBe(true);
        expect(await store.recordProcessGroup(1, token, { pgid: 5001, proc_start: 987654 })).toBe(true);
        const p = (await store.getRun(1))!.processing!;
        expect(p).toMatchObject({ pid: claimer, pgid: 5001, proc_start: 987654, state: 'busy' });
        expect(await store.listRunEvents(1)).toHaveLength(2);
      });

      it('finishRun sets done, ended and appends the output', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        expect(await store.markBusy(1, token, { started: Date.now() })).toBe(true);
        const out = output(1, 1);
        expect(await store.finishRun(1, token, out, { exit_code: 0, duration_ms: 1234 })).toBe(true);
        const after = (await store.getRun(1))!;
        expect(after.processing!.state).toBe('done');
        expectNow(after.processing!.ended);
        expect(after.outputs).toEqual([stamped(out)]);
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({
          from: 'busy',
          to: 'done',
          exit_code: 0,
          duration_ms: 1234,
          attempt: 1,
          host: 'alpha',
        });
      });

      it('failRun records reason, failures, next_retry, exit code and signal', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        expect(await store.markBusy(1, token, { started: Date.now() })).toBe(true);
        const nextRetry = Date.now() + HOUR;
        expect(
          await store.failRun(
            1,
            token,
            { reason: 'killed', n_failures: 1, next_retry: nextRetry, exit_code: 137, signal: 'SIGKILL' },
            { duration_ms: 50, detail: { stalled: true } },
          ),
        ).toBe(true);
        const p = (await store.getRun(1))!.processing!;
        expect(p).toMatchObject({
          state: 'failed',
          reason: 'killed',
          n_failures: 1,
          next_retry: nextRetry,
          exit_code: 137,
          signal: 'SIGKILL',
        });
        expectNow(p.ended);
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({
          from: 'busy',
          to: 'failed',
          reason: 'killed',
          exit_code: 137,
          signal: 'SIGKILL',
          duration_ms: 50,
          detail: { stalled: true },
        });
      });

      it('abandonRun makes the run terminal without next_retry', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        expect(
          await store.abandonRun(1, doc.processing!.token, { reason: 'gave up', n_failures: 10, exit_code: 3 }),
        ).toBe(true);
        const p = (await store.getRun(1))!.processing!;
        expect(p).toMatchObject({ state: 'abandoned', reason: 'gave up', n_failures: 10, exit_code: 3 });
        expect(p.next_retry).toBeUndefined();
        expect(await store.nextRetryAt()).toBeNull();
        expect(await store.claimNextRun(claimer())).toBeNull();
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({
          from: 'considering',
          to: 'abandoned',
          reason: 'gave up',
        });
      });

      it('releaseRun keeps n_failures and makes the run eligible again at once', async () => {
        await store.insertRun(run(1));
        const first = await claimOnly(store, 1);
        expect(
          await store.failRun(1, first.processing!.token, {
            reason: 'boom',
            n_failures: 2,
            next_retry: Date.now() - HOUR,
          }),
        ).toBe(true);
        const second = await claimOnly(store, 1);
        expect(second.processing!.n_failures).toBe(2);
        expect(await store.markBusy(1, second.processing!.token, { started: Date.now() })).toBe(true);
        expect(await store.releaseRun(1, second.processing!.token, 'host stopping')).toBe(true);
        const p = (await store.getRun(1))!.processing!;
        expect(p.state).toBe('failed');
        expect(p.n_failures).toBe(2);
        expect(p.reason).toBe('host stopping');
        expectNow(p.next_retry);
        expectNow(await store.nextRetryAt().then((t) => t ?? undefined));
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({
          from: 'busy',
          to: 'failed',
          reason: 'host stopping',
          attempt: 2,
        });
        const third = await claimOnly(store, 1);
        expect(third.processing!.attempt).toBe(3);
        expect(third.processing!.n_failures).toBe(2);
      });

      it('counts interruptions apart from failures: 0 on a fresh claim, kept across claims, set only when given', async () => {
        await store.insertRun(run(1));
        const first = await claimOnly(store, 1);
        expect(first.processing!.n_interruptions).toBe(0);
        // a restarted daemon records an interruption: n_failures unchanged
        expect(
          await store.failRun(1, first.processing!.token, {
            reason: 'host restarted',
            n_failures: 0,
            n_interruptions: 1,
            next_retry: Date.now() - HOUR,
          }),
        ).toBe(true);
        expect((await store.getRun(1))!.processing).toMatchObject({ n_failures: 0, n_interruptions: 1 });
        const second = await claimOnly(store, 1);
        expect(second.processing).toMatchObject({ attempt: 2, n_failures: 0, n_interruptions: 1 });
        // an ordinary failure leaves the interruption count as it is
        expect(
          await store.failRun(1, second.processing!.token, { reason: 'exit 1', n_failures: 1, next_retry: Date.now() - HOUR }),
        ).toBe(true);
        expect((await store.getRun(1))!.processing).toMatchObject({ n_failures: 1, n_interruptions: 1 });
        // a release (host stopping) counts one more interruption, never a failure
        const third = await claimOnly(store, 1);
        expect(await store.releaseRun(1, third.processing!.token, 'host stopped')).toBe(true);
        expect((await store.getRun(1))!.processing).toMatchObject({ n_failures: 1, n_interruptions: 2 });
        // an override sets the count when given (retry --reset) and keeps it otherwise
        const failed = (await store.getRun(1))!.processing!;
        expect(
          await store.overrideRun(
            1,
            { state: 'failed', token: failed.token },
            { to: 'failed', reason: 'by hand', n_failures: 1, next_retry: Date.now() + HOUR },
            { host: 'ops' },
          ),
        ).toBe(true);
        const kept = (await store.getRun(1))!.processing!;
        expect(kept).toMatchObject({ n_failures: 1, n_interruptions: 2 });
        expect(
          await store.overrideRun(
            1,
            { state: 'failed', token: kept.token },
            { to: 'failed', reason: 'reset', n_failures: 0, n_interruptions: 0, next_retry: Date.now() - HOUR },
            { host: 'ops' },
          ),
        ).toBe(true);
        expect((await store.getRun(1))!.processing).toMatchObject({ n_failures: 0, n_interruptions: 0 });
        // abandoning at max_interruptions stores the count
        const fourth = await claimOnly(store, 1);
        expect(
          await store.abandonRun(1, fourth.processing!.token, { reason: 'gave up', n_failures: 0, n_interruptions: 20 }),
        ).toBe(true);
        expect((await store.getRun(1))!.processing).toMatchObject({ state: 'abandoned', n_failures: 0, n_interruptions: 20 });
      });

      it('every fenced write returns false and changes nothing with a wrong token', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        expect(await store.markBusy(1, doc.processing!.token, { started: Date.now() })).toBe(true);
        await expectAllFencedRefused(store, 1, 'wrong-token');
        await expectAllFencedRefused(store, 1, '');
        // and for a run that does not exist, or was never claimed
        await store.insertRun(run(2));
        await expectAllFencedRefused(store, 2, doc.processing!.token);
        await expectAllFencedRefused(store, 3, doc.processing!.token);
        expect(await store.getRun(3)).toBeNull();
      });

      it('a stale token (run re-claimed since) can no longer write', async () => {
        await store.insertRun(run(1));
        const first = await claimOnly(store, 1, claimer('alpha'));
        const stale = first.processing!.token;
        expect(await store.releaseRun(1, stale, 'handing back')).toBe(true);
        const second = await claimOnly(store, 1, claimer('beta'));
        expect(second.processing!.token).not.toBe(stale);
        await expectAllFencedRefused(store, 1, stale);
        // the current owner still can
        expect(await store.heartbeatRun(1, second.processing!.token)).toBe(true);
      });

      it('the token of a finished attempt cannot write any more', async () => {
        await store.insertRuns([run(1), run(2), run(3), run(4)]);
        const tokens = new Map<number, string>();
        for (const n of [4, 3, 2, 1]) tokens.set(n, (await claimOnlyNewest(store, n)).processing!.token);
        expect(await store.finishRun(4, tokens.get(4)!, output(4, 1))).toBe(true);
        expect(
          await store.failRun(3, tokens.get(3)!, { reason: 'r', n_failures: 1, next_retry: Date.now() + HOUR }),
        ).toBe(true);
        expect(await store.abandonRun(2, tokens.get(2)!, { reason: 'r', n_failures: 1 })).toBe(true);
        expect(await store.releaseRun(1, tokens.get(1)!, 'stop')).toBe(true);
        for (const n of [4, 3, 2, 1]) await expectAllFencedRefused(store, n, tokens.get(n)!);
      });

      it('run_events tell the story claim → busy → fail → claim → busy → done', async () => {
        await store.insertRun(run(1));
        const a1 = await claimOnly(store, 1, claimer('alpha'));
        expect(await store.markBusy(1, a1.processing!.token, { started: Date.now() })).toBe(true);
        expect(
          await store.failRun(1, a1.processing!.token, {
            reason: 'exit 1',
            n_failures: 1,
            next_retry: Date.now() - HOUR,
            exit_code: 1,
          }),
        ).toBe(true);
        const a2 = await claimOnly(store, 1, claimer('beta'));
        expect(await store.markBusy(1, a2.processing!.token, { started: Date.now() })).toBe(true);
        expect(await store.finishRun(1, a2.processing!.token, output(1, 2), { exit_code: 0 })).toBe(true);

        const events = await store.listRunEvents(1);
        expect(events.map((e) => [e.from, e.to, e.attempt, e.host])).toEqual([
          [null, 'considering', 1, 'alpha'],
          ['considering', 'busy', 1, 'alpha'],
          ['busy', 'failed', 1, 'alpha'],
          ['failed', 'considering', 2, 'beta'],
          ['considering', 'busy', 2, 'beta'],
          ['busy', 'done', 2, 'beta'],
        ]);
        for (const e of events) {
          expect(e.number).toBe(1);
          expectNow(e.time);
        }
        expect(events[2]).toMatchObject({ reason: 'exit 1', exit_code: 1 });
        expect(events[5].exit_code).toBe(0);
        for (let i = 1; i < events.length; i += 1) {
          expect(events[i].time).toBeGreaterThanOrEqual(events[i - 1].time);
        }
        expect(await store.listRunEvents(2)).toEqual([]);
        const done = (await store.getRun(1))!;
        expect(done.outputs).toEqual([stamped(output(1, 2))]);
        expect(done.processing).toMatchObject({ state: 'done', attempt: 2, n_failures: 1, host: 'beta' });
      });
    });

    describe('operator and repair writes', () => {
      const by = { host: 'ops' };

      it('overrideRun takes a busy run away: fresh token, owner fenced out, event written by the writer', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        expect(await store.markBusy(1, token, { started: Date.now() })).toBe(true);
        const retryAt = Date.now() + HOUR;
        expect(
          await store.overrideRun(
            1,
            { state: 'busy', token },
            { to: 'failed', reason: 'failed by hand', n_failures: 1, next_retry: retryAt },
            { ...by, detail: { by: 'operator' } },
          ),
        ).toBe(true);
        const after = (await store.getRun(1))!;
        expect(after.processing).toMatchObject({
          state: 'failed',
          reason: 'failed by hand',
          n_failures: 1,
          next_retry: retryAt,
          host: 'alpha',
          attempt: 1,
        });
        expect(after.processing!.token).not.toBe(token);
        // the owner can no longer write anything
        await expectAllFencedRefused(store, 1, token);
        const events = await store.listRunEvents(1);
        expect(events.at(-1)).toMatchObject({
          from: 'busy',
          to: 'failed',
          host: 'ops',
          attempt: 1,
          reason: 'failed by hand',
          detail: { by: 'operator' },
        });
      });

      it('overrideRun writes nothing when the run changed since it was read', async () => {
        await store.insertRun(run(1));
        const doc = await claimOnly(store, 1);
        const token = doc.processing!.token;
        const change = { to: 'abandoned' as const, reason: 'r', n_failures: 0 };
        expect(await store.overrideRun(1, { state: 'busy', token }, change, by)).toBe(false);
        expect(await store.overrideRun(1, { state: 'considering', token: 'other' }, change, by)).toBe(false);
        expect(await store.overrideRun(1, { state: null, token: null }, change, by)).toBe(false);
        expect(await store.overrideRun(2, { state: null, token: null }, change, by)).toBe(false);
        expect((await store.getRun(1))!.processing!.state).toBe('considering');
        expect(await store.listRunEvents(1)).toHaveLength(1);
      });

      it('two writers that saw the same stale run: exactly one override succeeds', async () => {
        await store.insertRun(run(1));
        const token = (await claimOnly(store, 1)).processing!.token;
        const expected = { state: 'considering' as const, token };
        const change = { to: 'failed' as const, reason: 'stale', n_failures: 1, next_retry: Date.now() };
        const results = await Promise.all([
          store.overrideRun(1, expected, change, { host: 'cleaner-1' }),
          store.overrideRun(1, expected, change, { host: 'cleaner-2' }),
        ]);
        expect(results.filter(Boolean)).toHaveLength(1);
        expect((await store.getRun(1))!.processing!.n_failures).toBe(1);
        expect((await store.listRunEvents(1)).filter((e) => e.to === 'failed')).toHaveLength(1);
      });

      it('overrideRun abandons a never-processed run and a done run', async () => {
        await store.insertRuns([run(1), run(2)]);
        const tagged = { to: 'abandoned' as const, reason: 'tagged', n_failures: 0 };
        expect(await store.overrideRun(1, { state: null, token: null }, tagged, by)).toBe(true);
        const abandoned = (await store.getRun(1))!;
        expect(abandoned.processing).toMatchObject({ state: 'abandoned', reason: 'tagged', n_failures: 0 });
        expect(abandoned.processing!.host).toBe('ops');
        expect(abandoned.processing!.next_retry).toBeUndefined();
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({ from: null, to: 'abandoned', host: 'ops' });

        const doc = await claimOnly(store, 2);
        expect(await store.finishRun(2, doc.processing!.token, output(2, 1))).toBe(true);
        const done = (await store.getRun(2))!;
        expect(
          await store.overrideRun(
            2,
            { state: 'done', token: done.processing!.token },
            { to: 'failed', reason: 'reprocess', n_failures: 0, next_retry: Date.now() - HOUR },
            by,
          ),
        ).toBe(true);
        // eligible again at once, and the attempt counter keeps growing
        const again = await claimOnly(store, 2);
        expect(again.processing!.attempt).toBe(2);
      });

      it('claimRun takes the named run only while it is as expected, whatever its tags', async () => {
        await store.insertRuns([run(1, { tags: ['hold'] }), run(2)]);
        expect(await store.claimRun(1, claimer('ops'), { state: 'failed', token: 'x' })).toBeNull();
        const doc = await store.claimRun(1, claimer('ops', 'newest', 77), { state: null, token: null });
        expect(doc?.processing).toMatchObject({ state: 'considering', host: 'ops', pid: 77, attempt: 1 });
        const token = doc!.processing!.token;
        // a forced take-over of a live attempt fences the previous owner out
        const forced = await store.claimRun(1, claimer('ops2'), { state: 'considering', token });
        expect(forced?.processing).toMatchObject({ state: 'considering', host: 'ops2', attempt: 2 });
        await expectAllFencedRefused(store, 1, token);
        expect(await store.claimRun(1, claimer('ops3'), { state: 'considering', token })).toBeNull();
        expect(await store.claimRun(9, claimer('ops3'), { state: null, token: null })).toBeNull();
        expect((await store.listRunEvents(1)).map((e) => `${e.from}>${e.to}@${e.host}`)).toEqual([
          'null>considering@ops',
          'considering>considering@ops2',
        ]);
      });

      it('setRunTag adds and removes a tag once, and hold keeps a run from being claimed', async () => {
        await store.insertRun(run(1, { tags: ['calibration'] }));
        expect((await store.setRunTag(1, 'hold', true))!.tags).toEqual(['calibration', 'hold']);
        expect((await store.setRunTag(1, 'hold', true))!.tags).toEqual(['calibration', 'hold']);
        expect(await store.claimNextRun(claimer())).toBeNull();
        expect((await store.listRuns({ tag: 'hold' })).map((r) => r.number)).toEqual([1]);
        expect((await store.setRunTag(1, 'hold', false))!.tags).toEqual(['calibration']);
        expect(await store.listRuns({ tag: 'hold' })).toEqual([]);
        await claimOnly(store, 1);
        expect(await store.setRunTag(2, 'hold', true)).toBeNull();
      });

      it('listRuns with noOutputs finds done runs whose output was never registered', async () => {
        await store.insertRuns([run(1), run(2)]);
        const d2 = await claimOnly(store, 2);
        expect(await store.finishRun(2, d2.processing!.token, output(2, 1))).toBe(true);
        const d1 = await claimOnly(store, 1);
        expect(await store.finishRun(1, d1.processing!.token, output(1, 1))).toBe(true);
        expect(await store.listRuns({ state: 'done', noOutputs: true })).toEqual([]);
        await store.insertRun(run(3));
        expect((await store.listRuns({ noOutputs: true })).map((r) => r.number)).toEqual([3]);
      });

      it('listStaleRuns finds leases older than the limits, per state', async () => {
        await store.insertRuns([run(1), run(2), run(3)]);
        const c3 = await claimOnly(store, 3);
        const c2 = await claimOnlyNewest(store, 2);
        expect(await store.markBusy(2, c2.processing!.token, { started: Date.now() })).toBe(true);
        expect(c3.processing!.state).toBe('considering');
        await new Promise((resolve) => setTimeout(resolve, 20));
        expect(await store.listStaleRuns({ maxConsideringMs: HOUR, maxBusyMs: HOUR })).toEqual([]);
        expect((await store.listStaleRuns({ maxConsideringMs: 5, maxBusyMs: HOUR })).map((r) => r.number)).toEqual([3]);
        expect((await store.listStaleRuns({ maxConsideringMs: HOUR, maxBusyMs: 5 })).map((r) => r.number)).toEqual([2]);
        // a heartbeat makes it fresh again
        expect(await store.heartbeatRun(2, c2.processing!.token)).toBe(true);
        expect(await store.listStaleRuns({ maxConsideringMs: HOUR, maxBusyMs: 10_000 })).toEqual([]);
      });

      it('markSilentHostsDead marks silent live hosts once and returns them', async () => {
        await store.registerHost(hostDoc('alpha', 'a', { state: 'busy', time: Date.now() - 2 * HOUR }));
        await store.registerHost(hostDoc('beta', 'b', { state: 'idle', time: Date.now() }));
        await store.registerHost(hostDoc('gamma', 'c', { state: 'stopped', time: Date.now() - 2 * HOUR }));
        const marked = await store.markSilentHostsDead(HOUR);
        expect(marked.map((h) => h.host)).toEqual(['alpha']);
        expect(marked[0]!.state).toBe('busy');
        expect((await store.getHost('alpha'))!.state).toBe('dead');
        expect((await store.getHost('beta'))!.state).toBe('idle');
        expect((await store.getHost('gamma'))!.state).toBe('stopped');
        expect(await store.markSilentHostsDead(HOUR)).toEqual([]);
        // a dead host's heartbeat still works when it comes back with the same token
        expect(await store.heartbeatHost('alpha', 'a', { state: 'idle' })).toBe(true);
      });

      it('markSilentHostsDead clears the RUNNING list; forgetDeadHosts removes hosts dead for longer than the limit', async () => {
        await store.registerHost(hostDoc('alpha', 'a', { state: 'busy', time: Date.now() - 3 * HOUR, running: [5, 6] }));
        await store.registerHost(hostDoc('beta', 'b', { state: 'dead', time: Date.now() - 10 * HOUR }));
        await store.registerHost(hostDoc('gamma', 'c', { state: 'stopped', time: Date.now() - 10 * HOUR }));
        await store.markSilentHostsDead(HOUR);
        expect(await store.getHost('alpha')).toMatchObject({ state: 'dead', running: [] });
        expect((await store.forgetDeadHosts(5 * HOUR)).map((h) => h.host)).toEqual(['beta']);
        expect((await store.listHosts()).map((h) => h.host)).toEqual(['alpha', 'gamma']);
        expect(await store.forgetDeadHosts(5 * HOUR)).toEqual([]);
        expect((await store.forgetDeadHosts(2 * HOUR)).map((h) => h.host)).toEqual(['alpha']);
      });
    });

    describe('drain fence (a busy run taken away keeps its attempt until its command is gone)', () => {
      const by = { host: 'ops' };
      const fail = (drainMs?: number) => ({
        to: 'failed' as const,
        reason: 'failed by hand',
        n_failures: 1,
        next_retry: Date.now() - HOUR,
        ...(drainMs !== undefined ? { drainMs } : {}),
      });

      /** Run `number` claimed by alpha (pid 4242), busy, with its process group recorded. */
      async function busyRun(number: number): Promise<{ token: string; time: number }> {
        await store.insertRun(run(number));
        const token = (await claimOnly(store, number)).processing!.token;
        expect(await store.markBusy(number, token, { started: Date.now() })).toBe(true);
        expect(await store.recordProcessGroup(number, token, { pgid: 777, proc_start: 888 })).toBe(true);
        return { token, time: (await store.getRun(number))!.processing!.time };
      }

      it('overrideRun of a busy run records the attempt as draining; no claim takes it until it is confirmed gone', async () => {
        const { token, time } = await busyRun(1);
        expect(await store.overrideRun(1, { state: 'busy', token }, fail(HOUR), by)).toBe(true);
        const taken = (await store.getRun(1))!;
        expect(taken.processing!.draining).toEqual({
          host: 'alpha',
          pid: 4242,
          attempt: 1,
          pgid: 777,
          proc_start: 888,
          until: time + HOUR,
        });
        // the old lease token is never kept where people could see it
        expect(JSON.stringify(taken.processing!.draining)).not.toContain(token);
        // next_retry has passed, but the previous command may still run
        expect(await store.claimNextRun(claimer('beta'))).toBeNull();
        expect(await store.nextRetryAt()).toBe(time + HOUR);
        // only the record naming this host and attempt is cleared
        expect(await store.confirmAttemptGone(1, { host: 'beta', attempt: 1 })).toBe(false);
        expect(await store.confirmAttemptGone(1, { host: 'alpha', attempt: 2 })).toBe(false);
        expect(await store.confirmAttemptGone(2, { host: 'alpha', attempt: 1 })).toBe(false);
        expect(await store.claimNextRun(claimer('beta'))).toBeNull();
        expect(await store.confirmAttemptGone(1, { host: 'alpha', attempt: 1 })).toBe(true);
        expect((await store.getRun(1))!.processing!.draining).toBeUndefined();
        expect(await store.confirmAttemptGone(1, { host: 'alpha', attempt: 1 })).toBe(false);
        expect(await store.nextRetryAt()).toBeLessThan(Date.now());
        const again = await claimOnly(store, 1, claimer('beta'));
        expect(again.processing).toMatchObject({ attempt: 2, host: 'beta' });
        expect(again.processing!.draining).toBeUndefined();
      });

      it('a draining record whose time has passed no longer holds the run back, and the claim clears it', async () => {
        const { token } = await busyRun(1);
        expect(await store.overrideRun(1, { state: 'busy', token }, fail(0), by)).toBe(true);
        expect((await store.getRun(1))!.processing!.draining).toBeDefined();
        const again = await claimOnly(store, 1, claimer('beta'));
        expect(again.processing!.draining).toBeUndefined();
      });

      it('taking a considering run records nothing (no command starts before busy); a later override keeps the record', async () => {
        await store.insertRun(run(1));
        const token = (await claimOnly(store, 1)).processing!.token;
        expect(await store.overrideRun(1, { state: 'considering', token }, fail(HOUR), by)).toBe(true);
        expect((await store.getRun(1))!.processing!.draining).toBeUndefined();

        const busy = await busyRun(2);
        expect(await store.overrideRun(2, { state: 'busy', token: busy.token }, fail(HOUR), by)).toBe(true);
        const failed = (await store.getRun(2))!.processing!;
        // abandon, then retry, of the failed run: the previous attempt may still be stopping
        const abandon = { to: 'abandoned' as const, reason: 'r', n_failures: 1, drainMs: HOUR };
        expect(await store.overrideRun(2, { state: 'failed', token: failed.token }, abandon, by)).toBe(true);
        const abandoned = (await store.getRun(2))!.processing!;
        expect(abandoned.draining).toEqual(failed.draining);
        expect(await store.overrideRun(2, { state: 'abandoned', token: abandoned.token }, fail(HOUR), by)).toBe(true);
        expect((await store.getRun(2))!.processing!.draining).toEqual(failed.draining);
        // run 1 (taken while considering) is eligible, run 2 is not
        expect((await store.claimNextRun(claimer('beta')))?.number).toBe(1);
        expect(await store.claimNextRun(claimer('beta'))).toBeNull();
      });

      it('claimRun of a busy run records the attempt taken over and the note in run_events', async () => {
        const { token, time } = await busyRun(1);
        const note = { reason: 'forced by me@ops', detail: { by: 'operator' } };
        const forced = await store.claimRun(1, claimer('ops', 'newest', 77), { state: 'busy', token }, {
          drainMs: HOUR,
          note,
        });
        expect(forced?.processing).toMatchObject({ state: 'considering', host: 'ops', pid: 77, attempt: 2 });
        expect(forced!.processing!.draining).toEqual({
          host: 'alpha',
          pid: 4242,
          attempt: 1,
          pgid: 777,
          proc_start: 888,
          until: time + HOUR,
        });
        await expectAllFencedRefused(store, 1, token);
        expect((await store.listRunEvents(1)).at(-1)).toMatchObject({
          from: 'busy',
          to: 'considering',
          host: 'ops',
          attempt: 2,
          reason: 'forced by me@ops',
          detail: { by: 'operator' },
        });
        // the new owner's writes leave the record alone; the old owner's confirmation clears it
        expect(await store.heartbeatRun(1, forced!.processing!.token)).toBe(true);
        expect((await store.getRun(1))!.processing!.draining).toBeDefined();
        expect(await store.confirmAttemptGone(1, { host: 'alpha', attempt: 1 })).toBe(true);
        expect((await store.getRun(1))!.processing!.draining).toBeUndefined();
      });

      it('claimRun of a run whose previous attempt still drains keeps the record; an expired one is cleared', async () => {
        const first = await busyRun(1);
        expect(await store.overrideRun(1, { state: 'busy', token: first.token }, fail(HOUR), by)).toBe(true);
        const failed = (await store.getRun(1))!.processing!;
        const claimed = await store.claimRun(1, claimer('ops'), { state: 'failed', token: failed.token }, {
          drainMs: HOUR,
        });
        expect(claimed!.processing!.draining).toEqual(failed.draining);

        const second = await busyRun(2);
        expect(await store.overrideRun(2, { state: 'busy', token: second.token }, fail(0), by)).toBe(true);
        const expired = (await store.getRun(2))!.processing!;
        const fresh = await store.claimRun(2, claimer('ops'), { state: 'failed', token: expired.token }, {
          drainMs: HOUR,
        });
        expect(fresh!.processing!.draining).toBeUndefined();
      });
    });

    describe('invalid processing documents', () => {
      it('listInvalidRuns lists exactly the half-written ones, with problems; an override repairs each; attempts never go back', async (ctx) => {
        if (!writeProcessing) return ctx.skip();
        for (let n = 1; n <= 10; n += 1) await store.insertRun(run(n));
        // Runs 1..10 each get a valid document first (claimed; some busy, failed, done), then are broken.
        const tokens = new Map<number, string>();
        for (let n = 1; n <= 10; n += 1) {
          const doc = (await store.claimRun(n, claimer(), { state: null, token: null }))!;
          tokens.set(n, doc.processing!.token);
        }
        for (const n of [1, 2, 3, 8]) {
          expect(await store.markBusy(n, tokens.get(n)!, { started: Date.now() })).toBe(true);
        }
        for (const n of [4, 6, 9]) {
          expect(await store.failRun(n, tokens.get(n)!, { reason: 'exit 1', n_failures: 1, next_retry: Date.now() + HOUR })).toBe(true);
        }
        expect(await store.finishRun(10, tokens.get(10)!, { location: '/out/10', host: 'alpha', attempt: 1, at: Date.now() })).toBe(true);
        await writeProcessing(1, { token: null });
        await writeProcessing(2, { time: null });
        await writeProcessing(3, { host: '' });
        await writeProcessing(4, { next_retry: null });
        await writeProcessing(5, { state: 'paused' });
        await writeProcessing(6, { attempt: 'seven' });
        await writeProcessing(10, { attempt: 'x' }); // done is final: shown, not repaired

        const invalid = await store.listInvalidRuns();
        expect(invalid.map((r) => r.number)).toEqual([1, 2, 3, 4, 5, 6]);
        expect(invalid.map((r) => r.processing!.problems)).toEqual([
          ['busy without token'],
          ['busy without time'],
          ['busy without host'],
          ['failed without next_retry'],
          ['unknown state string "paused"'],
          ['attempt: not a whole number ≥ 0 (string "seven")'],
        ]);
        expect((await store.getRun(10))!.processing!.problems).toEqual(['attempt: not a whole number ≥ 0 (string "x")']);
        expect((await store.getRun(8))!.processing!.problems).toBeUndefined();

        for (const r of invalid) {
          const p = r.processing!;
          const repaired = await store.overrideRun(
            r.number,
            { state: p.state, token: p.token },
            { to: 'failed', reason: 'repaired', n_failures: p.n_failures, next_retry: Date.now() - HOUR, attempt: Math.max(p.attempt, await store.maxEventAttempt(r.number)) },
            { host: 'cleaner' },
          );
          expect(repaired, `run ${r.number}`).toBe(true);
        }
        expect(await store.listInvalidRuns()).toEqual([]);
        // Run 6's counter was unreadable: the repair took the history's attempt (1), the claim goes past it.
        expect((await store.getRun(6))!.processing!.attempt).toBe(1);
        const again = await store.claimRun(6, claimer(), { state: 'failed', token: (await store.getRun(6))!.processing!.token });
        expect(again!.processing!.attempt).toBe(2);
      });
    });

    describe('nextRetryAt', () => {
      it('is null without failed runs and the earliest next_retry otherwise', async () => {
        expect(await store.nextRetryAt()).toBeNull();
        await store.insertRuns([run(1), run(2), run(3)]);
        expect(await store.nextRetryAt()).toBeNull();
        const t3 = (await claimOnlyNewest(store, 3)).processing!.token;
        const t2 = (await claimOnlyNewest(store, 2)).processing!.token;
        const far = Date.now() + 2 * HOUR;
        const near = Date.now() + HOUR;
        expect(await store.failRun(3, t3, { reason: 'a', n_failures: 1, next_retry: far })).toBe(true);
        expect(await store.nextRetryAt()).toBe(far);
        expect(await store.failRun(2, t2, { reason: 'b', n_failures: 1, next_retry: near })).toBe(true);
        expect(await store.nextRetryAt()).toBe(near);
      });
    });

    describe('hosts', () => {
      it('registers, reads, lists and replaces host documents', async () => {
        expect(await store.getHost('alpha')).toBeNull();
        expect(await store.listHosts()).toEqual([]);
        const alpha = hostDoc('alpha', 'tok-a', {
          disk: { path: '/data', used_percent: 42.5, free_bytes: 1e12 },
          running: [3, 4],
        });
        await store.registerHost(alpha);
        await store.registerHost(hostDoc('beta', 'tok-b'));
        expect(await store.getHost('alpha')).toEqual(alpha);
        expect((await store.listHosts()).map((h) => h.host).sort()).toEqual(['alpha', 'beta']);

        const replacement = hostDoc('alpha', 'tok-a2', { pid: 200, state: 'idle' });
        await store.registerHost(replacement);
        expect(await store.getHost('alpha')).toEqual(replacement);
        expect(await store.listHosts()).toHaveLength(2);
      });

      it('heartbeatHost is fenced by the token and applies the patch', async () => {
        const registered = hostDoc('alpha', 'tok-a', { time: Date.now() - HOUR });
        await store.registerHost(registered);
        expect(
          await store.heartbeatHost('alpha', 'tok-a', {
            state: 'busy',
            running: [1, 2],
            slots: 3,
            disk: { path: '/d', used_percent: 90, free_bytes: 5 },
          }),
        ).toBe(true);
        const h = (await store.getHost('alpha'))!;
        expectNow(h.time);
        expect(h).toMatchObject({
          state: 'busy',
          running: [1, 2],
          slots: 3,
          disk: { path: '/d', used_percent: 90, free_bytes: 5 },
          pid: registered.pid,
          token: 'tok-a',
          started: registered.started,
          version: registered.version,
        });

        expect(await store.heartbeatHost('alpha', 'tok-a')).toBe(true);
        expect((await store.getHost('alpha'))!.state).toBe('busy');

        const before = await store.getHost('alpha');
        expect(await store.heartbeatHost('alpha', 'someone-else', { state: 'dead' })).toBe(false);
        expect(await store.getHost('alpha')).toEqual(before);
        expect(await store.heartbeatHost('nobody', 'tok-a')).toBe(false);
        expect(await store.getHost('nobody')).toBeNull();

        // a paused host says why; resuming clears the reason
        expect(await store.heartbeatHost('alpha', 'tok-a', { state: 'paused', paused_reason: 'log_dir unwritable' })).toBe(
          true,
        );
        expect(await store.getHost('alpha')).toMatchObject({ state: 'paused', paused_reason: 'log_dir unwritable' });
        expect(await store.heartbeatHost('alpha', 'tok-a', { state: 'idle', paused_reason: null })).toBe(true);
        const resumed = (await store.getHost('alpha'))!;
        expect(resumed.state).toBe('idle');
        expect(resumed.paused_reason).toBeUndefined();

        await store.registerHost(hostDoc('alpha', 'tok-new'));
        expect(await store.heartbeatHost('alpha', 'tok-a', { state: 'idle' })).toBe(false);
        expect((await store.getHost('alpha'))!.token).toBe('tok-new');
      });
    });

    describe('monitor history', () => {
      const MINUTE = 60_000;
      /** A minute boundary half an hour ago: samples at `base + k minutes + s seconds` land in minute k. */
      const base = () => monitorMinute(Date.now()) - 30 * MINUTE;
      const sample = (host: string, time: number, extra: Partial<MonitorSample> = {}): MonitorSample => ({
        host,
        time,
        state: 'idle',
        slots: 2,
        running: [],
        ...extra,
      });

      it('lists what was recorded, every field kept, ordered by host then time', async () => {
        const t = base();
        const disk = { path: '/data', used_percent: 42.5, free_bytes: 1e12 };
        const samples = [
          sample('beta', t + 5_000),
          sample('alpha', t + MINUTE + 7_000, { state: 'busy', running: [12, 13], disk }),
          sample('alpha', t + 3_000, { state: 'disk_full', slots: 4, disk }),
        ];
        for (const s of samples) await store.recordMonitor(s);
        expect(await store.listMonitor({ sinceMs: t - HOUR })).toEqual([samples[2], samples[1], samples[0]]);
      });

      it('keeps one sample per host and minute: a later sample of the minute replaces the earlier', async () => {
        const t = base();
        await store.recordMonitor(sample('alpha', t + 10_000, { state: 'busy', running: [1], disk: undefined }));
        const disk = { path: '/d', used_percent: 1, free_bytes: 2 };
        await store.recordMonitor(sample('alpha', t + 20_000, { state: 'busy', running: [1], disk }));
        const last = sample('alpha', t + 50_000, { state: 'stopped', running: [] });
        await store.recordMonitor(last);
        await store.recordMonitor(sample('beta', t + 30_000)); // same minute, other host
        await store.recordMonitor(sample('alpha', t + MINUTE)); // next minute
        const listed = await store.listMonitor({ sinceMs: t - HOUR });
        expect(listed).toEqual([last, sample('alpha', t + MINUTE), sample('beta', t + 30_000)]);
        expect(listed[0]!.disk).toBeUndefined(); // replaced, not merged
      });

      it('selects by host and by time taken', async () => {
        const t = base();
        for (let k = 0; k < 5; k += 1) {
          await store.recordMonitor(sample('alpha', t + k * MINUTE));
          await store.recordMonitor(sample('beta', t + k * MINUTE + 1));
        }
        const taken = (list: MonitorSample[]) => list.map((s) => `${s.host}@${s.time - t}`);
        expect(taken(await store.listMonitor({ host: 'beta', sinceMs: t + 3 * MINUTE }))).toEqual([
          'beta@180001',
          'beta@240001',
        ]);
        expect(taken(await store.listMonitor({ sinceMs: t + 3 * MINUTE + 1 }))).toEqual([
          'alpha@240000',
          'beta@180001',
          'beta@240001',
        ]);
        expect(await store.listMonitor({ host: 'gamma', sinceMs: t - HOUR })).toEqual([]);
        expect(await store.listMonitor({ sinceMs: t + HOUR })).toEqual([]);
      });

      it('never lists samples older than 7 days', async () => {
        const now = Date.now();
        await store.recordMonitor(sample('alpha', now - MONITOR_RETENTION_MS - 5 * MINUTE));
        const kept = sample('alpha', now - MONITOR_RETENTION_MS + HOUR);
        await store.recordMonitor(kept);
        expect(await store.listMonitor({ sinceMs: 0 })).toEqual([kept]);
      });

      it('writes no sample on a host heartbeat: sampling is the caller’s, by recordMonitor only', async () => {
        await store.registerHost(hostDoc('alpha', 'tok-a'));
        expect(await store.heartbeatHost('alpha', 'tok-a', { state: 'busy', running: [1] })).toBe(true);
        expect(await store.listMonitor({ sinceMs: 0 })).toEqual([]);
      });

      it('refuses a sample time or a query start that is not a time', async () => {
        await expect(store.recordMonitor(sample('alpha', Number.NaN))).rejects.toBeInstanceOf(UsageError);
        await expect(store.listMonitor({ sinceMs: Number.POSITIVE_INFINITY })).rejects.toBeInstanceOf(UsageError);
        expect(await store.listMonitor({ sinceMs: 0 })).toEqual([]);
      });
    });

    describe('operator log', () => {
      it('appends and lists newest first with filters', async () => {
        expect(await store.listLog()).toEqual([]);
        const base = Date.now() - HOUR;
        await store.appendLog({ time: base + 1, host: 'a', user: 'runwarden@a', priority: 0, message: 'debug' });
        await store.appendLog({
          time: base + 2,
          host: 'a',
          user: 'runwarden@a',
          priority: 3,
          message: 'run 7 failed',
          number: 7,
        });
        await store.appendLog({ time: base + 3, host: 'b', user: 'runwarden@b', priority: 1, message: 'info' });
        await store.appendLog({ host: 'b', user: 'runwarden@b', priority: 4, message: 'fatal', number: 8 });

        const all = await store.listLog();
        expect(all.map((e) => e.message)).toEqual(['fatal', 'info', 'run 7 failed', 'debug']);
        expectNow(all[0].time);
        expect(all[0]).toMatchObject({ host: 'b', user: 'runwarden@b', priority: 4, number: 8 });
        expect(all[3]).toEqual({ time: base + 1, host: 'a', user: 'runwarden@a', priority: 0, message: 'debug' });

        expect((await store.listLog({ limit: 2 })).map((e) => e.message)).toEqual(['fatal', 'info']);
        expect((await store.listLog({ minPriority: 3 })).map((e) => e.message)).toEqual(['fatal', 'run 7 failed']);
        expect((await store.listLog({ minPriority: 1 })).map((e) => e.message)).toEqual([
          'fatal',
          'info',
          'run 7 failed',
        ]);
        expect((await store.listLog({ number: 7 })).map((e) => e.message)).toEqual(['run 7 failed']);
        expect(await store.listLog({ number: 7, minPriority: 4 })).toEqual([]);
        expect((await store.listLog({ minPriority: 0, limit: 1 })).map((e) => e.message)).toEqual(['fatal']);
        expect((await store.listLog({ sinceMs: base + 2 })).map((e) => e.message)).toEqual(['fatal', 'info', 'run 7 failed']);
        expect((await store.listLog({ sinceMs: base + 2, number: 7 })).map((e) => e.message)).toEqual(['run 7 failed']);
        expect((await store.listLog({ sinceMs: base + 3, limit: 1 })).map((e) => e.message)).toEqual(['fatal']);
      });

      it('refuses a start of the log query that is not a time', async () => {
        await expect(store.listLog({ sinceMs: Number.NaN })).rejects.toBeInstanceOf(UsageError);
        await expect(store.listLog({ sinceMs: 1e20 })).rejects.toBeInstanceOf(UsageError);
      });
    });

    // ------------------------------------------------------------------------------------------- tasks
    describe.skipIf(!options.tasks)('tasks of a pipeline (issue 14)', () => {
      const FETCH: TaskSpec = { stage: 'fetch', needs: [] };
      const PROCESS: TaskSpec = { stage: 'process', needs: ['fetch'] };
      const COMPRESS: TaskSpec = { stage: 'compress', needs: ['process'] };
      const CHECK: TaskSpec = { stage: 'check', needs: ['fetch'] };
      /** fetch → process → compress, and check beside process (it needs only fetch). */
      const PIPELINE = [FETCH, PROCESS, COMPRESS, CHECK];
      const EVERY: StageClaim[] = [
        { stage: 'fetch', depth: 0 },
        { stage: 'process', depth: 1 },
        { stage: 'compress', depth: 2 },
        { stage: 'check', depth: 1 },
      ];
      const claim = (stages: StageClaim[] = EVERY, host = 'alpha', extra: Partial<ClaimRequest> = {}) =>
        store.claimNextRun({ ...claimer(host), stages, ...extra });
      const key = (number: number, stage: string) => ({ number, stage });
      /** Claims the task `number`/`stage` (it must be what the claim takes), marks it busy and finishes it. */
      async function complete(number: number, stage: string, stages: StageClaim[] = EVERY): Promise<void> {
        const doc = await claim(stages);
        expect([doc?.number, doc?.stage]).toEqual([number, stage]);
        const token = doc!.processing!.token;
        expect(await store.markBusy(key(number, stage), token, { started: Date.now() })).toBe(true);
        expect(await store.finishRun(key(number, stage), token, output(number, 1))).toBe(true);
      }
      const pendingCounts = (over: Partial<TaskCounts> = {}): TaskCounts => ({
        pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0, ...over,
      });

      it('inserts a run with its tasks, pending in pipeline order, viewed from process by default or any stage', async () => {
        const doc = await store.insertRun(run(1), PIPELINE);
        expect(doc.stage).toBe('process');
        expect(doc.processing).toBeUndefined();
        expect(doc.tasks).toEqual(PIPELINE.map((t) => ({ stage: t.stage, needs: t.needs })));
        expect((await store.getRun(1, 'compress'))!.stage).toBe('compress');
        // a run without a process task is viewed from its first
        await store.insertRun(run(2), [{ stage: 'a', needs: [] }, { stage: 'b', needs: ['a'] }]);
        expect((await store.getRun(2))!.stage).toBe('a');
        expect((await store.getRun(2, 'nope'))!.stage).toBeUndefined();
        // insertRuns with a function gives each run its own tasks
        await store.insertRuns([run(3), run(4)], (r) => (r.number === 3 ? [FETCH] : []));
        expect((await store.getRun(3))!.tasks).toEqual([{ stage: 'fetch', needs: [] }]);
        expect((await store.getRun(4))!.tasks).toEqual([]);
        expect(await store.listUnstagedRuns(10)).toEqual([]);
      });

      it('never claims a downstream task before every task it needs is done; then the deeper task first', async () => {
        await store.insertRun(run(1), PIPELINE);
        const fetch = await claim();
        expect([fetch!.number, fetch!.stage, fetch!.processing!.state]).toEqual([1, 'fetch', 'considering']);
        expect(await claim()).toBeNull();
        expect(await store.failRun(key(1, 'fetch'), fetch!.processing!.token, { reason: 'x', n_failures: 1, next_retry: Date.now() - HOUR })).toBe(true);
        // failed upstream: downstream simply waits (neither failed nor blocked)
        expect((await store.getRun(1, 'process'))!.blocked).toBeUndefined();
        await complete(1, 'fetch');
        // process (depth 1) goes before check (depth 1, listed later) only by order of the request? No: same
        // priority, depth and start; either is right. Take both, then compress once process is done.
        const a = await claim();
        const b = await claim();
        expect(new Set([a!.stage, b!.stage])).toEqual(new Set(['process', 'check']));
        expect(await claim()).toBeNull();
        const processDoc = a!.stage === 'process' ? a! : b!;
        expect(await store.finishRun(key(1, 'process'), processDoc.processing!.token, output(1, 1))).toBe(true);
        const compress = await claim();
        expect([compress!.number, compress!.stage]).toEqual([1, 'compress']);
        expect(compress!.tasks!.map((t) => [t.stage, t.processing?.state])).toEqual([
          ['fetch', 'done'], ['process', 'done'], ['compress', 'considering'], ['check', 'considering'],
        ]);
      });

      it('orders by priority, then depth (finish runs before starting new ones), then start per order', async () => {
        const TWO = [FETCH, { stage: 'process', needs: ['fetch'] }];
        const stages = EVERY.slice(0, 2);
        await store.insertRuns([run(1), run(2), run(3), run(4, { priority: 1 })], TWO);
        await complete(4, 'fetch', stages); // priority first
        await complete(4, 'process', stages);
        await complete(3, 'fetch', stages); // newest start among equals
        await complete(3, 'process', stages); // deeper first: run 3's process before run 2's fetch
        await complete(2, 'fetch', stages);
        await complete(2, 'process', stages);
        // oldest first when asked
        await store.insertRuns([run(11), run(12)], TWO);
        const oldest = await claim(stages, 'alpha', { order: 'oldest' });
        expect([oldest!.number, oldest!.stage]).toEqual([1, 'fetch']);
        expect(await store.finishRun(key(1, 'fetch'), oldest!.processing!.token, output(1, 1))).toBe(true);
        const deeper = await claim(stages, 'alpha', { order: 'oldest' });
        expect([deeper!.number, deeper!.stage]).toEqual([1, 'process']);
      });

      it('a retry-due failed task competes in the same order as a pending one', async () => {
        await store.insertRuns([run(1), run(2)], [FETCH, PROCESS]);
        await complete(2, 'fetch');
        const process = await claim();
        expect([process!.number, process!.stage]).toEqual([2, 'process']);
        expect(await store.failRun(key(2, 'process'), process!.processing!.token, { reason: 'x', n_failures: 1, next_retry: Date.now() - HOUR })).toBe(true);
        // run 2's failed process task (depth 1) goes before run 1's pending fetch
        const again = await claim();
        expect([again!.number, again!.stage, again!.processing!.attempt]).toEqual([2, 'process', 2]);
        expect(await store.failRun(key(2, 'process'), again!.processing!.token, { reason: 'x', n_failures: 2, next_retry: Date.now() + HOUR })).toBe(true);
        expect([(await claim())!.number]).toEqual([1]);
        expect(await store.nextRetryAt(['process'])).toBeGreaterThan(Date.now());
        expect(await store.nextRetryAt(['fetch'])).toBeNull();
        expect(await store.nextRetryAt()).toBe(await store.nextRetryAt(['process', 'fetch']));
      });

      it('claims only the stages asked for', async () => {
        await store.insertRun(run(1), [FETCH, CHECK]);
        expect(await claim([{ stage: 'check', depth: 1 }])).toBeNull();
        expect(await claim([])).toBeNull();
        await complete(1, 'fetch', [{ stage: 'fetch', depth: 0 }]);
        expect(await claim([{ stage: 'fetch', depth: 0 }])).toBeNull();
        expect((await claim([{ stage: 'check', depth: 1 }]))!.stage).toBe('check');
        // a claim without stages is the first wave's: the process stage only
        await store.insertRun(run(2), [FETCH]);
        expect(await store.claimNextRun(claimer())).toBeNull();
      });

      it('selection: tags, not_tags, modes, number range, params (typed), require_end; all selectors must pass', async () => {
        await store.insertRuns(
          [
            run(1, { tags: ['muon', 'blind'], mode: 'physics', params: { target: 'Al', pass: 2, live: true } }),
            run(2, { tags: ['muon'], mode: 'calib', params: { target: 'Al', pass: '2' }, end: T0 }),
            run(3, { tags: [], mode: 'physics', params: { target: 'Ti', live: false }, end: T0 }),
          ],
          [FETCH],
        );
        const only = async (...select: RunSelector[]): Promise<number[]> => {
          const taken: number[] = [];
          for (;;) {
            const doc = await claim([{ stage: 'fetch', depth: 0, select }]);
            if (!doc) break;
            taken.push(doc.number);
            // put it back for the next question
            expect(await store.overrideRun(key(doc.number, 'fetch'), { state: 'considering', token: doc.processing!.token }, { to: 'failed', reason: 'back', n_failures: 0, next_retry: Date.now() + HOUR }, { host: 'test' })).toBe(true);
          }
          // make them all eligible again
          for (const n of taken) {
            const p = (await store.getRun(n, 'fetch'))!.processing!;
            expect(await store.overrideRun(key(n, 'fetch'), { state: p.state, token: p.token }, { to: 'failed', reason: 'back', n_failures: 0, next_retry: Date.now() - HOUR }, { host: 'test' })).toBe(true);
          }
          return taken.sort();
        };
        expect(await only({ tags: ['muon'] })).toEqual([1, 2]);
        expect(await only({ tags: ['muon', 'blind'] })).toEqual([1]);
        expect(await only({ not_tags: ['blind'] })).toEqual([2, 3]);
        expect(await only({ modes: ['physics'] })).toEqual([1, 3]);
        expect(await only({ modes: [] })).toEqual([]);
        expect(await only({ min_number: 2 })).toEqual([2, 3]);
        expect(await only({ max_number: 2, min_number: 2 })).toEqual([2]);
        expect(await only({ params: { target: 'Al' } })).toEqual([1, 2]);
        expect(await only({ params: { pass: 2 } })).toEqual([1]); // "2" is not 2
        expect(await only({ params: { pass: '2' } })).toEqual([2]);
        expect(await only({ params: { live: true } })).toEqual([1]);
        expect(await only({ params: { live: false } })).toEqual([3]);
        expect(await only({ params: { target: 'Al', live: true } })).toEqual([1]);
        expect(await only({ require_end: true })).toEqual([2, 3]);
        expect(await only({ tags: ['muon'] }, { require_end: true })).toEqual([2]);
        expect(await only({})).toEqual([1, 2, 3]);
      });

      it('hold:<stage> holds only that stage’s task; hold holds them all', async () => {
        await store.insertRun(run(1, { tags: ['hold:check'] }), [FETCH, CHECK, PROCESS]);
        await complete(1, 'fetch');
        expect((await claim())!.stage).toBe('process');
        expect(await claim()).toBeNull();
        await store.setRunTag(1, 'hold:check', false);
        await store.setRunTag(1, 'hold', true);
        await store.insertRun(run(2), [FETCH]);
        expect((await claim())!.number).toBe(2);
        await store.setRunTag(1, 'hold', false);
        expect((await claim())!.stage).toBe('check');
      });

      it('abandoning a task blocks every task below it that is not finished or live; a retry upstream unblocks them', async () => {
        await store.insertRun(run(1), PIPELINE);
        await complete(1, 'fetch');
        const check = await claim([{ stage: 'check', depth: 1 }]); // live: never blocked
        const process = await claim();
        expect(process!.stage).toBe('process');
        expect(await store.abandonRun(key(1, 'process'), process!.processing!.token, { reason: 'corrupt input', n_failures: 3 })).toBe(true);
        const compress = (await store.getRun(1, 'compress'))!;
        expect(compress.blocked).toMatchObject({ stage: 'process', reason: 'corrupt input' });
        expectNow(compress.blocked!.time);
        expect(compress.processing).toBeUndefined();
        expect((await store.getRun(1, 'check'))!.blocked).toBeUndefined();
        expect((await store.getRun(1, 'fetch'))!.blocked).toBeUndefined();
        expect(await claim()).toBeNull();
        expect((await store.listRuns({ state: 'blocked' })).map((r) => [r.number, r.stage])).toEqual([[1, 'compress']]);
        expect((await store.listRuns({ state: 'pending' })).map((r) => r.stage)).toEqual([]);
        expect((await store.countTasksByStage()).compress).toEqual(pendingCounts({ blocked: 1 }));
        // the block is recorded in the abandon's event
        expect((await store.listRunEvents(1, 'process')).at(-1)).toMatchObject({ to: 'abandoned', detail: { blocked: ['compress'] } });
        expect(await store.listRunEvents(1, 'compress')).toEqual([]);
        // an operator's retry of the upstream task clears the block; compress waits for process again
        const p = (await store.getRun(1, 'process'))!.processing!;
        expect(await store.overrideRun(key(1, 'process'), { state: 'abandoned', token: p.token }, { to: 'failed', reason: 'retry', n_failures: 0, next_retry: Date.now() - HOUR }, { host: 'ops' })).toBe(true);
        expect((await store.getRun(1, 'compress'))!.blocked).toBeUndefined();
        expect((await store.listRunEvents(1, 'process')).at(-1)).toMatchObject({ to: 'failed', detail: { unblocked: ['compress'] } });
        expect(await store.finishRun(key(1, 'check'), check!.processing!.token, output(1, 1))).toBe(true);
        await complete(1, 'process');
        await complete(1, 'compress');
        expect((await store.getRun(1))!.outputs.map((o) => o.stage)).toEqual(['fetch', 'check', 'process', 'compress']);
      });

      it('an override to abandoned blocks transitively (also a never-claimed task); a failed task below is blocked too', async () => {
        await store.insertRuns([run(1), run(2)], PIPELINE);
        expect(await store.overrideRun(key(1, 'fetch'), { state: null, token: null }, { to: 'abandoned', reason: 'bad run', n_failures: 0 }, { host: 'ops' })).toBe(true);
        const one = (await store.getRun(1))!;
        expect(one.tasks!.map((t) => [t.stage, t.blocked?.stage ?? null, t.blocked?.reason ?? null])).toEqual([
          ['fetch', null, null], ['process', 'fetch', 'bad run'], ['compress', 'fetch', 'bad run'], ['check', 'fetch', 'bad run'],
        ]);
        expect(one.blocked).toMatchObject({ stage: 'fetch' });
        // run 2: process failed (retry due) when compress... no: fetch done, process failed, then fetch abandoned
        await complete(2, 'fetch');
        const process = await claim([{ stage: 'process', depth: 1 }]);
        expect(await store.failRun(key(2, 'process'), process!.processing!.token, { reason: 'x', n_failures: 1, next_retry: Date.now() - HOUR })).toBe(true);
        const f = (await store.getRun(2, 'fetch'))!.processing!;
        expect(await store.overrideRun(key(2, 'fetch'), { state: 'done', token: f.token }, { to: 'abandoned', reason: 'recalled', n_failures: 0 }, { host: 'ops' })).toBe(true);
        expect((await store.getRun(2, 'process'))!.blocked).toMatchObject({ stage: 'fetch', reason: 'recalled' });
        expect(await claim()).toBeNull();
        expect(await store.nextRetryAt()).toBeNull();
        expect(await store.countTasksByStage()).toEqual({
          fetch: pendingCounts({ abandoned: 2 }),
          process: pendingCounts({ blocked: 2 }),
          compress: pendingCounts({ blocked: 2 }),
          check: pendingCounts({ blocked: 2 }),
        });
      });

      it('fenced writes name the task: a token of one stage never writes another stage’s task', async () => {
        await store.insertRun(run(1), [FETCH, { stage: 'other', needs: [] }]);
        const a = await claim([{ stage: 'fetch', depth: 0 }]);
        const b = await claim([{ stage: 'other', depth: 0 }], 'beta');
        expect([a!.stage, b!.stage]).toEqual(['fetch', 'other']);
        const ta = a!.processing!.token;
        const tb = b!.processing!.token;
        expect(ta).not.toBe(tb);
        const before = await store.getRun(1, 'other');
        const now = Date.now();
        const other = key(1, 'other');
        expect(await store.heartbeatRun(other, ta)).toBe(false);
        expect(await store.markBusy(other, ta, { started: now })).toBe(false);
        expect(await store.recordProcessGroup(other, ta, { pgid: 1 })).toBe(false);
        expect(await store.finishRun(other, ta, output(1, 1))).toBe(false);
        expect(await store.failRun(other, ta, { reason: 'z', n_failures: 1, next_retry: now })).toBe(false);
        expect(await store.abandonRun(other, ta, { reason: 'z', n_failures: 1 })).toBe(false);
        expect(await store.releaseRun(other, ta, 'z')).toBe(false);
        expect(await store.overrideRun(other, { state: 'considering', token: ta }, { to: 'failed', reason: 'z', n_failures: 0, next_retry: now }, { host: 'ops' })).toBe(false);
        // a bare number names the process task, which this run does not have
        expect(await store.heartbeatRun(1, ta)).toBe(false);
        expect(await store.getRun(1, 'other')).toEqual(before);
        expect(await store.listRunEvents(1, 'other')).toHaveLength(1);
        // each owner writes its own task
        expect(await store.markBusy(key(1, 'fetch'), ta, { started: now })).toBe(true);
        expect(await store.markBusy(other, tb, { started: now })).toBe(true);
        expect(await store.finishRun(other, tb, output(1, 1))).toBe(true);
        expect((await store.getRun(1, 'fetch'))!.processing!.state).toBe('busy');
        expect((await store.getRun(1))!.outputs).toEqual([{ ...output(1, 1), stage: 'other' }]);
        expect((await store.listRunEvents(1, 'fetch')).map((e) => [e.stage, e.to, e.host])).toEqual([
          ['fetch', 'considering', 'alpha'], ['fetch', 'busy', 'alpha'],
        ]);
        expect(await store.maxEventAttempt(key(1, 'other'))).toBe(1);
        expect(await store.maxEventAttempt(1)).toBe(0);
      });

      it('concurrent claimers of one run’s two independent stages each get one, never the same', async () => {
        await store.insertRun(run(1), [FETCH, { stage: 'other', needs: [] }]);
        const both: StageClaim[] = [{ stage: 'fetch', depth: 0 }, { stage: 'other', depth: 0 }];
        const docs = await Promise.all([claim(both, 'alpha'), claim(both, 'beta'), claim(both, 'gamma')]);
        const taken = docs.filter((d) => d !== null);
        expect(taken.map((d) => d!.stage).sort()).toEqual(['fetch', 'other']);
        expect(new Set(taken.map((d) => d!.processing!.token)).size).toBe(2);
        for (const doc of taken) {
          expect(await store.heartbeatRun(key(1, doc!.stage!), doc!.processing!.token)).toBe(true);
        }
      });

      it('exclude: a task names one stage, a bare number the whole run', async () => {
        await store.insertRun(run(1), [FETCH, { stage: 'other', needs: [] }]);
        const both: StageClaim[] = [{ stage: 'fetch', depth: 0 }, { stage: 'other', depth: 0 }];
        expect(await claim(both, 'alpha', { exclude: [1] })).toBeNull();
        const doc = await claim(both, 'alpha', { exclude: [key(1, 'fetch')] });
        expect(doc!.stage).toBe('other');
      });

      it('views and counts: one view per task, filtered by stage, state, host; counts per stage and over all', async () => {
        await store.insertRuns([run(1), run(2)], [FETCH, PROCESS]);
        await complete(2, 'fetch');
        const p2 = await claim([{ stage: 'process', depth: 1 }], 'beta');
        expect((await store.listRuns()).map((r) => [r.number, r.stage])).toEqual([
          [2, 'fetch'], [2, 'process'], [1, 'fetch'], [1, 'process'],
        ]);
        expect((await store.listRuns({ stage: 'process' })).map((r) => [r.number, r.processing?.state])).toEqual([
          [2, 'considering'], [1, undefined],
        ]);
        expect((await store.listRuns({ state: 'pending' })).map((r) => [r.number, r.stage])).toEqual([[1, 'fetch'], [1, 'process']]);
        expect((await store.listRuns({ host: 'beta' })).map((r) => [r.number, r.stage])).toEqual([[2, 'process']]);
        expect((await store.listRuns({ state: 'done', stage: 'fetch' })).map((r) => r.number)).toEqual([2]);
        expect((await store.listRuns({ limit: 1 })).map((r) => [r.number, r.stage])).toEqual([[2, 'fetch']]);
        const view = (await store.listRuns({ host: 'beta' }))[0];
        expect(view.processing!.token).toBe(p2!.processing!.token);
        expect(view.tasks!.map((t) => t.stage)).toEqual(['fetch', 'process']);
        expect(await store.countRunsByState()).toEqual({ pending: 2, considering: 1, busy: 0, done: 1, failed: 0, abandoned: 0 });
        expect(await store.countTasksByStage()).toEqual({
          fetch: pendingCounts({ pending: 1, done: 1 }),
          process: pendingCounts({ pending: 1, considering: 1 }),
        });
        expect((await store.listStaleRuns({ maxConsideringMs: -HOUR, maxBusyMs: -HOUR })).map((r) => [r.number, r.stage])).toEqual([[2, 'process']]);
        expect((await store.listRunEvents(2)).map((e) => e.stage)).toEqual(['fetch', 'fetch', 'fetch', 'process']);
      });

      it('createTasks gives a run its missing tasks once (idempotent), and a task below a done one is ready', async () => {
        await store.insertRun(run(1), [FETCH]);
        await complete(1, 'fetch');
        expect(await store.createTasks(1, [FETCH, PROCESS])).toBe(1);
        expect(await store.createTasks(1, [FETCH, PROCESS])).toBe(0);
        expect(await store.createTasks(99, [FETCH])).toBe(0);
        expect((await store.getRun(1))!.tasks!.map((t) => t.stage)).toEqual(['fetch', 'process']);
        expect((await claim())!.stage).toBe('process');
        // a task created below an abandoned one is blocked at once
        await store.insertRun(run(2), [FETCH]);
        expect(await store.overrideRun(key(2, 'fetch'), { state: null, token: null }, { to: 'abandoned', reason: 'gone', n_failures: 0 }, { host: 'ops' })).toBe(true);
        expect(await store.createTasks(2, [FETCH, PROCESS])).toBe(1);
        expect((await store.getRun(2, 'process'))!.blocked).toMatchObject({ stage: 'fetch', reason: 'gone' });
      });

      it('runs inserted by another tool are unstaged until tasks are created for them', async (ctx) => {
        if (!insertUnstaged) return ctx.skip();
        await insertUnstaged({ number: 5, start: T0 });
        await insertUnstaged({ number: 3, start: T0 });
        expect((await store.listUnstagedRuns(10)).map((r) => [r.number, r.tasks])).toEqual([[3, []], [5, []]]);
        expect((await store.listUnstagedRuns(1)).map((r) => r.number)).toEqual([3]);
        expect(await store.countRunsByState()).toMatchObject({ pending: 2 });
        expect((await store.listRuns({ state: 'pending' })).map((r) => [r.number, r.stage])).toEqual([[5, undefined], [3, undefined]]);
        expect(await claim()).toBeNull();
        expect(await store.createTasks(3, [FETCH])).toBe(1);
        expect((await store.listUnstagedRuns(10)).map((r) => r.number)).toEqual([5]);
        expect((await claim())!.number).toBe(3);
        // a run given no task at all is staged all the same
        expect(await store.createTasks(5, [])).toBe(0);
        expect(await store.listUnstagedRuns(10)).toEqual([]);
      });
    });

    describe('watchNewRuns', () => {
      it('calls back after insertRun and insertRuns, and stops after unsubscribe', async () => {
        let a = 0;
        let b = 0;
        const stopA = store.watchNewRuns(() => {
          a += 1;
        });
        const stopB = store.watchNewRuns(() => {
          b += 1;
        });
        try {
          await store.insertRun(run(1));
          await waitFor(() => a > 0 && b > 0, 'a wake-up after insertRun');

          let seenA = a;
          await store.insertRuns([run(2), run(3)]);
          await waitFor(() => a > seenA, 'a wake-up after insertRuns');

          stopA();
          stopA(); // idempotent
          seenA = a;
          // B keeps watching: once B has seen two more inserts, A would have seen them too
          for (const n of [4, 5]) {
            const seenB = b;
            await store.insertRun(run(n));
            await waitFor(() => b > seenB, `B's wake-up for run ${n}`);
          }
          expect(a).toBe(seenA);
        } finally {
          stopA();
          stopB();
        }
      });

      it('calls back when a run becomes eligible by hand: an override to failed, a hold released', async () => {
        await store.insertRuns([run(1), run(2, { tags: ['hold'] })]);
        const token = (await claimOnly(store, 1)).processing!.token;
        let calls = 0;
        const stop = store.watchNewRuns(() => {
          calls += 1;
        });
        try {
          const change = { to: 'failed' as const, reason: 'retry', n_failures: 0, next_retry: Date.now() };
          expect(await store.overrideRun(1, { state: 'considering', token }, change, { host: 'ops' })).toBe(true);
          await waitFor(() => calls > 0, 'a wake-up after an override to failed');
          const seen = calls;
          await store.setRunTag(2, 'hold', false);
          await waitFor(() => calls > seen, 'a wake-up after a hold was released');
        } finally {
          stop();
        }
      });

      it('survives a callback that throws', async () => {
        let calls = 0;
        const stop = store.watchNewRuns(() => {
          calls += 1;
          throw new Error('callback trouble');
        });
        try {
          await store.insertRun(run(1));
          await waitFor(() => calls >= 1, 'the first wake-up');
          const seen = calls;
          await store.insertRun(run(2));
          await waitFor(() => calls > seen, 'a wake-up after the callback threw');
        } finally {
          stop();
        }
      });
    });
  });
}

function output(number: number, attempt: number): { location: string; host: string; attempt: number; at: number } {
  return { location: `/processed/${String(number).padStart(6, '0')}`, host: 'alpha', attempt, at: T0 + attempt };
}

/** Claims and checks that the claimed run is `number` (the newest eligible one). */
async function claimOnlyNewest(store: RunStore, number: number): Promise<RunDoc> {
  return claimOnly(store, number, claimer('alpha', 'newest'));
}

/** Every fenced operation with `token` on `number` returns false and leaves run and events untouched. */
async function expectAllFencedRefused(store: RunStore, number: number, token: string): Promise<void> {
  const before = await store.getRun(number);
  const eventsBefore = await store.listRunEvents(number);
  const now = Date.now();
  expect(await store.heartbeatRun(number, token)).toBe(false);
  expect(await store.markBusy(number, token, { started: now, targets: ['t'] })).toBe(false);
  expect(await store.recordProcessGroup(number, token, { pgid: 1, proc_start: 1 })).toBe(false);
  expect(await store.finishRun(number, token, output(number, 99))).toBe(false);
  expect(
    await store.failRun(number, token, { reason: 'zombie', n_failures: 99, next_retry: now - HOUR }),
  ).toBe(false);
  expect(await store.abandonRun(number, token, { reason: 'zombie', n_failures: 99 })).toBe(false);
  expect(await store.releaseRun(number, token, 'zombie')).toBe(false);
  expect(await store.getRun(number)).toEqual(before);
  expect(await store.listRunEvents(number)).toEqual(eventsBefore);
}
