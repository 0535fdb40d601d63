import { describe, expect, it } from 'vitest';
import { retryDelay } from '../../src/policy/retry-delay.js';

const defaults = { base: 60_000, factor: 5, max_exponent: 3, jitter: [0.5, 1.5] as [number, number], max_failures: 10, max_interruptions: 20 };

describe('retryDelay', () => {
  it.each([
    // failuresBefore, random, expected ms
    [0, 0, 30_000],
    [0, 0.5, 60_000],
    [1, 0, 150_000],
    [2, 0, 750_000],
    [3, 0, 3_750_000],
    [4, 0, 3_750_000], // capped at factor^max_exponent
    [40, 0, 3_750_000],
    [3, 0.5, 7_500_000],
    [-1, 0, 30_000], // nonsense counts act as none
  ])('after %d failures with random()=%d waits %d ms', (n, r, ms) => {
    expect(retryDelay(n, defaults, () => r)).toBe(ms);
  });

  it('approaches the top of the jitter range as random() approaches 1', () => {
    const delay = retryDelay(0, defaults, () => 0.999);
    expect(delay).toBe(89_940);
    expect(delay).toBeLessThan(60_000 * 1.5);
  });

  it.each([
    [{ ...defaults, max_exponent: 0 }, 5, 0, 30_000],
    [{ ...defaults, factor: 1 }, 3, 0, 30_000],
    [{ ...defaults, jitter: [1, 1] as [number, number] }, 1, 0.7, 300_000],
    [{ ...defaults, base: 0 }, 2, 0.3, 0],
    [{ ...defaults, base: 1_000, factor: 2, max_exponent: 10 }, 10, 0, 512_000],
  ])('honours the retry settings (%#)', (retry, n, r, ms) => {
    expect(retryDelay(n, retry, () => r)).toBe(ms);
  });
});
