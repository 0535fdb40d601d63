// Document ⇄ domain conversion of the MongoDB backend: faithful round trips, dates as epoch ms, and the same
// tolerance as the SQLite rows for documents another tool wrote badly.

import { describe, expect, it } from 'vitest';

import { UsageError } from '../../../src/errors.js';
import {
  eventDoc,
  eventFromDoc,
  hostDoc,
  hostFromDoc,
  logDoc,
  logFromDoc,
  newRunDoc,
  pipelineOrder,
  previousStateOf,
  runFromDoc,
} from '../../../src/store/mongo/documents.js';
import { newTasksDoc } from '../../../src/store/mongo/queries.js';
import { PROCESS_ONLY } from '../../../src/store/run-store.js';
import type { HostDoc, NewRun, RunEvent } from '../../../src/store/types.js';

/** The view of a new run from its one `process` task. */
const PROCESS_VIEW = { stage: 'process', tasks: [{ stage: 'process', needs: [] }] };

const T0 = Date.UTC(2024, 0, 1);

describe('run documents', () => {
  it('store times as dates and read back exactly what was given', () => {
    const full: NewRun = {
      number: 12,
      name: 'run; rm -rf /',
      start: T0,
      end: T0 + 60_000,
      mode: 'background',
      tags: ['calibration'],
      priority: 5,
      input: '/data/raw/000012',
      params: { threshold: 3, nested: { a: [1, 2] } },
    };
    const doc = newRunDoc(full, newTasksDoc(PROCESS_ONLY));
    expect(doc.start).toEqual(new Date(T0));
    expect(doc.end).toEqual(new Date(T0 + 60_000));
    expect(doc).toMatchObject({ tasks: { process: { needs: [], ready: true } }, stages: ['process'], staged: true });
    expect(runFromDoc(doc)).toEqual({ ...full, outputs: [], ...PROCESS_VIEW });
    expect(runFromDoc(newRunDoc({ number: 7, start: T0 }, newTasksDoc(PROCESS_ONLY)))).toEqual({
      number: 7,
      start: T0,
      tags: [],
      priority: 0,
      params: {},
      outputs: [],
      ...PROCESS_VIEW,
    });
  });

  it('refuses what the SQLite backend refuses', () => {
    const bad: unknown[] = [
      { number: 1.5, start: T0 },
      { number: 1, start: 'yesterday' },
      { number: 1, start: T0, tags: 'hold' },
      { number: 1, start: T0, priority: '1' },
      { number: 1, start: 1e20 },
    ];
    for (const run of bad) {
      expect(() => newRunDoc(run as NewRun, newTasksDoc(PROCESS_ONLY)), JSON.stringify(run)).toThrow(UsageError);
    }
  });

  it('reads a processing document with dates as epoch ms', () => {
    const run = runFromDoc({
      number: 3,
      start: new Date(T0),
      tags: [],
      priority: 0,
      params: {},
      outputs: [{ location: '/p/3', host: 'a', attempt: 1, at: new Date(T0 + 5) }, 'junk'],
      tasks: { process: {
        needs: [],
        ready: true,
        previous_state: 'considering',
        state: 'busy',
        host: 'a',
        pid: 9,
        token: 't',
        attempt: 2,
        time: new Date(T0 + 1),
        started: new Date(T0 + 2),
        next_retry: new Date(T0 + 3),
        n_failures: 1,
        targets: ['raw', 4],
        resources: { cores: 4, bad: 'x' },
      } },
      event_seq: 3,
    });
    expect(run.outputs).toEqual([{ location: '/p/3', host: 'a', attempt: 1, at: T0 + 5 }]);
    expect(run.processing).toEqual({
      state: 'busy',
      host: 'a',
      pid: 9,
      token: 't',
      attempt: 2,
      time: T0 + 1,
      started: T0 + 2,
      next_retry: T0 + 3,
      n_failures: 1,
      n_interruptions: 0,
      targets: ['raw'],
      resources: { cores: 4 },
    });
    expect(run.invalid).toBeUndefined();
  });

  it('flags badly written fields instead of throwing, with safe defaults', () => {
    const run = runFromDoc({
      number: 4,
      start: 'last tuesday',
      tags: ['ok', 3],
      priority: '10',
      params: [1, 2],
      name: 42,
      processing: 'claimed',
    });
    expect(run).toMatchObject({ number: 4, start: 0, tags: [], priority: 0, params: {}, outputs: [] });
    expect(run.processing).toBeUndefined();
    expect(run.invalid).toEqual([
      'start: expected a date, got string "last tuesday"',
      'tags: expected an array of strings, got array [\"ok\",3]',
      'priority: expected a number, got string "10"',
      'params: expected an object, got array [1,2]',
      'name: expected a string, got number 42',
      'processing: expected an object, got string "claimed"',
    ]);
  });

  it('treats a task without a state as never processed, and accepts numeric times', () => {
    expect(runFromDoc({ number: 5, start: T0, tasks: { process: { host: 'x' } } }).processing).toBeUndefined();
    const numeric = runFromDoc({
      number: 6,
      start: T0,
      tasks: { process: { state: 'failed', time: T0, next_retry: T0 } },
    });
    expect(numeric.processing).toMatchObject({ state: 'failed', time: T0, next_retry: T0, token: '', host: '' });
    expect(numeric.start).toBe(T0);
  });

  it('knows the state before the latest transition', () => {
    expect(previousStateOf({ tasks: { process: { previous_state: 'busy' } } })).toBe('busy');
    expect(previousStateOf({ tasks: { process: { previous_state: null } } })).toBeNull();
    expect(previousStateOf({ tasks: { fetch: { previous_state: 'failed' } } }, 'fetch')).toBe('failed');
    expect(previousStateOf({})).toBeNull();
  });
});

describe('tasks and views', () => {
  const doc = {
    number: 9,
    start: new Date(T0),
    // listed out of order on purpose: pipeline order follows needs
    stages: ['upload', 'process', 'fetch'],
    tasks: {
      upload: { needs: ['process'], ready: false, blocked: { stage: 'process', reason: 'gave up', time: new Date(T0) } },
      process: { needs: ['fetch'], ready: true, state: 'abandoned', reason: 'gave up', time: new Date(T0), n_failures: 3 },
      fetch: { needs: [], ready: true, state: 'done', time: new Date(T0), token: 't', host: 'a', attempt: 1 },
    },
  };

  it('orders a run\'s tasks upstream first, whatever order they were listed in', () => {
    expect(pipelineOrder(doc)).toEqual(['fetch', 'process', 'upload']);
    expect(pipelineOrder({ stages: ['b', 'a'], tasks: { a: { needs: [] }, b: { needs: [] } } })).toEqual(['b', 'a']);
    // a cycle another tool wrote still lists every task once
    expect(pipelineOrder({ tasks: { a: { needs: ['b'] }, b: { needs: ['a'] } } }).sort()).toEqual(['a', 'b']);
  });

  it('views the run from `process` by default, or from the stage asked for', () => {
    const view = runFromDoc(doc);
    expect(view.stage).toBe('process');
    expect(view.processing).toMatchObject({ state: 'abandoned', reason: 'gave up', n_failures: 3 });
    expect(view.tasks?.map((t) => [t.stage, t.needs, t.processing?.state ?? null])).toEqual([
      ['fetch', [], 'done'],
      ['process', ['fetch'], 'abandoned'],
      ['upload', ['process'], null],
    ]);
    const upload = runFromDoc(doc, 'upload');
    expect(upload.stage).toBe('upload');
    expect(upload.processing).toBeUndefined();
    expect(upload.blocked).toEqual({ stage: 'process', reason: 'gave up', time: T0 });
    // without a process task the first task is the default view; without tasks there is no stage
    expect(runFromDoc({ ...doc, tasks: { fetch: doc.tasks.fetch } }).stage).toBe('fetch');
    expect(runFromDoc({ number: 1, start: new Date(T0) })).toMatchObject({ tasks: [] });
    expect(runFromDoc({ number: 1, start: new Date(T0) }).stage).toBeUndefined();
  });

  it('flags a task that is not a document', () => {
    expect(runFromDoc({ number: 1, start: new Date(T0), tasks: { process: 'busy' } }).invalid).toEqual([
      'tasks.process: expected an object, got string "busy"',
    ]);
    expect(runFromDoc({ number: 1, start: new Date(T0), tasks: [1] }).invalid).toEqual([
      'tasks: expected an object, got array [1]',
    ]);
  });
});

describe('events, hosts and log', () => {
  it('round-trip an event, leaving out what is not set', () => {
    const event: RunEvent = {
      number: 1,
      stage: 'process',
      time: T0,
      host: 'a',
      attempt: 1,
      from: null,
      to: 'considering',
      detail: { why: 'x' },
    };
    const doc = eventDoc(event, 1);
    expect(doc).toEqual({
      number: 1,
      stage: 'process',
      seq: 1,
      time: new Date(T0),
      host: 'a',
      attempt: 1,
      from: null,
      to: 'considering',
      detail: { why: 'x' },
    });
    expect(eventFromDoc(doc)).toEqual(event);
    // an event of a first-wave store has no stage: it is the process task's
    const { stage: _none, ...old } = doc;
    expect(eventFromDoc(old).stage).toBe('process');
    expect(eventDoc({ ...event, stage: 'upload' }, 2).stage).toBe('upload');
  });

  it('round-trip a host', () => {
    const host: HostDoc = {
      host: 'alpha',
      pid: 1,
      proc_start: 5,
      token: 't',
      state: 'idle',
      time: T0 + 1,
      started: T0,
      version: '0.1.0',
      slots: 2,
      running: [3],
      disk: { path: '/d', used_percent: 1.5, free_bytes: 10 },
    };
    expect(hostDoc(host).time).toEqual(new Date(T0 + 1));
    expect(hostFromDoc(hostDoc(host))).toEqual(host);
    const { proc_start: _p, disk: _d, ...bare } = host;
    expect(hostFromDoc(hostDoc(bare))).toEqual(bare);
  });

  it('round-trip a log entry', () => {
    const entry = { time: T0, host: 'a', user: 'runwarden@a', priority: 3 as const, message: 'm', number: 7 };
    expect(logFromDoc(logDoc(entry))).toEqual(entry);
    const { number: _n, ...bare } = entry;
    expect(logFromDoc(logDoc(bare))).toEqual(bare);
  });
});
