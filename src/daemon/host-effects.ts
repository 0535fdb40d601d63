import { fromCallback, fromPromise, type EventObject } from 'xstate';
import type { ClaimInput, ClaimOutput, HostCheckOutput } from '../../machines/host.machine.js';
import { formatByteSize, formatDuration } from '../config/duration.js';
import { StoreReplacedError } from '../errors.js';
import { describeHostProblems, hostProblems } from './host-check.js';
import { readProcStart } from '../process/proc.js';
import { monitorMinute, type HostPatch } from '../store/run-store.js';
import { isStoreContention } from '../store/contention.js';
import { DEFAULT_STAGE, type DiskFigures, type HostDoc, type HostState, type MonitorSample, type RunDoc } from '../store/types.js';
import { cleanupPass } from './cleanup.js';
import { LeaseObservations } from './lease-observations.js';
import { displacePreviousDaemon } from './displace.js';
import { recoverOwnRuns } from './recover-own-runs.js';
import { runInputFor, taskRefOf } from './run-input.js';
import { stagesOf } from '../policy/pipeline.js';
import { stageRun } from './staging.js';
import type { StageClaim } from '../store/run-store.js';
import type { DaemonContext } from './context.js';
import { isDateMs, isoTimeOrInvalid } from '../time-range.js';
import { uncleanRestartMessage } from '../policy/host-restart.js';
import { VERSION } from '../version.js';

/** What the host document should say right now; the daemon derives it from the host actor. */
export interface HostView {
  state: HostState;
  running: number[];
  /** Why claiming is paused (state `paused`); null otherwise. */
  pausedReason: string | null;
}

/** Shortest pause before looking again when a retry is already due but was not claimable. */
const MIN_POLL_MS = 50;

/**
 * Crash-only for an effect that repeats on a timer and cannot report its errors to the chart: a store file
 * replaced is fatal at once, and failing without a single success for longer than `limitMs` (measured on a
 * monotonic clock, so a wall-clock step neither ends nor prolongs it) is fatal too, instead of an error
 * logged for ever by a daemon that no longer works. `fatal` is called once.
 */
export function failureBound(what: string, limitMs: number, limitName: string, fatal: (reason: string) => void) {
  let lastSuccess = performance.now();
  let ended = false;
  const end = (reason: string) => {
    if (ended) return;
    ended = true;
    fatal(reason);
  };
  return {
    get ended() {
      return ended;
    },
    succeeded() {
      lastSuccess = performance.now();
    },
    /** Records a failure; true when it ended the effect (the caller need not log it as well). */
    failed(error: unknown): boolean {
      if (error instanceof StoreReplacedError) {
        end(error.message);
        return true;
      }
      const failingMs = performance.now() - lastSuccess;
      if (failingMs < limitMs) return false;
      end(
        `${what} for ${formatDuration(Math.round(failingMs))} (${limitName} is ${formatDuration(limitMs)}): ` +
          `${String(error)}`,
      );
      return true;
    },
  };
}

export function hostEffects(ctx: DaemonContext, view: () => HostView) {
  const { store, config, logger, clock, host } = ctx;

  /** The host document as the previous incarnation left it; recovery needs its pid. */
  let previous: HostDoc | null = null;
  /** Last disk figures, for the host document; undefined until the first claim measured them. */
  let disk: DiskFigures | undefined;
  let gateShut = false;

  const register = fromPromise<void, { host: string }>(async () => {
    previous = await store.getHost(host);
    // Even a document that says stopped or dead is checked: the pid + start time decide, not the state.
    if (previous) await displacePreviousDaemon(previous, config.timeouts.signal_escalate, logger);
    // As the predecessor left it: one displaced by SIGTERM has written `stopped` by now.
    const left = previous ? await store.getHost(host) : null;
    const now = clock();
    const procStart = readProcStart(process.pid);
    await store.registerHost({
      host,
      pid: process.pid,
      ...(procStart !== undefined ? { proc_start: procStart } : {}),
      token: ctx.hostToken,
      state: 'starting',
      time: now,
      started: now,
      version: VERSION,
      slots: config.slots,
      running: [],
    });
    logger.info(
      `host ${host} started: pid ${process.pid}, ${config.slots} slot(s), store ${store.location}; ` +
        `new runs noticed by ${store.wakeUpMethod}`,
    );
    // A predecessor that did not stop cleanly (killed, crashed) is recorded, however short the silence was:
    // status --history counts these, since a restart within a minute leaves no gap in the monitor samples.
    if (left && left.state !== 'stopped' && isDateMs(left.time)) {
      logger.warn(uncleanRestartMessage({ host, previousPid: left.pid, previousState: left.state, lastHeard: left.time }));
    }
  });

  const recoverRuns = fromPromise<void, { host: string }>(async () => {
    const recovered = await recoverOwnRuns(ctx, previous);
    const repaired = recovered.filter((r) => r.outcome !== 'lost_race');
    if (repaired.length > 0) {
      logger.warn(
        `host ${host} restarted: ${repaired.length} run(s) of the previous daemon interrupted ` +
          `(${repaired.map((r) => (r.stage === DEFAULT_STAGE ? `${r.number}` : `${r.number}/${r.stage}`)).join(', ')}), eligible again at once and not counted as failures; ` +
          `${repaired.filter((r) => r.killedPgid !== undefined).length} orphaned command(s) killed`,
      );
    }
  });

  /** The disk gate (DESIGN §6 disk): shut while the output disk is too full; one warning per closing. */
  const diskGateShut = (): boolean => {
    const { path, max_used_percent: maxUsed, min_free_bytes: minFree } = config.disk;
    try {
      disk = ctx.diskProbe(path);
    } catch (error) {
      logger.error(`disk gate: cannot measure ${path}: ${String(error)}; claiming as if there were space`);
      return false;
    }
    const full = disk.used_percent >= maxUsed || disk.free_bytes < minFree;
    if (full && !gateShut) {
      logger.warn(
        `disk full: ${path} is ${disk.used_percent}% used with ${formatByteSize(disk.free_bytes)} free ` +
          `(limits: disk.max_used_percent ${maxUsed}, disk.min_free_bytes ${formatByteSize(minFree)}); ` +
          `claiming nothing until space returns`,
      );
    } else if (!full && gateShut) {
      logger.info(`disk space is back on ${path} (${disk.used_percent}% used); claiming again`, { operator: true });
    }
    gateShut = full;
    return full;
  };

  /** The minute of the last monitor sample, across both heartbeats (running, stopping): one per minute. */
  let sampledMinute: number | undefined;
  let sampling = false;

  const monitorSample = (current: HostView, now: number): MonitorSample => {
    try {
      disk = ctx.diskProbe(config.disk.path); // a statfs a minute keeps the figures fresh while no claim measures
    } catch {
      // the disk gate reports a disk it cannot measure; the sample keeps the last figures
    }
    const { state, running } = current;
    return { host, time: now, state, slots: config.slots, running, ...(disk ? { disk } : {}) };
  };

  /** DESIGN §3 monitor: one sample in each new minute, the first soon after start. A lost sample is logged. */
  const sampleMonitor = (current: HostView) => {
    const now = clock();
    const minute = monitorMinute(now);
    if (sampling || minute === sampledMinute) return;
    sampledMinute = minute; // one attempt per minute, so a store that is down logs once a minute
    sampling = true;
    store
      .recordMonitor(monitorSample(current, now))
      .catch((error: unknown) => logger.error(`monitor sample not recorded: ${String(error)}`))
      .finally(() => {
        sampling = false;
      });
  };

  // Writes the host document every check_interval, and soon after its state or running runs change. Crash-only:
  // its errors are not logged for ever. A store file replaced under the daemon is fatal at once; a store that
  // has refused the heartbeat for longer than max_busy_time (the lease others judge this host's runs by) is
  // fatal too, so the daemon exits, is restarted, and recovery repairs its runs.
  const heartbeat = fromCallback<EventObject, { host: string }>(({ sendBack }) => {
    let inFlight = false;
    let displaced = false;
    let lastWritten = '';
    const bound = failureBound(
      'the store refused host heartbeats',
      config.timeouts.max_busy_time,
      'timeouts.max_busy_time',
      (reason) => sendBack({ type: 'FATAL', error: reason }),
    );
    const failed = (error: unknown) => {
      logger.error(`host heartbeat failed: ${String(error)}`);
      bound.failed(error);
    };
    const write = (force: boolean) => {
      if (inFlight || displaced || bound.ended) return;
      const current = view();
      const key = JSON.stringify(current);
      inFlight = true;
      // One stat per tick: a store file deleted or replaced under the daemon stops it within a second.
      store
        .verifyIdentity()
        .then(async () => {
          if (!force && key === lastWritten) return;
          const patch: HostPatch = {
            state: current.state,
            running: current.running,
            paused_reason: current.pausedReason,
            ...(disk ? { disk } : {}),
          };
          const ok = await store.heartbeatHost(host, ctx.hostToken, patch);
          bound.succeeded();
          lastWritten = key;
          if (!ok) {
            displaced = true;
            // Who took over: the document the newcomer registered (it may be another machine with this host name).
            const newcomer = await store.getHost(host).catch(() => null);
            sendBack({
              type: 'DISPLACED',
              reason:
                `another daemon took over host ${host}` +
                (newcomer
                  ? `: pid ${newcomer.pid}, started ${isoTimeOrInvalid(newcomer.started)}, version ${newcomer.version}` +
                    ` (this daemon is pid ${process.pid}; two daemons configured with one host name?)`
                  : ' (its host document is gone)'),
            });
          }
        })
        .catch(failed)
        .finally(() => {
          inFlight = false;
        });
    };
    const follow = () => {
      if (!displaced && !bound.ended) sampleMonitor(view());
      write(false);
    };
    write(true);
    const beat = setInterval(() => write(true), config.timeouts.check_interval);
    // State changes reach the document, and a new minute its monitor sample, within a second. The first
    // sample waits for this first tick: at the very start the view still shows the state being left.
    const followTimer = setInterval(follow, Math.min(1000, config.timeouts.check_interval));
    return () => {
      clearInterval(beat);
      clearInterval(followTimer);
    };
  });

  /** The cleanup pass in flight, so deregistering waits for its last fenced write. */
  let cleaning: Promise<void> | undefined;

  // DESIGN §4 cleanup: any host repairs what others left behind; a first pass at start, then every
  // cleanup_interval. Passes never overlap, and each repair is a fenced write another cleaner cannot double.
  const cleaner = fromCallback<EventObject, { host: string }>(({ sendBack }) => {
    // Kept across passes: a lease is stale only once this daemon saw it unchanged for the limit.
    const observations = new LeaseObservations(ctx.monotonic);
    // A cleanup that fails pass after pass leaves other hosts' stale runs to rot: crash-only, as the heartbeat.
    const { max_busy_time: maxBusy, cleanup_interval: interval } = config.timeouts;
    const bound = failureBound(
      'every cleanup pass failed',
      Math.max(maxBusy, interval),
      interval > maxBusy ? 'timeouts.cleanup_interval' : 'timeouts.max_busy_time',
      (reason) => sendBack({ type: 'FATAL', error: reason }),
    );
    const pass = () => {
      if (cleaning || bound.ended) return;
      cleaning = cleanupPass({
        store,
        config,
        host,
        logger,
        random: ctx.random,
        clock,
        observations,
        ownLiveRuns: () => view().running,
        pid: process.pid,
      })
        .then((report) => {
          bound.succeeded();
          // A repaired run may be eligible again at once: look now rather than at the next poll.
          if (report.repairs.length > 0) sendBack({ type: 'WAKE' });
          if (report.repairs.length + report.deadHosts.length + report.errors.length > 0) {
            logger.info(
              `cleanup: ${report.deadHosts.length} host(s) presumed dead, ${report.repairs.length} run(s) repaired` +
                (report.errors.length > 0 ? `, ${report.errors.length} could not be repaired` : ''),
            );
          }
        })
        .catch((error: unknown) => {
          logger.error(`cleanup pass failed: ${String(error)}`);
          bound.failed(error);
        })
        .finally(() => {
          cleaning = undefined;
        });
    };
    const first = setTimeout(pass, 0);
    const timer = setInterval(pass, config.timeouts.cleanup_interval);
    return () => {
      clearTimeout(first);
      clearInterval(timer);
    };
  });

  const wakeWatcher = fromCallback<EventObject, { host: string }>(({ sendBack }) =>
    store.watchNewRuns(() => sendBack({ type: 'WAKE' })),
  );

  /** Unstaged runs given their tasks per pass: bounded, so a flood of new runs never delays a claim for long. */
  const STAGING_BATCH = 100;
  /** Runs whose document could not be given tasks, logged once each (a bad document must not stop the host). */
  const unstageable = new Set<number>();

  /**
   * Runs inserted by another tool (or pending in a first-wave store being upgraded) have no tasks yet: give each
   * the tasks of the stages whose selection it matches (stageRun). Idempotent in the store,
   * so two daemons meeting the same run agree. A run that cannot be staged is logged and left for the next pass.
   */
  const stageNewRuns = async (): Promise<number> => {
    const runs = await store.listUnstagedRuns(STAGING_BATCH);
    let staged = 0;
    for (const run of runs) {
      try {
        const { specs, created } = await stageRun(store, config, run);
        staged += created;
        if (created > 0) {
          logger.info(
            `run ${run.number}: created ${created} task(s) for stage(s) ${specs.map((t) => t.stage).join(', ') || '(none)'}`,
            { number: run.number },
          );
        }
      } catch (error) {
        if (isStoreContention(error)) throw error;
        if (!unstageable.has(run.number)) {
          unstageable.add(run.number);
          logger.error(`run ${run.number}: could not give it its tasks: ${String(error)}`, { number: run.number });
        }
      }
    }
    return staged;
  };

  /** The claim's stages: those with a free slot here, each with its depth and its selectors. */
  const stageClaims = (names: readonly string[]): StageClaim[] =>
    stagesOf(config)
      .filter((stage) => names.includes(stage.name))
      .map((stage) => ({ stage: stage.name, depth: stage.depth, select: [config.select, stage.select] }));

  const claimNext = fromPromise<ClaimOutput, ClaimInput>(async ({ input }) => {
    if (diskGateShut()) {
      // Look again soon: space often returns when an operator or a transfer frees it.
      const nextPollMs = Math.min(config.timeouts.idle_poll, config.timeouts.check_interval);
      return { run: null, diskFull: true, nextPollMs };
    }
    // A store that is no longer the one at its location refuses the claim (StoreReplacedError): the error
    // ends the host, crash-only, before anything more is claimed.
    let doc: RunDoc | null;
    const stages = stageClaims(input.stages);
    // never a task whose previous attempt's actor is still stopping here (issue 12 fault 1)
    const request = {
      host,
      pid: process.pid,
      order: config.order,
      stages,
      exclude: input.tasks.map((task) => taskRefOf(task.number, task.stage)),
    };
    try {
      doc = await store.claimNextRun(request);
      // Runs another tool inserted (or a first-wave store's pending runs) get their tasks at every claim, after
      // it, so a claimed task is never held up; when nothing was eligible, the runs just staged may be.
      const staged = await stageNewRuns().catch((error: unknown) => {
        if (!doc) throw error;
        logger.warn(`runs without tasks not staged this time: ${String(error)}`);
        return 0;
      });
      if (!doc && staged > 0) doc = await store.claimNextRun(request);
    } catch (error) {
      // Another process holds the store's write lock, or the servers are unreachable for now: claim nothing
      // and look again later (issue 12 fault 11); any other error stays fatal (crash-only).
      if (!isStoreContention(error)) throw error;
      logger.warn(`claim postponed: the store is busy or unreachable (${String(error)})`);
      return { run: null, nextPollMs: config.timeouts.check_interval };
    }
    const idle = config.timeouts.idle_poll;
    if (doc?.processing) {
      const runInput = runInputFor(config, doc);
      return { run: runInput.run, input: runInput, nextPollMs: idle };
    }
    const nextRetry = await store.nextRetryAt(stages.map((stage) => stage.stage));
    const untilRetry = nextRetry === null ? idle : Math.max(MIN_POLL_MS, nextRetry - clock());
    return { run: null, nextPollMs: Math.min(idle, untilRetry) };
  });

  const deregister = fromPromise<void, { host: string }>(async () => {
    await cleaning;
    await store.heartbeatHost(host, ctx.hostToken, { state: 'stopped', running: [], paused_reason: null });
    // The last sample says the host stopped on purpose (it replaces this minute's), so the silence that
    // follows in the history is a planned stop, not a crash.
    await store
      .recordMonitor(monitorSample({ state: 'stopped', running: [], pausedReason: null }, clock()))
      .catch((error: unknown) => logger.error(`monitor sample not recorded: ${String(error)}`));
    logger.info(`host ${host} stopped`);
  });

  // The host-fault pause (issue 12 fault 5): runs in a row could not start for a reason of the host.
  const announcePause = fromPromise<void, { host: string; reason: string; faults: number }>(async ({ input }) => {
    logger.warn(
      `host ${host} paused: ${input.faults} run(s) in a row could not start for a reason of this host ` +
        `(${input.reason}); they were not charged a failure. Claiming nothing until the check passes; ` +
        `looking again every ${formatDuration(Math.min(config.timeouts.idle_poll, config.timeouts.check_interval))}`,
    );
  });

  const checkHost = fromPromise<HostCheckOutput, { host: string; reason: string }>(async ({ input }) => {
    const problems = await hostProblems(config);
    if (problems.length === 0) {
      logger.info(`host ${host}: the host check passes again (was: ${input.reason}); claiming again`, {
        operator: true,
      });
      return { problem: null };
    }
    const problem = describeHostProblems(problems);
    if (problem !== input.reason) logger.warn(`host ${host} still paused: ${problem}`);
    return { problem };
  });

  return {
    register,
    recoverRuns,
    heartbeat,
    wakeWatcher,
    cleaner,
    claimNext,
    deregister,
    announcePause,
    checkHost,
  };
}
