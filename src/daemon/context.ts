import { randomUUID } from 'node:crypto';
import type { SupervisorTiming } from '../../machines/types.js';
import type { Config } from '../config/schema.js';
import { diskFigures } from '../process/disk.js';
import { createCommandLeases, type CommandLeases } from './command-leases.js';
import type { Logger } from '../log/logger.js';
import type { LeaseGuard } from '../process/lease-guard.js';
import type { CommandHandle } from '../process/spawn-command.js';
import { leaseGuardTtl } from '../policy/lease-guard-ttl.js';
import type { RunStore } from '../store/run-store.js';
import type { DiskFigures } from '../store/types.js';

/** What every effect of one daemon shares. */
export interface DaemonContext {
  config: Config;
  store: RunStore;
  logger: Logger;
  host: string;
  /** The host document's token, set at registration. */
  hostToken: string;
  clock: () => number;
  /** Monotonic milliseconds (performance.now): what stale-lease judgement measures, immune to clock steps. */
  monotonic: () => number;
  random: () => number;
  /** Measures the output disk for the disk gate (statfs); tests may substitute a probe. */
  diskProbe: (path: string) => DiskFigures;
  /** Commands alive right now, so a second signal or a crash can kill their groups at once. */
  liveCommands: Set<CommandHandle>;
  /** Binds each command to its lease through the lease guard (a no-op binding when there is no guard). */
  leases: CommandLeases;
}

export interface DaemonContextOptions {
  config: Config;
  store: RunStore;
  logger: Logger;
  clock?: () => number;
  monotonic?: () => number;
  random?: () => number;
  diskProbe?: (path: string) => DiskFigures;
  /** The daemon's lease guard; absent only in-process (tests on a simulated clock), where nothing is guarded. */
  leaseGuard?: LeaseGuard;
}

/** The context a daemon (or a foreground `runwarden process N`) gives its effects. */
export function createDaemonContext(options: DaemonContextOptions): DaemonContext {
  return {
    config: options.config,
    store: options.store,
    logger: options.logger,
    host: options.config.host,
    hostToken: randomUUID(),
    clock: options.clock ?? Date.now,
    monotonic: options.monotonic ?? (() => performance.now()),
    random: options.random ?? Math.random,
    diskProbe: options.diskProbe ?? diskFigures,
    liveCommands: new Set(),
    leases: createCommandLeases(options.leaseGuard, leaseGuardTtl(options.config.timeouts), options.logger),
  };
}

/** The supervisor's limits from the configuration's timeouts. */
export function supervisorTiming(config: Config): SupervisorTiming {
  return {
    maxProcessingTimeMs: config.timeouts.max_processing_time,
    maxNoOutputTimeMs: config.timeouts.max_no_output_time,
    signalEscalateMs: config.timeouts.signal_escalate,
  };
}
