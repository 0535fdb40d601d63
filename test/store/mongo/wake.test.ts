// Wake-ups of the MongoDB backend against a stand-in collection: change stream where the deployment has
// one, polling where it has not or once the stream fails, and at once for this store's own inserts.

import { EventEmitter } from 'node:events';

import type { Collection } from 'mongodb';
import { describe, expect, it } from 'vitest';

import { CHANGE_STREAM_PIPELINE, RunWakeUps, topologyFromHello } from '../../../src/store/mongo/wake.js';
import { aggregate } from './mingo-oracle.js';

class FakeStream extends EventEmitter {
  closed = false;
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** The few collection methods RunWakeUps uses; `insert` changes what a poll sees, as an insert would. */
function fakeRuns() {
  const state = { count: 0, newest: 0, streams: [] as FakeStream[], polls: 0, failPolls: false };
  const collection = {
    watch: () => {
      const stream = new FakeStream();
      state.streams.push(stream);
      return stream;
    },
    estimatedDocumentCount: async () => {
      state.polls += 1;
      if (state.failPolls) throw new Error('server unreachable');
      return state.count;
    },
    find: () => ({
      sort: () => ({ limit: () => ({ next: async () => (state.newest ? { _id: state.newest } : null) }) }),
    }),
  } as unknown as Collection;
  return {
    collection,
    state,
    insert: () => {
      state.count += 1;
      state.newest += 1;
    },
  };
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('topologyFromHello', () => {
  it('finds change streams on replica sets and sharded clusters only', () => {
    expect(topologyFromHello({ setName: 'rs0', isWritablePrimary: true })).toEqual({
      changeStreams: true,
      describe: 'replica set rs0',
    });
    expect(topologyFromHello({ msg: 'isdbgrid' }).changeStreams).toBe(true);
    expect(topologyFromHello({ isWritablePrimary: true })).toEqual({
      changeStreams: false,
      describe: 'not a replica set',
    });
  });
});

describe('RunWakeUps', () => {
  it('uses one change stream for all watchers and closes it with the last', async () => {
    const runs = fakeRuns();
    const wake = new RunWakeUps(runs.collection, topologyFromHello({ setName: 'rs0' }), 5);
    expect(wake.method).toBe('a change stream on runs (replica set rs0)');
    let a = 0;
    let b = 0;
    const stopA = wake.watch(() => {
      a += 1;
    });
    const stopB = wake.watch(() => {
      b += 1;
      throw new Error('a throwing watcher harms nobody');
    });
    expect(runs.state.streams).toHaveLength(1);
    runs.state.streams[0].emit('change', { operationType: 'insert' });
    await waitFor(() => a === 1 && b === 1, 'both watchers');
    stopA();
    stopA();
    runs.state.streams[0].emit('change', { operationType: 'insert' });
    await waitFor(() => b === 2, 'the remaining watcher');
    expect(a).toBe(1);
    stopB();
    await waitFor(() => runs.state.streams[0].closed, 'the stream to close');
    await wake.close();
  });

  it('falls back to polling when the stream fails, and says so', async () => {
    const runs = fakeRuns();
    const wake = new RunWakeUps(runs.collection, topologyFromHello({ setName: 'rs0' }), 5);
    let calls = 0;
    wake.watch(() => {
      calls += 1;
    });
    runs.state.streams[0].emit('error', new Error('not authorized to watch'));
    expect(wake.method).toBe(
      'polling every 0.005s (no change stream: the change stream failed: not authorized to watch)',
    );
    expect(runs.state.streams[0].closed).toBe(true);
    await waitFor(() => runs.state.polls >= 2, 'two polls');
    expect(calls).toBe(0);
    runs.insert();
    await waitFor(() => calls === 1, 'a wake-up from polling');
    await wake.close();
  });

  it('polls where there are no change streams and survives failed polls', async () => {
    const runs = fakeRuns();
    const wake = new RunWakeUps(runs.collection, topologyFromHello({}), 5);
    expect(wake.method).toBe('polling every 0.005s (no change stream: not a replica set)');
    let calls = 0;
    const stop = wake.watch(() => {
      calls += 1;
    });
    await waitFor(() => runs.state.polls >= 1, 'the baseline poll');
    runs.state.failPolls = true;
    const failed = runs.state.polls;
    await waitFor(() => runs.state.polls >= failed + 2, 'polls while the server is away');
    runs.state.failPolls = false;
    runs.insert();
    await waitFor(() => calls === 1, 'a wake-up after the server came back');
    stop();
    await wake.close();
  });

  it("wakes watchers at once for the store's own inserts, without waiting for stream or poll", async () => {
    const runs = fakeRuns();
    const wake = new RunWakeUps(runs.collection, topologyFromHello({}), 60_000);
    let calls = 0;
    wake.notify(); // nobody watches yet: nothing to do
    wake.watch(() => {
      calls += 1;
    });
    wake.notify();
    await waitFor(() => calls >= 1, 'the wake-up');
    await wake.close();
    wake.notify(); // after close: ignored, no timer left behind
  });
});

describe('the change stream filter', () => {
  const NOW = Date.UTC(2024, 5, 1);
  const event = (operationType: string, updatedFields?: Record<string, unknown>) => ({
    _id: { _data: 'token' },
    operationType,
    ns: { db: 'runs', coll: 'runs' },
    ...(updatedFields ? { updateDescription: { updatedFields, removedFields: [] } } : {}),
  });

  it('passes inserts and updates that stamp the wake-up field, not heartbeats or other writes', () => {
    const events = [
      event('insert'),
      event('update', { wake_at: new Date(NOW), 'processing.state': 'failed' }), // 5.0+: field-level diff
      event('update', { wake_at: new Date(NOW), processing: { state: 'failed' } }), // 4.4: top-level fields
      event('update', { 'processing.time': new Date(NOW) }), // a lease heartbeat
      event('update', { processing: { state: 'busy' }, event_seq: 2 }),
      event('delete'),
      event('replace'),
    ];
    const passed = aggregate(events, CHANGE_STREAM_PIPELINE, NOW);
    expect(passed.map((e) => e.operationType)).toEqual(['insert', 'update', 'update']);
  });
});
