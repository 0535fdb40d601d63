// How long a lease binds an attempt's command once its owner can no longer renew it (issue 12 faults 1, 6, 11,
// 13). Pure: durations in ms from the configuration's timeouts.

export interface LeaseTimeouts {
  max_busy_time: number;
  check_interval: number;
  signal_escalate: number;
}

/**
 * How long after its last successful heartbeat was sent an owner may still hold a lease it cannot renew (the
 * store is locked or unreachable): past this its lease keeper gives the lease up and kills the command. Two
 * check_intervals short of max_busy_time: the keeper looks once per check_interval, and one more is margin for
 * a late timer; so the command is told to stop before another host may take the run over as stale.
 * (Validation keeps max_busy_time above 3 × check_interval, so this is at least one check_interval.)
 */
export function leaseHoldLimitMs(timeouts: LeaseTimeouts): number {
  return Math.max(timeouts.check_interval, timeouts.max_busy_time - 2 * timeouts.check_interval);
}

/**
 * How long after a busy attempt's last heartbeat its command may still run when the attempt is taken away:
 * max_busy_time (by then its owner, or a watchdog of its host, has given the lease up) plus the kill escalation
 * (SIGTERM, signal_escalate, SIGKILL, signal_escalate). The run's draining record lasts this long at most.
 */
export function drainLimitMs(timeouts: LeaseTimeouts): number {
  return timeouts.max_busy_time + 2 * timeouts.signal_escalate;
}
