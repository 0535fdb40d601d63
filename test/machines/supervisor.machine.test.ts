import { describe, expect, it } from 'vitest';
import { createActor, SimulatedClock } from 'xstate';
import { supervisorMachine } from '../../machines/supervisor.machine.js';
import type { CommandPlan } from '../../machines/types.js';
import { FakeProcess, recordStates, settle } from './helpers.js';

const plan: CommandPlan = {
  number: 7,
  token: 't',
  attempt: 1,
  argv: ['true'],
  cwd: '.',
  env: {},
  logFile: '/dev/null',
  outputDir: '/tmp/x',
  errorFile: '/tmp/x.err',
  targets: [],
  resources: {},
  startedAt: 0,
};
const timing = { maxProcessingTimeMs: 10_000, maxNoOutputTimeMs: 3_000, signalEscalateMs: 500 };

function start() {
  const fake = new FakeProcess();
  const clock = new SimulatedClock();
  const actor = createActor(supervisorMachine.provide({ actors: { process: fake.logic } }), {
    input: { plan, timing },
    clock,
  });
  const states = recordStates(actor);
  actor.start();
  return { fake, clock, actor, states };
}

describe('supervisor machine', () => {
  it('spawns, runs and records a normal exit', () => {
    const { fake, actor, states } = start();
    fake.spawn();
    fake.send({ type: 'OUTPUT' });
    fake.exit(0);
    expect(states).toEqual(['spawning', 'running.producing', 'exited']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'exited', exitCode: 0, pid: 4242 });
    expect(fake.signals).toEqual([]);
  });

  it('escalates SIGTERM → SIGKILL on timeout and ends timed out when the group goes', async () => {
    const { fake, clock, actor, states } = start();
    fake.spawn();
    // Keep producing output so the stall clock never fires; only the processing clock runs out.
    for (let t = 0; t < 10_000; t += 2_000) {
      clock.increment(2_000);
      fake.send({ type: 'OUTPUT' });
    }
    await settle();
    expect(states.at(-1)).toBe('terminating');
    expect(fake.signals).toEqual(['SIGTERM']);
    clock.increment(500);
    await settle();
    expect(states.at(-1)).toBe('killing');
    expect(fake.signals).toEqual(['SIGTERM', 'SIGKILL']);
    fake.exit(null, 'SIGKILL');
    expect(states.slice(-3)).toEqual(['terminating', 'killing', 'exited']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'timed_out', signal: 'SIGKILL' });
  });

  it('tells a stall from slowness: output restarts only the stall clock', async () => {
    const { fake, clock, actor, states } = start();
    fake.spawn();
    clock.increment(2_000);
    fake.send({ type: 'OUTPUT' });
    clock.increment(2_000);
    await settle();
    expect(states.at(-1)).toBe('running.producing');
    clock.increment(1_000);
    await settle();
    expect(states.at(-1)).toBe('terminating');
    fake.exit(null, 'SIGTERM');
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'stalled', signal: 'SIGTERM' });
  });

  it('ends unkillable when the group survives SIGKILL', async () => {
    const { fake, clock, actor, states } = start();
    fake.spawn();
    actor.send({ type: 'TERMINATE' });
    clock.increment(500);
    clock.increment(500);
    await settle();
    expect(states).toEqual(['spawning', 'running.producing', 'terminating', 'killing', 'unkillable']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'unkillable' });
    expect(fake.signals).toEqual(['SIGTERM', 'SIGKILL']);
  });

  it('ends unkillable when processes of the group outlive the leader and SIGKILL', () => {
    const { fake, actor, states } = start();
    fake.spawn();
    fake.send({ type: 'EXITED', exitCode: 0, signal: null, stderrTail: '', durationMs: 5, groupRemaining: 1 });
    expect(states).toEqual(['spawning', 'running.producing', 'unkillable']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'unkillable' });
  });

  it('reports a command that cannot start', () => {
    const { fake, actor, states } = start();
    fake.send({ type: 'SPAWN_FAILED', error: 'nope: not found' });
    expect(states).toEqual(['spawning', 'exited']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'spawn_failed', error: 'nope: not found' });
  });

  it('terminates on request and stops the process actor when done', () => {
    const { fake, actor, states } = start();
    fake.spawn();
    actor.send({ type: 'TERMINATE' });
    fake.exit(null, 'SIGTERM');
    expect(states).toEqual(['spawning', 'running.producing', 'terminating', 'exited']);
    expect(actor.getSnapshot().output).toMatchObject({ outcome: 'terminated' });
    expect(fake.stopped).toBe(true);
  });
});
