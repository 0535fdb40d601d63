import type { Logger } from '../log/logger.js';
import type { LeaseGuard } from '../process/lease-guard.js';
import { readUptimeMs } from '../process/proc.js';

// Binds each attempt's command to its lease through the lease guard (src/process/lease-guard.ts): the guard
// watches the command's process group from its spawn, and every lease write that reached the store (markBusy,
// then each heartbeat) moves the group's deadline to `ttl` after the moment that write was issued. A daemon
// that stops renewing (frozen, or its store unreachable) has its commands killed before max_busy_time, when
// another host may take the run over. Deadlines are absolute on the host's boot clock (/proc/uptime), which the
// guard reads too. Attempts are keyed by lease token: an old attempt of a run may still be stopping while its
// next one starts.

interface Attempt {
  number: number;
  /** Boot-clock ms at which the guard kills the command unless the lease is renewed before. */
  deadline: number;
  pgid?: number;
  /** The command's RUNWARDEN_ATTEMPT_ID, announced to the guard before the spawn. */
  marker?: string;
  /** Set once the deadline passed: the guard killed (or is killing) the command; renewals no longer count. */
  expired?: boolean;
}

export interface CommandLeases {
  /** markBusy of attempt `token` succeeded; it was issued at `issuedAt` (leaseClock). */
  leaseTaken(token: string, number: number, issuedAt: number): void;
  /** A heartbeat of attempt `token` succeeded; it was issued at `issuedAt` (leaseClock). */
  renewed(token: string, issuedAt: number): void;
  /**
   * The attempt's command is about to be spawned carrying RUNWARDEN_ATTEMPT_ID `marker`: the guard watches the
   * marker from now on, so a daemon frozen between the spawn and the group's watch line cannot leave it unguarded.
   */
  commandStarting(token: string, marker: string): void;
  /** The attempt's command started as the leader of group `pgid`: the guard watches it from now on. */
  commandStarted(token: string, pgid: number, procStart: number | undefined): void;
  /**
   * The attempt's command ended (or could not start): the guard forgets its group. Whether the guard killed it
   * (overdue) travels with the exit through the supervisor chart, so the run records an interruption.
   */
  commandEnded(token: string): void;
  /** True once the attempt's deadline passed without a renewal: the guard killed its command. */
  overdue(token: string): boolean;
  /** The TTL in milliseconds. */
  readonly ttlMs: number;
}

/** The clock of lease deadlines: ms since boot, shared with the guard. */
export const leaseClock = readUptimeMs;

/** Without a guard (in-process tests with a simulated clock) it keeps the bookkeeping only. */
export function createCommandLeases(guard: LeaseGuard | undefined, ttlMs: number, logger: Logger): CommandLeases {
  const attempts = new Map<string, Attempt>();
  const byGroup = new Map<number, Attempt>();
  const passed = (attempt: Attempt) => {
    if (!attempt.expired && leaseClock() >= attempt.deadline) attempt.expired = true;
    return attempt.expired === true;
  };

  guard?.onExpired((pgid) => {
    const attempt = byGroup.get(pgid);
    if (attempt) attempt.expired = true;
    logger.warn(
      `run ${attempt?.number ?? '?'}: lease not renewed for ${Math.round(ttlMs / 100) / 10}s (this daemon was frozen ` +
        `or its heartbeats could not reach the store): the lease guard killed process group ${pgid}, ` +
        'so that nothing of it runs once another host may take the run over',
      attempt ? { number: attempt.number } : {},
    );
  });

  return {
    ttlMs,
    leaseTaken(token, number, issuedAt) {
      attempts.set(token, { number, deadline: issuedAt + ttlMs });
    },
    renewed(token, issuedAt) {
      const attempt = attempts.get(token);
      // Too late to count: the guard may already have killed the command for want of this renewal.
      if (!attempt || passed(attempt)) return;
      if (issuedAt + ttlMs <= attempt.deadline) return;
      attempt.deadline = issuedAt + ttlMs;
      if (attempt.marker !== undefined) guard?.renewMarker(attempt.marker, attempt.deadline);
      if (attempt.pgid !== undefined) guard?.renew(attempt.pgid, attempt.deadline);
    },
    commandStarting(token, marker) {
      const attempt = attempts.get(token);
      if (!attempt) return;
      attempt.marker = marker;
      guard?.watchMarker(marker, attempt.deadline);
    },
    commandStarted(token, pgid, procStart) {
      const attempt = attempts.get(token);
      if (!attempt || procStart === undefined) return;
      attempt.pgid = pgid;
      byGroup.set(pgid, attempt);
      // Counted from the lease's last write, not from now: a daemon frozen between markBusy and the spawn
      // has its command killed at once rather than one outliving the lease.
      guard?.watch(pgid, procStart, attempt.deadline);
    },
    commandEnded(token) {
      const attempt = attempts.get(token);
      if (!attempt) return;
      attempts.delete(token);
      if (attempt.marker !== undefined) guard?.forgetMarker(attempt.marker);
      if (attempt.pgid === undefined) return;
      if (byGroup.get(attempt.pgid) === attempt) byGroup.delete(attempt.pgid);
      guard?.forget(attempt.pgid);
    },
    overdue(token) {
      const attempt = attempts.get(token);
      return attempt !== undefined && passed(attempt);
    },
  };
}
