// Tasks of a pipeline in the MongoDB backend (issue 14), checked without a server: the real MongoRunStore on
// in-memory mingo collections (mingo-db.ts) for the behaviour, and the claim filter against a plain statement
// of the rule on random documents. Each run document embeds its tasks as `tasks.<stage>`.

import type { Db, MongoClient } from 'mongodb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { UsageError } from '../../../src/errors.js';
import type { RunSelector } from '../../../src/config/schema.js';
import { MongoRunStore } from '../../../src/store/mongo/mongo-store.js';
import { claimFilter, claimSort, claimUpdate, finishUpdate, listRunsFilter } from '../../../src/store/mongo/queries.js';
import { parseMongoUrl } from '../../../src/store/mongo/url.js';
import { topologyFromHello } from '../../../src/store/mongo/wake.js';
import type { ClaimRequest, StageClaim, TaskSpec } from '../../../src/store/run-store.js';
import type { NewRun, RunDoc } from '../../../src/store/types.js';
import { MingoDb } from './mingo-db.js';
import { findOneAndUpdate, select } from './mingo-oracle.js';

type Doc = Record<string, unknown>;

const T0 = Date.UTC(2024, 0, 1);
const HOUR = 3_600_000;
const NOW = Date.UTC(2024, 5, 1, 12);

/** fetch → process → upload, and check needing process too (a diamond below process). */
const PIPELINE: TaskSpec[] = [
  { stage: 'fetch', needs: [] },
  { stage: 'process', needs: ['fetch'] },
  { stage: 'upload', needs: ['process'] },
  { stage: 'check', needs: ['process', 'fetch'] },
];
const DEPTH: Record<string, number> = { fetch: 0, process: 1, upload: 2, check: 2 };

function run(number: number, extra: Partial<NewRun> = {}): NewRun {
  return { number, start: T0 + number * 1000, ...extra };
}

function stages(names: string[], select?: RunSelector[]): StageClaim[] {
  return names.map((stage) => ({ stage, depth: DEPTH[stage] ?? 0, ...(select ? { select } : {}) }));
}

function claimer(names: string[], extra: Partial<ClaimRequest> = {}): ClaimRequest {
  return { host: 'alpha', pid: 42, order: 'newest', stages: stages(names), ...extra };
}

const task = (view: RunDoc | null): string => (view ? `${view.number}/${view.stage}` : 'none');

describe('MongoDB tasks (MongoRunStore on mingo collections)', () => {
  let db: MingoDb;
  let store: MongoRunStore;

  beforeEach(() => {
    db = new MingoDb();
    store = new MongoRunStore(
      { close: async () => undefined } as unknown as MongoClient,
      db as unknown as Db,
      parseMongoUrl('mongodb://mingo/runs'),
      topologyFromHello({}),
      { idlePollMs: 50 },
    );
  });
  afterEach(() => store.close());

  /** Claims the given stage's task of run 1 (the only run) and finishes it. */
  async function finish(stage: string, number = 1): Promise<void> {
    const view = await store.claimNextRun(claimer([stage]));
    expect(task(view)).toBe(`${number}/${stage}`);
    const out = { location: `/out/${stage}`, host: 'alpha', attempt: 1, at: T0 };
    expect(await store.finishRun({ number, stage }, view!.processing!.token, out)).toBe(true);
  }

  /** The raw task sub-document. */
  function raw(number: number, stage: string): Doc {
    const doc = db.collection('runs').docs.find((d) => d.number === number) as Doc;
    return (doc.tasks as Record<string, Doc>)[stage] as Doc;
  }

  it('inserts a run with its tasks pending, in pipeline order, only the first ready', async () => {
    const view = await store.insertRun(run(1), PIPELINE);
    expect(view.stage).toBe('process');
    expect(view.tasks?.map((t) => `${t.stage}<${t.needs.join('+')}`)).toEqual([
      'fetch<',
      'process<fetch',
      'upload<process',
      'check<process+fetch',
    ]);
    expect(PIPELINE.map((t) => raw(1, t.stage).ready)).toEqual([true, false, false, false]);
    expect((await store.getRun(1, 'upload'))?.stage).toBe('upload');
    expect(await store.getRun(1, 'upload').then((r) => r?.processing)).toBeUndefined();
  });

  it('claims a downstream task only once every task it needs is done', async () => {
    await store.insertRun(run(1), PIPELINE);
    expect(task(await store.claimNextRun(claimer(['process', 'upload', 'check'])))).toBe('none');
    await finish('fetch');
    expect(raw(1, 'process').ready).toBe(true);
    expect(raw(1, 'check').ready).toBe(false); // it needs process too
    expect(task(await store.claimNextRun(claimer(['upload', 'check'])))).toBe('none');
    await finish('process');
    expect(raw(1, 'upload').ready).toBe(true);
    expect(raw(1, 'check').ready).toBe(true);
    const view = await store.getRun(1, 'process');
    expect(view?.outputs.map((o) => `${o.stage}:${o.location}`)).toEqual(['fetch:/out/fetch', 'process:/out/process']);
    const events = await store.listRunEvents(1, 'process');
    expect(events.map((e) => `${e.stage}:${e.to}`)).toEqual(['process:considering', 'process:done']);
    expect((await store.listRunEvents(1)).map((e) => e.stage)).toEqual(['fetch', 'fetch', 'process', 'process']);
  });

  it('computes ready from the document as the finish finds it: two upstreams done in either order', () => {
    // check needs fetch and process: whichever finishes last makes it ready, whichever finished first
    for (const order of [['fetch', 'process'], ['process', 'fetch']]) {
      const docs: Doc[] = [
        {
          number: 1,
          start: new Date(T0),
          tags: [],
          priority: 0,
          stages: ['fetch', 'process', 'check'],
          staged: true,
          tasks: {
            fetch: { needs: [], ready: true, state: 'busy', token: 'a', time: new Date(NOW) },
            process: { needs: [], ready: true, state: 'busy', token: 'b', time: new Date(NOW) },
            check: { needs: ['fetch', 'process'], ready: false },
          },
        },
      ];
      const out = { location: '/o', host: 'h', attempt: 1, at: T0 };
      const [first, second] = order as [string, string];
      findOneAndUpdate(docs, { number: 1 }, finishUpdate(out, first), NOW);
      expect((docs[0]!.tasks as Record<string, Doc>).check!.ready).toBe(false);
      findOneAndUpdate(docs, { number: 1 }, finishUpdate(out, second), NOW);
      expect((docs[0]!.tasks as Record<string, Doc>).check!.ready).toBe(true);
    }
  });

  it('an abandoned task blocks every task below it, never claimed; a retry upstream unblocks them', async () => {
    await store.insertRun(run(1), PIPELINE);
    await finish('fetch');
    const claimed = await store.claimNextRun(claimer(['process']));
    const fields = { reason: 'input is corrupt', n_failures: 3 };
    expect(await store.abandonRun({ number: 1, stage: 'process' }, claimed!.processing!.token, fields)).toBe(true);
    for (const stage of ['upload', 'check']) {
      const view = await store.getRun(1, stage);
      expect(view?.blocked).toMatchObject({ stage: 'process', reason: 'input is corrupt' });
    }
    expect((await store.getRun(1, 'fetch'))?.blocked).toBeUndefined();
    expect(await store.countTasksByStage()).toMatchObject({
      fetch: { done: 1 },
      process: { abandoned: 1 },
      upload: { blocked: 1, pending: 0 },
      check: { blocked: 1, pending: 0 },
    });
    expect((await store.listRuns({ state: 'blocked' })).map((v) => `${v.number}/${v.stage}`)).toEqual([
      '1/upload',
      '1/check',
    ]);
    expect((await store.listRuns({ state: 'pending' })).map((v) => v.stage)).toEqual([]);

    // the operator's retry of process: failed, due now, and the blocks it set are gone in the same write
    const before = await store.getRun(1, 'process');
    const expected = { state: 'abandoned' as const, token: before!.processing!.token };
    const change = { to: 'failed' as const, reason: 'retry by hand', n_failures: 0, next_retry: Date.now() - HOUR };
    expect(await store.overrideRun({ number: 1, stage: 'process' }, expected, change, { host: 'ops' })).toBe(true);
    expect((await store.getRun(1, 'upload'))?.blocked).toBeUndefined();
    expect((await store.getRun(1, 'check'))?.blocked).toBeUndefined();
    expect(task(await store.claimNextRun(claimer(['upload', 'check', 'process'])))).toBe('1/process');
  });

  it('blocks further down too: fetch abandoned blocks process, and upload and check below it', async () => {
    await store.insertRun(run(1), PIPELINE);
    const fetch = await store.claimNextRun(claimer(['fetch']));
    await store.abandonRun({ number: 1, stage: 'fetch' }, fetch!.processing!.token, { reason: 'no input', n_failures: 2 });
    const blocked = (await store.listRuns({ state: 'blocked' })).map((v) => `${v.stage}<${v.blocked?.stage}`);
    expect(blocked).toEqual(['process<fetch', 'upload<fetch', 'check<fetch']);
  });

  it('records in the events which tasks a write blocked or unblocked; a task still below another abandoned one stays blocked', async () => {
    await store.insertRun(run(1), [
      { stage: 'a', needs: [] },
      { stage: 'b', needs: [] },
      { stage: 'c', needs: ['a', 'b'] },
    ]);
    const ops = { host: 'ops' };
    const abandon = { to: 'abandoned' as const, reason: 'bad', n_failures: 0 };
    expect(await store.overrideRun({ number: 1, stage: 'a' }, { state: null, token: null }, abandon, ops)).toBe(true);
    expect(await store.overrideRun({ number: 1, stage: 'b' }, { state: null, token: null }, { ...abandon, reason: 'worse' }, ops)).toBe(true);
    expect((await store.listRunEvents(1, 'a')).at(-1)?.detail).toEqual({ blocked: ['c'] });
    expect((await store.listRunEvents(1, 'b')).at(-1)?.detail).toBeUndefined(); // c was blocked already
    const a = (await store.getRun(1, 'a'))!.processing!;
    const retry = { to: 'failed' as const, reason: 'retry', n_failures: 0, next_retry: Date.now() - HOUR };
    expect(await store.overrideRun({ number: 1, stage: 'a' }, { state: 'abandoned', token: a.token }, retry, ops)).toBe(true);
    // c is still below abandoned b: blocked again, by b, and not reported as unblocked
    expect((await store.getRun(1, 'c'))?.blocked).toMatchObject({ stage: 'b', reason: 'worse' });
    expect((await store.listRunEvents(1, 'a')).at(-1)?.detail).toBeUndefined();
    const b = (await store.getRun(1, 'b'))!.processing!;
    expect(await store.overrideRun({ number: 1, stage: 'b' }, { state: 'abandoned', token: b.token }, retry, ops)).toBe(true);
    expect((await store.listRunEvents(1, 'b')).at(-1)?.detail).toEqual({ unblocked: ['c'] });
    expect((await store.getRun(1, 'c'))?.blocked).toBeUndefined();
  });

  it('a done task taken again by process N makes the tasks below wait; a blocked task done waits for nothing', async () => {
    await store.insertRun(run(1), PIPELINE.slice(0, 3));
    await finish('fetch');
    expect(raw(1, 'process').ready).toBe(true);
    const first = await store.claimNextRun(claimer(['process']));
    const retryAt = Date.now() + HOUR;
    await store.failRun({ number: 1, stage: 'process' }, first!.processing!.token, { reason: 'x', n_failures: 1, next_retry: retryAt });
    expect(await store.nextRetryAt(['process'])).toBe(retryAt);
    const fetch = (await store.getRun(1, 'fetch'))!.processing!;
    const again = await store.claimRun({ number: 1, stage: 'fetch' }, claimer(['fetch']), { state: 'done', token: fetch.token });
    expect(again?.processing?.state).toBe('considering');
    expect(raw(1, 'process').ready).toBe(false);
    expect(task(await store.claimNextRun(claimer(['process', 'upload'])))).toBe('none');
    // its failed retry is no reason to wake until fetch is done again
    expect(await store.nextRetryAt(['process'])).toBeNull();
    // abandoned while re-run: process is blocked; an operator forces process anyway and it finishes
    await store.abandonRun({ number: 1, stage: 'fetch' }, again!.processing!.token, { reason: 'gone', n_failures: 1 });
    expect((await store.getRun(1, 'process'))?.blocked).toMatchObject({ stage: 'fetch' });
    const p = (await store.getRun(1, 'process'))!.processing!;
    const forced = await store.claimRun({ number: 1, stage: 'process' }, claimer(['process']), { state: 'failed', token: p.token });
    const out = { location: '/o', host: 'alpha', attempt: 1, at: T0 };
    expect(await store.finishRun({ number: 1, stage: 'process' }, forced!.processing!.token, out)).toBe(true);
    expect((await store.getRun(1, 'process'))?.blocked).toBeUndefined();
    // upload is below fetch too: still blocked by it
    expect((await store.getRun(1, 'upload'))?.blocked).toMatchObject({ stage: 'fetch' });
  });

  it('an override to abandoned blocks below too, but never a task that is done or live', async () => {
    await store.insertRun(run(1), [
      { stage: 'fetch', needs: [] },
      { stage: 'process', needs: [] },
      { stage: 'upload', needs: ['fetch', 'process'] },
    ]);
    await finish('process');
    const fetch = await store.claimNextRun(claimer(['fetch']));
    const expected = { state: 'considering' as const, token: fetch!.processing!.token };
    const change = { to: 'abandoned' as const, reason: 'abandoned by hand', n_failures: 0 };
    expect(await store.overrideRun({ number: 1, stage: 'fetch' }, expected, change, { host: 'ops' })).toBe(true);
    expect((await store.getRun(1, 'upload'))?.blocked).toMatchObject({ stage: 'fetch', reason: 'abandoned by hand' });
    expect((await store.getRun(1, 'process'))?.blocked).toBeUndefined(); // done, and not below fetch
  });

  it('holds one stage with hold:<stage>, every stage with hold', async () => {
    await store.insertRuns([run(1), run(2)], [{ stage: 'fetch', needs: [] }, { stage: 'process', needs: [] }]);
    await store.setRunTag(2, 'hold:fetch', true);
    await store.setRunTag(1, 'hold', true);
    const taken: string[] = [];
    for (let i = 0; i < 4; i += 1) taken.push(task(await store.claimNextRun(claimer(['fetch', 'process']))));
    expect(taken).toEqual(['2/process', 'none', 'none', 'none']);
    expect(await store.nextRetryAt(['fetch', 'process'])).toBeNull();
  });

  it('takes priority first, then the deeper stage, then start per order', async () => {
    const two: TaskSpec[] = [
      { stage: 'fetch', needs: [] },
      { stage: 'process', needs: ['fetch'] },
    ];
    await store.insertRuns([run(1), run(2), run(3), run(4, { priority: 5 })], two);
    await finish('fetch', 4); // 4 first: its priority
    const order: string[] = [];
    // run 1's fetch done: its process (deeper) goes before newer runs' fetch
    const fetch1 = await store.claimRun({ number: 1, stage: 'fetch' }, claimer(['fetch']), { state: null, token: null });
    await store.finishRun({ number: 1, stage: 'fetch' }, fetch1!.processing!.token, {
      location: '/o', host: 'alpha', attempt: 1, at: T0,
    });
    for (let i = 0; i < 6; i += 1) order.push(task(await store.claimNextRun(claimer(['fetch', 'process']))));
    expect(order).toEqual(['4/process', '1/process', '3/fetch', '2/fetch', 'none', 'none']);
    expect(task(await store.claimNextRun(claimer(['fetch', 'process'], { order: 'oldest' })))).toBe('none');
  });

  it('takes only runs passing every selector of the stage', async () => {
    await store.insertRuns(
      [
        run(1, { tags: ['muon'], mode: 'physics', params: { dataset: 'R15b' }, end: T0 }),
        run(2, { tags: ['muon', 'test'], mode: 'physics', params: { dataset: 'R15b' }, end: T0 }),
        run(3, { tags: ['muon'], mode: 'calib', params: { dataset: 'R15b' }, end: T0 }),
        run(4, { tags: ['muon'], mode: 'physics', params: { dataset: ['R15b'] }, end: T0 }),
        run(5, { tags: ['muon'], mode: 'physics', params: { dataset: 'R15b' } }),
        run(6, { tags: ['muon'], mode: 'physics', params: { dataset: 'R15b' }, end: T0 }),
        run(7, { tags: [], mode: 'physics', params: { dataset: 'R15b' }, end: T0 }),
        run(8, { tags: ['muon'], mode: 'physics', params: { 'data.set': 'R15b', dataset: 'R15b' }, end: T0 }),
      ],
      [{ stage: 'process', needs: [] }],
    );
    const selector: RunSelector = {
      tags: ['muon'],
      not_tags: ['test'],
      modes: ['physics'],
      min_number: 1,
      max_number: 7,
      params: { dataset: 'R15b' },
      require_end: true,
    };
    const request: ClaimRequest = { host: 'a', pid: 1, order: 'oldest', stages: [{ stage: 'process', depth: 0, select: [selector] }] };
    const taken: string[] = [];
    for (let i = 0; i < 3; i += 1) taken.push(task(await store.claimNextRun(request)));
    // 2 tagged test, 3 calibration mode, 4 an array param, 5 no end, 7 no muon tag, 8 above max_number
    expect(taken).toEqual(['1/process', '6/process', 'none']);
    // a param key with a dot is compared as a key, not a path
    const dotted: ClaimRequest = {
      ...request,
      stages: [{ stage: 'process', depth: 0, select: [{ params: { 'data.set': 'R15b' } }] }],
    };
    expect(task(await store.claimNextRun(dotted))).toBe('8/process');
    // numbers and booleans compare as themselves, never as their text
    await store.insertRuns([run(20, { params: { n: '3', ok: 'true' } }), run(21, { params: { n: 3, ok: true } })]);
    const typed: ClaimRequest = { ...request, stages: [{ stage: 'process', depth: 0, select: [{ params: { n: 3, ok: true } }] }] };
    expect(task(await store.claimNextRun(typed))).toBe('21/process');
    expect(task(await store.claimNextRun(typed))).toBe('none');
  });

  it('excludes the tasks the claimer still runs: a task its stage, a bare number the whole run', async () => {
    await store.insertRun(run(1), [{ stage: 'fetch', needs: [] }, { stage: 'process', needs: [] }]);
    const both = { exclude: [{ number: 1, stage: 'process' }, { number: 1, stage: 'fetch' }] };
    expect(task(await store.claimNextRun(claimer(['fetch', 'process'], both)))).toBe('none');
    expect(task(await store.claimNextRun(claimer(['fetch', 'process'], { exclude: [1] })))).toBe('none');
    const one = { exclude: [{ number: 1, stage: 'process' }] };
    expect(task(await store.claimNextRun(claimer(['fetch', 'process'], one)))).toBe('1/fetch');
  });

  it('a claim over several stages picks again when another claimer took its pick', async () => {
    await store.insertRuns([run(1), run(2)], [{ stage: 'fetch', needs: [] }, { stage: 'process', needs: [] }]);
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => store.claimNextRun({ ...claimer(['fetch', 'process']), host: `h${i}` })),
    );
    const taken = results.map(task).filter((t) => t !== 'none');
    expect(taken.sort()).toEqual(['1/fetch', '1/process', '2/fetch', '2/process']);
  });

  it('lists nothing by state from a store without stages, and never sends an empty $or', async () => {
    expect(await store.listRuns({ state: 'done' })).toEqual([]);
    expect(listRunsFilter({ state: 'done' }, [])).toEqual({ $and: [{ number: { $in: [] } }] });
    await db.collection('runs').insertOne({ number: 5, start: new Date(T0), tags: [], priority: 0, params: {} });
    expect((await store.listRuns()).map((r) => r.number)).toEqual([5]);
    expect(await store.listRuns({ state: 'busy' })).toEqual([]);
  });

  it('createTasks gives an unstaged run its tasks once, ready and blocked from what is already there', async () => {
    await db.collection('runs').insertOne({ number: 5, start: new Date(T0), tags: [], priority: 0, params: {} });
    expect((await store.listUnstagedRuns(10)).map((r) => r.number)).toEqual([5]);
    expect((await store.listRuns({ state: 'pending' })).map((r) => [r.number, r.stage])).toEqual([[5, undefined]]);
    expect(await store.countRunsByState()).toMatchObject({ pending: 1 });
    expect(task(await store.claimNextRun(claimer(['process'])))).toBe('none');
    // an operator's write never gives a run a task (its config does)
    const change = { to: 'abandoned' as const, reason: 'no', n_failures: 0 };
    expect(await store.overrideRun({ number: 5, stage: 'fetch' }, { state: null, token: null }, change, { host: 'ops' })).toBe(false);
    expect(await store.claimRun(5, claimer(['process']), { state: null, token: null })).toBeNull();
    expect((await store.getRun(5))?.tasks).toEqual([]);
    expect(await store.createTasks(5, [{ stage: 'fetch', needs: [] }])).toBe(1);
    expect(await store.createTasks(5, [{ stage: 'fetch', needs: [] }])).toBe(0);
    expect(await store.listUnstagedRuns(10)).toEqual([]);
    await finish('fetch', 5);
    // created after its upstream is done: ready at once
    expect(await store.createTasks(5, PIPELINE)).toBe(3);
    expect(raw(5, 'process').ready).toBe(true);
    expect(raw(5, 'upload').ready).toBe(false);
    const process = await store.claimNextRun(claimer(['process']));
    await store.abandonRun({ number: 5, stage: 'process' }, process!.processing!.token, { reason: 'bad', n_failures: 1 });
    // a task created below an abandoned one starts blocked, and so does one below that
    expect(await store.createTasks(5, [
      { stage: 'later', needs: ['process'] },
      { stage: 'last', needs: ['later'] },
    ])).toBe(2);
    expect((await store.getRun(5, 'later'))?.blocked).toMatchObject({ stage: 'process', reason: 'bad' });
    expect((await store.getRun(5, 'last'))?.blocked).toMatchObject({ stage: 'process', reason: 'bad' });
    expect(await store.createTasks(99, PIPELINE)).toBe(0);
  });

  it('a claim naming no stages (a first-wave caller) gives runs without tasks their process task and takes one', async () => {
    const runs = db.collection('runs');
    await runs.insertOne({ number: 7, start: new Date(T0), tags: [], priority: 0, params: {} });
    await runs.insertOne({ number: 8, start: new Date(T0 + 1), tags: ['hold'], priority: 0, params: {} });
    expect(task(await store.claimNextRun(claimer(['fetch'])))).toBe('none'); // a staged claim leaves them be
    expect(await store.listUnstagedRuns(10)).toHaveLength(2);
    expect(task(await store.claimNextRun({ host: 'a', pid: 1, order: 'newest' }))).toBe('7/process');
    expect(await store.listUnstagedRuns(10)).toEqual([]);
    expect((await store.getRun(8))?.tasks).toEqual([{ stage: 'process', needs: [] }]);
  });

  it('upgrades a first-wave store in place: processing becomes the process task, once', async () => {
    const runs = db.collection('runs');
    const events = db.collection('run_events');
    await runs.insertMany([
      { number: 1, start: new Date(T0), tags: [], priority: 0, params: {}, outputs: [{ location: '/o/1', host: 'a', attempt: 1, at: new Date(T0) }],
        processing: { state: 'done', host: 'a', pid: 1, token: 't1', attempt: 1, time: new Date(T0), n_failures: 0 }, event_seq: 2 },
      { number: 2, start: new Date(T0), tags: [], priority: 0, params: {},
        processing: { state: 'failed', host: 'a', pid: 1, token: 't2', attempt: 2, time: new Date(T0), n_failures: 2, next_retry: new Date(T0) } },
      { number: 3, start: new Date(T0), tags: [], priority: 0, params: {} },
      { number: 4, start: new Date(T0), tags: [], priority: 0, params: {}, processing: null },
    ]);
    await events.insertOne({ number: 2, time: new Date(T0), host: 'a', attempt: 2, from: 'busy', to: 'failed', seq: 1 });
    expect(await store.upgrade()).toBe(2);
    const snapshot = JSON.stringify(runs.docs);
    expect(await store.upgrade()).toBe(0);
    expect(JSON.stringify(runs.docs)).toBe(snapshot);

    expect(raw(1, 'process')).toMatchObject({ state: 'done', token: 't1', needs: [], ready: true });
    expect(runs.docs.find((d) => d.number === 1)?.processing).toBeUndefined();
    const two = await store.getRun(2);
    expect(two).toMatchObject({ stage: 'process', processing: { state: 'failed', attempt: 2, n_failures: 2, next_retry: T0 } });
    expect(two?.tasks).toHaveLength(1);
    // never processed: unstaged, for a daemon to give the tasks of its own stages
    expect((await store.listUnstagedRuns(10)).map((r) => r.number)).toEqual([3, 4]);
    // the old history is the process task's, and its attempts count for the next claim
    expect((await store.listRunEvents(2, 'process')).map((e) => `${e.stage}:${e.to}`)).toEqual(['process:failed']);
    expect(await store.maxEventAttempt(2)).toBe(2);
    expect(await store.maxEventAttempt({ number: 2, stage: 'fetch' })).toBe(0);
    const claimed = await store.claimNextRun({ ...claimer(['process']), host: 'b' });
    expect(claimed).toMatchObject({ number: 2, stage: 'process', processing: { attempt: 3, n_failures: 2 } });
  });

  it("creates a stage's indexes when the store opens with it, or on the first claim of it, once", async () => {
    const created: string[] = [];
    const runs = db.collection('runs');
    const record = async (specs: Array<{ name: string; partialFilterExpression?: Doc }>): Promise<string[]> => {
      for (const spec of specs) created.push(`${spec.name}${spec.partialFilterExpression ? '*' : ''}`);
      return [];
    };
    Object.assign(runs, { createIndexes: record });
    await store.insertRun(run(1), [{ stage: 'fetch', needs: [] }]);
    await store.upgrade(); // as openMongoStore does
    expect(created).toEqual(['claim_newest_fetch*', 'claim_oldest_fetch*', 'state_time_fetch']);
    await store.claimNextRun(claimer(['fetch', 'process']));
    await store.claimNextRun(claimer(['fetch', 'process']));
    expect(created.slice(3)).toEqual(['claim_newest_process*', 'claim_oldest_process*', 'state_time_process']);
  });

  it('refuses a stage name that is not one, naming it', async () => {
    await store.insertRun(run(1));
    for (const bad of ['Process', 'a.b', '$x', '', 'x'.repeat(41), '1st']) {
      await expect(store.getRun(1, bad)).rejects.toThrow(UsageError);
      await expect(store.heartbeatRun({ number: 1, stage: bad }, 't')).rejects.toThrow(/is not a stage name/);
      await expect(store.insertRun(run(2), [{ stage: bad, needs: [] }])).rejects.toThrow(UsageError);
    }
    await expect(store.insertRun(run(3), [{ stage: 'b', needs: ['a.b'] }])).rejects.toThrow(/needs of b/);
  });

  it('lists one view per task, newest run first, each run in pipeline order; counts per stage', async () => {
    await store.insertRuns([run(1), run(2)], PIPELINE);
    await finish('fetch', 2);
    const all = await store.listRuns();
    expect(all.map(task)).toEqual([
      '2/fetch', '2/process', '2/upload', '2/check',
      '1/fetch', '1/process', '1/upload', '1/check',
    ]);
    expect((await store.listRuns({ limit: 3 })).map(task)).toEqual(['2/fetch', '2/process', '2/upload']);
    expect((await store.listRuns({ stage: 'fetch' })).map(task)).toEqual(['2/fetch', '1/fetch']);
    expect((await store.listRuns({ state: 'done' })).map(task)).toEqual(['2/fetch']);
    expect((await store.listRuns({ host: 'alpha' })).map(task)).toEqual(['2/fetch']);
    expect(await store.countRunsByState()).toMatchObject({ pending: 7, done: 1 });
    expect(await store.countTasksByStage()).toEqual({
      fetch: { pending: 1, considering: 0, busy: 0, done: 1, failed: 0, abandoned: 0, blocked: 0 },
      process: { pending: 2, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0 },
      upload: { pending: 2, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0 },
      check: { pending: 2, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0 },
    });
  });

  it('finds stale and retry times per task', async () => {
    await store.insertRun(run(1), [{ stage: 'fetch', needs: [] }, { stage: 'process', needs: [] }]);
    const fetch = await store.claimNextRun(claimer(['fetch']));
    const process = await store.claimNextRun(claimer(['process']));
    const stale = await store.listStaleRuns({ maxConsideringMs: -HOUR, maxBusyMs: -HOUR });
    expect(stale.map(task)).toEqual(['1/fetch', '1/process']);
    const retry = T0 + HOUR;
    await store.failRun({ number: 1, stage: 'process' }, process!.processing!.token, {
      reason: 'x', n_failures: 1, next_retry: retry,
    });
    expect(await store.nextRetryAt(['fetch'])).toBeNull();
    expect(await store.nextRetryAt(['process'])).toBe(retry);
    expect(await store.nextRetryAt()).toBe(retry);
    expect(await store.heartbeatRun({ number: 1, stage: 'fetch' }, process!.processing!.token)).toBe(false);
    expect(await store.heartbeatRun({ number: 1, stage: 'fetch' }, fetch!.processing!.token)).toBe(true);
  });
});

// ------------------------------------------------------------------------------ the claim filter, plainly

/** A small deterministic random generator (mulberry32), so a failing case can be replayed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STATES = [undefined, 'considering', 'busy', 'done', 'failed', 'abandoned'] as const;

/** A random run of the fetch/process/upload pipeline, with tasks in any state and tags that hold some. */
function randomRun(number: number, rnd: () => number): Doc {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)] as T;
  const tasks: Record<string, Doc> = {};
  for (const spec of PIPELINE.slice(0, 3)) {
    if (rnd() < 0.1) continue; // a run that skips a stage
    const state = pick(STATES);
    const t: Doc = { needs: spec.needs, ready: rnd() < 0.5 };
    if (state !== undefined) Object.assign(t, { state, token: `t${number}`, attempt: 1, n_failures: 0, time: new Date(NOW) });
    if (state === 'failed') t.next_retry = new Date(NOW + (rnd() < 0.5 ? -HOUR : HOUR));
    if (rnd() < 0.15) t.blocked = { stage: 'fetch', reason: 'x', time: new Date(NOW) };
    tasks[spec.stage] = t;
  }
  return {
    number,
    start: new Date(T0 + Math.floor(rnd() * 10) * 1000),
    priority: Math.floor(rnd() * 3),
    tags: [pick(['', 'hold', 'abandon', 'hold:fetch', 'hold:process', 'hold:upload', 'muon', 'muon']), pick(['muon', 'x'])].filter(Boolean),
    mode: pick(['physics', 'calib']),
    params: { dataset: pick(['R15a', 'R15b']) },
    ...(rnd() < 0.7 ? { end: new Date(T0) } : {}),
    tasks,
  };
}

/** What a daemon may take of `stage` (DESIGN §9), written plainly. */
function eligible(doc: Doc, stage: string, selector: RunSelector | undefined): boolean {
  const tags = doc.tags as string[];
  if (tags.includes('hold') || tags.includes('abandon') || tags.includes(`hold:${stage}`)) return false;
  const t = (doc.tasks as Record<string, Doc>)[stage];
  if (!t || t.ready !== true || t.blocked) return false;
  if (selector) {
    if (selector.tags && !selector.tags.every((x) => tags.includes(x))) return false;
    if (selector.modes && !selector.modes.includes(doc.mode as string)) return false;
    if (selector.params && (doc.params as Doc).dataset !== selector.params.dataset) return false;
    if (selector.require_end && doc.end === undefined) return false;
  }
  if (t.state === undefined) return true;
  return t.state === 'failed' && (t.next_retry as Date).getTime() <= NOW;
}

describe('claim filter per stage, against the plain rule', () => {
  it('selects exactly the eligible tasks of random runs, with and without a selector', () => {
    for (let seed = 1; seed <= 40; seed += 1) {
      const rnd = random(seed);
      const docs = Array.from({ length: 30 }, (_, i) => randomRun(i + 1, rnd));
      for (const stage of ['fetch', 'process', 'upload']) {
        for (const selector of [undefined, { tags: ['muon'], modes: ['physics'], params: { dataset: 'R15b' }, require_end: true }]) {
          const got = select(docs, claimFilter([], stage, selector ? [selector] : []), NOW, claimSort('newest')).map(
            (d) => d.number,
          );
          const want = docs.filter((d) => eligible(d, stage, selector)).map((d) => d.number);
          expect([...got].sort((a, b) => Number(a) - Number(b)), `seed ${seed} ${stage}`).toEqual(want);
        }
      }
    }
  });

  it('claims through the filter and update by mingo leave the other tasks alone', () => {
    const docs: Doc[] = [randomRun(1, random(7))];
    (docs[0]!.tasks as Record<string, Doc>).upload = { needs: ['process'], ready: true };
    docs[0]!.tags = [];
    const before = structuredClone((docs[0]!.tasks as Record<string, Doc>).fetch);
    const after = findOneAndUpdate(docs, claimFilter([], 'upload'), claimUpdate({ host: 'h', pid: 1, order: 'newest' }, 'tok', undefined, 0, 'upload'), NOW);
    expect((after!.tasks as Record<string, Doc>).upload).toMatchObject({ state: 'considering', token: 'tok', attempt: 1 });
    expect((after!.tasks as Record<string, Doc>).fetch).toEqual(before);
  });
});
