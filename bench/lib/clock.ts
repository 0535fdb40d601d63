// Wall-clock time with sub-millisecond resolution, comparable with what a command records itself (bash's
// $EPOCHREALTIME, gettimeofday). Date.now() is the same realtime clock but only to the millisecond; the
// monotonic performance.now() has microseconds. Spinning until Date.now() ticks gives the offset between the
// two to within a microsecond or so; recalibrating before each sample keeps clock slewing out of it.

let offsetMs: number | undefined;

/** Re-measures the realtime − monotonic offset; spins for at most about a millisecond. */
export function calibrateClock(): number {
  const start = Date.now();
  let now = start;
  let mono = performance.now();
  while (now === start) {
    now = Date.now();
    mono = performance.now();
  }
  offsetMs = now - mono;
  return offsetMs;
}

/** Epoch milliseconds with a fractional part (microsecond resolution). */
export function epochMs(): number {
  return performance.now() + (offsetMs ?? calibrateClock());
}

/** Parses a recorded `$EPOCHREALTIME` ("1700000000.123456"; some locales write a comma) into epoch ms. */
export function parseEpochRealtime(text: string): number {
  const value = Number(text.trim().split(/\s+/)[0]?.replace(',', '.'));
  return value * 1000;
}
