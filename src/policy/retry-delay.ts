// How long a failed run waits before it may be claimed again (DESIGN §4).

import type { Config } from '../config/schema.js';

/**
 * Milliseconds to wait after a failure, given how many failures came before it:
 * `base × U(lo, hi) × factor ^ min(n, max_exponent)`, with U drawn from `random()` in [0, 1).
 * Rounded to whole milliseconds. Defaults give 60 s × [0.5, 1.5) × 1, 5, 25, 125, 125, ...
 */
export function retryDelay(failuresBefore: number, retry: Config['retry'], random: () => number): number {
  const [lo, hi] = retry.jitter;
  const jitter = lo + (hi - lo) * random();
  const exponent = Math.min(Math.max(0, Math.floor(failuresBefore)), retry.max_exponent);
  return Math.round(retry.base * jitter * retry.factor ** exponent);
}
