import { assign, enqueueActions, fromCallback, fromPromise, setup, type EventObject } from 'xstate';
import { PROCESS_STAGE } from '../src/policy/pipeline.js';
import { runMachine, stageOfRun, type ClaimedRun, type RunInput, type RunSettledEvent } from './run.machine.js';
import type { RunSettlement, SupervisorTiming } from './types.js';

// One host actor per daemon. It claims tasks (one stage of one run, DESIGN §9) while slots are free, the
// daemon's and the task's stage's, and spawns one run actor per claim (system id `run-<number>/<stage>`, child
// id `run-slot-<k>`); effects (store, signals, wake-ups) are the actors src/daemon provides. A claim names the
// tasks that still have an actor here, so a task failed by hand while its attempt is still stopping is never
// claimed again before that actor has settled (issue 12 fault 1).

/** One stage's share of this host's slots. */
export interface StageSlots {
  name: string;
  slots: number;
}

/** A task this host runs: one stage of one run. */
export interface RunningTask {
  number: number;
  stage: string;
}

/** The key of a task in the host's bookkeeping (`42/process`). */
export function taskId(task: RunningTask): string {
  return `${task.number}/${task.stage}`;
}

export interface HostInput {
  host: string;
  slots: number;
  /**
   * The pipeline's stages and the slots each may use on this host; absent: one stage `process` with every
   * slot (the first wave). A claim is possible while fewer than `slots` tasks run and some stage has room.
   */
  stages?: StageSlots[];
  idlePollMs: number;
  /** Exit once nothing is eligible and nothing is running (`runwarden daemon --once`). */
  once: boolean;
  maxFailures: number;
  maxInterruptions: number;
  noRetryExitCodes: number[];
  timing: SupervisorTiming;
  /** Runs in a row that could not start for a reason of the host before claiming pauses (process.host_fault_threshold). */
  hostFaultThreshold: number;
  /** How often a paused host checks itself again. */
  recheckMs: number;
}

/** What the host's check found; null when it passed (the host can start runs again). */
export interface HostCheckOutput {
  problem: string | null;
}

/** What the claim effect is told: the host, the tasks it must not take (their actors are still alive), and where there is room. */
export interface ClaimInput {
  host: string;
  /** Run numbers of the running tasks (one entry per task). */
  running: number[];
  /** The running tasks themselves: the claim excludes them. */
  tasks: RunningTask[];
  /** Stages with a free slot on this host, upstream first: the claim takes a task of one of these only. */
  stages: string[];
}

export interface ClaimOutput {
  run: ClaimedRun | null;
  /** The run actor's input for the claimed task (its stage's retry and timing); absent: the host's own. */
  input?: RunInput;
  /** How long an idle host may sleep before looking again (idle_poll, or sooner for a due retry). */
  nextPollMs: number;
  /** The disk gate was shut: the output disk is too full, so nothing was claimed. */
  diskFull?: boolean;
}

export type HostEvent =
  | { type: 'WAKE' } // a run was submitted: look now
  | { type: 'STOP' } // SIGTERM / SIGINT
  | { type: 'DISPLACED'; reason: string } // another daemon took over this host's document
  | { type: 'FATAL'; error: string } // an effect met an error it cannot recover from: crash-only, stop now
  | RunSettledEvent;

export interface HostOutput {
  error: string | null;
}

interface HostContext extends HostInput {
  stages: StageSlots[];
  /** Run numbers of the running tasks, one entry per task (what the host document's `running` shows). */
  running: number[];
  /** The running tasks, in claim order (parallel to `running`). */
  tasks: RunningTask[];
  /** The child slot of each running task, by taskId (see spawnRun). */
  runSlots: Record<string, number>;
  /** The last claim found the disk gate shut; the host reports `disk_full` until a claim finds it open. */
  diskFull: boolean;
  /** Runs settled in a row that could not start for a reason of the host; any other outcome resets it. */
  hostFaults: number;
  /** What the host's check found on the latest of those. */
  lastHostFault: string | null;
  /** Set while claiming is paused for a host fault: why. */
  pausedReason: string | null;
  nextPollMs: number;
  wakePending: boolean;
  stopRequested: boolean;
  error: string | null;
}

const FATAL_SETTLEMENTS: RunSettlement[] = ['unkillable', 'error'];

/** Stages with a free slot: fewer of their tasks run here than their `slots` (none when the host is full). */
export function stagesWithRoom(context: Pick<HostContext, 'stages' | 'tasks' | 'slots'>): string[] {
  if (context.tasks.length >= context.slots) return [];
  return context.stages
    .filter((stage) => context.tasks.filter((task) => task.stage === stage.name).length < stage.slots)
    .map((stage) => stage.name);
}

function settledTask(event: RunSettledEvent): RunningTask {
  return { number: event.number, stage: event.stage ?? PROCESS_STAGE };
}

/**
 * Crash-only: in every state that is not final, a fatal error from an effect (the store file replaced, the store
 * unwritable for longer than a lease, a guard process gone) ends the host in `failed`; the daemon exits non-zero.
 */
const FATAL_ENDS_HOST = { target: '#host.failed', actions: 'rememberFatal' } as const;

export const hostMachine = setup({
  types: {
    input: {} as HostInput,
    context: {} as HostContext,
    events: {} as HostEvent,
    output: {} as HostOutput,
  },
  actors: {
    // register displaces a previous daemon of this host; recoverRuns kills the process groups its runs left
    // behind and fails those runs at once.
    register: fromPromise<void, { host: string }>(async () => undefined),
    recoverRuns: fromPromise<void, { host: string }>(async () => undefined),
    heartbeat: fromCallback<EventObject, { host: string }>(() => undefined),
    wakeWatcher: fromCallback<EventObject, { host: string }>(() => undefined),
    /** Repairs what other hosts left behind, every cleanup_interval. */
    cleaner: fromCallback<EventObject, { host: string }>(() => undefined),
    claimNext: fromPromise<ClaimOutput, ClaimInput>(async ({ input }) => ({
      run: null,
      nextPollMs: 0 * input.host.length,
    })),
    deregister: fromPromise<void, { host: string }>(async () => undefined),
    /** Tells the operator log that claiming paused, and why. */
    announcePause: fromPromise<void, { host: string; reason: string; faults: number }>(async () => undefined),
    /** Checks what every run needs (executable, cwd, output and log directories). */
    checkHost: fromPromise<HostCheckOutput, { host: string; reason: string }>(async () => ({ problem: null })),
    run: runMachine,
  },
  delays: {
    nextPoll: ({ context }) => context.nextPollMs,
    recheck: ({ context }) => context.recheckMs,
  },
  guards: {
    claimedRun: (_, params: { output: ClaimOutput }) => params.output.run !== null,
    // A second actor with the same system id would crash the host; the claim excludes running runs, so this
    // is a broken claim effect, reported as such.
    claimedRunStillRunning: ({ context }, params: { output: ClaimOutput }) => {
      const run = params.output.run;
      if (run === null) return false;
      const id = taskId({ number: run.number, stage: stageOfRun(run) });
      return context.tasks.some((task) => taskId(task) === id);
    },
    hasFreeSlot: ({ context }) => stagesWithRoom(context).length > 0,
    hasRunsActive: ({ context }) => context.running.length > 0,
    noRunsActive: ({ context }) => context.running.length === 0,
    stopRequested: ({ context }) => context.stopRequested,
    wakePending: ({ context }) => context.wakePending,
    drainedOnce: ({ context }) => context.once && context.running.length === 0,
    settlementIsFatal: ({ event }) => event.type === 'RUN_SETTLED' && FATAL_SETTLEMENTS.includes(event.settlement),
    hostFaultThresholdReached: ({ context }) => context.hostFaults >= context.hostFaultThreshold,
    hostCheckPassed: (_, params: { output: HostCheckOutput }) => params.output.problem === null,
  },
  actions: {
    spawnRun: enqueueActions(({ enqueue, context }, params: { run: ClaimedRun; input?: RunInput }) => {
      // Child ids come from a bounded set: XState caches transition candidates per event type for ever, and
      // each child's id is in its done event's type (`xstate.done.actor.<id>`); one id per run leaked memory.
      const used = new Set(Object.values(context.runSlots));
      let slot = 0;
      while (used.has(slot)) slot += 1;
      const task = { number: params.run.number, stage: stageOfRun(params.run) };
      // The claim effect gives each task its stage's limits; a bare claim (tests) takes the host's.
      const input = params.input ?? {
        run: params.run,
        maxFailures: context.maxFailures,
        maxInterruptions: context.maxInterruptions,
        noRetryExitCodes: context.noRetryExitCodes,
        timing: context.timing,
      };
      enqueue.spawnChild('run', {
        id: `run-slot-${slot}`,
        systemId: `run-${task.number}/${task.stage}`,
        input,
      });
      enqueue.assign({
        running: [...context.running, task.number],
        tasks: [...context.tasks, task],
        runSlots: { ...context.runSlots, [taskId(task)]: slot },
      });
    }),
    forgetRun: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'RUN_SETTLED') return;
      const id = taskId(settledTask(event));
      const index = context.tasks.findIndex((task) => taskId(task) === id);
      if (index < 0) return;
      enqueue.stopChild(`run-slot-${context.runSlots[id]}`);
      const { [id]: _forgotten, ...runSlots } = context.runSlots;
      enqueue.assign({
        running: context.running.filter((_, i) => i !== index),
        tasks: context.tasks.filter((_, i) => i !== index),
        runSlots,
      });
    }),
    // Host faults in a row pause claiming; a run that got past them (done, or failed by its own command) shows
    // the host can start runs, and a released or lost run says nothing either way.
    noteSettlement: assign(({ context, event }) => {
      if (event.type !== 'RUN_SETTLED') return {};
      if (event.hostFault !== undefined) {
        return { hostFaults: context.hostFaults + 1, lastHostFault: event.hostFault };
      }
      if (event.settlement === 'done' || event.settlement === 'failed' || event.settlement === 'abandoned') {
        return { hostFaults: 0, lastHostFault: null };
      }
      return {};
    }),
    pauseClaiming: assign({ pausedReason: ({ context }) => context.lastHostFault ?? 'host fault' }),
    notePauseReason: assign({
      pausedReason: ({ context }, params: { output: HostCheckOutput }) => params.output.problem ?? context.pausedReason,
    }),
    resumeClaiming: assign({ pausedReason: null, hostFaults: 0, lastHostFault: null }),
    stopRuns: enqueueActions(({ enqueue, context }) => {
      for (const task of context.tasks) {
        enqueue.sendTo(`run-slot-${context.runSlots[taskId(task)]}`, { type: 'STOP' });
      }
    }),
    rememberClaim: assign({
      nextPollMs: (_, params: { output: ClaimOutput }) => params.output.nextPollMs,
      diskFull: (_, params: { output: ClaimOutput }) => params.output.diskFull ?? false,
    }),
    clearWake: assign({ wakePending: false }),
    noteWake: assign({ wakePending: true }),
    noteStop: assign({ stopRequested: true }),
    rememberFatalRun: assign({
      error: ({ event }) =>
        event.type === 'RUN_SETTLED'
          ? (event.error ?? `run ${event.number} ended in ${event.settlement}`)
          : 'unexpected event',
    }),
    rememberDisplaced: assign({ error: ({ event }) => (event.type === 'DISPLACED' ? event.reason : 'displaced') }),
    rememberFatal: assign({ error: ({ event }) => (event.type === 'FATAL' ? event.error : 'fatal error') }),
    rememberDoubleClaim: assign({
      error: (_, params: { output: ClaimOutput }) =>
        `internal: run ${params.output.run?.number}` +
        (params.output.run && stageOfRun(params.output.run) !== PROCESS_STAGE ? ` stage ${stageOfRun(params.output.run)}` : '') +
        ` was claimed while its previous attempt's actor is still running here; the claim must exclude running runs`,
    }),
    rememberError: assign({
      error: (_, params: { error: unknown }) =>
        params.error instanceof Error ? params.error.message : String(params.error),
    }),
  },
}).createMachine({
  id: 'host',
  context: ({ input }) => ({
    ...input,
    stages: input.stages ?? [{ name: PROCESS_STAGE, slots: input.slots }],
    running: [],
    tasks: [],
    runSlots: {},
    diskFull: false,
    hostFaults: 0,
    lastHostFault: null,
    pausedReason: null,
    nextPollMs: input.idlePollMs,
    wakePending: false,
    stopRequested: false,
    error: null,
  }),
  initial: 'starting',
  states: {
    starting: {
      invoke: {
        src: 'register',
        input: ({ context }) => ({ host: context.host }),
        onDone: 'recovering',
        onError: {
          target: 'failed',
          actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
        },
      },
      on: { STOP: { actions: 'noteStop' }, FATAL: FATAL_ENDS_HOST },
    },
    // Crash-only: whatever the previous incarnation left running is killed and its runs failed before any claim.
    recovering: {
      invoke: {
        src: 'recoverRuns',
        input: ({ context }) => ({ host: context.host }),
        onDone: 'running',
        onError: {
          target: 'failed',
          actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
        },
      },
      on: { STOP: { actions: 'noteStop' }, FATAL: FATAL_ENDS_HOST },
    },
    running: {
      invoke: [
        { src: 'heartbeat', input: ({ context }) => ({ host: context.host }) },
        { src: 'wakeWatcher', input: ({ context }) => ({ host: context.host }) },
        { src: 'cleaner', input: ({ context }) => ({ host: context.host }) },
      ],
      on: {
        RUN_SETTLED: [
          { guard: 'settlementIsFatal', target: 'failed', actions: ['forgetRun', 'rememberFatalRun'] },
          { actions: ['forgetRun', 'noteSettlement'] },
        ],
        DISPLACED: { target: 'failed', actions: 'rememberDisplaced' },
        FATAL: FATAL_ENDS_HOST,
      },
      initial: 'deciding',
      states: {
        deciding: {
          always: [
            { guard: 'stopRequested', target: '#host.stopping' },
            { guard: 'hostFaultThresholdReached', target: 'paused', actions: 'pauseClaiming' },
            { guard: 'hasFreeSlot', target: 'claiming' },
            { target: 'busy' },
          ],
        },
        claiming: {
          entry: 'clearWake',
          invoke: {
            src: 'claimNext',
            input: ({ context }) => ({
              host: context.host,
              running: context.running,
              tasks: context.tasks,
              stages: stagesWithRoom(context),
            }),
            onDone: [
              {
                guard: { type: 'claimedRunStillRunning', params: ({ event }) => ({ output: event.output }) },
                target: '#host.failed',
                actions: { type: 'rememberDoubleClaim', params: ({ event }) => ({ output: event.output }) },
              },
              {
                guard: { type: 'claimedRun', params: ({ event }) => ({ output: event.output }) },
                target: 'deciding',
                actions: [
                  { type: 'rememberClaim', params: ({ event }) => ({ output: event.output }) },
                  {
                    type: 'spawnRun',
                    params: ({ event }) => ({
                      run: event.output.run!,
                      ...(event.output.input ? { input: event.output.input } : {}),
                    }),
                  },
                ],
              },
              {
                target: 'settling',
                actions: { type: 'rememberClaim', params: ({ event }) => ({ output: event.output }) },
              },
            ],
            onError: {
              target: '#host.failed',
              actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
            },
          },
          // A claim in flight must finish, or a run could be claimed with no actor to process it.
          on: { WAKE: { actions: 'noteWake' }, STOP: { actions: 'noteStop' } },
        },
        // Nothing more to claim right now: decide where to wait.
        settling: {
          always: [
            { guard: 'stopRequested', target: '#host.stopping' },
            { guard: 'hostFaultThresholdReached', target: 'paused', actions: 'pauseClaiming' },
            { guard: 'wakePending', target: 'claiming' },
            { guard: 'drainedOnce', target: '#host.stopping' },
            { guard: 'hasRunsActive', target: 'busy' },
            { target: 'idle' },
          ],
        },
        idle: {
          after: { nextPoll: 'claiming' },
          on: { WAKE: 'claiming', STOP: '#host.stopping' },
        },
        busy: {
          after: { nextPoll: { guard: 'hasFreeSlot', target: 'claiming' } },
          on: {
            WAKE: { guard: 'hasFreeSlot', target: 'claiming' },
            STOP: '#host.stopping',
            RUN_SETTLED: [
              { guard: 'settlementIsFatal', target: '#host.failed', actions: ['forgetRun', 'rememberFatalRun'] },
              { target: 'deciding', actions: ['forgetRun', 'noteSettlement'] },
            ],
          },
        },
        // Several runs in a row could not start for a reason of the host (issue 12 fault 5): claim nothing,
        // rather than burn the queue, and check the host again every recheck until it passes. Runs already
        // running go on; the host document says `paused` with the reason.
        paused: {
          initial: 'announcing',
          always: { guard: 'drainedOnce', target: '#host.stopping' },
          on: { STOP: '#host.stopping' },
          states: {
            announcing: {
              invoke: {
                src: 'announcePause',
                input: ({ context }) => ({
                  host: context.host,
                  reason: context.pausedReason ?? '',
                  faults: context.hostFaults,
                }),
                onDone: 'waiting',
                onError: 'waiting',
              },
            },
            waiting: { after: { recheck: 'checking' } },
            checking: {
              invoke: {
                src: 'checkHost',
                input: ({ context }) => ({ host: context.host, reason: context.pausedReason ?? '' }),
                onDone: [
                  {
                    guard: { type: 'hostCheckPassed', params: ({ event }) => ({ output: event.output }) },
                    target: '#host.running.deciding',
                    actions: 'resumeClaiming',
                  },
                  {
                    target: 'waiting',
                    actions: { type: 'notePauseReason', params: ({ event }) => ({ output: event.output }) },
                  },
                ],
                onError: 'waiting',
              },
            },
          },
        },
      },
    },
    stopping: {
      entry: 'stopRuns',
      // Stopping can take up to twice signal_escalate per command: keep the host document alive meanwhile.
      invoke: { src: 'heartbeat', input: ({ context }) => ({ host: context.host }) },
      always: { guard: 'noRunsActive', target: 'deregistering' },
      on: {
        RUN_SETTLED: [
          { guard: 'settlementIsFatal', target: 'failed', actions: ['forgetRun', 'rememberFatalRun'] },
          { actions: 'forgetRun' },
        ],
        FATAL: FATAL_ENDS_HOST,
      },
    },
    deregistering: {
      invoke: {
        src: 'deregister',
        input: ({ context }) => ({ host: context.host }),
        onDone: 'stopped',
        onError: {
          target: 'failed',
          actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
        },
      },
      on: { FATAL: FATAL_ENDS_HOST },
    },
    stopped: { type: 'final' },
    failed: { type: 'final' },
  },
  output: ({ context }) => ({ error: context.error }),
});
