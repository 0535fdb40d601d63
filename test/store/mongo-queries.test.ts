// The MongoDB backend's filter, sort and update documents, checked for their meaning without a server: mingo
// (an independent implementation of the query language, see mongo/mingo-oracle.ts) evaluates them on
// in-memory run documents, and plain TypeScript states what a daemon should get.

import { describe, expect, it } from 'vitest';

import { REPAIRABLE_STATES } from '../../src/store/decode.js';
import { hostFromDoc, monitorDoc, monitorFromDoc, runFromDoc } from '../../src/store/mongo/documents.js';
import {
  abandonUpdate,
  claimFilter,
  claimSort,
  claimUpdate,
  COUNT_TASKS,
  expectationFilter,
  failUpdate,
  fencedFilter,
  finishUpdate,
  heartbeatUpdate,
  invalidProcessingFilter,
  hostFenceFilter,
  hostHeartbeatUpdate,
  listMonitorFilter,
  listRunsFilter,
  logFilter,
  LOG_SORT,
  MARK_DEAD_UPDATE,
  markBusyUpdate,
  markDeadFilter,
  monitorFilter,
  MONITOR_SORT,
  nextRetrySort,
  nextRetryFilter,
  overrideUpdate,
  processGroupUpdate,
  releaseUpdate,
  setTagUpdate,
  silentHostsFilter,
  staleFilter,
  type Filter,
} from '../../src/store/mongo/queries.js';
import type { ClaimRequest, RunExpectation, SelectionOrder } from '../../src/store/run-store.js';
import { aggregate, findOneAndUpdate, matches, select } from './mongo/mingo-oracle.js';

type Doc = Record<string, unknown>;

const NOW = Date.UTC(2024, 5, 1, 12, 0, 0);
const T0 = Date.UTC(2024, 0, 1);
const MINUTE = 60_000;
const HOUR = 3_600_000;
const at = (ms: number): Date => new Date(ms);

/** A run with one `process` task never claimed (needing nothing, so ready). */
function pending(number: number, extra: Doc = {}): Doc {
  return {
    number,
    start: at(T0 + number * 1000),
    tags: [],
    priority: 0,
    params: {},
    outputs: [],
    tasks: { process: { needs: [], ready: true } },
    stages: ['process'],
    staged: true,
    ...extra,
  };
}

/** A run whose `process` task holds `processing`'s fields. */
function processed(number: number, processing: Doc, extra: Doc = {}): Doc {
  return pending(number, {
    tasks: {
      process: {
        needs: [],
        ready: true,
        host: 'alpha',
        pid: 100,
        token: `tok-${number}`,
        attempt: 1,
        time: at(NOW - MINUTE),
        n_failures: 0,
        ...processing,
      },
    },
    ...extra,
  });
}

/** The `process` task of a run document (where the first wave kept `processing`). */
function task(doc: Doc | null | undefined): Doc {
  return ((doc?.tasks as Doc | undefined)?.process ?? {}) as Doc;
}

/** Every kind of run a daemon meets; the comment says whether a fresh daemon may take it. */
function fixture(): Doc[] {
  return [
    pending(1), // yes
    pending(2, { priority: 5 }), // yes, first by priority
    pending(3, { tags: ['hold'] }), // no: held
    pending(4, { tags: ['calibration', 'abandon'], priority: 9 }), // no: tagged abandon
    pending(5, { tags: ['holdover'] }), // yes: only the exact tag holds
    processed(6, { state: 'failed', next_retry: at(NOW - HOUR), n_failures: 2 }), // yes: retry due
    processed(7, { state: 'failed', next_retry: at(NOW + HOUR), n_failures: 1, priority: 50 }), // no: not yet
    processed(8, { state: 'failed' }), // no: failed without next_retry never comes back by itself
    processed(9, { state: 'failed', next_retry: NOW - HOUR }), // no: a number is not a date (another tool)
    processed(10, { state: 'considering' }), // no
    processed(11, { state: 'busy' }), // no
    processed(12, { state: 'done' }), // no
    processed(13, { state: 'abandoned', next_retry: at(NOW - HOUR) }), // no
    processed(14, { state: 'failed', next_retry: at(NOW - HOUR) }, { tags: ['hold'], priority: 99 }), // no: held
    processed(15, { state: 'weird-state' }), // no: unknown state
    pending(16, { start: at(T0 + 16_000), priority: 5 }), // yes
    processed(17, { state: 'failed', next_retry: at(NOW) }), // yes: due exactly now
    pending(18, { tasks: { process: { needs: [], ready: true, state: null } } }), // yes: a null state is pending
  ];
}

/** What a fresh daemon may take, written plainly (DESIGN §4 "Selection"). */
function eligible(doc: Doc, now: number): boolean {
  const tags = Array.isArray(doc.tags) ? doc.tags : [doc.tags];
  if (tags.includes('hold') || tags.includes('abandon')) return false;
  const p = task(doc);
  const state = p && typeof p === 'object' ? p.state : undefined;
  if (state === undefined || state === null) return true;
  return state === 'failed' && p!.next_retry instanceof Date && (p!.next_retry as Date).getTime() <= now;
}

function ms(value: unknown): number {
  return value instanceof Date ? value.getTime() : Number(value);
}

/** The order in which eligible runs are taken: priority desc, then start and number per `order`. */
function expectedOrder(docs: Doc[], order: SelectionOrder, now: number): number[] {
  const sign = order === 'oldest' ? 1 : -1;
  return docs
    .filter((d) => eligible(d, now))
    .sort(
      (a, b) =>
        Number(b.priority) - Number(a.priority) ||
        sign * (ms(a.start) - ms(b.start)) ||
        sign * (Number(a.number) - Number(b.number)),
    )
    .map((d) => Number(d.number));
}

function claimer(host = 'alpha', order: SelectionOrder = 'newest', pid = 4242): ClaimRequest {
  return { host, pid, order };
}

/** Claims until nothing is eligible, with the production filter, sort and update; returns the numbers. */
function claimAll(docs: Doc[], order: SelectionOrder, now: number, filter: Filter = claimFilter()): number[] {
  const taken: number[] = [];
  for (let i = 0; i < docs.length + 1; i += 1) {
    const doc = findOneAndUpdate(docs, filter, claimUpdate(claimer('alpha', order), `t${i}`), now, claimSort(order));
    if (!doc) break;
    taken.push(Number(doc.number));
  }
  return taken;
}

/** A small deterministic random generator (mulberry32), so a failing case can be replayed. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomRuns(seed: number, count: number): Doc[] {
  const rnd = random(seed);
  const pick = <T>(items: T[]): T => items[Math.floor(rnd() * items.length)];
  const docs: Doc[] = [];
  for (let n = 1; n <= count; n += 1) {
    const extra: Doc = {
      priority: pick([-1, 0, 0, 0, 1, 2]),
      start: at(T0 + pick([0, 1000, 2000, 3000])),
      tags: pick([[], [], ['hold'], ['abandon'], ['x', 'hold'], ['holdover']]),
    };
    const kind = pick(['pending', 'pending', 'failed', 'failed', 'considering', 'busy', 'done', 'abandoned']);
    if (kind === 'pending') {
      docs.push(pending(n, extra));
    } else {
      const retry = pick([at(NOW - HOUR), at(NOW - 1), at(NOW), at(NOW + 1), at(NOW + HOUR), undefined]);
      docs.push(processed(n, { state: kind, ...(retry ? { next_retry: retry } : {}) }, extra));
    }
  }
  return docs;
}

describe('claim: filter and sort', () => {
  it('takes exactly the eligible runs, in priority then newest order', () => {
    const docs = fixture();
    expect(expectedOrder(docs, 'newest', NOW)).toEqual([16, 2, 18, 17, 6, 5, 1]);
    expect(claimAll(docs, 'newest', NOW)).toEqual([16, 2, 18, 17, 6, 5, 1]);
  });

  it('takes them oldest first when asked', () => {
    const docs = fixture();
    expect(claimAll(docs, 'oldest', NOW)).toEqual(expectedOrder(fixture(), 'oldest', NOW));
    expect(expectedOrder(fixture(), 'oldest', NOW)).toEqual([2, 16, 1, 5, 6, 17, 18]);
  });

  it('agrees with the plain rule on random sets of runs, for both orders and several clocks', () => {
    for (let seed = 1; seed <= 25; seed += 1) {
      for (const order of ['newest', 'oldest'] as const) {
        for (const now of [NOW - HOUR, NOW, NOW + HOUR]) {
          const docs = randomRuns(seed, 30);
          expect(claimAll(docs, order, now), `seed ${seed}, ${order}, now ${now - NOW}`).toEqual(
            expectedOrder(randomRuns(seed, 30), order, now),
          );
        }
      }
    }
  });

  it('is noticed when wrong: without the date guard a numeric next_retry would be taken', () => {
    const unguarded = claimFilter();
    const branch = (unguarded.$or as Filter[])[1];
    delete branch['tasks.process.next_retry'];
    const docs = [processed(9, { state: 'failed', next_retry: NOW - HOUR })];
    expect(select(docs, claimFilter(), NOW)).toEqual([]);
    expect(select(docs, unguarded, NOW).map((d) => d.number)).toEqual([9]);
  });

  it('is noticed when wrong: a filter that forgets the abandon tag takes run 4 first', () => {
    const wrong = { ...claimFilter(), tags: { $nin: ['hold'] } };
    expect(claimAll(fixture(), 'newest', NOW, wrong)[0]).toBe(4);
  });

  it('uses the server clock: $$NOW in the filter, no client time', () => {
    const text = JSON.stringify(claimFilter());
    expect(text).toContain('"$$NOW"');
    expect(text).not.toMatch(/\d{4}-\d\d-\d\dT/);
  });
});

describe('claim: update', () => {
  it('sets considering, owner, fresh token, attempt + 1, server time; keeps n_failures; clears the outcome', () => {
    const docs = [
      processed(6, {
        state: 'failed',
        attempt: 3,
        n_failures: 2,
        next_retry: at(NOW - HOUR),
        reason: 'exit 1',
        exit_code: 1,
        signal: 'SIGKILL',
        started: at(NOW - 2 * HOUR),
        ended: at(NOW - HOUR),
        pgid: 77,
        proc_start: 123,
        targets: ['raw'],
        resources: { cores: 4 },
      }, { name: 'r6', params: { a: 1 }, event_seq: 4 }),
    ];
    const after = findOneAndUpdate(docs, claimFilter(), claimUpdate(claimer('beta', 'newest', 9), 'tok-new'), NOW);
    expect(after).not.toBeNull();
    expect(task(after!)).toEqual({
      needs: [],
      ready: true,
      previous_state: 'failed',
      state: 'considering',
      event_detail: null,
      host: 'beta',
      pid: 9,
      token: 'tok-new',
      attempt: 4,
      time: at(NOW),
      n_failures: 2,
      // no previous attempt left to drain (a busy run taken by process --force would be recorded here)
      draining: null,
    });
    expect(after!.event_seq).toBe(5);
    expect(runFromDoc(after!)).toMatchObject({ number: 6, name: 'r6', params: { a: 1 } });
  });

  it('starts a never-processed run at attempt 1 with no failures', () => {
    const docs = [pending(1)];
    const after = findOneAndUpdate(docs, claimFilter(), claimUpdate(claimer(), 'tok'), NOW, claimSort('newest'));
    expect(runFromDoc(after!).processing).toEqual({
      state: 'considering',
      host: 'alpha',
      pid: 4242,
      token: 'tok',
      attempt: 1,
      time: NOW,
      n_failures: 0,
      n_interruptions: 0,
    });
    expect(task(after!).previous_state).toBeNull();
    expect(after!.event_seq).toBe(1);
  });

  it('stores client values verbatim even when they look like field paths', () => {
    const docs = [pending(1)];
    const after = findOneAndUpdate(docs, claimFilter(), claimUpdate(claimer('$HOSTNAME'), '$token'), NOW);
    expect(task(after!)).toMatchObject({ host: '$HOSTNAME', token: '$token' });
  });
});

describe('fenced writes', () => {
  const token = 'tok-owner';
  function candidates(): Doc[] {
    return [
      processed(1, { state: 'considering', token }),
      processed(1, { state: 'busy', token }),
      processed(1, { state: 'busy', token: 'tok-other' }),
      processed(1, { state: 'done', token }),
      processed(1, { state: 'failed', token }),
      processed(1, { state: 'abandoned', token }),
      processed(1, { state: 'busy' }, {}),
      pending(1),
      processed(2, { state: 'busy', token }),
    ];
  }

  it("match only the owner's token while the attempt is considering or busy", () => {
    const docs = candidates();
    const hits = docs.map((d) => matches(d, fencedFilter(1, token), NOW));
    expect(hits).toEqual([true, true, false, false, false, false, false, false, false]);
    expect(docs.filter((d) => matches(d, fencedFilter(1, ''), NOW))).toEqual([]);
    const noToken = processed(1, { state: 'busy' });
    delete task(noToken).token;
    expect(matches(noToken, fencedFilter(1, ''), NOW)).toBe(false);
  });

  function owned(state = 'considering', extra: Doc = {}): Doc[] {
    return [processed(1, { state, token, time: at(NOW - HOUR), ...extra }, { event_seq: 1 })];
  }

  it('heartbeat moves only the lease time, to the server clock', () => {
    const docs = owned('busy', { started: at(NOW - HOUR) });
    const before = structuredClone(docs[0]);
    const after = findOneAndUpdate(docs, fencedFilter(1, token), heartbeatUpdate(), NOW)!;
    expect(after).toEqual({ ...before, tasks: { process: { ...task(before), time: at(NOW) } } });
  });

  it('markBusy sets busy, started, targets and resources, and counts an event', () => {
    const docs = owned('considering', { targets: ['old'] });
    const after = findOneAndUpdate(
      docs,
      fencedFilter(1, token),
      markBusyUpdate({ started: NOW - 5, targets: ['raw', 'peaks'], resources: { cores: 4 } }),
      NOW,
    )!;
    expect(task(after)).toMatchObject({
      previous_state: 'considering',
      state: 'busy',
      started: at(NOW - 5),
      targets: ['raw', 'peaks'],
      resources: { cores: 4 },
      time: at(NOW),
      token,
    });
    expect(after.event_seq).toBe(2);
    const docs2 = owned('considering', { targets: ['old'] });
    const bare = findOneAndUpdate(docs2, fencedFilter(1, token), markBusyUpdate({ started: NOW }), NOW)!;
    expect(task(bare).targets).toBeUndefined();
  });

  it('recordProcessGroup sets pgid and proc_start and keeps state, pid and the event counter', () => {
    const update = processGroupUpdate({ pgid: 5001, proc_start: 9 });
    const after = findOneAndUpdate(owned('busy'), fencedFilter(1, token), update, NOW)!;
    expect(task(after)).toMatchObject({ state: 'busy', pid: 100, pgid: 5001, proc_start: 9, time: at(NOW) });
    expect(after.event_seq).toBe(1);
  });

  it('finishRun sets done and ended now, drops next_retry, appends the output (even to malformed outputs)', () => {
    const output = { location: '/p/000001', host: 'alpha', attempt: 1, at: T0 + 1 };
    const docs = owned('busy', { next_retry: at(NOW) });
    docs[0].outputs = [{ location: '/p/old', host: 'beta', attempt: 0, at: at(T0) }];
    const after = findOneAndUpdate(docs, fencedFilter(1, token), finishUpdate(output), NOW)!;
    expect(task(after)).toMatchObject({ previous_state: 'busy', state: 'done', ended: at(NOW), time: at(NOW) });
    expect(task(after).next_retry).toBeUndefined();
    expect(runFromDoc(after).outputs).toEqual([{ location: '/p/old', host: 'beta', attempt: 0, at: T0 }, { ...output, stage: 'process' }]);

    const malformed = owned('busy');
    malformed[0].outputs = 'not a list';
    const fixed = findOneAndUpdate(malformed, fencedFilter(1, token), finishUpdate(output), NOW)!;
    expect(runFromDoc(fixed).outputs).toEqual([{ ...output, stage: 'process' }]);
  });

  it('failRun records the outcome with the caller’s next_retry and the server’s ended', () => {
    const after = findOneAndUpdate(
      owned('busy', { exit_code: 5 }),
      fencedFilter(1, token),
      failUpdate({ reason: '$HOME is unset', n_failures: 3, next_retry: NOW + HOUR, signal: 'SIGTERM' }),
      NOW,
    )!;
    expect(runFromDoc(after).processing).toMatchObject({
      state: 'failed',
      reason: '$HOME is unset',
      n_failures: 3,
      next_retry: NOW + HOUR,
      ended: NOW,
      time: NOW,
      signal: 'SIGTERM',
    });
    expect(task(after).exit_code).toBeUndefined();
  });

  it('abandonRun is terminal without next_retry', () => {
    const after = findOneAndUpdate(
      owned('considering', { next_retry: at(NOW) }),
      fencedFilter(1, token),
      abandonUpdate({ reason: 'gave up', n_failures: 10, exit_code: 3 }),
      NOW,
    )!;
    expect(runFromDoc(after).processing).toMatchObject({ state: 'abandoned', reason: 'gave up', exit_code: 3 });
    expect(task(after).next_retry).toBeUndefined();
  });

  it('releaseRun makes the run due at once by the server clock and keeps n_failures', () => {
    const docs = owned('busy', { n_failures: 2 });
    const after = findOneAndUpdate(docs, fencedFilter(1, token), releaseUpdate('host stopping'), NOW)!;
    expect(runFromDoc(after).processing).toMatchObject({
      state: 'failed',
      n_failures: 2,
      reason: 'host stopping',
      next_retry: NOW,
      ended: NOW,
    });
    // and a fresh daemon takes it again at that very instant
    expect(select(docs, claimFilter(), NOW).map((d) => d.number)).toEqual([1]);
  });

  it('counts interruptions apart: a release adds one, failRun sets it only when given, old documents read 0', () => {
    // a document written before interruptions were counted has no field: it reads as 0 and a release makes it 1
    const old = owned('busy', { n_failures: 2 });
    expect(runFromDoc(old[0]).processing!.n_interruptions).toBe(0);
    const released = findOneAndUpdate(old, fencedFilter(1, token), releaseUpdate('host stopping'), NOW)!;
    expect(runFromDoc(released).processing).toMatchObject({ n_failures: 2, n_interruptions: 1 });
    const again = findOneAndUpdate(
      owned('busy', { n_interruptions: 4 }),
      fencedFilter(1, token),
      releaseUpdate('host stopping'),
      NOW,
    )!;
    expect(runFromDoc(again).processing!.n_interruptions).toBe(5);
    const garbled = findOneAndUpdate(
      owned('busy', { n_interruptions: 'x' }),
      fencedFilter(1, token),
      releaseUpdate('host stopping'),
      NOW,
    )!;
    expect(runFromDoc(garbled).processing!.n_interruptions).toBe(1);

    const kept = findOneAndUpdate(
      owned('busy', { n_interruptions: 3 }),
      fencedFilter(1, token),
      failUpdate({ reason: 'exit 1', n_failures: 1, next_retry: NOW }),
      NOW,
    )!;
    expect(runFromDoc(kept).processing).toMatchObject({ n_failures: 1, n_interruptions: 3 });
    const set = findOneAndUpdate(
      owned('busy', { n_interruptions: 3 }),
      fencedFilter(1, token),
      failUpdate({ reason: 'restarted', n_failures: 0, n_interruptions: 4, next_retry: NOW }),
      NOW,
    )!;
    expect(runFromDoc(set).processing).toMatchObject({ n_failures: 0, n_interruptions: 4 });
    const abandoned = findOneAndUpdate(
      owned('busy'),
      fencedFilter(1, token),
      abandonUpdate({ reason: 'gave up', n_failures: 0, n_interruptions: 20 }),
      NOW,
    )!;
    expect(runFromDoc(abandoned).processing!.n_interruptions).toBe(20);
    const reset = findOneAndUpdate(
      owned('failed', { n_interruptions: 20 }),
      expectationFilter(1, { state: 'failed', token }),
      overrideUpdate({ to: 'failed', reason: 'reset', n_failures: 0, n_interruptions: 0, next_retry: NOW }, 'f', 'ops'),
      NOW,
    )!;
    expect(runFromDoc(reset).processing!.n_interruptions).toBe(0);
    // a claim keeps the count
    const claimed = findOneAndUpdate(
      [processed(1, { state: 'failed', next_retry: at(NOW - MINUTE), n_interruptions: 2 })],
      claimFilter(),
      claimUpdate(claimer(), 'new'),
      NOW,
    )!;
    expect(runFromDoc(claimed).processing).toMatchObject({ state: 'considering', n_interruptions: 2 });
  });

  it('stores every client string verbatim, even one that looks like a field path or variable', () => {
    const write = (update: Filter[], state = 'busy'): Doc =>
      findOneAndUpdate(owned(state), fencedFilter(1, token), update, NOW)!;
    const busy = write(markBusyUpdate({ started: NOW, targets: ['$raw', '$$NOW'] }), 'considering');
    expect(task(busy)).toMatchObject({ targets: ['$raw', '$$NOW'] });
    expect(task(write(releaseUpdate('$SIGTERM: host stopping', { signal: '$sig' })))).toMatchObject({
      reason: '$SIGTERM: host stopping',
      signal: '$sig',
    });
    expect(task(write(abandonUpdate({ reason: '$$ROOT', n_failures: 1 })))).toMatchObject({ reason: '$$ROOT' });
    const output = { location: '$out', host: '$h', attempt: 1, at: T0 };
    expect(runFromDoc(write(finishUpdate(output))).outputs).toEqual([{ ...output, stage: 'process' }]);
    const override = overrideUpdate({ to: 'abandoned', reason: '$why', n_failures: 0 }, '$tok', '$ops');
    const unprocessed = expectationFilter(1, { state: null, token: null });
    const abandoned = findOneAndUpdate([pending(1)], unprocessed, override, NOW)!;
    expect(task(abandoned)).toMatchObject({ reason: '$why', token: '$tok', host: '$ops' });
  });

  it('a refused write changes nothing', () => {
    const docs = owned('busy');
    const before = structuredClone(docs);
    const zombie = failUpdate({ reason: 'z', n_failures: 9, next_retry: 0 });
    expect(findOneAndUpdate(docs, fencedFilter(1, 'zombie'), zombie, NOW)).toBeNull();
    expect(docs).toEqual(before);
  });
});

describe('operator and repair writes', () => {
  it('expectationFilter matches only a run still as the caller saw it', () => {
    const docs = [pending(1), processed(1, { state: 'busy', token: 'a' }), processed(1, { state: 'done', token: 'a' })];
    const hits = (number: number, expected: RunExpectation): boolean[] =>
      docs.map((d) => matches(d, expectationFilter(number, expected), NOW));
    expect(hits(1, { state: null, token: null })).toEqual([true, false, false]);
    expect(hits(1, { state: 'busy', token: 'a' })).toEqual([false, true, false]);
    expect(hits(1, { state: 'busy', token: 'b' })).toEqual([false, false, false]);
    expect(hits(2, { state: null, token: null })).toEqual([false, false, false]);
  });

  it('overrideRun of a busy run: fresh token, owner host and attempt kept, next_retry as given', () => {
    const docs = [processed(1, { state: 'busy', token: 'a', attempt: 2, exit_code: 1, signal: 'SIGINT' })];
    const after = findOneAndUpdate(
      docs,
      expectationFilter(1, { state: 'busy', token: 'a' }),
      overrideUpdate({ to: 'failed', reason: 'by hand', n_failures: 1, next_retry: NOW + HOUR }, 'fresh', 'ops'),
      NOW,
    )!;
    const p = runFromDoc(after).processing!;
    expect(p).toMatchObject({ state: 'failed', token: 'fresh', host: 'alpha', attempt: 2, next_retry: NOW + HOUR });
    expect(p).toMatchObject({ reason: 'by hand', n_failures: 1, ended: NOW, time: NOW });
    expect(p.exit_code).toBeUndefined();
    expect(p.signal).toBeUndefined();
    expect(matches(after, fencedFilter(1, 'a'), NOW)).toBe(false);
  });

  it('overrideRun of a never-processed run names the writer as host, pid 0, attempt 0', () => {
    const docs = [pending(1)];
    const after = findOneAndUpdate(
      docs,
      expectationFilter(1, { state: null, token: null }),
      overrideUpdate({ to: 'abandoned', reason: 'tagged', n_failures: 0 }, 'fresh', 'ops'),
      NOW,
    )!;
    expect(runFromDoc(after).processing).toEqual({
      state: 'abandoned',
      host: 'ops',
      pid: 0,
      token: 'fresh',
      attempt: 0,
      time: NOW,
      ended: NOW,
      n_failures: 0,
      n_interruptions: 0,
      reason: 'tagged',
    });
    expect(() => overrideUpdate({ to: 'failed', reason: 'r', n_failures: 0 }, 't', 'ops')).toThrow(/next_retry/);
    expect(after.wake_at).toBeUndefined();
  });

  it('stamps the wake-up field with the server time when a run is failed by hand or a tag removed', () => {
    const failed = findOneAndUpdate(
      [processed(1, { state: 'busy', token: 'a' })],
      expectationFilter(1, { state: 'busy', token: 'a' }),
      overrideUpdate({ to: 'failed', reason: 'r', n_failures: 1, next_retry: NOW }, 'fresh', 'ops'),
      NOW,
    )!;
    expect(failed.wake_at).toEqual(at(NOW));
    const docs = [pending(2, { tags: ['hold'] })];
    expect(findOneAndUpdate(docs, { number: 2 }, setTagUpdate('x', true), NOW)!.wake_at).toBeUndefined();
    expect(findOneAndUpdate(docs, { number: 2 }, setTagUpdate('hold', false), NOW)!.wake_at).toEqual(at(NOW));
  });

  it('staleFilter selects exactly the leases older than the limits by the server clock', () => {
    const limits = { maxConsideringMs: MINUTE, maxBusyMs: 2 * MINUTE };
    const docs = [
      processed(1, { state: 'considering', time: at(NOW - MINUTE - 1) }), // stale
      processed(2, { state: 'considering', time: at(NOW - MINUTE) }), // exactly at the limit: not yet
      processed(3, { state: 'busy', time: at(NOW - 2 * MINUTE - 1) }), // stale
      processed(4, { state: 'busy', time: at(NOW - MINUTE - 1) }), // busy may be quiet longer
      processed(5, { state: 'done', time: at(NOW - HOUR) }),
      processed(6, { state: 'failed', time: at(NOW - HOUR) }),
      processed(7, { state: 'considering', time: NOW - HOUR }), // a number, not a date: not ours to judge
      processed(8, { state: 'busy', time: null }),
      pending(9),
    ];
    const stale = select(docs, staleFilter(limits), NOW, { number: 1 }).map((d) => d.number);
    const plain = docs
      .filter((d) => {
        const p = task(d) as Doc | undefined;
        if (!p || !(p.time instanceof Date)) return false;
        const age = NOW - p.time.getTime();
        return (p.state === 'considering' && age > MINUTE) || (p.state === 'busy' && age > 2 * MINUTE);
      })
      .map((d) => d.number);
    expect(stale).toEqual([1, 3]);
    expect(stale).toEqual(plain);
    expect(JSON.stringify(staleFilter(limits))).toContain('"$$NOW"');
  });

  it('setTagUpdate adds a tag once and removes it; a malformed tags field becomes a list', () => {
    const docs = [pending(1, { tags: ['calibration'] })];
    findOneAndUpdate(docs, { number: 1 }, setTagUpdate('hold', true), NOW);
    findOneAndUpdate(docs, { number: 1 }, setTagUpdate('hold', true), NOW);
    expect(docs[0].tags).toEqual(['calibration', 'hold']);
    expect(select(docs, claimFilter(), NOW)).toEqual([]);
    findOneAndUpdate(docs, { number: 1 }, setTagUpdate('hold', false), NOW);
    expect(docs[0].tags).toEqual(['calibration']);
    const odd = [pending(2, { tags: 'oops' })];
    findOneAndUpdate(odd, { number: 2 }, setTagUpdate('$hold', true), NOW);
    expect(odd[0].tags).toEqual(['$hold']);
  });
});

describe('listing and counting', () => {
  const docs = [
    pending(1),
    processed(2, { state: 'busy', host: 'alpha' }),
    processed(3, { state: 'done', host: 'beta' }, { outputs: [{ location: '/p/3', host: 'beta', attempt: 1 }] }),
    processed(4, { state: 'done', host: 'alpha' }),
    processed(5, { state: 'failed', host: 'beta', next_retry: at(NOW + 2 * HOUR) }, { tags: ['hold'] }),
    processed(6, { state: 'failed', host: 'beta', next_retry: at(NOW + HOUR) }),
    processed(7, { state: 'failed', host: 'beta', next_retry: at(NOW + 3 * HOUR) }),
    processed(8, { state: 'abandoned', next_retry: at(NOW - HOUR) }),
    pending(9, { tags: ['hold', 'x'], outputs: 'garbage' }),
  ];
  const numbers = (filter: Filter): unknown[] => select(docs, filter, NOW, { number: -1 }).map((d) => d.number);

  it('filters by state, host, tag and missing outputs', () => {
    expect(numbers(listRunsFilter({}))).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1]);
    expect(numbers(listRunsFilter({ state: 'pending' }))).toEqual([9, 1]);
    expect(numbers(listRunsFilter({ state: 'done' }))).toEqual([4, 3]);
    expect(numbers(listRunsFilter({ host: 'alpha' }))).toEqual([8, 4, 2]);
    expect(numbers(listRunsFilter({ host: 'beta', state: 'failed' }))).toEqual([7, 6, 5]);
    expect(numbers(listRunsFilter({ tag: 'hold' }))).toEqual([9, 5]);
    expect(numbers(listRunsFilter({ state: 'done', noOutputs: true }))).toEqual([4]);
    expect(numbers(listRunsFilter({ noOutputs: true }))).toEqual([9, 8, 7, 6, 5, 4, 2, 1]);
  });

  it('finds the earliest next_retry among failed runs that are not held', () => {
    const first = select(docs, nextRetryFilter(), NOW, nextRetrySort())[0];
    expect(first.number).toBe(6);
  });

  it('counts per processing state, pending as null', () => {
    const rows = aggregate(docs, COUNT_TASKS, NOW);
    expect(rows.every((r) => r._id.stage === 'process' && r._id.blocked === false)).toBe(true);
    const counts = Object.fromEntries(rows.map((r) => [String(r._id.state), r.n]));
    expect(counts).toEqual({ null: 2, busy: 1, done: 2, failed: 3, abandoned: 1 });
  });
});

describe('hosts and log', () => {
  function host(name: string, state: string, time: unknown, token = `tok-${name}`): Doc {
    return { host: name, pid: 1, token, state, time, started: at(T0), version: '0.1.0', slots: 1, running: [] };
  }

  it('silent hosts are the live ones quiet for longer than the limit by the server clock', () => {
    const hosts = [
      host('a', 'busy', at(NOW - HOUR - 1)),
      host('b', 'idle', at(NOW - HOUR)),
      host('c', 'stopped', at(NOW - 2 * HOUR)),
      host('d', 'dead', at(NOW - 2 * HOUR)),
      host('e', 'starting', at(NOW - 2 * HOUR)),
      host('f', 'disk_full', NOW - 2 * HOUR),
    ];
    expect(select(hosts, silentHostsFilter(HOUR), NOW, { host: 1 }).map((h) => h.host)).toEqual(['a', 'e']);
  });

  it('marking dead is conditional on the token and time that were read', () => {
    const read = host('a', 'busy', at(NOW - HOUR - 1));
    const hosts = [host('a', 'busy', at(NOW))];
    expect(findOneAndUpdate(hosts, markDeadFilter('a', read.token, read.time), MARK_DEAD_UPDATE, NOW)).toBeNull();
    const same = [structuredClone(read)];
    const marked = findOneAndUpdate(same, markDeadFilter('a', read.token, read.time), MARK_DEAD_UPDATE, NOW);
    expect(marked?.state).toBe('dead');
    const other = [host('a', 'busy', read.time, 'tok-new')];
    expect(findOneAndUpdate(other, markDeadFilter('a', read.token, read.time), MARK_DEAD_UPDATE, NOW)).toBeNull();
  });

  it('a host heartbeat is fenced by the token and stamps the server time', () => {
    const hosts = [host('a', 'idle', at(NOW - HOUR))];
    const intruder = hostHeartbeatUpdate({ state: 'dead' });
    expect(findOneAndUpdate(hosts, hostFenceFilter('a', 'wrong'), intruder, NOW)).toBeNull();
    const disk = { path: '/d', used_percent: 90, free_bytes: 5 };
    const after = findOneAndUpdate(
      hosts,
      hostFenceFilter('a', 'tok-a'),
      hostHeartbeatUpdate({ state: 'busy', running: [1, 2], slots: 3, disk }),
      NOW,
    )!;
    expect(after).toMatchObject({ state: 'busy', running: [1, 2], slots: 3, disk, time: at(NOW), token: 'tok-a' });

    const paused = findOneAndUpdate(
      hosts,
      hostFenceFilter('a', 'tok-a'),
      hostHeartbeatUpdate({ state: 'paused', paused_reason: '$log_dir unwritable' }),
      NOW,
    )!;
    expect(hostFromDoc(paused)).toMatchObject({ state: 'paused', paused_reason: '$log_dir unwritable' });
    const resumed = findOneAndUpdate(
      hosts,
      hostFenceFilter('a', 'tok-a'),
      hostHeartbeatUpdate({ state: 'idle', paused_reason: null }),
      NOW,
    )!;
    expect(resumed.state).toBe('idle');
    expect(resumed).not.toHaveProperty('paused_reason');
  });

  it('the log filter selects by priority and run, newest first', () => {
    const log = [
      { _id: 1, time: at(T0 + 1), priority: 0, number: 7 },
      { _id: 2, time: at(T0 + 2), priority: 3, number: 7 },
      { _id: 3, time: at(T0 + 2), priority: 4 },
    ];
    const ids = (filter: Filter): unknown[] => select(log, filter, NOW, LOG_SORT).map((e) => e._id);
    expect(ids(logFilter({}))).toEqual([3, 2, 1]);
    expect(ids(logFilter({ minPriority: 3 }))).toEqual([3, 2]);
    expect(ids(logFilter({ number: 7 }))).toEqual([2, 1]);
    expect(ids(logFilter({ number: 7, minPriority: 4 }))).toEqual([]);
    expect(ids(logFilter({ sinceMs: T0 + 2 }))).toEqual([3, 2]);
    expect(ids(logFilter({ sinceMs: T0 + 2, minPriority: 4 }))).toEqual([3]);
  });
});

describe('monitor history', () => {
  const disk = { path: '/d', used_percent: 91.5, free_bytes: 7 };
  const docs: Doc[] = [
    monitorDoc({ host: 'beta', time: NOW - 2 * MINUTE + 5, state: 'idle', slots: 1, running: [] }, NOW - 2 * MINUTE),
    monitorDoc({ host: 'alpha', time: NOW - MINUTE + 9, state: 'busy', slots: 2, running: [4], disk }, NOW - MINUTE),
    monitorDoc({ host: 'alpha', time: NOW - 3 * MINUTE, state: 'disk_full', slots: 2, running: [] }, NOW - 3 * MINUTE),
    { host: 'alpha', minute: at(NOW), time: NOW, state: 'idle', slots: 1, running: [] }, // numeric time: another tool
  ];

  it('keys a document by host and minute and keeps the sample as taken', () => {
    expect(docs[1]).toMatchObject({ host: 'alpha', minute: at(NOW - MINUTE), time: at(NOW - MINUTE + 9) });
    expect(monitorFromDoc(docs[1]!)).toEqual({
      host: 'alpha',
      time: NOW - MINUTE + 9,
      state: 'busy',
      slots: 2,
      running: [4],
      disk,
    });
    expect(select(docs, monitorFilter('alpha', at(NOW - MINUTE)), NOW)).toEqual([docs[1]]);
  });

  it('lists by host and time taken, in host then minute order, leaving out times that are not dates', () => {
    const listed = (host: string | undefined, since: number) =>
      select(docs, listMonitorFilter(host, at(since)), NOW, MONITOR_SORT).map(
        (d) => `${d.host}@${NOW - (d.time as Date).getTime()}`,
      );
    expect(listed(undefined, NOW - HOUR)).toEqual(['alpha@180000', 'alpha@59991', 'beta@119995']);
    expect(listed('alpha', NOW - 2 * MINUTE)).toEqual(['alpha@59991']);
    expect(listed('beta', NOW - MINUTE)).toEqual([]);
  });
});

describe('invalid processing documents', () => {
  /** Half-written documents another tool could leave, beside valid ones of every state. */
  function halfWritten(): Doc[] {
    const variants: Doc[] = [
      { state: 'busy' },
      { state: 'considering' },
      { state: 'failed', next_retry: at(NOW - HOUR) },
      { state: 'done' },
      { state: 'abandoned' },
      { state: 'paused' },
      { state: 7 },
    ];
    const breakages: Doc[] = [
      {},
      { token: null },
      { token: '' },
      { token: 5 },
      { host: null },
      { host: '' },
      { time: null },
      { time: NOW - MINUTE }, // a number: no lease date
      { time: 'yesterday' },
      { next_retry: null },
      { next_retry: NOW },
      { attempt: '7' },
      { attempt: 'seven' },
      { attempt: -1 },
      { attempt: 1.5 },
      { attempt: null },
      { n_failures: '2' },
      { n_failures: null },
      { n_failures: 2.5 },
    ];
    const docs: Doc[] = [];
    let number = 1;
    for (const variant of variants) {
      for (const breakage of breakages) docs.push(processed(number++, { ...variant, ...breakage }));
    }
    docs.push(pending(number++), pending(number++, { tasks: { process: 'text' } }));
    return docs;
  }

  it('invalidProcessingFilter selects exactly the documents decoding finds a problem in, in a repairable or unknown state', () => {
    const docs = halfWritten();
    const selected = select(docs, invalidProcessingFilter(), NOW, { number: 1 }).map((d) => d.number);
    const plain = docs
      .filter((d) => {
        const p = runFromDoc(d).processing;
        if (!p || (p.problems ?? []).length === 0) return false;
        const state = task(d).state;
        const known = ['considering', 'busy', 'done', 'failed', 'abandoned'].includes(state as string);
        return !known || REPAIRABLE_STATES.includes(state as string);
      })
      .map((d) => d.number);
    expect(selected).toEqual(plain);
    // The fixture covers both sides: valid documents of each state, and each kind of breakage.
    expect(selected.length).toBeGreaterThan(60);
    expect(docs.length - selected.length).toBeGreaterThan(15);
  });

  it('problems name what is wrong', () => {
    const problems = (processing: Doc) => runFromDoc(processed(1, processing)).processing!.problems;
    expect(problems({ state: 'busy', token: null, time: null })).toEqual(['busy without token', 'busy without time']);
    expect(problems({ state: 'considering', host: '' })).toEqual(['considering without host']);
    expect(problems({ state: 'failed' })).toEqual(['failed without next_retry']);
    expect(problems({ state: 'failed', next_retry: at(NOW), attempt: '7' })).toEqual(['attempt: stored as text (string "7")']);
    expect(problems({ state: 'busy', time: NOW })).toEqual(['time: not a time (number 1717243200000)']);
    expect(problems({ state: 'paused' })).toEqual(['unknown state string "paused"']);
    expect(problems({ state: 'busy' })).toBeUndefined();
  });

  it('a claim never takes a run whose counters are unreadable, and never lowers a counter stored as text', () => {
    const docs = [
      processed(1, { state: 'failed', next_retry: at(NOW - HOUR), attempt: 'seven' }),
      processed(2, { state: 'failed', next_retry: at(NOW - HOUR), n_failures: 'x' }),
      processed(3, { state: 'failed', next_retry: at(NOW - HOUR), attempt: '7' }),
    ];
    expect(select(docs, claimFilter(), NOW).map((d) => d.number)).toEqual([]);
    // `process N` (claimRun) takes whatever the caller saw: digits as text count, and the history is a floor.
    const text = findOneAndUpdate(docs, { number: 3 }, claimUpdate(claimer(), 'tok'), NOW);
    expect(task(text!).attempt).toBe(8);
    const floor = findOneAndUpdate(docs, { number: 1 }, claimUpdate(claimer(), 'tok', undefined, 9), NOW);
    expect(task(floor!).attempt).toBe(10);
  });
});
