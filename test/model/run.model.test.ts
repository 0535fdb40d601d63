import { describe, expect, it } from 'vitest';
import {
  assign,
  createActor,
  setup,
  SimulatedClock,
  type AnyMachineSnapshot,
  type AnyEventObject,
} from 'xstate';
import { serializeSnapshot } from 'xstate/graph';
import { runMachine, type ClaimedRun, type RunInput } from '../../machines/run.machine.js';
import type { supervisorMachine } from '../../machines/supervisor.machine.js';
import type { CommandPlan, SupervisorResult } from '../../machines/types.js';
import { settle } from '../machines/helpers.js';
import { CoverageRecorder, machineUniverse } from './coverage.js';
import { ControlledEffects } from './fake-effects.js';
import { edgePaths, eventKind, simplePaths, handledEventTypes, invokedSources, type ModelPath } from './paths.js';

// Model-based test of the run machine: xstate/graph walks the real chart with concrete events (every outcome
// of every effect), and each generated path is replayed on a real actor whose effects are fakes that finish
// as the path says. The actor must pass through exactly the snapshots of the path, keep the run machine's
// promises (no write after the lease is lost, the command terminated when asked, nothing left alive at the
// end), and together the replays must take every state and every transition of the definition.

const timing = { maxProcessingTimeMs: 60_000, maxNoOutputTimeMs: 30_000, signalEscalateMs: 1_000 };
const NO_RETRY_EXIT = 42;

function claimed(attempt: number, nFailures: number): ClaimedRun {
  return { number: 7, token: `lease-${attempt}`, attempt, nFailures, nInterruptions: 0, doc: { number: 7 } };
}

/** The chart only carries the plan to its supervisor, and the fake supervisor never reads it. */
function planFor(run: ClaimedRun): CommandPlan {
  return { number: run.number, token: run.token, attempt: run.attempt } as CommandPlan;
}

// max_failures 2: a failure waits for a retry (a new claim and a new actor), a no_retry exit abandons the run.
const input: RunInput = {
  run: claimed(1, 0),
  maxFailures: 2,
  maxInterruptions: 20,
  noRetryExitCodes: [NO_RETRY_EXIT],
  timing,
};

function result(outcome: SupervisorResult['outcome'], exitCode: number | null, signal: string | null = null) {
  return { outcome, exitCode, signal, stderrTail: '', durationMs: 5, pid: 900, pgid: 900 };
}

/** Every way the supervisor can end, as far as the run chart can tell them apart. */
const supervisorOutcomes: SupervisorResult[] = [
  result('exited', 0),
  result('exited', 3),
  result('exited', NO_RETRY_EXIT),
  result('timed_out', null, 'SIGTERM'),
  result('terminated', null, 'SIGTERM'),
  result('unkillable', null, 'SIGKILL'),
];

const sources = invokedSources(runMachine);
const WRITES = ['preflight', 'verifyOutput', 'registerOutput', 'recordFailure', 'recordAbandon', 'releaseRun'];

/** The concrete events a snapshot may receive: the generator knows every kind, or the test fails. */
function runEvents(snapshot: AnyMachineSnapshot, withCheck = true): AnyEventObject[] {
  return handledEventTypes(snapshot).flatMap((type): AnyEventObject[] => {
    const kind = eventKind(type);
    if (kind.kind === 'error') return [{ type, error: new Error(`${sources.get(kind.invocation)} failed`) }];
    if (kind.kind === 'done') {
      const src = sources.get(kind.invocation);
      if (src === 'supervisor') return supervisorOutcomes.map((output) => ({ type, output }));
      if (src === 'preflight') {
        const run = (snapshot.context as { run: ClaimedRun }).run;
        // with and without a stage check
        return [
          { type, output: { ok: true, plan: planFor(run) } },
          ...(withCheck ? [{ type, output: { ok: true, plan: planFor(run), check: planFor(run) } }] : []),
          { type, output: { ok: false } },
        ];
      }
      if (src && WRITES.includes(src)) return [{ type, output: { ok: true } }, { type, output: { ok: false } }];
      if (src === 'confirmAttemptGone') return [{ type, output: undefined }];
    }
    if (type === 'LEASE_LOST' || type === 'STOP') return [{ type }];
    throw new Error(`the run model has no events for ${type}: teach runEvents about it`);
  });
}

/** Stands in for the supervisor: finishes with the outcome the path names, or crashes; records TERMINATE. */
function fakeSupervisor(effects: ControlledEffects) {
  type FakeEvent = { type: 'TERMINATE' } | { type: 'FINISH'; output: SupervisorResult } | { type: 'CRASH' };
  return setup({ types: { events: {} as FakeEvent, context: {} as { output: SupervisorResult | null } } }).createMachine({
    context: { output: null },
    entry: () => effects.started.push({ src: 'supervisor', step: effects.step }),
    initial: 'running',
    states: {
      running: {
        on: {
          TERMINATE: {
            actions: () => effects.received.push({ src: 'supervisor', event: { type: 'TERMINATE' }, step: effects.step }),
          },
          FINISH: { target: 'finished', actions: assign({ output: ({ event }) => event.output }) },
          CRASH: {
            actions: () => {
              throw new Error('supervisor failed');
            },
          },
        },
      },
      finished: { type: 'final' },
    },
    output: ({ context }) => context.output!,
  });
}

interface Replayed {
  effects: ControlledEffects;
  snapshots: AnyMachineSnapshot[];
}

async function replay(path: ModelPath, coverage: CoverageRecorder): Promise<Replayed> {
  const effects = new ControlledEffects();
  const machine = runMachine.provide({
    actors: {
      leaseKeeper: effects.callback('leaseKeeper'),
      preflight: effects.promise('preflight'),
      supervisor: fakeSupervisor(effects) as unknown as typeof supervisorMachine,
      verifyOutput: effects.promise('verifyOutput'),
      registerOutput: effects.promise('registerOutput'),
      recordFailure: effects.promise('recordFailure'),
      recordAbandon: effects.promise('recordAbandon'),
      releaseRun: effects.promise('releaseRun'),
      confirmAttemptGone: effects.promise('confirmAttemptGone'),
    },
  });
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
  for (const [index, step] of path.steps.entries()) {
    effects.step = index + 1;
    const { event } = step;
    const kind = eventKind(event.type);
    const current = actor.getSnapshot();
    if (kind.kind === 'done' || kind.kind === 'error') {
      const src = sources.get(kind.invocation)!;
      if (src === 'supervisor') {
        const supervisor = current.children.supervisor;
        if (!supervisor) throw new Error('the path finishes the supervisor, but none is running');
        const output = event.output as SupervisorResult;
        supervisor.send(kind.kind === 'done' ? { type: 'FINISH', output } : { type: 'CRASH' });
      } else if (kind.kind === 'done') {
        effects.resolve(src, event.output);
      } else {
        effects.reject(src, event.error);
      }
    } else if (event.type === 'LEASE_LOST') {
      effects.sendFrom('leaseKeeper', event);
    } else {
      actor.send(event as Parameters<typeof actor.send>[0]);
    }
    await settle();
    const snapshot = actor.getSnapshot();
    snapshots.push(snapshot);
    expect(serializeSnapshot(snapshot), `${path.description}: step ${index + 1} (${event.type})`).toBe(
      serializeSnapshot(step.state),
    );
    expect(snapshot.status).toBe(step.state.status);
  }
  actor.stop();
  return { effects, snapshots };
}

function finalOf<T>(items: T[]): T {
  return items[items.length - 1]!;
}

/** The run machine's promises on one replayed path; each message names what broke. */
function runPromises(path: ModelPath, { effects, snapshots }: Replayed): string[] {
  const problems: string[] = [];
  const lostAt = path.steps.findIndex(
    (step, i) => step.event.type === 'LEASE_LOST' && snapshots[i]!.status === 'active' &&
      (snapshots[i]!.matches('considering') || snapshots[i]!.matches('busy')),
  );
  if (lostAt >= 0) {
    const late = effects.started.filter((s) => WRITES.includes(s.src) && s.step > lostAt + 1);
    if (late.length > 0) problems.push(`wrote after the lease was lost: ${late.map((s) => s.src).join(', ')}`);
    // An operator's fail or abandon (or cleanup) takes the lease: the actor ends in `lost`, never in a state
    // that claims an outcome of its own.
    for (const snapshot of snapshots.slice(lostAt + 1)) {
      for (const outcome of ['abandoned', 'failed', 'done', 'released', 'releasing'] as const) {
        if (snapshot.matches(outcome)) problems.push(`entered ${outcome} after the lease was lost`);
      }
    }
    if (finalOf(snapshots).status === 'done' && !['lost', 'error'].some((s) => finalOf(snapshots).matches(s))) {
      problems.push(`ended in ${JSON.stringify(finalOf(snapshots).value)} after the lease was lost`);
    }
  }
  for (const [i, step] of path.steps.entries()) {
    const before = snapshots[i]!;
    const commandRunning = before.matches({ busy: 'supervising' }) || before.matches({ busy: 'checking' });
    if (['LEASE_LOST', 'STOP'].includes(step.event.type) && commandRunning) {
      if (!effects.received.some((r) => r.src === 'supervisor' && r.event.type === 'TERMINATE' && r.step === i + 1)) {
        problems.push(`${step.event.type} while supervising did not terminate the command`);
      }
    }
  }
  const last = snapshots[snapshots.length - 1]!;
  if (last.status === 'done' && effects.alive('leaseKeeper') > 0) problems.push('a lease keeper outlived the run actor');
  return problems;
}

describe('run machine, model-based', () => {
  it('generated paths reach every state and take every transition of the real actor', async () => {
    const universe = machineUniverse(runMachine);
    const coverage = new CoverageRecorder('run', universe);
    // Simple paths keep histories the snapshot forgets (the lease lost, then STOP); edge paths add the
    // self-loops and back edges no simple path takes.
    // The simple paths without a stage check (with one, their number explodes); the edge paths with and without.
    const options = { input, events: runEvents };
    const withoutCheck = { input, events: (snapshot: AnyMachineSnapshot) => runEvents(snapshot, false) };
    const paths = [...simplePaths(runMachine, withoutCheck), ...edgePaths(runMachine, options)];
    const broken: string[] = [];
    for (const path of paths) {
      const replayed = await replay(path, coverage);
      for (const problem of runPromises(path, replayed)) broken.push(`${path.description}: ${problem}`);
    }
    console.log(coverage.summary(paths.length));
    expect(coverage.unknownTransitions()).toEqual([]);
    expect([...new Set(broken)]).toEqual([]);
    expect(coverage.missingStates()).toEqual([]);
    expect(coverage.missingTransitions()).toEqual([]);
  });
});
