import { assign, fromCallback, sendTo, setup } from 'xstate';
import type { CommandOutcome, CommandPlan, SupervisorResult, SupervisorTiming } from './types.js';

// The supervisor of one attempt's command. The `process` actor (provided by src/daemon) owns the real
// process group: it reports SPAWNED / OUTPUT / EXITED and obeys SIGNAL. This chart only decides when to
// signal what, so the escalation SIGTERM → SIGKILL → "unkillable" is visible and testable on a clock.

export interface SupervisorInput {
  plan: CommandPlan;
  timing: SupervisorTiming;
}

export type ProcessEvent =
  | { type: 'SPAWNED'; pid: number; pgid: number; procStart?: number }
  /** `hostFault`: the host's check found why (no run could start here), so it is not the run's failure. */
  | { type: 'SPAWN_FAILED'; error: string; hostFault?: string }
  | { type: 'OUTPUT' }
  | {
      type: 'EXITED';
      exitCode: number | null;
      signal: string | null;
      stderrTail: string;
      durationMs: number;
      /** Processes of the group still alive after the leader exited and stragglers were SIGKILLed. */
      groupRemaining?: number;
      /**
       * Something outside the command ended it for a reason of the host (the lease guard killed it because this
       * daemon stopped renewing its lease): an interruption, not the run's failure.
       */
      interruption?: string;
    };

/** What the supervisor tells its process actor. */
export type ProcessCommand = { type: 'SIGNAL'; signal: 'SIGTERM' | 'SIGKILL' };

export type SupervisorEvent = ProcessEvent | { type: 'TERMINATE' };

interface SupervisorContext {
  plan: CommandPlan;
  timing: SupervisorTiming;
  outcome: CommandOutcome | null;
  pid?: number;
  pgid?: number;
  exitCode: number | null;
  signal: string | null;
  stderrTail: string;
  durationMs: number;
  error?: string;
  hostFault?: string;
  interruption?: string;
}

export const supervisorMachine = setup({
  types: {
    input: {} as SupervisorInput,
    context: {} as SupervisorContext,
    events: {} as SupervisorEvent,
    output: {} as SupervisorResult,
  },
  actors: {
    // Replaced by the real process group owner in src/daemon; tests provide fakes.
    process: fromCallback<ProcessCommand, { plan: CommandPlan }>(() => undefined),
  },
  delays: {
    maxProcessingTime: ({ context }) => context.timing.maxProcessingTimeMs,
    maxNoOutputTime: ({ context }) => context.timing.maxNoOutputTimeMs,
    signalEscalate: ({ context }) => context.timing.signalEscalateMs,
  },
  guards: {
    groupSurvived: ({ event }) => event.type === 'EXITED' && (event.groupRemaining ?? 0) > 0,
  },
  actions: {
    recordSpawn: assign(({ event }) =>
      event.type === 'SPAWNED' ? { pid: event.pid, pgid: event.pgid } : {},
    ),
    recordExit: assign(({ event, context }) =>
      event.type === 'EXITED'
        ? {
            outcome: context.outcome ?? 'exited',
            exitCode: event.exitCode,
            signal: event.signal,
            stderrTail: event.stderrTail,
            durationMs: event.durationMs,
            ...(event.interruption !== undefined ? { interruption: event.interruption } : {}),
          }
        : {},
    ),
    recordSpawnFailure: assign(({ event }) =>
      event.type === 'SPAWN_FAILED'
        ? {
            outcome: 'spawn_failed' as const,
            error: event.error,
            ...(event.hostFault !== undefined ? { hostFault: event.hostFault } : {}),
          }
        : {},
    ),
    markTimedOut: assign({ outcome: 'timed_out' as const }),
    markStalled: assign({ outcome: 'stalled' as const }),
    markTerminated: assign({ outcome: 'terminated' as const }),
    markUnkillable: assign({ outcome: 'unkillable' as const }),
    sendTerm: sendTo('process', { type: 'SIGNAL', signal: 'SIGTERM' } as ProcessCommand),
    sendKill: sendTo('process', { type: 'SIGNAL', signal: 'SIGKILL' } as ProcessCommand),
  },
}).createMachine({
  id: 'supervisor',
  context: ({ input }) => ({
    plan: input.plan,
    timing: input.timing,
    outcome: null,
    exitCode: null,
    signal: null,
    stderrTail: '',
    durationMs: 0,
  }),
  invoke: { id: 'process', src: 'process', input: ({ context }) => ({ plan: context.plan }) },
  initial: 'spawning',
  states: {
    spawning: {
      on: {
        SPAWNED: { target: 'running', actions: 'recordSpawn' },
        SPAWN_FAILED: { target: 'exited', actions: 'recordSpawnFailure' },
        // The process actor applies a signal that arrives before the spawn completes as soon as it can.
        TERMINATE: { target: 'terminating', actions: 'markTerminated' },
      },
    },
    running: {
      after: { maxProcessingTime: { target: 'terminating', actions: 'markTimedOut' } },
      on: {
        EXITED: [
          { guard: 'groupSurvived', target: 'unkillable', actions: ['recordExit', 'markUnkillable'] },
          { target: 'exited', actions: 'recordExit' },
        ],
        TERMINATE: { target: 'terminating', actions: 'markTerminated' },
      },
      initial: 'producing',
      states: {
        // Any output restarts the stall clock; the processing clock of `running` keeps going.
        producing: {
          after: { maxNoOutputTime: { target: '#supervisor.terminating', actions: 'markStalled' } },
          on: { OUTPUT: { target: 'producing', reenter: true } },
        },
      },
    },
    terminating: {
      entry: 'sendTerm',
      after: { signalEscalate: 'killing' },
      on: { EXITED: [
          { guard: 'groupSurvived', target: 'unkillable', actions: ['recordExit', 'markUnkillable'] },
          { target: 'exited', actions: 'recordExit' },
        ] },
    },
    killing: {
      entry: 'sendKill',
      after: { signalEscalate: { target: 'unkillable', actions: 'markUnkillable' } },
      on: { EXITED: [
          { guard: 'groupSurvived', target: 'unkillable', actions: ['recordExit', 'markUnkillable'] },
          { target: 'exited', actions: 'recordExit' },
        ] },
    },
    exited: { type: 'final' },
    unkillable: { type: 'final' },
  },
  output: ({ context }) => ({
    outcome: context.outcome ?? 'exited',
    exitCode: context.exitCode,
    signal: context.signal,
    stderrTail: context.stderrTail,
    durationMs: context.durationMs,
    pid: context.pid,
    pgid: context.pgid,
    error: context.error,
    ...(context.hostFault !== undefined ? { hostFault: context.hostFault } : {}),
    ...(context.interruption !== undefined ? { interruption: context.interruption } : {}),
  }),
});
