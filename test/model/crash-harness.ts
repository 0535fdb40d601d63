import { execa } from 'execa';
import { Writable } from 'node:stream';
import { createActor, type AnyActorRef, type SnapshotFrom } from 'xstate';
import { defaultConfig, type Config } from '../../src/config/schema.js';
import type { DaemonContext } from '../../src/daemon/context.js';
import { runInputFor } from '../../src/daemon/run-input.js';
import { hostInputFor, hostStateOf, provideMachines, provideRunMachine } from '../../src/daemon/daemon.js';
import type { HostView } from '../../src/daemon/host-effects.js';
import { createLogger, type Logger } from '../../src/log/logger.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunDoc } from '../../src/store/types.js';
import { waitFor } from '../helpers/cli.js';

// Crash injection for in-process daemons. A crashable store stands between a daemon's effects and the real
// SQLite store: right after a chosen write has committed, the daemon "dies": its caller never hears back, every
// later call of that daemon hangs (a dead process writes nothing), its actor is stopped without killing the
// commands it started (they live on as orphans, as after kill -9). Its claims carry a pid that is really dead,
// so the next incarnation sees them as left behind by a daemon that is gone.

/** Store calls that change a run or a host; a crash point is "right after the n-th such write". */
export const STORE_WRITES = new Set([
  'claimNextRun',
  'claimRun',
  'markBusy',
  'recordProcessGroup',
  'heartbeatRun',
  'finishRun',
  'failRun',
  'abandonRun',
  'releaseRun',
  'overrideRun',
  'registerHost',
  'heartbeatHost',
]);

/** Calls that answer at once and are not I/O; passed through even after the crash. */
const SYNCHRONOUS = new Set(['watchNewRuns', 'close']);

export interface CrashPoint {
  write: string;
  /** 1 for the first such write of the daemon. */
  occurrence: number;
  /** The stage of the task written, when it is not the first wave's `process` (for the description only). */
  stage?: string;
}

export function describePoint(point: CrashPoint): string {
  return `after ${point.write}#${point.occurrence}${point.stage ? ` (${point.stage})` : ''}`;
}

/** The stage a write names, by its TaskRef argument or the claimed view it returns; undefined for `process`. */
function stageOfWrite(args: unknown[], out: unknown): string | undefined {
  const ref = args[0];
  const fromRef = ref !== null && typeof ref === 'object' && 'stage' in ref ? (ref as { stage?: unknown }).stage : undefined;
  const fromOut = out !== null && typeof out === 'object' && 'stage' in out ? (out as { stage?: unknown }).stage : undefined;
  const stage = typeof fromRef === 'string' ? fromRef : typeof fromOut === 'string' ? fromOut : undefined;
  return stage === undefined || stage === 'process' ? undefined : stage;
}

export interface CrashableStore {
  store: RunStore;
  /** The daemon's committed writes so far, in order. */
  writes: CrashPoint[];
  /** Process groups the daemon recorded for its commands. */
  pgids: number[];
  crashed: boolean;
  /** Resolves when the crash happened. */
  whenCrashed: Promise<void>;
  /** Crash now, whatever the daemon is doing (the caller stops its actor). */
  crashNow(): void;
}

const never = () => new Promise<never>(() => undefined);

export function crashableStore(
  inner: RunStore,
  options: { deadPid: number; crashAt?: CrashPoint; onCrash?: () => void },
): CrashableStore {
  let markCrashed!: () => void;
  const state: CrashableStore = {
    store: undefined as unknown as RunStore,
    writes: [],
    pgids: [],
    crashed: false,
    whenCrashed: new Promise<void>((resolve) => (markCrashed = resolve)),
    crashNow: () => {
      state.crashed = true;
      markCrashed();
    },
  };
  const counts = new Map<string, number>();
  const rewrite = (method: string, args: unknown[]): unknown[] => {
    // The dead daemon's identity: its claims and host document name a pid that no longer exists.
    if (method === 'claimNextRun') return [{ ...(args[0] as object), pid: options.deadPid }];
    if (method === 'claimRun') return [args[0], { ...(args[1] as object), pid: options.deadPid }, args[2]];
    if (method === 'registerHost') {
      const { proc_start: _ignored, ...doc } = args[0] as { proc_start?: number };
      return [{ ...doc, pid: options.deadPid }];
    }
    return args;
  };
  state.store = new Proxy(inner, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function' || typeof property !== 'string') return value;
      const method = property;
      return (...args: unknown[]) => {
        if (SYNCHRONOUS.has(method)) return (value as (...a: unknown[]) => unknown).apply(target, args);
        if (state.crashed) return never();
        const result = (value as (...a: unknown[]) => Promise<unknown>).apply(target, rewrite(method, args));
        if (!STORE_WRITES.has(method)) return result.then((out) => (state.crashed ? never() : out));
        return result.then((out) => {
          if (state.crashed) return never();
          if (out === false || out === null) return out;
          const occurrence = (counts.get(method) ?? 0) + 1;
          counts.set(method, occurrence);
          const stage = stageOfWrite(args, out);
          state.writes.push({ write: method, occurrence, ...(stage !== undefined ? { stage } : {}) });
          if (method === 'recordProcessGroup') state.pgids.push((args[2] as { pgid: number }).pgid);
          const at = options.crashAt;
          if (at && at.write === method && at.occurrence === occurrence) {
            state.crashNow();
            options.onCrash?.();
            return never();
          }
          return out;
        });
      };
    },
  });
  return state;
}

/**
 * Dies like kill -9: the daemon's commands are left running (their handles can no longer signal), then its
 * actor is stopped so no timer or callback of it acts again.
 */
export function crashDaemon(ctx: DaemonContext, actor: AnyActorRef | undefined): void {
  for (const handle of ctx.liveCommands) handle.signal = () => undefined;
  actor?.stop();
}

/** After a test: SIGKILLs the process groups dead daemons left behind, then closes the stores. */
export async function reap(groups: number[], stores: RunStore[]): Promise<void> {
  for (const pgid of groups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const s of stores) await s.close();
}

/** The pid of a process that has exited and been reaped. */
export async function deadPid(): Promise<number> {
  const child = execa('true');
  await child;
  return child.pid!;
}

export function silentLogger(host: string): Logger {
  const sink = new Writable({ write: (_chunk, _encoding, done) => done() });
  return createLogger({ level: 'error', host, json: true, stream: sink });
}

/**
 * A daemon configuration for `host`: the command is `script {output} {attempt} {params.mode}`; heartbeats are
 * off the clock (check_interval of an hour) so the only writes are the chart's; retries are due after 1 s of
 * the injected clock.
 */
export function modelConfig(dir: string, host: string, script: string): Config {
  const config = defaultConfig(dir, host);
  config.process.command = ['sh', script, '{output}', '{attempt}', '{params.mode}'];
  config.process.no_retry_exit_codes = [42];
  config.timeouts.check_interval = 3_600_000;
  config.timeouts.cleanup_interval = 3_600_000;
  config.timeouts.idle_poll = 3_600_000;
  config.timeouts.signal_escalate = 300;
  config.timeouts.max_considering_time = 60_000;
  config.timeouts.max_busy_time = 7_200_000;
  config.retry = { base: 1_000, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 3, max_interruptions: 20 };
  config.disk = { path: dir, max_used_percent: 100, min_free_bytes: 0 };
  return config;
}

/** A test clock the stores and daemons share; time moves only when the test says. */
export class TestClock {
  now = Date.now();
  readonly read = () => this.now;
  advance(ms: number): void {
    this.now += ms;
  }
}

export { runInputFor };

/** The run actor has nothing more to do for this attempt (what it reports to its host as settled). */
export function attemptOver(snapshot: SnapshotFrom<ReturnType<typeof provideRunMachine>>): boolean {
  return (
    snapshot.status === 'done' ||
    snapshot.matches({ failed: 'waitingForRetry' }) ||
    snapshot.matches({ abandoned: 'recorded' })
  );
}

/** Runs one claimed attempt on a real run actor with real effects until this attempt is over. */
export async function processAttempt(ctx: DaemonContext, doc: RunDoc): Promise<string> {
  const actor = createActor(provideRunMachine(ctx), { input: runInputFor(ctx.config, doc) });
  actor.start();
  try {
    const ended = await waitFor(
      () => {
        const s = actor.getSnapshot();
        return attemptOver(s) ? JSON.stringify(s.value) : null;
      },
      `attempt ${doc.processing!.attempt} of run ${doc.number} to end (${JSON.stringify(actor.getSnapshot().value)})`,
      { intervalMs: 5 },
    );
    return ended;
  } finally {
    actor.stop();
  }
}

/**
 * What a healthy daemon does with the run from here on: claims it whenever it is eligible (moving the clock to
 * its next_retry, or to the end of a previous attempt's drain fence) and processes each attempt, until it is done or abandoned. Returns the tokens it held.
 */
export async function processToEnd(
  ctx: DaemonContext,
  clock: TestClock,
  number: number,
  onObserve: (doc: RunDoc) => void,
  /** Called with each fresh claim, while the new owner's lease is live and before its attempt runs. */
  onClaimed: (doc: RunDoc) => Promise<void> = async () => undefined,
): Promise<string[]> {
  const tokens: string[] = [];
  for (let round = 0; round < 10; round += 1) {
    const current = await ctx.store.getRun(number);
    onObserve(current!);
    const p = current?.processing;
    if (p?.state === 'done' || p?.state === 'abandoned') return tokens;
    if (p?.state === 'failed' && p.next_retry !== undefined && p.next_retry > clock.now) {
      clock.advance(p.next_retry - clock.now);
    }
    // a run taken from a busy owner that never confirmed its command gone waits for the drain limit (nextRetryAt)
    if (p?.state === 'failed' && p.draining !== undefined && p.draining.until > clock.now) {
      clock.advance(p.draining.until - clock.now);
    }
    const claimed = await ctx.store.claimNextRun({ host: ctx.host, pid: process.pid, order: 'newest' });
    if (!claimed) throw new Error(`run ${number} is ${p?.state ?? 'pending'} and cannot be claimed`);
    onObserve(claimed);
    await onClaimed(claimed);
    tokens.push(claimed.processing!.token);
    await processAttempt(ctx, claimed);
  }
  throw new Error(`run ${number} did not settle in 10 attempts`);
}

/** A real host actor with its real effects over `ctx`, as startDaemon builds it, minus the process's signals. */
export function createHost(ctx: DaemonContext) {
  let latest: SnapshotFrom<ReturnType<typeof provideMachines>> | undefined;
  const view = (): HostView => ({
    state: hostStateOf(latest),
    running: latest ? [...latest.context.running] : [],
    pausedReason: latest?.context.pausedReason ?? null,
  });
  const { config } = ctx;
  const actor = createActor(provideMachines(ctx, view), {
    systemId: 'host',
    input: hostInputFor(config, false),
  });
  actor.subscribe({ next: (s) => (latest = s), error: () => undefined });
  return actor;
}
