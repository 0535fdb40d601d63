import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { InspectionEvent, SnapshotFrom } from 'xstate';
import type { hostMachine } from '../../machines/host.machine.js';
import type { runMachine } from '../../machines/run.machine.js';
import type { AttemptFailure, SupervisorResult } from '../../machines/types.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { diskFigures } from '../process/disk.js';
import type { RunStore, StateCounts, TaskCounts } from '../store/run-store.js';
import { PROCESS_STAGE, stagesOf } from '../policy/pipeline.js';
import { HOST_STATES, RUN_STATES, type DiskFigures, type HostDoc } from '../store/types.js';

// The daemon's Prometheus metrics (`daemon --metrics`). What this daemon did (claims, failures, attempt
// durations) is counted from the inspection events of its actors, so the machines and effects stay as they
// are; what the store says (runs by state, every host's heartbeat) is read once per scrape.

/** Failure kinds as the run machine records them; a Record, so a new kind is a compile error here. */
const FAILURE_KIND_NAMES: Record<AttemptFailure['kind'], true> = {
  preflight: true,
  exit: true,
  timed_out: true,
  stalled: true,
  spawn: true,
  output: true,
  check: true,
};
export const FAILURE_KINDS = Object.keys(FAILURE_KIND_NAMES) as Array<AttemptFailure['kind']>;

/** How an attempt's command ended, in the failure kinds' words; `terminated` = stopped by runwarden. */
export const ATTEMPT_OUTCOMES = ['success', 'exit', 'timed_out', 'stalled', 'spawn', 'terminated', 'unkillable'] as const;
export type AttemptOutcome = (typeof ATTEMPT_OUTCOMES)[number];

export const RUN_STATE_LABELS = ['pending', ...RUN_STATES] as const;

/** Runs last from seconds to the 72 h max_processing_time. */
export const DURATION_BUCKETS_SECONDS = [0.1, 1, 5, 15, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200];

/** A scrape must answer before Prometheus' default 10 s scrape_timeout, even when the store hangs. */
const STORE_READ_DEADLINE_MS = 5000;

export function attemptOutcome(result: SupervisorResult): AttemptOutcome {
  switch (result.outcome) {
    case 'exited':
      return result.exitCode === 0 ? 'success' : 'exit';
    case 'spawn_failed':
      return 'spawn';
    case 'timed_out':
    case 'stalled':
    case 'terminated':
    case 'unkillable':
      return result.outcome;
  }
}

export interface DaemonMetricsOptions {
  config: Config;
  store: RunStore;
  logger: Logger;
  clock?: () => number;
  diskProbe?: (path: string) => DiskFigures;
  /** How long a scrape waits for the store before it says runwarden_store_up 0. */
  storeDeadlineMs?: number;
}

export interface DaemonMetrics {
  registry: Registry;
  /** Give it to startDaemon's `inspectors`. */
  inspector: (event: InspectionEvent) => void;
  /** The Prometheus text of one scrape. */
  render(): Promise<string>;
}

type RunSnapshot = SnapshotFrom<typeof runMachine>;
type HostSnapshot = SnapshotFrom<typeof hostMachine>;

/** Where a run actor is, as far as the counters care: each change into one of these counts once. */
type RunStage = 'considering' | 'checking' | 'failure_recorded' | 'abandon_recorded' | 'other';

function runStageOf(snapshot: RunSnapshot): RunStage {
  if (snapshot.matches('considering')) return 'considering';
  if (snapshot.matches({ busy: 'checking' })) return 'checking';
  if (snapshot.matches({ failed: 'waitingForRetry' })) return 'failure_recorded';
  if (snapshot.matches({ abandoned: 'recorded' })) return 'abandon_recorded';
  return 'other';
}

/** The id of the machine an actor runs (`host`, `run`, `supervisor`), undefined for promise/callback actors. */
function machineIdOf(event: InspectionEvent): string | undefined {
  const logic = (event.actorRef as { logic?: { id?: unknown } }).logic;
  return typeof logic?.id === 'string' ? logic.id : undefined;
}

interface StoreFigures {
  counts: StateCounts;
  hosts: HostDoc[];
  /** Tasks per stage and state; null when the store could not count them (the other figures still stand). */
  tasks: Record<string, TaskCounts> | null;
}

export function createDaemonMetrics(options: DaemonMetricsOptions): DaemonMetrics {
  const { config, store, logger } = options;
  const clock = options.clock ?? Date.now;
  const diskProbe = options.diskProbe ?? diskFigures;
  const storeDeadlineMs = options.storeDeadlineMs ?? STORE_READ_DEADLINE_MS;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  // One pair of store queries per scrape, shared by every metric that needs them; null when the store failed.
  let storeUp = true;
  let reading: Promise<StoreFigures | null> | undefined;
  const readStore = async (): Promise<StoreFigures | null> => {
    let deadline: NodeJS.Timeout | undefined;
    try {
      const figures = await Promise.race([
        Promise.all([
          store.countRunsByState(),
          store.listHosts(),
          store.countTasksByStage().catch((error: unknown) => {
            logger.debug(`metrics: tasks per stage not counted: ${error instanceof Error ? error.message : String(error)}`);
            return null;
          }),
        ]).then(([counts, hosts, tasks]) => ({ counts, hosts, tasks })),
        new Promise<never>((_, reject) => {
          deadline = setTimeout(() => reject(new Error(`no answer within ${storeDeadlineMs} ms`)), storeDeadlineMs);
        }),
      ]);
      if (!storeUp) logger.info(`metrics: the store ${store.location} answers again`);
      storeUp = true;
      return figures;
    } catch (error) {
      if (storeUp) {
        logger.info(
          `metrics: the store ${store.location} did not answer a scrape (runwarden_store_up 0): ` +
            `${error instanceof Error ? error.message : String(error)}`,
        );
      }
      storeUp = false;
      return null;
    } finally {
      clearTimeout(deadline);
    }
  };
  const storeFigures = () =>
    (reading ??= readStore().finally(() => {
      reading = undefined;
    }));

  new Gauge({
    name: 'runwarden_store_up',
    help: 'Whether the runs database answered this scrape (1) or not (0); store figures are absent when 0',
    registers,
    async collect() {
      this.set((await storeFigures()) ? 1 : 0);
    },
  });
  new Gauge({
    name: 'runwarden_runs',
    help: 'Runs in the store by processing state (all hosts); pending = never claimed',
    labelNames: ['state'],
    registers,
    async collect() {
      const figures = await storeFigures();
      this.reset();
      if (!figures) return;
      for (const state of RUN_STATE_LABELS) this.set({ state }, figures.counts[state] ?? 0);
    },
  });
  new Gauge({
    name: 'runwarden_tasks',
    help: 'Tasks in the store by stage and state (all hosts); pending = never claimed, blocked = held by an abandoned upstream task',
    labelNames: ['stage', 'state'],
    registers,
    async collect() {
      const figures = await storeFigures();
      this.reset();
      if (!figures?.tasks) return;
      for (const [stage, counts] of Object.entries(figures.tasks)) {
        for (const state of [...RUN_STATE_LABELS, 'blocked'] as const) this.set({ stage, state }, counts[state] ?? 0);
      }
    },
  });
  new Gauge({
    name: 'runwarden_host_heartbeat_age_seconds',
    help: "Seconds since each host's daemon last wrote its host document (every host of the store)",
    labelNames: ['host'],
    registers,
    async collect() {
      const figures = await storeFigures();
      this.reset();
      if (!figures) return;
      const now = clock();
      for (const host of figures.hosts) this.set({ host: host.host }, Math.max(0, (now - host.time) / 1000));
    },
  });
  new Gauge({
    name: 'runwarden_host_state',
    help: "Each host's state as its document says: 1 for the current state, 0 for the others",
    labelNames: ['host', 'state'],
    registers,
    async collect() {
      const figures = await storeFigures();
      this.reset();
      if (!figures) return;
      for (const host of figures.hosts) {
        for (const state of HOST_STATES) this.set({ host: host.host, state }, host.state === state ? 1 : 0);
      }
    },
  });

  // This host's output disk, measured at scrape time (the disk gate measures it only before a claim).
  const diskReading = (): DiskFigures | null => {
    try {
      return diskProbe(config.disk.path);
    } catch {
      return null;
    }
  };
  new Gauge({
    name: 'runwarden_disk_used_ratio',
    help: 'Used fraction of the filesystem holding disk.path on this host (the disk gate shuts at disk.max_used_percent)',
    labelNames: ['path'],
    registers,
    collect() {
      const disk = diskReading();
      this.reset();
      if (disk) this.set({ path: disk.path }, disk.used_percent / 100);
    },
  });
  new Gauge({
    name: 'runwarden_disk_free_bytes',
    help: 'Bytes available to unprivileged users on the filesystem holding disk.path on this host',
    labelNames: ['path'],
    registers,
    collect() {
      const disk = diskReading();
      this.reset();
      if (disk) this.set({ path: disk.path }, disk.free_bytes);
    },
  });

  // Everything the daemon does (heartbeats, lease renewal, signals) waits while the event loop is held: the
  // product promises its delay stays a small fraction of check_interval whatever a command does.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  new Gauge({
    name: 'runwarden_event_loop_delay_seconds',
    help: 'Event-loop delay of this daemon since it started (perf_hooks.monitorEventLoopDelay, 10 ms resolution): max, p99 and mean',
    labelNames: ['stat'],
    registers,
    collect() {
      const seconds = (ns: number) => (Number.isFinite(ns) ? ns / 1e9 : 0);
      this.set({ stat: 'max' }, seconds(loopDelay.max));
      this.set({ stat: 'p99' }, seconds(loopDelay.percentile(99)));
      this.set({ stat: 'mean' }, seconds(loopDelay.mean));
    },
  });

  let slotsBusy = 0;
  let slots = config.slots;
  new Gauge({
    name: 'runwarden_slots',
    help: 'Runs this daemon may process at once (slots)',
    registers,
    collect() {
      this.set(slots);
    },
  });
  new Gauge({
    name: 'runwarden_slots_busy',
    help: 'Runs this daemon holds right now (claimed and not yet settled)',
    registers,
    collect() {
      this.set(slotsBusy);
    },
  });

  // Run and attempt metrics carry the task's `stage` (DESIGN §9): `process` for the first wave's one stage.
  const claims = new Counter({
    name: 'runwarden_claims_total',
    help: 'Tasks this daemon claimed, by stage (each claim is one attempt)',
    labelNames: ['stage'],
    registers,
  });
  const failures = new Counter({
    name: 'runwarden_failures_total',
    help: 'Failed attempts this daemon recorded, by stage and kind (abandoning ones included)',
    labelNames: ['stage', 'kind'],
    registers,
  });
  const abandoned = new Counter({
    name: 'runwarden_runs_abandoned_total',
    help: 'Tasks this daemon gave up on (max_failures or a no-retry exit code), by stage and the kind of their last failure',
    labelNames: ['stage', 'kind'],
    registers,
  });
  const hostFaults = new Counter({
    name: 'runwarden_host_faults_total',
    help: 'Attempts this daemon could not start for a reason of the host (interruptions, not failures), by stage',
    labelNames: ['stage'],
    registers,
  });
  const durations = new Histogram({
    name: 'runwarden_attempt_duration_seconds',
    help: "How long each attempt's command ran (its check not included), by stage and how it ended",
    labelNames: ['stage', 'outcome'],
    buckets: DURATION_BUCKETS_SECONDS,
    registers,
  });
  // Every series of every configured stage exists from the start, so rate() and increase() see the first event.
  for (const { name: stage } of stagesOf(config)) {
    claims.inc({ stage }, 0);
    hostFaults.inc({ stage }, 0);
    for (const kind of FAILURE_KINDS) {
      failures.inc({ stage, kind }, 0);
      abandoned.inc({ stage, kind }, 0);
    }
    for (const outcome of ATTEMPT_OUTCOMES) durations.zero({ stage, outcome });
  }

  const countFailure = (stage: string, failure: AttemptFailure | null, counter: Counter<'stage' | 'kind'>) => {
    if (failure && Object.hasOwn(FAILURE_KIND_NAMES, failure.kind)) counter.inc({ stage, kind: failure.kind });
  };
  /** A host fault is an interruption: counted apart, never as the task's failure. */
  const countAttemptEnd = (stage: string, failure: AttemptFailure | null) => {
    if (failure?.hostFault !== undefined) hostFaults.inc({ stage });
    else countFailure(stage, failure, failures);
  };

  /** Where each run actor last was; weak, so settled actors are forgotten with them. */
  const runStages = new WeakMap<object, RunStage>();
  const onRunSnapshot = (actorRef: object, snapshot: RunSnapshot, event: { type: string; output?: unknown }) => {
    const stage = snapshot.context.run.stage ?? PROCESS_STAGE;
    const before = runStages.get(actorRef);
    // The supervisor's result reaches the run actor once per command, and once more per check (not counted).
    if (event.type === 'xstate.done.actor.supervisor' && before !== 'checking') {
      const result = event.output as SupervisorResult;
      durations.observe({ stage, outcome: attemptOutcome(result) }, result.durationMs / 1000);
    }
    const where = runStageOf(snapshot);
    if (where === before) return;
    runStages.set(actorRef, where);
    if (where === 'considering') claims.inc({ stage });
    else if (where === 'failure_recorded') countAttemptEnd(stage, snapshot.context.failure);
    else if (where === 'abandon_recorded') {
      countAttemptEnd(stage, snapshot.context.failure);
      countFailure(stage, snapshot.context.failure, abandoned);
    }
  };

  const inspector = (event: InspectionEvent) => {
    if (event.type !== '@xstate.snapshot') return;
    const machine = machineIdOf(event);
    if (machine === 'run') onRunSnapshot(event.actorRef, event.snapshot as RunSnapshot, event.event);
    else if (machine === 'host') {
      const context = (event.snapshot as HostSnapshot).context;
      slotsBusy = context.running.length;
      slots = context.slots;
    }
  };

  return { registry, inspector, render: () => registry.metrics() };
}
