import { describe, expect, it } from 'vitest';
import { createActor, SimulatedClock, type AnyEventObject, type AnyMachineSnapshot, type CallbackActorLogic } from 'xstate';
import { serializeSnapshot } from 'xstate/graph';
import { supervisorMachine, type ProcessCommand, type SupervisorInput } from '../../machines/supervisor.machine.js';
import type { CommandPlan, SupervisorResult } from '../../machines/types.js';
import { settle } from '../machines/helpers.js';
import { CoverageRecorder, machineUniverse } from './coverage.js';
import { ControlledEffects } from './fake-effects.js';
import { edgePaths, eventKind, handledEventTypes, simplePaths, type ModelPath } from './paths.js';

// Model-based test of the supervisor machine, like the run's and the host's: xstate/graph walks the real chart
// with every event its process actor can report (spawned, spawn failed with and without a host fault, output,
// every kind of exit, a group that survives), the run's TERMINATE and each of its timers; each generated path is
// replayed on a real actor whose process actor is a fake that records the signals it is told to send. The actor
// must pass through the path's snapshots and keep the supervisor's promises:
// - a started group is killed and confirmed gone before the machine ends: it ends in `exited` only on the
//   process actor's EXITED (the leader reaped, stragglers killed) or before any spawn, otherwise in `unkillable`;
// - escalation is SIGTERM, then SIGKILL after signal_escalate, never SIGKILL first, each at most once;
// - a group that survived SIGKILL (or the leader's exit) is reported as `unkillable`, with its pgid;
// - the outcome names the first reason the command ended (timed out, stalled, terminated, spawn failed, exited);
// - the process actor (whose stop kills the group in the daemon) never outlives the supervisor.
// A timer's firing is a path event: the replay delivers it as the clock would, and the clock never moves, so no
// other timer fires behind the path's back.

const timing = { maxProcessingTimeMs: 60_000, maxNoOutputTimeMs: 30_000, signalEscalateMs: 1_000 };
const plan = { number: 7, token: 'lease-1', attempt: 1 } as CommandPlan;
const input: SupervisorInput = { plan, timing };

function exited(exitCode: number | null, signal: string | null, extra: Record<string, unknown> = {}) {
  return { exitCode, signal, stderrTail: 'tail', durationMs: 5, ...extra };
}

/** Every way the process actor can report the end of the group. */
const EXITS = [
  exited(0, null),
  exited(3, null),
  exited(null, 'SIGTERM'),
  exited(null, 'SIGKILL', { groupRemaining: 1 }),
  exited(null, 'SIGKILL', { interruption: 'lease_guard' }),
];

function supervisorEvents(snapshot: AnyMachineSnapshot): AnyEventObject[] {
  return handledEventTypes(snapshot).flatMap((type): AnyEventObject[] => {
    if (eventKind(type).kind === 'after') return [{ type }];
    switch (type) {
      case 'SPAWNED':
        return [{ type, pid: 900, pgid: 900 }];
      case 'SPAWN_FAILED':
        return [
          { type, error: 'spawn sh ENOENT' },
          { type, error: 'spawn sh ENOENT', hostFault: 'process.command: sh not found' },
        ];
      case 'OUTPUT':
      case 'TERMINATE':
        return [{ type }];
      case 'EXITED':
        return EXITS.map((exit) => ({ type, ...exit }));
    }
    throw new Error(`the supervisor model has no events for ${type}: teach supervisorEvents about it`);
  });
}

const FROM_PROCESS = new Set(['SPAWNED', 'SPAWN_FAILED', 'OUTPUT', 'EXITED']);

interface Replayed {
  effects: ControlledEffects;
  snapshots: AnyMachineSnapshot[];
  /** Live process actors after each step (index 0: after start), and after the supervisor was stopped. */
  processAlive: number[];
  aliveAfterStop: number;
}

async function replay(path: ModelPath, coverage: CoverageRecorder): Promise<Replayed> {
  const effects = new ControlledEffects();
  const process = effects.callback('process') as unknown as CallbackActorLogic<ProcessCommand, { plan: CommandPlan }>;
  const machine = supervisorMachine.provide({ actors: { process } });
  let rootId = '';
  const actor = createActor(machine, {
    input,
    clock: new SimulatedClock(),
    inspect: coverage.observer((event) => event.actorRef.sessionId === rootId),
  });
  rootId = actor.sessionId;
  actor.start();
  await settle();
  const snapshots: AnyMachineSnapshot[] = [actor.getSnapshot()];
  const processAlive = [effects.alive('process')];
  for (const [index, step] of path.steps.entries()) {
    effects.step = index + 1;
    const { event } = step;
    if (FROM_PROCESS.has(event.type)) effects.sendFrom('process', event);
    else actor.send(event as Parameters<typeof actor.send>[0]);
    await settle();
    const snapshot = actor.getSnapshot();
    snapshots.push(snapshot);
    processAlive.push(effects.alive('process'));
    expect(serializeSnapshot(snapshot), `${path.description}: step ${index + 1} (${event.type})`).toBe(
      serializeSnapshot(step.state),
    );
    expect(snapshot.status).toBe(step.state.status);
  }
  // A supervisor left before its end (the run left `busy`) is stopped, and its process actor with it.
  actor.stop();
  return { effects, snapshots, processAlive, aliveAfterStop: effects.alive('process') };
}

const DELAY_OUTCOME: Record<string, SupervisorResult['outcome']> = {
  maxProcessingTime: 'timed_out',
  maxNoOutputTime: 'stalled',
};

/** The supervisor's promises on one replayed path; each message names what broke. */
function supervisorPromises(path: ModelPath, replayed: Replayed): string[] {
  const { effects, snapshots, processAlive, aliveAfterStop } = replayed;
  const problems: string[] = [];
  const steps = path.steps.map((s) => s.event);
  const signals = effects.received
    .filter((r) => r.src === 'process')
    .map((r) => ({ signal: (r.event as ProcessCommand).signal, step: r.step }));
  const spawnedAt = steps.findIndex((e) => e.type === 'SPAWNED');
  const last = snapshots[snapshots.length - 1]!;

  // Escalation: SIGTERM first, then SIGKILL, each at most once; SIGKILL only when entering `killing`.
  const order = signals.map((s) => s.signal).join(',');
  if (!['', 'SIGTERM', 'SIGTERM,SIGKILL'].includes(order)) problems.push(`signals sent in the order ${order}`);
  for (const { signal, step } of signals) {
    const entered = snapshots[step]!;
    const expected = signal === 'SIGTERM' ? 'terminating' : 'killing';
    if (!entered.matches(expected)) problems.push(`${signal} sent at step ${step} outside ${expected}`);
  }
  for (const [i, snapshot] of snapshots.entries()) {
    if (i === 0) continue;
    const before = snapshots[i - 1]!;
    if (snapshot.matches('terminating') && !before.matches('terminating')) {
      if (!signals.some((s) => s.signal === 'SIGTERM' && s.step === i)) problems.push(`entered terminating at step ${i} without SIGTERM`);
    }
    if (snapshot.matches('killing') && !before.matches('killing')) {
      if (!before.matches('terminating')) problems.push(`entered killing at step ${i} from ${JSON.stringify(before.value)}`);
      if (!signals.some((s) => s.signal === 'SIGKILL' && s.step === i)) problems.push(`entered killing at step ${i} without SIGKILL`);
    }
  }

  if (last.status === 'done') {
    const output = last.output as SupervisorResult;
    const ending = steps[steps.length - 1]!;
    // A started group ends only confirmed gone (EXITED) or reported unkillable.
    if (last.matches('exited')) {
      if (spawnedAt >= 0 && ending.type !== 'EXITED') problems.push(`ended in exited on ${ending.type} after the spawn`);
      if (spawnedAt < 0 && ending.type !== 'SPAWN_FAILED' && ending.type !== 'EXITED') {
        problems.push(`ended in exited on ${ending.type} before any spawn`);
      }
      if (ending.type === 'EXITED' && (ending as { groupRemaining?: number }).groupRemaining) {
        problems.push('a group that survived its leader was reported exited');
      }
    }
    if (last.matches('unkillable')) {
      if (output.outcome !== 'unkillable') problems.push(`unkillable reported as ${output.outcome}`);
      const survived = ending.type === 'EXITED' && ((ending as { groupRemaining?: number }).groupRemaining ?? 0) > 0;
      if (!survived && !signals.some((s) => s.signal === 'SIGKILL')) problems.push('unkillable without a SIGKILL first');
      if (spawnedAt >= 0 && output.pgid !== 900) problems.push(`unkillable without the group's pgid (${output.pgid})`);
    }
    // The outcome names the first reason the command ended.
    const first = steps.find((e) => e.type === 'TERMINATE' || e.type === 'SPAWN_FAILED' || eventKind(e.type).kind === 'after');
    let expected: SupervisorResult['outcome'] = 'exited';
    if (first?.type === 'TERMINATE') expected = 'terminated';
    else if (first?.type === 'SPAWN_FAILED') expected = 'spawn_failed';
    else if (first) expected = DELAY_OUTCOME[(eventKind(first.type) as { delay: string }).delay] ?? 'exited';
    if (last.matches('unkillable')) expected = 'unkillable';
    if (output.outcome !== expected) problems.push(`outcome ${output.outcome}, expected ${expected}`);
    const endingCode = (ending as unknown as { exitCode: number | null }).exitCode;
    if (ending.type === 'EXITED' && output.exitCode !== endingCode) {
      problems.push(`exit code ${output.exitCode} recorded for an exit with ${endingCode}`);
    }
    if (processAlive[processAlive.length - 1]! > 0) problems.push('the process actor outlived the supervisor');
  }
  if (aliveAfterStop > 0) problems.push('the process actor outlived a stopped supervisor');
  return problems;
}

describe('supervisor machine, model-based', () => {
  it('generated paths reach every state and take every transition of the real actor', async () => {
    const coverage = new CoverageRecorder('supervisor', machineUniverse(supervisorMachine));
    const options = { input, events: supervisorEvents };
    const paths = [...simplePaths(supervisorMachine, options), ...edgePaths(supervisorMachine, options)];
    const broken = new Set<string>();
    for (const path of paths) {
      const replayed = await replay(path, coverage);
      for (const problem of supervisorPromises(path, replayed)) broken.add(`${path.description}: ${problem}`);
    }
    console.log(coverage.summary(paths.length));
    expect(coverage.unknownTransitions()).toEqual([]);
    expect([...broken]).toEqual([]);
    expect(coverage.missingStates()).toEqual([]);
    expect(coverage.missingTransitions()).toEqual([]);
  });
});
