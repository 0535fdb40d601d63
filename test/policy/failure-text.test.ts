import { describe, expect, it } from 'vitest';
import { abandonReason, causeFirst } from '../../src/policy/failure-decision.js';
import { reasonFromStderr } from '../../src/policy/failure-text.js';

const TRACEBACK = [
  'Traceback (most recent call last):',
  '  File "/opt/proc/run.py", line 12, in <module>',
  '    main()',
  '  File "/opt/proc/run.py", line 9, in main',
  '    raise ValueError("bad calibration for run 7")',
  'ValueError: bad calibration for run 7',
].join('\n');

describe('reasonFromStderr', () => {
  it.each<[string, string, string]>([
    ['a traceback: its error line first, then the tail', TRACEBACK, `ValueError: bad calibration for run 7\n${TRACEBACK}`],
    ['log lines before the traceback', `loading run 7\n${TRACEBACK}`, `ValueError: bad calibration for run 7\nloading run 7\n${TRACEBACK}`],
    [
      'chained exceptions: the last traceback decides',
      `${TRACEBACK}\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File "x.py", line 3, in <module>\nKeyError: 'gain'`,
      `KeyError: 'gain'\n${TRACEBACK}\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File "x.py", line 3, in <module>\nKeyError: 'gain'`,
    ],
    ['a tail that lost its header still finds the error line', TRACEBACK.split('\n').slice(3).join('\n'), `ValueError: bad calibration for run 7\n${TRACEBACK.split('\n').slice(3).join('\n')}`],
    ['a traceback cut before its error line is kept as it is', TRACEBACK.split('\n').slice(0, 3).join('\n'), TRACEBACK.split('\n').slice(0, 3).join('\n')],
    ['plain stderr is kept as it is', 'error: no calibration\nexiting', 'error: no calibration\nexiting'],
    ['one line', 'boom', 'boom'],
  ])('%s', (_, tail, expected) => {
    expect(reasonFromStderr(tail)).toBe(expected);
  });
});

describe('causeFirst', () => {
  it.each<[string, string, string]>([
    [
      'max_failures: the last failure first',
      abandonReason('10 failures reached retry.max_failures (10)', 'exit code 1: ValueError: bad'),
      'exit code 1: ValueError: bad (gave up: 10 failures reached retry.max_failures (10))',
    ],
    [
      'a no-retry exit code',
      abandonReason('exit code 78 is in process.no_retry_exit_codes', 'exit code 78: config broken'),
      'exit code 78: config broken (gave up: exit code 78 is in process.no_retry_exit_codes)',
    ],
    [
      'interruptions',
      abandonReason('20 interruptions reached retry.max_interruptions (20)', 'host a restarted', 'last interruption'),
      'host a restarted (gave up: 20 interruptions reached retry.max_interruptions (20))',
    ],
    ['any other reason as it is', 'failed by ana@ops: wrong gain', 'failed by ana@ops: wrong gain'],
  ])('%s', (_, reason, expected) => {
    expect(causeFirst(reason)).toBe(expected);
  });
});
