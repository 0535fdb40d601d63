import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise, SimulatedClock, type EventObject } from 'xstate';
import { runMachine, type ClaimedRun, type PreflightOutput } from '../../machines/run.machine.js';
import { supervisorMachine } from '../../machines/supervisor.machine.js';
import type { AttemptFailure, CommandPlan, FencedWriteResult } from '../../machines/types.js';
import { FakeProcess, recordStates, settle } from './helpers.js';

const timing = { maxProcessingTimeMs: 60_000, maxNoOutputTimeMs: 30_000, signalEscalateMs: 1_000 };

function claimed(overrides: Partial<ClaimedRun> = {}): ClaimedRun {
  return { number: 12, token: 'lease-1', attempt: 1, nFailures: 0, nInterruptions: 0, doc: {}, ...overrides };
}

function planFor(run: ClaimedRun): CommandPlan {
  return {
    number: run.number,
    token: run.token,
    attempt: run.attempt,
    argv: ['process', String(run.number)],
    cwd: '.',
    env: {},
    logFile: '/dev/null',
    outputDir: '/out',
    errorFile: '/err',
    targets: [],
    resources: {},
    startedAt: 0,
  };
}

interface Fakes {
  preflight?: (run: ClaimedRun) => Promise<PreflightOutput>;
  registerOk?: boolean;
  failureOk?: boolean;
}

/** The run machine with the real supervisor chart, a fake process and fake store effects. */
function start(run: ClaimedRun, options: { maxFailures?: number; maxInterruptions?: number; noRetry?: number[] } & Fakes = {}) {
  const fake = new FakeProcess();
  const clock = new SimulatedClock();
  const writes: string[] = [];
  const failures: AttemptFailure[] = [];
  let leaseLost: (() => void) | undefined;
  const ok = (value = true): FencedWriteResult => ({ ok: value });
  const machine = runMachine.provide({
    actors: {
      leaseKeeper: fromCallback<EventObject, { run: ClaimedRun }>(({ sendBack }) => {
        leaseLost = () => sendBack({ type: 'LEASE_LOST' });
      }),
      preflight: fromPromise<PreflightOutput, { run: ClaimedRun }>(async ({ input }) => {
        writes.push('busy');
        return options.preflight ? options.preflight(input.run) : { ok: true, plan: planFor(input.run) };
      }),
      supervisor: supervisorMachine.provide({ actors: { process: fake.logic } }),
      registerOutput: fromPromise(async () => {
        writes.push('done');
        return ok(options.registerOk ?? true);
      }),
      recordFailure: fromPromise<FencedWriteResult, { run: ClaimedRun; failure: AttemptFailure }>(
        async ({ input }) => {
          writes.push('failed');
          failures.push(input.failure);
          return ok(options.failureOk ?? true);
        },
      ),
      recordAbandon: fromPromise<
        FencedWriteResult,
        { run: ClaimedRun; failure: AttemptFailure; why: string }
      >(
        async ({ input }) => {
          writes.push(`abandoned: ${input.why}`);
          failures.push(input.failure);
          return ok();
        },
      ),
      releaseRun: fromPromise(async () => {
        writes.push('released');
        return ok();
      }),
      confirmAttemptGone: fromPromise(async () => {
        writes.push('gone');
      }),
    },
  });
  const actor = createActor(machine, {
    input: {
      run,
      maxFailures: options.maxFailures ?? 3,
      maxInterruptions: options.maxInterruptions ?? 20,
      noRetryExitCodes: options.noRetry ?? [],
      timing,
    },
    clock,
  });
  const states = recordStates(actor);
  actor.start();
  return { actor, fake, clock, writes, failures, states, loseLease: () => leaseLost?.() };
}

describe('run machine', () => {
  it('considering → busy → done when the command exits 0 and the output registers', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.fake.exit(0);
    await settle();
    expect(t.states).toEqual(['considering', 'busy.supervising', 'busy.registering', 'done']);
    expect(t.writes).toEqual(['busy', 'done']);
  });

  it('a non-zero exit fails the attempt and waits for its retry', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.fake.exit(3, null, 'boom');
    await settle();
    expect(t.states).toEqual([
      'considering',
      'busy.supervising',
      'failed.recording',
      'failed.waitingForRetry',
    ]);
    expect(t.writes).toEqual(['busy', 'failed']);
    expect(t.failures[0]).toMatchObject({ kind: 'exit', exitCode: 3, message: 'exit code 3: boom' });
  });

  it('a recorded failure ends the attempt: the retry is a new claim and a new actor, never an event to this one', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.fake.exit(1);
    await settle();
    // Final within `failed` (as abandoned.recorded is): nothing the host could send takes it anywhere.
    expect(t.actor.getSnapshot().matches({ failed: 'waitingForRetry' })).toBe(true);
    const waiting = runMachine.root.states.failed!.states.waitingForRetry!;
    expect(waiting.type).toBe('final');
    expect([...waiting.transitions.keys()]).toEqual([]);
    t.actor.send({ type: 'RETRY' } as never);
    t.actor.send({ type: 'STOP' });
    await settle();
    expect(t.states.at(-1)).toBe('failed.waitingForRetry');
    expect(t.writes).toEqual(['busy', 'failed']);
  });

  it('abandons after max_failures', async () => {
    const t = start(claimed({ nFailures: 2, attempt: 3 }), { maxFailures: 3 });
    await settle();
    t.fake.spawn();
    t.fake.exit(1);
    await settle();
    expect(t.states).toEqual(['considering', 'busy.supervising', 'abandoned.recording', 'abandoned.recorded']);
    expect(t.writes).toEqual(['busy', 'abandoned: 3 failures reached retry.max_failures (3)']);
  });

  it('a preflight the host could not pass is an interruption: judged by max_interruptions, not max_failures', async () => {
    const hostFault = Object.assign(new Error("ENOTDIR: not a directory, mkdir '/logs/12'"), {
      hostFault: 'process.log_dir: cannot create or write /logs',
    });
    // at the failure limit already: a failure would abandon it, an interruption does not
    const t = start(claimed({ nFailures: 2, attempt: 3 }), {
      maxFailures: 3,
      preflight: async () => Promise.reject(hostFault),
    });
    await settle();
    expect(t.states.slice(-2)).toEqual(['failed.recording', 'failed.waitingForRetry']);
    expect(t.failures).toEqual([
      { kind: 'preflight', message: "ENOTDIR: not a directory, mkdir '/logs/12'", hostFault: hostFault.hostFault },
    ]);

    const last = start(claimed({ nInterruptions: 19, attempt: 20 }), {
      maxInterruptions: 20,
      preflight: async () => Promise.reject(hostFault),
    });
    await settle();
    expect(last.writes).toEqual([
      'busy',
      'abandoned: 20 interruptions reached retry.max_interruptions (20): its host keeps going away while it runs',
    ]);
  });

  it('a command the lease guard killed is an interruption: judged by max_interruptions, not max_failures', async () => {
    // at the failure limit already: the guard's kill (this daemon stopped renewing) must not abandon the run
    const t = start(claimed({ nFailures: 2, attempt: 3 }), { maxFailures: 3 });
    await settle();
    t.fake.spawn();
    t.fake.exit(null, 'SIGTERM', '', 'lease_guard');
    await settle();
    expect(t.states.slice(-2)).toEqual(['failed.recording', 'failed.waitingForRetry']);
    expect(t.failures).toEqual([expect.objectContaining({ kind: 'exit', signal: 'SIGTERM', interruption: 'lease_guard' })]);

    const last = start(claimed({ nInterruptions: 19, attempt: 20 }), { maxInterruptions: 20 });
    await settle();
    last.fake.spawn();
    last.fake.exit(null, 'SIGTERM', '', 'lease_guard');
    await settle();
    expect(last.writes).toEqual([
      'busy',
      'abandoned: 20 interruptions reached retry.max_interruptions (20): its host keeps going away while it runs',
    ]);
  });

  it('abandons at once on an exit code listed in no_retry_exit_codes', async () => {
    const t = start(claimed(), { noRetry: [42] });
    await settle();
    t.fake.spawn();
    t.fake.exit(42);
    await settle();
    expect(t.states.at(-1)).toBe('abandoned.recorded');
    expect(t.writes).toEqual(['busy', 'abandoned: exit code 42 is in process.no_retry_exit_codes']);
  });

  it('a preflight error fails the run with its reason and starts no command', async () => {
    const t = start(claimed(), {
      preflight: async () => {
        throw new Error('input does not exist: /data/run12');
      },
    });
    await settle();
    expect(t.states).toEqual(['considering', 'failed.recording', 'failed.waitingForRetry']);
    expect(t.failures[0]).toMatchObject({ kind: 'preflight', message: 'input does not exist: /data/run12' });
    expect(t.fake.signals).toEqual([]);
  });

  it('a lost lease while busy terminates the command and writes nothing more', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.loseLease();
    await settle();
    expect(t.fake.signals).toEqual(['SIGTERM']);
    // the drain fence is cleared only once the command has exited
    expect(t.writes).toEqual(['busy']);
    t.fake.exit(null, 'SIGTERM');
    await settle();
    expect(t.states).toEqual(['considering', 'busy.supervising', 'confirmingGone', 'lost']);
    expect(t.writes).toEqual(['busy', 'gone']);
  });

  it('a lost lease while considering stops without starting the command', async () => {
    const t = start(claimed(), { preflight: () => new Promise(() => undefined) });
    await settle();
    t.loseLease();
    await settle();
    expect(t.states).toEqual(['considering', 'confirmingGone', 'lost']);
    expect(t.writes).toEqual(['busy', 'gone']);
  });

  it('a fenced write refused means the lease is gone: lost, nothing else written', async () => {
    const t = start(claimed(), { failureOk: false });
    await settle();
    t.fake.spawn();
    t.fake.exit(2);
    await settle();
    expect(t.states.at(-1)).toBe('lost');
    expect(t.writes).toEqual(['busy', 'failed', 'gone']);
  });

  it('STOP while busy terminates the command, then releases the run', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.actor.send({ type: 'STOP' });
    await settle();
    expect(t.fake.signals).toEqual(['SIGTERM']);
    t.fake.exit(null, 'SIGTERM');
    await settle();
    expect(t.states).toEqual(['considering', 'busy.supervising', 'releasing', 'released']);
    expect(t.writes).toEqual(['busy', 'released']);
  });

  it('output missing after exit 0 fails the attempt', async () => {
    const fake = new FakeProcess();
    const actor = createActor(
      runMachine.provide({
        actors: {
          leaseKeeper: fromCallback<EventObject, { run: ClaimedRun }>(() => undefined),
          preflight: fromPromise<PreflightOutput, { run: ClaimedRun }>(async ({ input }) => ({
            ok: true,
            plan: planFor(input.run),
          })),
          supervisor: supervisorMachine.provide({ actors: { process: fake.logic } }),
          registerOutput: fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null }>(async () => {
            throw new Error('output missing: /out is empty');
          }),
          recordFailure: fromPromise<FencedWriteResult, { run: ClaimedRun; failure: AttemptFailure }>(async () => ({
            ok: true,
          })),
        },
      }),
      {
        input: { run: claimed(), maxFailures: 3, maxInterruptions: 20, noRetryExitCodes: [], timing },
        clock: new SimulatedClock(),
      },
    );
    const states = recordStates(actor);
    actor.start();
    await settle();
    fake.spawn();
    fake.exit(0);
    await settle();
    expect(states).toEqual([
      'considering',
      'busy.supervising',
      'busy.registering',
      'failed.recording',
      'failed.waitingForRetry',
    ]);
    expect(actor.getSnapshot().context.failure).toMatchObject({ kind: 'output', message: 'output missing: /out is empty' });
  });

  it('a group that survives SIGKILL ends the run unkillable', async () => {
    const t = start(claimed());
    await settle();
    t.fake.spawn();
    t.clock.increment(timing.maxProcessingTimeMs);
    await settle();
    t.clock.increment(timing.signalEscalateMs);
    await settle();
    t.clock.increment(timing.signalEscalateMs);
    await settle();
    expect(t.fake.signals).toEqual(['SIGTERM', 'SIGKILL']);
    expect(t.states).toEqual(['considering', 'busy.supervising', 'unkillable']);
    expect(t.actor.getSnapshot().context.error).toMatch(/survived SIGKILL/);
  });
});
