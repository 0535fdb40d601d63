import { DEFAULT_STAGE, type RunDoc } from '../store/types.js';

// What one cleaning daemon remembers between its cleanup passes: for each live lease (a task considering or
// busy), the exact lease it last saw and when it first saw it so, on its own monotonic clock. A lease is
// judged stale only once it was seen unchanged for the limit: a wall-clock step (an NTP correction, a VM
// resumed, a host whose clock is hours ahead) can make a lease's stored time look old, but a live owner changes
// the lease every check_interval, and that restarts the watch. Bounded: only runs live in the latest pass are
// kept; a run that changed, finished or was not seen is forgotten.

/** Everything the owner changes when it heartbeats or moves on; the same key means an untouched lease. */
export function leaseKey(run: RunDoc): string | undefined {
  const p = run.processing;
  if (!p) return undefined;
  return JSON.stringify([p.state, p.token, p.time, p.attempt, p.host, p.pid]);
}

/** One task of a run: leases are per task (DESIGN §9). */
function taskOf(run: RunDoc): string {
  return `${run.number}/${run.stage ?? DEFAULT_STAGE}`;
}

export class LeaseObservations {
  private seen = new Map<string, { key: string; since: number }>();

  /** `monotonic` is performance.now() by default: never stepped by wall-clock changes. */
  constructor(private readonly monotonic: () => number = () => performance.now()) {}

  /** Records the live runs of this pass; forgets every run not among them. */
  observe(live: readonly RunDoc[]): void {
    const now = this.monotonic();
    const next = new Map<string, { key: string; since: number }>();
    for (const run of live) {
      const key = leaseKey(run);
      if (key === undefined) continue;
      const before = this.seen.get(taskOf(run));
      next.set(taskOf(run), before && before.key === key ? before : { key, since: now });
    }
    this.seen = next;
  }

  /**
   * How long (ms, monotonic) this run's lease has been seen exactly as it is in `run`; 0 when it was not seen
   * so before (a newer read than the last observe, or a run never observed).
   */
  unchangedFor(run: RunDoc): number {
    const entry = this.seen.get(taskOf(run));
    const key = leaseKey(run);
    if (!entry || key === undefined || entry.key !== key) return 0;
    return this.monotonic() - entry.since;
  }

  /** Runs being watched, for tests and metrics. */
  get size(): number {
    return this.seen.size;
  }
}
