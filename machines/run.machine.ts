import { assign, enqueueActions, fromCallback, fromPromise, sendTo, setup, type EventObject } from 'xstate';
import { decideAfterFailure, decideAfterInterruption } from '../src/policy/failure-decision.js';
import { reasonFromStderr } from '../src/policy/failure-text.js';
import { PROCESS_STAGE } from '../src/policy/pipeline.js';
import { supervisorMachine } from './supervisor.machine.js';
import type {
  AttemptFailure,
  CommandPlan,
  FencedWriteResult,
  RunSettlement,
  SupervisorResult,
  SupervisorTiming,
} from './types.js';

// One actor per claimed attempt of one task (one stage of a run, DESIGN §9), spawned by the host. The claim itself (pending → considering)
// happened in the store before this actor exists; every write the actor causes goes through a fenced
// effect that reports `ok: false` when the lease token was taken away, and the actor then stops writing.

/** The claimed run as the store returned it; opaque to the chart apart from these fields. */
export interface ClaimedRun {
  number: number;
  /** The stage of the claimed task; absent: `process` (the first wave's one stage). */
  stage?: string;
  token: string;
  attempt: number;
  nFailures: number;
  /** Attempts ended by their host so far (processing.n_interruptions). */
  nInterruptions: number;
  doc: unknown;
}

/** The stage of a claimed task. */
export function stageOfRun(run: Pick<ClaimedRun, 'stage'>): string {
  return run.stage ?? PROCESS_STAGE;
}

export interface RunInput {
  run: ClaimedRun;
  maxFailures: number;
  maxInterruptions: number;
  noRetryExitCodes: number[];
  timing: SupervisorTiming;
}

// The only events a run actor receives from outside: a retry is a new claim and a new actor, never an event to
// this one (test/machines/chart-product.test.ts checks every event the chart handles against a real daemon).
export type RunEvent =
  | { type: 'LEASE_LOST' } // from the lease keeper: fail/abandon/cleanup changed the token
  | { type: 'STOP' }; // the host is stopping: terminate and release

export interface PreflightOutput extends FencedWriteResult {
  plan?: CommandPlan;
  /** The stage's check (run after the command exits 0 and its output passes); absent when it has none. */
  check?: CommandPlan;
}

export interface RunSettledEvent {
  type: 'RUN_SETTLED';
  number: number;
  /** The settled task's stage; absent: `process`. */
  stage?: string;
  settlement: RunSettlement;
  error?: string;
  /** The attempt could not start for a reason of the host: what the host's check found. */
  hostFault?: string;
}

interface RunContext {
  run: ClaimedRun;
  maxFailures: number;
  maxInterruptions: number;
  noRetryExitCodes: number[];
  timing: SupervisorTiming;
  plan: CommandPlan | null;
  /** The stage's check command, when it has one. */
  checkPlan: CommandPlan | null;
  failure: AttemptFailure | null;
  /** Why the command is being terminated, when the run did not end by itself. */
  interruption: 'lease_lost' | 'stopping' | null;
  error: string | null;
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Why the stage's check failed the attempt: the check's exit, timeout, stall or spawn, in its own words. */
function checkFailureFromResult(result: SupervisorResult, plan: CommandPlan | null): AttemptFailure {
  const failure = failureFromResult(result, plan);
  const what =
    failure.kind === 'timed_out' ? 'timed out' : failure.kind === 'stalled' ? 'stalled: no output' : failure.message;
  return { ...failure, kind: 'check', message: what };
}

function failureFromResult(result: SupervisorResult, plan: CommandPlan | null): AttemptFailure {
  const base = {
    exitCode: result.exitCode ?? undefined,
    signal: result.signal ?? undefined,
    durationMs: result.durationMs,
    errorFile: plan?.errorFile,
  };
  switch (result.outcome) {
    case 'timed_out':
      return { ...base, kind: 'timed_out', message: 'timed out' };
    case 'stalled':
      return { ...base, kind: 'stalled', message: 'stalled: no output' };
    case 'spawn_failed':
      return {
        kind: 'spawn',
        message: result.error ?? 'the command could not be started',
        ...(result.hostFault !== undefined ? { hostFault: result.hostFault } : {}),
      };
    case 'exited':
    case 'terminated':
    case 'unkillable':
      return {
        ...base,
        ...(result.interruption !== undefined ? { interruption: result.interruption } : {}),
        kind: 'exit',
        message: result.signal
          ? `killed by ${result.signal}${result.stderrTail ? `: ${reasonFromStderr(result.stderrTail)}` : ''}`
          : `exit code ${result.exitCode}${result.stderrTail ? `: ${reasonFromStderr(result.stderrTail)}` : ''}`,
      };
  }
}

/** An effect's error that says the host is at fault (see AttemptFailure.hostFault). */
function hostFaultOf(error: unknown): string | undefined {
  if (error && typeof error === 'object' && 'hostFault' in error && typeof error.hostFault === 'string') {
    return error.hostFault;
  }
  return undefined;
}

type AttemptDecision = { kind: 'retry' } | { kind: 'abandon'; why: string };

/**
 * The pure policy decides retry or abandon (src/policy): one rule for the guard and the stored reason. A host
 * fault is an interruption, judged against max_interruptions; anything else is a failure.
 */
function decisionAfterFailure(context: RunContext): AttemptDecision {
  if (context.failure?.hostFault !== undefined || context.failure?.interruption !== undefined) {
    return decideAfterInterruption({
      nInterruptionsBefore: context.run.nInterruptions,
      maxInterruptions: context.maxInterruptions,
    });
  }
  return decideAfterFailure({
    nFailuresBefore: context.run.nFailures,
    maxFailures: context.maxFailures,
    exitCode: context.failure?.exitCode,
    noRetryExitCodes: context.noRetryExitCodes,
  });
}

export const runMachine = setup({
  types: {
    input: {} as RunInput,
    context: {} as RunContext,
    events: {} as RunEvent,
  },
  actors: {
    // All effects below are provided by src/daemon; these defaults only give the chart its types.
    leaseKeeper: fromCallback<EventObject, { run: ClaimedRun }>(() => undefined),
    preflight: fromPromise<PreflightOutput, { run: ClaimedRun }>(async () => ({ ok: false })),
    supervisor: supervisorMachine,
    /**
     * The command exited 0: its output must be there (require_output); with a check to run, the lease is renewed
     * for it. Throws when the output is missing (the attempt fails); `ok: false` when the lease is gone.
     */
    verifyOutput: fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null; check: boolean }>(
      async () => ({ ok: true }),
    ),
    registerOutput: fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null }>(
      async () => ({ ok: false }),
    ),
    recordFailure: fromPromise<FencedWriteResult, { run: ClaimedRun; failure: AttemptFailure }>(
      async () => ({ ok: false }),
    ),
    recordAbandon: fromPromise<
      FencedWriteResult,
      { run: ClaimedRun; failure: AttemptFailure; why: string }
    >(async () => ({ ok: false })),
    releaseRun: fromPromise<FencedWriteResult, { run: ClaimedRun }>(async () => ({ ok: false })),
    /** Clears the run's drain fence when it names this attempt: its command is gone (never fails the run). */
    confirmAttemptGone: fromPromise<void, { run: ClaimedRun }>(async () => undefined),
  },
  guards: {
    writeAccepted: (_, params: { output: FencedWriteResult }) => params.output.ok,
    leaseWasLost: ({ context }) => context.interruption === 'lease_lost',
    hostIsStopping: ({ context }) => context.interruption === 'stopping',
    commandUnkillable: (_, params: { output: SupervisorResult }) => params.output.outcome === 'unkillable',
    commandSucceeded: (_, params: { output: SupervisorResult }) =>
      params.output.outcome === 'exited' && params.output.exitCode === 0,
    shouldAbandon: ({ context }) => decisionAfterFailure(context).kind === 'abandon',
    commandSucceededWithoutCheck: ({ context }, params: { output: SupervisorResult }) =>
      context.checkPlan === null && params.output.outcome === 'exited' && params.output.exitCode === 0,
  },
  actions: {
    // Tells the host this actor has nothing more to do. Without a host (unit tests) nobody listens.
    reportSettled: enqueueActions(({ enqueue, system, context }, params: { settlement: RunSettlement }) => {
      const host = system.get('host');
      if (!host) return;
      const event: RunSettledEvent = {
        type: 'RUN_SETTLED',
        number: context.run.number,
        ...(context.run.stage !== undefined ? { stage: context.run.stage } : {}),
        settlement: params.settlement,
        ...(context.error ? { error: context.error } : {}),
        ...((params.settlement === 'failed' || params.settlement === 'abandoned') &&
        context.failure?.hostFault !== undefined
          ? { hostFault: context.failure.hostFault }
          : {}),
      };
      enqueue.sendTo(host, event);
    }),
    rememberPlan: assign({
      plan: (_, params: { output: PreflightOutput }) => params.output.plan ?? null,
      checkPlan: (_, params: { output: PreflightOutput }) => params.output.check ?? null,
    }),
    rememberPreflightFailure: assign({
      failure: (_, params: { error: unknown }) => {
        const hostFault = hostFaultOf(params.error);
        return {
          kind: 'preflight' as const,
          message: describeError(params.error),
          ...(hostFault !== undefined ? { hostFault } : {}),
        };
      },
    }),
    rememberCommandFailure: assign({
      failure: ({ context }, params: { output: SupervisorResult }) => failureFromResult(params.output, context.plan),
    }),
    rememberCheckFailure: assign({
      failure: ({ context }, params: { output: SupervisorResult }) =>
        checkFailureFromResult(params.output, context.checkPlan),
    }),
    rememberOutputFailure: assign({
      failure: (_, params: { error: unknown }) => ({ kind: 'output' as const, message: describeError(params.error) }),
    }),
    rememberError: assign({ error: (_, params: { error: unknown }) => describeError(params.error) }),
    rememberUnkillable: assign({
      error: ({ context }, params: { output: SupervisorResult }) =>
        `run ${context.run.number}: process group ${params.output.pgid ?? '?'} survived SIGKILL`,
    }),
    interruptForLostLease: assign({ interruption: 'lease_lost' as const }),
    // A lease already lost stays lost: a STOP after it must not turn the ending into a (refused) release.
    interruptForStop: assign({ interruption: ({ context }) => context.interruption ?? ('stopping' as const) }),
    terminateCommand: sendTo('supervisor', { type: 'TERMINATE' }),
  },
}).createMachine({
  id: 'run',
  context: ({ input }) => ({
    run: input.run,
    maxFailures: input.maxFailures,
    maxInterruptions: input.maxInterruptions,
    noRetryExitCodes: input.noRetryExitCodes,
    timing: input.timing,
    plan: null,
    checkPlan: null,
    failure: null,
    interruption: null,
    error: null,
  }),
  initial: 'considering',
  states: {
    considering: {
      invoke: [
        { src: 'leaseKeeper', input: ({ context }) => ({ run: context.run }) },
        {
          src: 'preflight',
          input: ({ context }) => ({ run: context.run }),
          onDone: [
            {
              guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
              target: 'busy',
              actions: { type: 'rememberPlan', params: ({ event }) => ({ output: event.output }) },
            },
            { target: 'confirmingGone' },
          ],
          onError: {
            target: 'failed',
            actions: { type: 'rememberPreflightFailure', params: ({ event }) => ({ error: event.error }) },
          },
        },
      ],
      on: {
        LEASE_LOST: 'confirmingGone',
        STOP: 'releasing',
      },
    },
    busy: {
      invoke: { src: 'leaseKeeper', input: ({ context }) => ({ run: context.run }) },
      initial: 'supervising',
      states: {
        supervising: {
          invoke: {
            id: 'supervisor',
            src: 'supervisor',
            input: ({ context }) => ({ plan: context.plan!, timing: context.timing }),
            onDone: [
              { guard: 'leaseWasLost', target: '#run.confirmingGone' },
              { guard: 'hostIsStopping', target: '#run.releasing' },
              {
                guard: { type: 'commandUnkillable', params: ({ event }) => ({ output: event.output }) },
                target: '#run.unkillable',
                actions: { type: 'rememberUnkillable', params: ({ event }) => ({ output: event.output }) },
              },
              {
                guard: { type: 'commandSucceededWithoutCheck', params: ({ event }) => ({ output: event.output }) },
                target: 'registering',
              },
              {
                guard: { type: 'commandSucceeded', params: ({ event }) => ({ output: event.output }) },
                target: 'verifying',
              },
              {
                target: '#run.failed',
                actions: { type: 'rememberCommandFailure', params: ({ event }) => ({ output: event.output }) },
              },
            ],
            onError: {
              target: '#run.error',
              actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
            },
          },
          // Only terminate here: the supervisor confirms the group gone, then its end leads on. A lease taken away
          // (an operator's fail or abandon, cleanup) so always ends this actor in `lost`, never in `abandoned`.
          on: {
            LEASE_LOST: { actions: ['interruptForLostLease', 'terminateCommand'] },
            STOP: { actions: ['interruptForStop', 'terminateCommand'] },
          },
        },
        // The command exited 0 and the stage has a check: the output must be there before the check runs.
        verifying: {
          invoke: {
            src: 'verifyOutput',
            input: ({ context }) => ({ run: context.run, plan: context.plan, check: true }),
            onDone: [
              { guard: 'hostIsStopping', target: '#run.releasing' },
              {
                guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
                target: 'checking',
              },
              { target: '#run.confirmingGone' },
            ],
            onError: {
              target: '#run.failed',
              actions: { type: 'rememberOutputFailure', params: ({ event }) => ({ error: event.error }) },
            },
          },
          // No command runs here: a lost lease ends the attempt at once, a stop once the check would start.
          on: {
            LEASE_LOST: '#run.confirmingGone',
            STOP: { actions: 'interruptForStop' },
          },
        },
        // The stage's check (DESIGN §9), supervised as the command is (group, timeouts, stall, kill); its output
        // is appended to the attempt's log. A non-zero exit fails the attempt with the check's reason.
        checking: {
          invoke: {
            id: 'supervisor',
            src: 'supervisor',
            input: ({ context }) => ({ plan: context.checkPlan!, timing: context.timing }),
            onDone: [
              { guard: 'leaseWasLost', target: '#run.confirmingGone' },
              { guard: 'hostIsStopping', target: '#run.releasing' },
              {
                guard: { type: 'commandUnkillable', params: ({ event }) => ({ output: event.output }) },
                target: '#run.unkillable',
                actions: { type: 'rememberUnkillable', params: ({ event }) => ({ output: event.output }) },
              },
              {
                guard: { type: 'commandSucceeded', params: ({ event }) => ({ output: event.output }) },
                target: 'registering',
              },
              {
                target: '#run.failed',
                actions: { type: 'rememberCheckFailure', params: ({ event }) => ({ output: event.output }) },
              },
            ],
            onError: {
              target: '#run.error',
              actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
            },
          },
          // As while supervising: terminate, and the supervisor's end leads on.
          on: {
            LEASE_LOST: { actions: ['interruptForLostLease', 'terminateCommand'] },
            STOP: { actions: ['interruptForStop', 'terminateCommand'] },
          },
        },
        registering: {
          invoke: {
            src: 'registerOutput',
            input: ({ context }) => ({ run: context.run, plan: context.plan }),
            onDone: [
              {
                guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
                target: '#run.done',
              },
              { target: '#run.confirmingGone' },
            ],
            onError: {
              target: '#run.failed',
              actions: { type: 'rememberOutputFailure', params: ({ event }) => ({ error: event.error }) },
            },
          },
          on: { LEASE_LOST: '#run.confirmingGone' },
        },
      },
    },
    failed: {
      initial: 'deciding',
      states: {
        deciding: {
          always: [{ guard: 'shouldAbandon', target: '#run.abandoned' }, { target: 'recording' }],
        },
        recording: {
          invoke: {
            src: 'recordFailure',
            input: ({ context }) => ({ run: context.run, failure: context.failure! }),
            onDone: [
              {
                guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
                target: 'waitingForRetry',
              },
              { target: '#run.confirmingGone' },
            ],
            onError: {
              target: '#run.error',
              actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
            },
          },
        },
        // This attempt is over and the host lets the actor go; the task waits in the store for next_retry, and
        // its retry is a new claim and a new actor. Final only within `failed`, as `abandoned.recorded` is.
        waitingForRetry: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'failed' } } },
      },
    },
    abandoned: {
      initial: 'recording',
      states: {
        recording: {
          invoke: {
            src: 'recordAbandon',
            input: ({ context }) => ({
              run: context.run,
              failure: context.failure!,
              why: (decisionAfterFailure(context) as Extract<AttemptDecision, { kind: 'abandon' }>).why,
            }),
            onDone: [
              {
                guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
                target: 'recorded',
              },
              { target: '#run.confirmingGone' },
            ],
            onError: {
              target: '#run.error',
              actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
            },
          },
        },
        recorded: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'abandoned' } } },
      },
    },
    releasing: {
      invoke: {
        src: 'releaseRun',
        input: ({ context }) => ({ run: context.run }),
        onDone: [
          {
            guard: { type: 'writeAccepted', params: ({ event }) => ({ output: event.output }) },
            target: 'released',
          },
          { target: 'confirmingGone' },
        ],
        onError: {
          target: 'error',
          actions: { type: 'rememberError', params: ({ event }) => ({ error: event.error }) },
        },
      },
    },
    // The lease was taken away and this attempt's command is gone (it never started, or the supervisor saw its
    // group end): say so, so the run's next attempt need not wait for the drain fence to expire.
    confirmingGone: {
      invoke: {
        src: 'confirmAttemptGone',
        input: ({ context }) => ({ run: context.run }),
        onDone: 'lost',
        onError: 'lost',
      },
    },
    done: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'done' } } },
    released: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'released' } } },
    lost: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'lost' } } },
    unkillable: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'unkillable' } } },
    error: { type: 'final', entry: { type: 'reportSettled', params: { settlement: 'error' } } },
  },
});
