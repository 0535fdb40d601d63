import { describe, expect, it } from 'vitest';
import { createActor, SimulatedClock, type AnyEventObject, type AnyMachineSnapshot } from 'xstate';
import { serializeSnapshot } from 'xstate/graph';
import { hostMachine, stagesWithRoom, type HostInput, type RunningTask, type StageSlots } from '../../machines/host.machine.js';
import type { ClaimedRun, RunInput } from '../../machines/run.machine.js';
import type { runMachine } from '../../machines/run.machine.js';
import { settle } from '../machines/helpers.js';
import { CoverageRecorder, machineUniverse } from './coverage.js';
import { ControlledEffects } from './fake-effects.js';
import { edgePaths, eventKind, handledEventTypes, invokedSources, type ModelPath } from './paths.js';

// Model-based test of the host machine, like the run machine's: xstate/graph walks the real chart with every
// outcome of every effect (a run claimed, nothing to claim, the disk gate shut, an error), wake-ups, signals,
// displacement and run settlements (a host fault among them, which pauses claiming); each generated path is replayed on a real host actor whose effects and
// run actors are fakes. The actor must pass through the path's snapshots and keep the host's promises, and the
// replays together must take every state and transition of the definition. Two configurations (a daemon and
// `daemon --once`) are needed: with --once the host never idles.

const POLL_MS = 1_000;
const timing = { maxProcessingTimeMs: 60_000, maxNoOutputTimeMs: 30_000, signalEscalateMs: 1_000 };

/** A daemon, `daemon --once`, or a daemon over a pipeline of two stages of one slot each (first, then second). */
const TWO_STAGES: StageSlots[] = [
  { name: 'first', slots: 1 },
  { name: 'second', slots: 1 },
];

function hostInput(once: boolean, stages?: StageSlots[]): HostInput {
  return {
    host: 'h1',
    slots: 2,
    ...(stages ? { stages } : {}),
    idlePollMs: POLL_MS,
    once,
    maxFailures: 3,
    maxInterruptions: 20,
    noRetryExitCodes: [],
    timing,
    hostFaultThreshold: 2,
    recheckMs: POLL_MS,
  };
}

function claimed(number: number, stage?: string): ClaimedRun {
  return {
    number,
    token: `lease-${number}${stage ? `-${stage}` : ''}`,
    attempt: 1,
    nFailures: 0,
    nInterruptions: 0,
    doc: { number },
    ...(stage && stage !== 'process' ? { stage } : {}),
  };
}

const taskKey = (task: RunningTask) => `${task.number}/${task.stage}`;

// Edge paths only: simple paths of the host number tens of thousands (its context remembers wake-ups, stops,
// slots), and its history that matters (a STOP, a wake-up) is in the snapshot, unlike the run's lost lease.
const sources = invokedSources(hostMachine);

interface HostModelContext {
  running: number[];
  tasks: RunningTask[];
  stages: StageSlots[];
  slots: number;
  nextPollMs: number;
}

function hostEvents(snapshot: AnyMachineSnapshot): AnyEventObject[] {
  const context = snapshot.context as HostModelContext;
  return handledEventTypes(snapshot).flatMap((type): AnyEventObject[] => {
    const kind = eventKind(type);
    if (kind.kind === 'error') return [{ type, error: new Error(`${sources.get(kind.invocation)} failed`) }];
    if (kind.kind === 'done') {
      const src = sources.get(kind.invocation);
      if (src === 'claimNext') {
        // A task of each stage with room (what the claim effect is asked for), on a run not running that stage.
        const running = new Set(context.tasks.map(taskKey));
        const claims = stagesWithRoom(context).map((stage) => {
          const free = [1, 2, 3].find((n) => !running.has(taskKey({ number: n, stage })))!;
          return { type, output: { run: claimed(free, stage), nextPollMs: POLL_MS } };
        });
        return [
          ...claims,
          { type, output: { run: null, nextPollMs: POLL_MS } },
          { type, output: { run: null, diskFull: true, nextPollMs: POLL_MS } },
          // a broken claim effect that hands back a task still running here (the store excludes them)
          ...context.tasks.slice(0, 1).map((task) => ({ type, output: { run: claimed(task.number, task.stage), nextPollMs: POLL_MS } })),
        ];
      }
      if (src === 'register' || src === 'recoverRuns' || src === 'deregister' || src === 'announcePause') {
        return [{ type, output: undefined }];
      }
      if (src === 'checkHost') {
        return [
          { type, output: { problem: null } },
          { type, output: { problem: 'process.log_dir: not a directory' } },
        ];
      }
    }
    if (kind.kind === 'after') return [{ type }];
    if (type === 'WAKE' || type === 'STOP') return [{ type }];
    if (type === 'DISPLACED') return [{ type, reason: 'another daemon took over host h1' }];
    if (type === 'FATAL') return [{ type, error: 'store file /data/runs.db was replaced' }];
    if (type === 'RUN_SETTLED') {
      return context.tasks.flatMap(({ number, stage }) => {
        const of = stage === 'process' ? {} : { stage };
        return [
          { type, number, ...of, settlement: 'done' },
          { type, number, ...of, settlement: 'error', error: `run ${number}: the store failed` },
          // could not start for a reason of the host: host_fault_threshold (2) of these in a row pause claiming
          { type, number, ...of, settlement: 'failed', hostFault: 'process.log_dir: not a directory' },
        ];
      });
    }
    throw new Error(`the host model has no events for ${type}: teach hostEvents about it`);
  });
}

const CALLBACKS = ['run', 'heartbeat', 'wakeWatcher', 'cleaner'] as const;

interface Replayed {
  effects: ControlledEffects;
  snapshots: AnyMachineSnapshot[];
  /** How many of each callback effect were alive after each step (index 0: after start). */
  alive: Array<Record<(typeof CALLBACKS)[number], number>>;
}

function aliveNow(effects: ControlledEffects): Replayed['alive'][number] {
  return Object.fromEntries(CALLBACKS.map((src) => [src, effects.alive(src)])) as Replayed['alive'][number];
}

async function replay(path: ModelPath, input: HostInput, coverage: CoverageRecorder): Promise<Replayed> {
  const effects = new ControlledEffects();
  const clock = new SimulatedClock();
  const machine = hostMachine.provide({
    actors: {
      register: effects.promise('register'),
      recoverRuns: effects.promise('recoverRuns'),
      heartbeat: effects.callback('heartbeat'),
      wakeWatcher: effects.callback('wakeWatcher'),
      cleaner: effects.callback('cleaner'),
      claimNext: effects.promise('claimNext'),
      deregister: effects.promise('deregister'),
      announcePause: effects.promise('announcePause'),
      checkHost: effects.promise('checkHost'),
      run: effects.callback<RunInput>('run', (runInput) => `${runInput.run.number}/${runInput.run.stage ?? 'process'}`) as unknown as typeof runMachine,
    },
  });
  let rootId = '';
  const actor = createActor(machine, {
    input,
    clock,
    systemId: 'host',
    inspect: coverage.observer((event) => event.actorRef.sessionId === rootId),
  });
  rootId = actor.sessionId;
  actor.start();
  await settle();
  const snapshots: AnyMachineSnapshot[] = [actor.getSnapshot()];
  const alive = [aliveNow(effects)];
  for (const [index, step] of path.steps.entries()) {
    effects.step = index + 1;
    const { event } = step;
    const kind = eventKind(event.type);
    if (kind.kind === 'done') effects.resolve(sources.get(kind.invocation)!, event.output);
    else if (kind.kind === 'error') effects.reject(sources.get(kind.invocation)!, event.error);
    else if (kind.kind === 'after') clock.increment((actor.getSnapshot().context as HostModelContext).nextPollMs);
    else if (event.type === 'WAKE') effects.sendFrom('wakeWatcher', event);
    else if (event.type === 'DISPLACED') effects.sendFrom('heartbeat', event);
    else if (event.type === 'RUN_SETTLED') effects.sendFrom(`run#${String(event.number)}/${String(event.stage ?? 'process')}`, event);
    else actor.send(event as Parameters<typeof actor.send>[0]);
    await settle();
    const snapshot = actor.getSnapshot();
    snapshots.push(snapshot);
    alive.push(aliveNow(effects));
    expect(serializeSnapshot(snapshot), `${path.description}: step ${index + 1} (${event.type})`).toBe(
      serializeSnapshot(step.state),
    );
    expect(snapshot.status).toBe(step.state.status);
  }
  actor.stop();
  return { effects, snapshots, alive };
}

/** The host machine's promises on one replayed path; each message names what broke. */
function hostPromises(path: ModelPath, { effects, snapshots, alive }: Replayed): string[] {
  const problems: string[] = [];
  const stopAt = path.steps.findIndex((step, i) => step.event.type === 'STOP' && snapshots[i]!.status === 'active');
  if (stopAt >= 0 && effects.started.some((s) => s.src === 'claimNext' && s.step > stopAt + 1)) {
    problems.push('claimed after STOP');
  }
  for (const [i, snapshot] of snapshots.entries()) {
    const context = snapshot.context as HostModelContext;
    const runsAlive = alive[i]!.run;
    if (context.running.length > context.slots) problems.push(`${context.running.length} runs on ${context.slots} slots`);
    for (const stage of context.stages) {
      const busy = context.tasks.filter((task) => task.stage === stage.name).length;
      if (busy > stage.slots) problems.push(`${busy} tasks of ${stage.name} on its ${stage.slots} slot(s)`);
    }
    if (new Set(context.tasks.map(taskKey)).size !== context.tasks.length) problems.push('one task twice at once');
    if (snapshot.status === 'active' && runsAlive !== context.running.length) {
      problems.push(`${runsAlive} run actors alive for ${context.running.length} running runs after step ${i}`);
    }
    if (snapshot.matches('stopping') && alive[i]!.heartbeat === 0) problems.push('stopping without a heartbeat');
    if (snapshot.matches({ running: 'paused' }) && effects.started.some((s) => s.src === 'claimNext' && s.step === i)) {
      problems.push(`claimed while paused for a host fault (step ${i})`);
    }
    const entered = snapshot.matches('stopping') && i > 0 && !snapshots[i - 1]!.matches('stopping');
    for (const task of entered ? context.tasks : []) {
      if (!effects.received.some((r) => r.src === `run#${taskKey(task)}` && r.event.type === 'STOP' && r.step === i)) {
        problems.push(`task ${taskKey(task)} was not told to STOP when the host began stopping`);
      }
    }
  }
  if (snapshots[snapshots.length - 1]!.status === 'done') {
    for (const src of CALLBACKS) if (alive[alive.length - 1]![src] > 0) problems.push(`${src} outlived the host actor`);
  }
  return problems;
}

describe('host machine, model-based', () => {
  it('generated paths reach every state and take every transition of the real actor', async () => {
    const coverage = new CoverageRecorder('host', machineUniverse(hostMachine));
    const broken = new Set<string>();
    let replayed = 0;
    for (const input of [hostInput(false), hostInput(true), hostInput(false, TWO_STAGES)]) {
      const paths = edgePaths(hostMachine, { input, events: hostEvents });
      for (const path of paths) {
        const result = await replay(path, input, coverage);
        for (const problem of hostPromises(path, result)) broken.add(`once=${input.once}${input.stages ? ' two stages' : ''} ${path.description}: ${problem}`);
      }
      replayed += paths.length;
    }
    console.log(coverage.summary(replayed));
    expect(coverage.unknownTransitions()).toEqual([]);
    expect([...broken]).toEqual([]);
    expect(coverage.missingStates()).toEqual([]);
    expect(coverage.missingTransitions()).toEqual([]);
  });
});
