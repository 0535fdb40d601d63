import { describe, expect, it } from 'vitest';
import { renderRun, wrapText } from '../../src/cli/show.js';
import type { RunDoc, RunEvent } from '../../src/store/types.js';

// `show` on a terminal: history reasons wrap within its width under the REASON column, nothing cut.

const T = Date.UTC(2026, 11, 6, 3, 0, 0);
const run: RunDoc = { number: 7, start: T, tags: [], priority: 0, params: {}, outputs: [] };
const reason = `exit code 1: ${'ValueError: the calibration file for this run has no gain for channel 17 '.repeat(3).trim()}`;
const events: RunEvent[] = [
  { number: 7, time: T, host: 'daq', attempt: 1, from: 'busy', to: 'failed', reason, exit_code: 1, duration_ms: 1200 },
];

describe('renderRun', () => {
  it.each([80, 120, 200])('wraps history reasons within %i columns, keeping every word', (width) => {
    const text = renderRun(run, events, { width });
    const history = text.slice(text.indexOf('history'));
    for (const line of history.split('\n')) expect(line.length, line).toBeLessThanOrEqual(width);
    const lines = history.split('\n');
    const reasonAt = lines[1]!.indexOf('REASON');
    // With a REASON column, the reason's words are right of it; on a narrow terminal, on lines of their own.
    const wrapped = reasonAt > 0 ? lines.slice(2).map((line) => line.slice(reasonAt)) : lines.slice(3).map((line) => line.trim());
    expect(wrapped.join(' ')).toBe(reason);
    expect(lines.length).toBeGreaterThan(3);
  });

  it('without a width, each reason is one line in full', () => {
    expect(renderRun(run, events)).toContain(`  ${reason}`);
  });

  it('says why a failed run is not retried yet: its previous attempt may still be stopping (issue 12)', () => {
    const failed: RunDoc = {
      ...run,
      processing: {
        state: 'failed',
        host: 'daq',
        pid: 40,
        token: 't2',
        attempt: 1,
        time: T,
        n_failures: 1,
        next_retry: T,
        draining: { host: 'daq', pid: 40, attempt: 1, pgid: 41, proc_start: 5, until: T + 126_000 },
      },
    };
    const text = renderRun(failed, events);
    expect(text).toContain(
      '  draining     attempt 1 on host daq (pid 40, process group 41) may still be stopping its command: ' +
        'no new attempt starts before its owner confirms it gone, or 2026-12-06 03:02:06Z at the latest',
    );
  });
});

describe('wrapText', () => {
  it.each<[string, number, string[]]>([
    ['short', 20, ['short']],
    ['one two three four', 10, ['one two', 'three four']],
    ['abcdefghijklmnopqrstuvwxyz', 10, ['abcdefghij', 'klmnopqrst', 'uvwxyz']],
  ])('%s in %i', (text, width, lines) => {
    expect(wrapText(text, width)).toEqual(lines);
  });
});
