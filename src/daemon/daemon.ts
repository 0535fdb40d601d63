import { createActor, type InspectionEvent, type SnapshotFrom } from 'xstate';
import { hostMachine, type HostInput } from '../../machines/host.machine.js';
import { runMachine } from '../../machines/run.machine.js';
import { supervisorMachine } from '../../machines/supervisor.machine.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { startLeaseGuard, type LeaseGuard } from '../process/lease-guard.js';
import { ownDaemonTag } from '../process/orphan-scan.js';
import type { RunStore } from '../store/run-store.js';
import type { DiskFigures, HostState } from '../store/types.js';
import { createDaemonContext, supervisorTiming, type DaemonContext } from './context.js';
import { hostEffects, type HostView } from './host-effects.js';
import { processActor } from './process-actor.js';
import { describeFatal, dieLoudly, exitProcess, onProcessFault, STOP_SIGNALS } from './process-exit.js';
import { runEffects } from './run-effects.js';
import { stagesOf } from '../policy/pipeline.js';

// Wiring: the pure charts in machines/ get their effects here, and the host actor gets the process's
// signals. Crash-only: an unexpected error is logged at fatal, every live process group is killed, and
// the daemon exits non-zero (explicitly, after a bounded flush: see process-exit.ts); the next start
// repairs what is left.

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
  /**
   * Install the stop-signal handlers, SIGINT, SIGTERM and SIGHUP (the CLI does; in-process callers such as
   * `demo` may not): the first stops cleanly, a second kills every process group and exits 130.
   */
  handleSignals?: boolean;
  /**
   * The daemon owns its process (default: handleSignals): an uncaught exception or unhandled rejection is
   * fatal, and a fatal error exits the process non-zero within EXIT_BUDGET_MS, whatever holds the event loop.
   */
  ownsProcess?: boolean;
  /**
   * Observers of every inspection event of the host actor and of each run and supervisor actor it spawns
   * (the live inspector, metrics). An observer that throws is logged and ignored: watching never stops work.
   */
  inspectors?: Array<(event: InspectionEvent) => void>;
  /** The lease guard; by default one is started for this daemon and closed when it ends. */
  leaseGuard?: LeaseGuard;
}

export interface DaemonHandle {
  /** Ask the daemon to stop: no new claims, commands terminated, their runs released. */
  stop(): void;
  /** Kill every live process group at once (second signal). */
  killCommands(): void;
  /** Ends the daemon on a fatal error found outside the chart (the host actor goes to `failed` with `reason`). */
  fatal(reason: string): void;
  /** Resolves with the exit code once the host actor has finished: 0 after a clean stop, 1 after a fatal error. */
  done: Promise<number>;
}

type HostSnapshot = SnapshotFrom<typeof hostMachine>;

export function hostStateOf(snapshot: HostSnapshot | undefined): HostState {
  if (!snapshot) return 'starting';
  if (snapshot.matches('starting') || snapshot.matches('recovering')) return 'starting';
  if (snapshot.matches('stopping') || snapshot.matches('deregistering')) return 'stopping';
  if (snapshot.matches('stopped') || snapshot.matches('failed')) return 'stopped';
  if (snapshot.matches({ running: 'paused' })) return 'paused';
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

/** The host actor's input from the configuration. */
export function hostInputFor(config: Config, once: boolean): HostInput {
  return {
    host: config.host,
    slots: config.slots,
    // A stage never has more slots than the daemon.
    stages: stagesOf(config).map((stage) => ({ name: stage.name, slots: Math.min(stage.slots, config.slots) })),
    idlePollMs: config.timeouts.idle_poll,
    once,
    maxFailures: config.retry.max_failures,
    maxInterruptions: config.retry.max_interruptions,
    noRetryExitCodes: config.process.no_retry_exit_codes,
    timing: supervisorTiming(config),
    hostFaultThreshold: config.process.host_fault_threshold,
    // as the disk gate looks again: a fixed directory or a restored mount should not wait a long idle_poll
    recheckMs: Math.min(config.timeouts.idle_poll, config.timeouts.check_interval),
  };
}

export function startDaemon(options: DaemonOptions): DaemonHandle {
  const { config, logger } = options;
  // Throws (exit 2) when bash is missing: without the guard a frozen daemon's commands outlive their leases.
  const leaseGuard =
    options.leaseGuard ??
    startLeaseGuard({
      escalateMs: config.timeouts.signal_escalate,
      daemonTag: ownDaemonTag(config.host, options.store.location),
    });
  const ctx = createDaemonContext({ ...options, leaseGuard });
  let latest: HostSnapshot | undefined;
  const view = (): HostView => ({
    state: hostStateOf(latest),
    // The host document names runs: a run with two tasks running here appears once.
    running: latest ? [...new Set(latest.context.running)] : [],
    pausedReason: latest && hostStateOf(latest) === 'paused' ? latest.context.pausedReason : null,
  });
  const input = hostInputFor(config, options.once ?? false);
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

  // The daemon ends exactly once: cleanly (0) when the host actor reaches `stopped`, or on a fatal error (1).
  const ownsProcess = options.ownsProcess ?? options.handleSignals ?? false;
  let ended = false;
  let resolveDone: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => {
    resolveDone = resolve;
  });
  const uninstall: Array<() => void> = [];
  const end = (code: number) => {
    if (ended) return;
    ended = true;
    for (const off of uninstall.splice(0)) off();
    resolveDone(code);
  };
  /** Crash-only: log at fatal, kill every live process group, and (owning the process) exit non-zero. */
  const fatal = (message: string) => {
    if (ended) return;
    end(1);
    if (ownsProcess) {
      // Explicit and bounded: an errored actor's children (heartbeat, lease keepers, watchers) would keep the
      // event loop, and so a daemon without a working host actor, alive.
      void dieLoudly(logger, message, killCommands);
      return;
    }
    killCommands();
    logger.fatal(message);
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
    void exitProcess(130, [() => logger.flush()]);
  };
  if (options.handleSignals) {
    for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
    uninstall.push(() => {
      for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
    });
  }
  if (ownsProcess) {
    uninstall.push(onProcessFault((error, origin) => fatal(`${origin}: ${describeFatal(error)}`)));
  }

  // Crash-only: with its guard gone no command is bound to its lease any more.
  leaseGuard.onLost((reason) => {
    fatal(reason);
    if (!ownsProcess) actor.stop();
  });

  actor.subscribe({
    next: (snapshot) => {
      latest = snapshot;
      if (snapshot.status !== 'done') return;
      const error = snapshot.output?.error ?? null;
      if (error) fatal(`host ${config.host} stops on an error: ${error}`);
      else end(0);
    },
    error: (error: unknown) => fatal(`host actor crashed: ${describeFatal(error)}`),
  });

  actor.start();
  return {
    stop: () => actor.send({ type: 'STOP' }),
    killCommands,
    fatal: (reason: string) => actor.send({ type: 'FATAL', error: reason }),
    // After a clean stop nothing is left to kill; after an error the guard kills what killCommands missed.
    done: done.then(async (code) => {
      await leaseGuard.close();
      return code;
    }),
  };
}
