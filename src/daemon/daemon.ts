import { createActor, type InspectionEvent, type SnapshotFrom } from 'xstate';
import { hostMachine, type HostInput } from '../../machines/host.machine.js';
import { runMachine } from '../../machines/run.machine.js';
import { supervisorMachine } from '../../machines/supervisor.machine.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { RunStore } from '../store/run-store.js';
import type { DiskFigures, HostState } from '../store/types.js';
import { createDaemonContext, supervisorTiming, type DaemonContext } from './context.js';
import { hostEffects, type HostView } from './host-effects.js';
import { processActor } from './process-actor.js';
import { runEffects } from './run-effects.js';

// Wiring: the pure charts in machines/ get their effects here, and the host actor gets the process's
// signals. Crash-only: an unexpected error is logged at fatal, every live process group is killed, and
// the daemon exits non-zero; the next start repairs what is left.

export interface DaemonOptions {
  config: Config;
  store: RunStore;
  logger: Logger;
  once?: boolean;
  clock?: () => number;
  /** Monotonic milliseconds for stale-lease judgement; performance.now() unless a test substitutes one. */
  monotonic?: () => number;
  random?: () => number;
  /** Measures the output disk; tests substitute a probe to shut and open the disk gate. */
  diskProbe?: (path: string) => DiskFigures;
  /** Install SIGINT/SIGTERM handlers (the CLI does; in-process callers such as `demo` may not). */
  handleSignals?: boolean;
  /**
   * Observers of every inspection event of the host actor and of each run and supervisor actor it spawns
   * (the live inspector, metrics). An observer that throws is logged and ignored: watching never stops work.
   */
  inspectors?: Array<(event: InspectionEvent) => void>;
}

export interface DaemonHandle {
  /** Ask the daemon to stop: no new claims, commands terminated, their runs released. */
  stop(): void;
  /** Kill every live process group at once (second signal). */
  killCommands(): void;
  /** Resolves with the exit code once the host actor has finished. */
  done: Promise<number>;
}

type HostSnapshot = SnapshotFrom<typeof hostMachine>;

export function hostStateOf(snapshot: HostSnapshot | undefined): HostState {
  if (!snapshot) return 'starting';
  if (snapshot.matches('starting') || snapshot.matches('recovering')) return 'starting';
  if (snapshot.matches('stopping') || snapshot.matches('deregistering')) return 'stopping';
  if (snapshot.matches('stopped') || snapshot.matches('failed')) return 'stopped';
  if (snapshot.context.diskFull) return 'disk_full';
  return snapshot.context.running.length > 0 ? 'busy' : 'idle';
}

/** The run machine with its real effects: what a daemon spawns per claim and `process N` runs once. */
export function provideRunMachine(ctx: DaemonContext) {
  const supervisor = supervisorMachine.provide({ actors: { process: processActor(ctx) } });
  return runMachine.provide({ actors: { ...runEffects(ctx), supervisor } });
}

export function provideMachines(ctx: DaemonContext, view: () => HostView) {
  return hostMachine.provide({ actors: { ...hostEffects(ctx, view), run: provideRunMachine(ctx) } });
}

export function startDaemon(options: DaemonOptions): DaemonHandle {
  const { config, logger } = options;
  const ctx = createDaemonContext(options);
  let latest: HostSnapshot | undefined;
  const view = (): HostView => ({
    state: hostStateOf(latest),
    running: latest ? [...latest.context.running] : [],
  });
  const input: HostInput = {
    host: config.host,
    slots: config.slots,
    idlePollMs: config.timeouts.idle_poll,
    once: options.once ?? false,
    maxFailures: config.retry.max_failures,
    noRetryExitCodes: config.process.no_retry_exit_codes,
    timing: supervisorTiming(config),
  };
  const inspectors = options.inspectors ?? [];
  const inspect = (event: InspectionEvent) => {
    for (const observer of inspectors) {
      try {
        observer(event);
      } catch (error) {
        logger.debug(`an inspection observer failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  };
  const actor = createActor(provideMachines(ctx, view), {
    input,
    systemId: 'host',
    ...(inspectors.length > 0 ? { inspect } : {}),
  });

  const killCommands = () => {
    for (const handle of ctx.liveCommands) handle.signal('SIGKILL');
  };

  let signalsSeen = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signalsSeen += 1;
    if (signalsSeen === 1) {
      logger.info(`${signal} received: no new claims; terminating commands and releasing their runs`);
      actor.send({ type: 'STOP' });
      return;
    }
    logger.warn(`second signal (${signal}): killing every process group now`);
    killCommands();
    void logger.flush().finally(() => process.exit(130));
  };
  const onFatal = (error: unknown) => {
    logger.fatal(`unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    killCommands();
    void logger.flush().finally(() => process.exit(1));
  };
  if (options.handleSignals) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('uncaughtException', onFatal);
    process.on('unhandledRejection', onFatal);
  }

  const done = new Promise<number>((resolve) => {
    actor.subscribe({
      next: (snapshot) => {
        latest = snapshot;
        if (snapshot.status !== 'done') return;
        const error = snapshot.output?.error ?? null;
        if (error) {
          logger.fatal(`host ${config.host} stops on an error: ${error}`);
          killCommands();
        }
        resolve(error ? 1 : 0);
      },
      error: (error: unknown) => {
        logger.fatal(`host actor crashed: ${error instanceof Error ? error.message : String(error)}`);
        killCommands();
        resolve(1);
      },
    });
  }).finally(() => {
    if (options.handleSignals) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('uncaughtException', onFatal);
      process.off('unhandledRejection', onFatal);
    }
  });

  actor.start();
  return { stop: () => actor.send({ type: 'STOP' }), killCommands, done };
}
