// How long a command may run without a renewal of its lease before the lease guard kills it (DESIGN §1
// "Fenced leases"): the group must be gone before another host may take the run over, at max_busy_time after
// the lease's last write. The guard SIGTERMs at the deadline and SIGKILLs signal_escalate later; one more
// signal_escalate covers the KILL taking effect, and one check_interval covers a cleaning host's clock and
// timers running a little ahead of ours.

import type { Config } from '../config/schema.js';

type Timeouts = Pick<Config['timeouts'], 'max_busy_time' | 'signal_escalate' | 'check_interval'>;

/** max_busy_time − 2 × signal_escalate − check_interval, in milliseconds. */
export function leaseGuardTtl(timeouts: Timeouts): number {
  return timeouts.max_busy_time - 2 * timeouts.signal_escalate - timeouts.check_interval;
}

/**
 * The shortest TTL allowed: two heartbeats (one may be late or fail) must fit in it, or a live owner's
 * commands would be killed by a single slow write.
 */
export function minimumLeaseGuardTtl(timeouts: Pick<Config['timeouts'], 'check_interval'>): number {
  return 2 * timeouts.check_interval;
}
