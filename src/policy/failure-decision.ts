// After a failed attempt: try again later, or give up for good (DESIGN §4).

export interface FailureFacts {
  /** Failures recorded before this one. */
  nFailuresBefore: number;
  maxFailures: number;
  /** Absent when the command did not exit by itself (killed, timed out, never started). */
  exitCode?: number | null;
  noRetryExitCodes: readonly number[];
}

export type FailureDecision =
  | { kind: 'retry'; nFailures: number }
  | { kind: 'abandon'; nFailures: number; why: string };

/** Counts this failure and decides; an exit code the config marks as final wins over the count. */
export function decideAfterFailure(facts: FailureFacts): FailureDecision {
  const nFailures = facts.nFailuresBefore + 1;
  const { exitCode } = facts;
  if (exitCode !== undefined && exitCode !== null && facts.noRetryExitCodes.includes(exitCode)) {
    return { kind: 'abandon', nFailures, why: `exit code ${exitCode} is in process.no_retry_exit_codes` };
  }
  if (nFailures >= facts.maxFailures) {
    return {
      kind: 'abandon',
      nFailures,
      why: `${nFailures} failure${nFailures === 1 ? '' : 's'} reached retry.max_failures (${facts.maxFailures})`,
    };
  }
  return { kind: 'retry', nFailures };
}

/** The stored reason of a run given up on: why, then the failure that tipped it. */
export function abandonReason(why: string, lastFailure: string): string {
  return `gave up: ${why}; last failure: ${lastFailure}`;
}

export type FailureOutcome =
  | { to: 'failed'; reason: string; n_failures: number; next_retry: number }
  | { to: 'abandoned'; reason: string; n_failures: number };

export interface RepairFailureFacts {
  nFailuresBefore: number;
  /** The failure as people read it. */
  what: string;
  maxFailures: number;
  noRetryExitCodes: readonly number[];
  /** When the run becomes eligible again if it is retried. */
  retryAt: number;
}

/**
 * A failure recorded by someone other than the attempt's supervisor (cleanup, a restarted daemon): it counts
 * like any other, and at max_failures the run is abandoned with both reasons.
 */
export function repairFailureOutcome(facts: RepairFailureFacts): FailureOutcome {
  const decision = decideAfterFailure({
    nFailuresBefore: facts.nFailuresBefore,
    maxFailures: facts.maxFailures,
    noRetryExitCodes: facts.noRetryExitCodes,
  });
  if (decision.kind === 'abandon') {
    return { to: 'abandoned', reason: abandonReason(decision.why, facts.what), n_failures: decision.nFailures };
  }
  return { to: 'failed', reason: facts.what, n_failures: decision.nFailures, next_retry: facts.retryAt };
}
