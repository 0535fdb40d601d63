import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise, sendTo, setup, SimulatedClock, type EventObject } from 'xstate';
import {
  stagesWithRoom,
  hostMachine,
  type ClaimInput,
  type ClaimOutput,
  type HostCheckOutput,
  type HostInput,
} from '../../machines/host.machine.js';
import { runMachine, type ClaimedRun, type RunInput, type RunSettledEvent } from '../../machines/run.machine.js';
import type { RunSettlement } from '../../machines/types.js';
import { deferred, recordStates, settle } from './helpers.js';

type FakeRunEvent = { type: 'SETTLE'; settlement: RunSettlement; hostFault?: string } | { type: 'STOP' };

/** A run actor that settles when the test says so, and releases its run on STOP. */
const fakeRun = setup({
  types: { input: {} as RunInput, context: {} as { number: number }, events: {} as FakeRunEvent },
}).createMachine({
  context: ({ input }) => ({ number: input.run.number }),
  on: {
    SETTLE: {
      actions: sendTo(
        ({ system }) => system.get('host'),
        ({ context, event }): RunSettledEvent => ({
          type: 'RUN_SETTLED',
          number: context.number,
          settlement: event.type === 'SETTLE' ? event.settlement : 'released',
          ...(event.type === 'SETTLE' && event.hostFault !== undefined ? { hostFault: event.hostFault } : {}),
        }),
      ),
    },
    STOP: {
      actions: sendTo(
        ({ system }) => system.get('host'),
        ({ context }): RunSettledEvent => ({ type: 'RUN_SETTLED', number: context.number, settlement: 'released' }),
      ),
    },
  },
});

function claimedRun(number: number): ClaimedRun {
  return { number, token: `t${number}`, attempt: 1, nFailures: 0, nInterruptions: 0, doc: {} };
}

interface Options {
  slots?: number;
  once?: boolean;
  queue?: number[];
  claim?: (input: ClaimInput) => Promise<ClaimOutput>;
  recover?: () => Promise<void>;
  hostFaultThreshold?: number;
  checkHost?: () => Promise<HostCheckOutput>;
}

function start(options: Options = {}) {
  const queue = [...(options.queue ?? [])];
  const claims: number[] = [];
  const calls: string[] = [];
  let wake: (() => void) | undefined;
  const machine = hostMachine.provide({
    actors: {
      register: fromPromise(async () => {
        calls.push('register');
      }),
      recoverRuns: fromPromise(async () => {
        calls.push('recoverRuns');
        await options.recover?.();
      }),
      heartbeat: fromCallback<EventObject, { host: string }>(() => undefined),
      wakeWatcher: fromCallback<EventObject, { host: string }>(({ sendBack }) => {
        wake = () => sendBack({ type: 'WAKE' });
      }),
      claimNext: fromPromise<ClaimOutput, ClaimInput>(async ({ input }) => {
        if (options.claim) return options.claim(input);
        const number = queue.shift();
        if (number === undefined) return { run: null, nextPollMs: 10_000 };
        claims.push(number);
        return { run: claimedRun(number), nextPollMs: 10_000 };
      }),
      deregister: fromPromise(async () => {
        calls.push('deregister');
      }),
      announcePause: fromPromise<void, { host: string; reason: string; faults: number }>(async ({ input }) => {
        calls.push(`announcePause: ${input.faults} ${input.reason}`);
      }),
      checkHost: fromPromise<HostCheckOutput, { host: string; reason: string }>(async () => {
        calls.push('checkHost');
        return options.checkHost ? options.checkHost() : { problem: null };
      }),
      // Only the protocol matters here: RUN_SETTLED to the host, STOP from it.
      run: fakeRun as unknown as typeof runMachine,
    },
  });
  const input: HostInput = {
    host: 'h1',
    slots: options.slots ?? 1,
    idlePollMs: 10_000,
    once: options.once ?? false,
    maxFailures: 3,
    maxInterruptions: 20,
    noRetryExitCodes: [],
    timing: { maxProcessingTimeMs: 1, maxNoOutputTimeMs: 1, signalEscalateMs: 1 },
    hostFaultThreshold: options.hostFaultThreshold ?? 3,
    recheckMs: 10_000,
  };
  const clock = new SimulatedClock();
  const settled: string[] = [];
  const actor = createActor(machine, {
    input,
    clock,
    systemId: 'host',
    inspect: (event) => {
      if (event.type === '@xstate.event' && event.event.type === 'RUN_SETTLED') {
        const e = event.event as RunSettledEvent;
        settled.push(`${e.number}:${e.settlement}`);
      }
    },
  });
  const states = recordStates(actor);
  actor.start();
  const settleRun = (number: number, settlement: RunSettlement = 'done', hostFault?: string) =>
    actor.system.get(`run-${number}/process`)?.send({
      type: 'SETTLE',
      settlement,
      ...(hostFault !== undefined ? { hostFault } : {}),
    });
  return { actor, clock, states, queue, claims, calls, settled, settleRun, wake: () => wake?.() };
}

describe('host machine', () => {
  it('tells each claim which runs still have an actor here, so none is claimed twice (issue 12 fault 1)', async () => {
    const seen: number[][] = [];
    const queue = [4, 7];
    const t = start({
      slots: 3,
      claim: async (input) => {
        seen.push([...input.running]);
        const number = queue.shift();
        return number === undefined ? { run: null, nextPollMs: 10_000 } : { run: claimedRun(number), nextPollMs: 10_000 };
      },
    });
    await settle();
    expect(seen).toEqual([[], [4], [4, 7]]);
    expect(t.actor.getSnapshot().context.running).toEqual([4, 7]);
  });

  it('a claim that returns a run whose actor is still stopping ends the host with an error, not an actor crash', async () => {
    // the store excludes running runs; a claim effect that does not is a bug the host names
    const t = start({
      slots: 2,
      claim: async () => ({ run: claimedRun(9), nextPollMs: 10_000 }),
    });
    await settle();
    const snapshot = t.actor.getSnapshot();
    expect(snapshot.status).toBe('done');
    expect(snapshot.value).toBe('failed');
    expect(snapshot.output?.error).toMatch(/run 9 was claimed while its previous attempt's actor is still running/);
  });

  it('starting → running.idle when there is nothing to claim, and claims at once on a wake-up', async () => {
    const t = start();
    await settle();
    expect(t.states).toEqual(['starting', 'recovering', 'running.claiming', 'running.idle']);
    t.queue.push(5);
    t.wake();
    await settle();
    expect(t.states.slice(-2)).toEqual(['running.claiming', 'running.busy']);
    expect(t.claims).toEqual([5]);
    expect(t.actor.getSnapshot().context.running).toEqual([5]);
  });

  it('busy → idle when its run settles and nothing else is eligible', async () => {
    const t = start({ queue: [1] });
    await settle();
    expect(t.states.at(-1)).toBe('running.busy');
    t.settleRun(1);
    await settle();
    expect(t.states.slice(-3)).toEqual(['running.busy', 'running.claiming', 'running.idle']);
    expect(t.actor.getSnapshot().context.running).toEqual([]);
    expect(t.actor.system.get('run-1/process')).toBeUndefined();
  });

  it('claims up to its slots and no more until one frees', async () => {
    const t = start({ slots: 2, queue: [1, 2, 3] });
    await settle();
    expect(t.claims).toEqual([1, 2]);
    expect(t.states.at(-1)).toBe('running.busy');
    t.wake();
    await settle();
    expect(t.claims).toEqual([1, 2]);
    t.settleRun(2);
    await settle();
    expect(t.claims).toEqual([1, 2, 3]);
    expect(t.actor.getSnapshot().context.running).toEqual([1, 3]);
  });

  it('an idle host looks again after the poll interval on its own clock', async () => {
    const t = start();
    await settle();
    t.queue.push(9);
    t.clock.increment(9_999);
    await settle();
    expect(t.claims).toEqual([]);
    t.clock.increment(1);
    await settle();
    expect(t.claims).toEqual([9]);
  });

  it('STOP while busy stops its runs, waits for them, then deregisters', async () => {
    const t = start({ slots: 2, queue: [1, 2] });
    await settle();
    t.actor.send({ type: 'STOP' });
    await settle();
    expect(t.states.slice(-4)).toEqual(['running.busy', 'stopping', 'deregistering', 'stopped']);
    expect(t.calls).toEqual(['register', 'recoverRuns', 'deregister']);
    expect(t.settled.sort()).toEqual(['1:released', '2:released']);
    expect(t.actor.getSnapshot().output).toEqual({ error: null });
  });

  it('a STOP during a claim waits for the claim, so a claimed run is never dropped', async () => {
    const pending = deferred<ClaimOutput>();
    const t = start({ claim: () => pending.promise });
    await settle();
    expect(t.states.at(-1)).toBe('running.claiming');
    t.actor.send({ type: 'STOP' });
    pending.resolve({ run: claimedRun(4), nextPollMs: 1000 });
    await settle();
    // Run 4 was spawned, asked to stop, released, and only then the host stopped.
    expect(t.states).toEqual(['starting', 'recovering', 'running.claiming', 'stopping', 'deregistering', 'stopped']);
    expect(t.settled).toEqual(['4:released']);
  });

  it('pauses claiming after host_fault_threshold host faults in a row, checks again, and resumes once it passes', async () => {
    const checks: HostCheckOutput[] = [{ problem: 'process.log_dir: still a file' }, { problem: null }];
    const t = start({ hostFaultThreshold: 2, queue: [1, 2, 3, 4], checkHost: async () => checks.shift()! });
    await settle();
    t.settleRun(1, 'failed', 'process.log_dir: not a directory');
    await settle();
    // one host fault is not yet a pattern: the host claims the next run
    expect(t.claims).toEqual([1, 2]);
    t.settleRun(2, 'failed', 'process.log_dir: not a directory');
    await settle();
    expect(t.states.slice(-2)).toEqual(['running.paused.announcing', 'running.paused.waiting']);
    expect(t.claims).toEqual([1, 2]);
    expect(t.actor.getSnapshot().context.pausedReason).toBe('process.log_dir: not a directory');
    expect(t.calls).toContain('announcePause: 2 process.log_dir: not a directory');
    // a wake-up does not end a pause
    t.wake();
    await settle();
    expect(t.claims).toEqual([1, 2]);
    // the first check still finds the problem: the host stays paused, with what it found now
    t.clock.increment(10_000);
    await settle();
    expect(t.states.slice(-2)).toEqual(['running.paused.checking', 'running.paused.waiting']);
    expect(t.actor.getSnapshot().context.pausedReason).toBe('process.log_dir: still a file');
    expect(t.claims).toEqual([1, 2]);
    // the next one passes: claiming resumes
    t.clock.increment(10_000);
    await settle();
    expect(t.claims).toEqual([1, 2, 3]);
    expect(t.actor.getSnapshot().context).toMatchObject({ pausedReason: null, hostFaults: 0 });
  });

  it('a run that gets past the host (done, or failed by its command) resets the count of host faults', async () => {
    const t = start({ hostFaultThreshold: 2, queue: [1, 2, 3, 4] });
    await settle();
    t.settleRun(1, 'failed', 'process.command: not found');
    await settle();
    t.settleRun(2, 'failed');
    await settle();
    t.settleRun(3, 'failed', 'process.command: not found');
    await settle();
    expect(t.claims).toEqual([1, 2, 3, 4]);
    expect(t.states).not.toContain('running.paused.announcing');
  });

  it('STOP while paused stops the host', async () => {
    const t = start({ hostFaultThreshold: 1, queue: [1], checkHost: async () => ({ problem: 'still' }) });
    await settle();
    t.settleRun(1, 'failed', 'process.output_root: read-only');
    await settle();
    expect(t.states.at(-1)).toBe('running.paused.waiting');
    t.actor.send({ type: 'STOP' });
    await settle();
    expect(t.states.slice(-2)).toEqual(['deregistering', 'stopped']);
  });

  it('--once stops when nothing is eligible and nothing runs', async () => {
    const t = start({ once: true, queue: [1] });
    await settle();
    expect(t.states.at(-1)).toBe('running.busy');
    t.settleRun(1);
    await settle();
    expect(t.states.slice(-2)).toEqual(['deregistering', 'stopped']);
  });

  it('an unkillable command ends the host with an error', async () => {
    const t = start({ queue: [8] });
    await settle();
    t.settleRun(8, 'unkillable');
    await settle();
    expect(t.states.at(-1)).toBe('failed');
    expect(t.actor.getSnapshot().output?.error).toMatch(/run 8/);
  });

  it('recovers before its first claim, and a failed recovery ends the host with that error', async () => {
    const recovery = deferred<void>();
    const t = start({ queue: [1], recover: () => recovery.promise });
    await settle();
    expect(t.states).toEqual(['starting', 'recovering']);
    expect(t.claims).toEqual([]);
    recovery.reject(new Error('process group 77 survived SIGKILL'));
    await settle();
    expect(t.states.at(-1)).toBe('failed');
    expect(t.claims).toEqual([]);
    expect(t.actor.getSnapshot().output?.error).toBe('process group 77 survived SIGKILL');
  });

  it('a STOP during recovery stops the host before it claims anything', async () => {
    const recovery = deferred<void>();
    const t = start({ queue: [1], recover: () => recovery.promise });
    await settle();
    t.actor.send({ type: 'STOP' });
    recovery.resolve();
    await settle();
    expect(t.states).toEqual(['starting', 'recovering', 'deregistering', 'stopped']);
    expect(t.claims).toEqual([]);
  });

  it('remembers a shut disk gate until a claim finds it open again', async () => {
    let full = true;
    const t = start({
      claim: async () => (full ? { run: null, diskFull: true, nextPollMs: 500 } : { run: null, nextPollMs: 10_000 }),
    });
    await settle();
    expect(t.actor.getSnapshot().context.diskFull).toBe(true);
    expect(t.states.at(-1)).toBe('running.idle');
    // it looks again after the shorter poll the gate asked for
    full = false;
    t.clock.increment(500);
    await settle();
    expect(t.actor.getSnapshot().context.diskFull).toBe(false);
  });

  it('reuses a bounded set of child ids however many runs it handles (no per-run event types to cache)', async () => {
    const t = start({ slots: 2, queue: Array.from({ length: 40 }, (_, i) => i + 1) });
    const childIds = new Set<string>();
    for (let round = 0; round < 20; round += 1) {
      await settle();
      for (const id of Object.keys(t.actor.getSnapshot().children)) childIds.add(id);
      // settleRun finds each run actor by its system id, run-<number>, which stays per run
      for (const number of [...t.actor.getSnapshot().context.running]) t.settleRun(number);
    }
    await settle();
    expect(t.claims).toHaveLength(40);
    expect([...childIds].filter((id) => id.startsWith('run')).sort()).toEqual(['run-slot-0', 'run-slot-1']);
    expect(t.actor.getSnapshot().context.running).toEqual([]);
  });
});

describe('stagesWithRoom: which stages a claim is offered', () => {
  const stages = [
    { name: 'fetch', slots: 1 },
    { name: 'process', slots: 3 },
    { name: 'compress', slots: 2 },
  ];
  const running = (...names: string[]) => names.map((stage, number) => ({ number, stage }));

  it("offers every stage whose share is not full while the daemon has a free slot, so a stage with nothing eligible never idles another's", () => {
    // fetch is at its share; process and compress are offered together, so whichever has work takes the slot
    expect(stagesWithRoom({ stages, slots: 4, tasks: running('fetch') })).toEqual(['process', 'compress']);
    // nothing of fetch or compress runs: process may take every slot up to its share, not only its "part"
    expect(stagesWithRoom({ stages, slots: 4, tasks: running('process', 'process') })).toEqual(['fetch', 'process', 'compress']);
    expect(stagesWithRoom({ stages, slots: 4, tasks: running('process', 'process', 'process') })).toEqual(['fetch', 'compress']);
  });

  it("offers nothing once the daemon's slots are all taken, whatever the shares", () => {
    expect(stagesWithRoom({ stages, slots: 2, tasks: running('process', 'compress') })).toEqual([]);
  });
});
