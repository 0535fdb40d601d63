import { describe, expect, it } from 'vitest';
import { createActor, setup, type EventObject } from 'xstate';
import type { ClaimedRun } from '../../machines/run.machine.js';
import { defaultConfig } from '../../src/config/schema.js';
import { createDaemonContext } from '../../src/daemon/context.js';
import { runEffects } from '../../src/daemon/run-effects.js';
import type { RunStore } from '../../src/store/run-store.js';
import { waitFor } from '../helpers/cli.js';
import { silentLogger } from '../model/crash-harness.js';

// Issue 12 fault 11: an owner that cannot renew its lease (the store locked by another process, or
// unreachable) must stop its command before another host may take the run over, instead of running on
// unowned; its fenced writes ride out short contention and count as refused past the same limit.

const busy = () => Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' });

const run: ClaimedRun = { number: 5, token: 'lease', attempt: 1, nFailures: 0, nInterruptions: 0, doc: {} };

/** The run effects over a fake store and a monotonic clock the test moves. */
function effects(store: Partial<RunStore>) {
  const config = defaultConfig('/tmp', 'h1');
  config.timeouts.check_interval = 20;
  config.timeouts.max_busy_time = 1_000; // the lease is given up 960 ms (of the test's clock) after a renewal
  let now = 0;
  const ctx = createDaemonContext({
    config,
    store: store as RunStore,
    logger: silentLogger('h1'),
    monotonic: () => now,
  });
  return { effects: runEffects(ctx), advance: (ms: number) => (now += ms) };
}

/** Runs the lease keeper under a parent that records what it sends back. */
function keep(keeper: ReturnType<typeof runEffects>['leaseKeeper']) {
  const received: string[] = [];
  const parent = setup({ actors: { keeper } }).createMachine({
    invoke: { src: 'keeper', input: { run } },
    on: { '*': { actions: ({ event }: { event: EventObject }) => received.push(event.type) } },
  });
  const actor = createActor(parent).start();
  return { received, stop: () => actor.stop() };
}

describe('lease keeper', () => {
  it('gives the lease up (LEASE_LOST: the command is stopped) once heartbeats failed for longer than it may be held', async () => {
    let beats = 0;
    const t = effects({
      heartbeatRun: async () => {
        beats += 1;
        throw busy();
      },
    });
    const k = keep(t.effects.leaseKeeper);
    try {
      await waitFor(() => beats >= 3, 'a few failed heartbeats');
      expect(k.received).toEqual([]);
      t.advance(1_000);
      await waitFor(() => k.received.length > 0, 'the keeper to give the lease up');
      expect(k.received).toEqual(['LEASE_LOST']);
    } finally {
      k.stop();
    }
  });

  it('keeps the lease while heartbeats succeed, however much time passes between them', async () => {
    let beats = 0;
    const t = effects({
      heartbeatRun: async () => {
        beats += 1;
        t.advance(400); // each renewal comes 400 ms (of the test's clock) after the last
        return true;
      },
    });
    const k = keep(t.effects.leaseKeeper);
    try {
      await waitFor(() => beats >= 10, 'ten heartbeats');
      expect(k.received).toEqual([]);
    } finally {
      k.stop();
    }
  });
});

describe('fenced writes under contention', () => {
  it('retry while the lease may be held, and count as refused past it', async () => {
    let tries = 0;
    const t = effects({
      releaseRun: async () => {
        tries += 1;
        if (tries === 2) t.advance(1_000); // the store stayed locked past the lease
        throw busy();
      },
    });
    const release = createActor(t.effects.releaseRun, { input: { run } }).start();
    const output = await new Promise((resolve) => release.subscribe({ complete: () => resolve(release.getSnapshot().output) }));
    expect(output).toEqual({ ok: false });
    expect(tries).toBe(2);
  });

  it('go through once the lock is gone', async () => {
    let tries = 0;
    const t = effects({
      releaseRun: async () => {
        tries += 1;
        if (tries < 3) throw busy();
        return true;
      },
    });
    const release = createActor(t.effects.releaseRun, { input: { run } }).start();
    const output = await new Promise((resolve) => release.subscribe({ complete: () => resolve(release.getSnapshot().output) }));
    expect(output).toEqual({ ok: true });
  });

  it('do not swallow other errors', async () => {
    const t = effects({
      releaseRun: async () => {
        throw new Error('The database connection is not open');
      },
    });
    const release = createActor(t.effects.releaseRun, { input: { run } });
    const error = await new Promise((resolve) => {
      release.subscribe({ error: resolve });
      release.start();
    });
    expect(String(error)).toMatch(/connection is not open/);
  });
});

