import { fromCallback, fromPromise, type EventObject } from 'xstate';
import type { ClaimOutput } from '../../machines/host.machine.js';
import { isSameProcess, readProcStart } from '../process/proc.js';
import type { HostPatch } from '../store/run-store.js';
import type { HostState } from '../store/types.js';
import type { DaemonContext } from './context.js';
import { VERSION } from '../version.js';

/** What the host document should say right now; the daemon derives it from the host actor. */
export interface HostView {
  state: HostState;
  running: number[];
}

/** Shortest pause before looking again when a retry is already due but was not claimable. */
const MIN_POLL_MS = 50;

export function hostEffects(ctx: DaemonContext, view: () => HostView) {
  const { store, config, logger, clock, host } = ctx;

  const register = fromPromise<void, { host: string }>(async () => {
    const existing = await store.getHost(host);
    if (
      existing &&
      existing.pid !== process.pid &&
      existing.state !== 'stopped' &&
      existing.state !== 'dead' &&
      isSameProcess(existing.pid, existing.proc_start)
    ) {
      throw new Error(
        `another daemon (pid ${existing.pid}) is already running as host ${host}; stop it first or choose another --host`,
      );
    }
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
    logger.info(`host ${host} started: pid ${process.pid}, ${config.slots} slot(s), store ${store.location}; new runs noticed by ${store.wakeUpMethod}`);
  });

  // Writes the host document every check_interval, and soon after its state or running runs change.
  const heartbeat = fromCallback<EventObject, { host: string }>(({ sendBack }) => {
    let inFlight = false;
    let displaced = false;
    let lastWritten = '';
    const write = (force: boolean) => {
      if (inFlight || displaced) return;
      const current = view();
      const key = JSON.stringify(current);
      if (!force && key === lastWritten) return;
      inFlight = true;
      const patch: HostPatch = { state: current.state, running: current.running };
      store
        .heartbeatHost(host, ctx.hostToken, patch)
        .then((ok) => {
          lastWritten = key;
          if (!ok) {
            displaced = true;
            sendBack({ type: 'DISPLACED', reason: `another daemon took over host ${host}` });
          }
        })
        .catch((error: unknown) => logger.error(`host heartbeat failed: ${String(error)}`))
        .finally(() => {
          inFlight = false;
        });
    };
    write(true);
    const beat = setInterval(() => write(true), config.timeouts.check_interval);
    // State changes reach the document within a second without a write per claimed run.
    const follow = setInterval(() => write(false), Math.min(1000, config.timeouts.check_interval));
    return () => {
      clearInterval(beat);
      clearInterval(follow);
    };
  });

  const wakeWatcher = fromCallback<EventObject, { host: string }>(({ sendBack }) =>
    store.watchNewRuns(() => sendBack({ type: 'WAKE' })),
  );

  const claimNext = fromPromise<ClaimOutput, { host: string }>(async () => {
    const doc = await store.claimNextRun({ host, pid: process.pid, order: config.order });
    const idle = config.timeouts.idle_poll;
    if (doc?.processing) {
      const p = doc.processing;
      return {
        run: { number: doc.number, token: p.token, attempt: p.attempt, nFailures: p.n_failures, doc },
        nextPollMs: idle,
      };
    }
    const nextRetry = await store.nextRetryAt();
    const untilRetry = nextRetry === null ? idle : Math.max(MIN_POLL_MS, nextRetry - clock());
    return { run: null, nextPollMs: Math.min(idle, untilRetry) };
  });

  const deregister = fromPromise<void, { host: string }>(async () => {
    await store.heartbeatHost(host, ctx.hostToken, { state: 'stopped', running: [] });
    logger.info(`host ${host} stopped`);
  });

  return { register, heartbeat, wakeWatcher, claimNext, deregister };
}
