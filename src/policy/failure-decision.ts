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
export function abandonReason(why: string, lastFailure: string, label = 'last failure'): string {
  return `gave up: ${why}; ${label}: ${lastFailure}`;
}

const GAVE_UP = /^gave up: (.*?); (?:last failure|last interruption): ([\s\S]*)$/;

/**
 * What a person needs first from a reason, where a view has one line for it (top, list): for an abandonReason
 * (`gave up: 10 failures reached retry.max_failures (10); last failure: exit code 1: ValueError: …`) the failure
 * that tipped it, then why it was given up on; any other reason as it is.
 */
export function causeFirst(reason: string): string {
  const match = GAVE_UP.exec(reason);
  return match ? `${match[2]} (gave up: ${match[1]})` : reason;
}

export type FailureOutcome =
  | { to: 'failed'; reason: string; n_failures: number; n_interruptions?: number; next_retry: number }
  | { to: 'abandoned'; reason: string; n_failures: number; n_interruptions?: number };

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

// Interruptions (DESIGN §4, issue 12 fault 4): an attempt ended by something its command did not cause — its
// host restarted, stopped, went silent, or could not start it — is not a failure. It neither counts towards
// max_failures nor degrades the next attempt; a separate, larger limit stops a run that takes its host down
// with it every time (an OOM, a kernel panic) from looping for ever.

export interface InterruptionFacts {
  /** Interruptions recorded before this one. */
  nInterruptionsBefore: number;
  maxInterruptions: number;
}

export type InterruptionDecision =
  | { kind: 'retry'; nInterruptions: number }
  | { kind: 'abandon'; nInterruptions: number; why: string };

/** Counts this interruption and decides: retry, or give up once retry.max_interruptions is reached. */
export function decideAfterInterruption(facts: InterruptionFacts): InterruptionDecision {
  const nInterruptions = Math.max(0, facts.nInterruptionsBefore) + 1;
  if (nInterruptions >= facts.maxInterruptions) {
    return {
      kind: 'abandon',
      nInterruptions,
      why:
        `${nInterruptions} interruption${nInterruptions === 1 ? '' : 's'} reached retry.max_interruptions ` +
        `(${facts.maxInterruptions}): its host keeps going away while it runs`,
    };
  }
  return { kind: 'retry', nInterruptions };
}

export interface InterruptionRecordFacts extends InterruptionFacts {
  /** Failures so far: kept as they are. */
  nFailures: number;
  /** The interruption as people read it. */
  what: string;
  /** When the run becomes eligible again if it is retried. */
  retryAt: number;
}

/**
 * An interruption recorded by someone other than the attempt's supervisor (a restarted daemon, cleanup of a
 * silent host): n_failures unchanged, n_interruptions + 1, abandoned with both reasons at max_interruptions.
 */
export function interruptionOutcome(facts: InterruptionRecordFacts): FailureOutcome {
  const decision = decideAfterInterruption(facts);
  const counts = { n_failures: facts.nFailures, n_interruptions: decision.nInterruptions };
  if (decision.kind === 'abandon') {
    return { to: 'abandoned', reason: abandonReason(decision.why, facts.what, 'last interruption'), ...counts };
  }
  return { to: 'failed', reason: facts.what, ...counts, next_retry: facts.retryAt };
}
