import { describe, expect, it } from 'vitest';
import {
  decideAfterFailure,
  decideAfterInterruption,
  interruptionOutcome,
  repairFailureOutcome,
  type FailureDecision,
} from '../../src/policy/failure-decision.js';

describe('decideAfterFailure', () => {
  it.each<[string, Parameters<typeof decideAfterFailure>[0], FailureDecision]>([
    ['first failure retries', { nFailuresBefore: 0, maxFailures: 10, exitCode: 1, noRetryExitCodes: [] }, { kind: 'retry', nFailures: 1 }],
    ['one short of the limit retries', { nFailuresBefore: 8, maxFailures: 10, exitCode: 1, noRetryExitCodes: [] }, { kind: 'retry', nFailures: 9 }],
    ['reaching the limit abandons', { nFailuresBefore: 9, maxFailures: 10, exitCode: 1, noRetryExitCodes: [] }, { kind: 'abandon', nFailures: 10, why: '10 failures reached retry.max_failures (10)' }],
    ['beyond the limit abandons', { nFailuresBefore: 12, maxFailures: 10, noRetryExitCodes: [] }, { kind: 'abandon', nFailures: 13, why: '13 failures reached retry.max_failures (10)' }],
    ['max_failures 1 abandons at once', { nFailuresBefore: 0, maxFailures: 1, exitCode: null, noRetryExitCodes: [] }, { kind: 'abandon', nFailures: 1, why: '1 failure reached retry.max_failures (1)' }],
    ['a no-retry exit code abandons', { nFailuresBefore: 0, maxFailures: 10, exitCode: 78, noRetryExitCodes: [2, 78] }, { kind: 'abandon', nFailures: 1, why: 'exit code 78 is in process.no_retry_exit_codes' }],
    ['a no-retry exit code names itself even at the limit', { nFailuresBefore: 9, maxFailures: 10, exitCode: 2, noRetryExitCodes: [2] }, { kind: 'abandon', nFailures: 10, why: 'exit code 2 is in process.no_retry_exit_codes' }],
    ['another exit code retries', { nFailuresBefore: 0, maxFailures: 10, exitCode: 3, noRetryExitCodes: [2] }, { kind: 'retry', nFailures: 1 }],
    ['no exit code (killed) retries', { nFailuresBefore: 0, maxFailures: 10, exitCode: undefined, noRetryExitCodes: [0] }, { kind: 'retry', nFailures: 1 }],
    ['exit 0 listed (output missing) abandons', { nFailuresBefore: 0, maxFailures: 10, exitCode: 0, noRetryExitCodes: [0] }, { kind: 'abandon', nFailures: 1, why: 'exit code 0 is in process.no_retry_exit_codes' }],
  ])('%s', (_case, facts, decision) => {
    expect(decideAfterFailure(facts)).toEqual(decision);
  });
});

describe('repairFailureOutcome', () => {
  const base = { what: 'host h said it was busy', maxFailures: 3, noRetryExitCodes: [] as number[], retryAt: 1234 };
  it.each([
    [0, { to: 'failed', reason: 'host h said it was busy', n_failures: 1, next_retry: 1234 }],
    [1, { to: 'failed', reason: 'host h said it was busy', n_failures: 2, next_retry: 1234 }],
    [
      2,
      {
        to: 'abandoned',
        reason: 'gave up: 3 failures reached retry.max_failures (3); last failure: host h said it was busy',
        n_failures: 3,
      },
    ],
  ])('after %i failures', (nFailuresBefore, expected) => {
    expect(repairFailureOutcome({ ...base, nFailuresBefore })).toEqual(expected);
  });
});

describe('decideAfterInterruption', () => {
  it.each([
    [0, 20, { kind: 'retry', nInterruptions: 1 }],
    [18, 20, { kind: 'retry', nInterruptions: 19 }],
    [19, 20, { kind: 'abandon', nInterruptions: 20 }],
    [0, 1, { kind: 'abandon', nInterruptions: 1 }],
  ])('%i before, limit %i', (nInterruptionsBefore, maxInterruptions, expected) => {
    expect(decideAfterInterruption({ nInterruptionsBefore, maxInterruptions })).toMatchObject(expected);
  });

  it('keeps the failure count and names the limit when it gives up', () => {
    const facts = { nFailures: 2, nInterruptionsBefore: 2, maxInterruptions: 3, what: 'host h restarted', retryAt: 5 };
    expect(interruptionOutcome({ ...facts, nInterruptionsBefore: 0 })).toEqual({
      to: 'failed',
      reason: 'host h restarted',
      n_failures: 2,
      n_interruptions: 1,
      next_retry: 5,
    });
    expect(interruptionOutcome(facts)).toEqual({
      to: 'abandoned',
      reason:
        'gave up: 3 interruptions reached retry.max_interruptions (3): its host keeps going away while it runs; ' +
        'last interruption: host h restarted',
      n_failures: 2,
      n_interruptions: 3,
    });
  });
});
