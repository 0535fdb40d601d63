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
