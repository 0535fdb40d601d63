import { isDateMs } from '../time-range.js';

// What `--json` prints: the value as JSON with every time as an ISO 8601 string (UTC), as a script reads it
// without knowing that the store keeps epoch milliseconds.

/**
 * Keys whose numbers are times in epoch ms in what the commands print: run documents (start, end, processing
 * time/started/ended/next_retry, outputs' at), run_events and log entries (time), host documents (time,
 * started), monitor samples (time), status --history (since, now, first, last, and each gap's from/to), top
 * (readAt), cleanup (silentSince) and a run's drain fence (processing.draining.until). A run event's from/to are states (strings) and stay as they are.
 */
const TIME_KEYS = new Set([
  'start',
  'end',
  'time',
  'started',
  'ended',
  'next_retry',
  'at',
  'since',
  'now',
  'first',
  'last',
  'from',
  'to',
  'readAt',
  'silentSince',
  'until',
]);

/**
 * Lease and host tokens: what fences a writer. Whoever can read them could write as the owner, so no face prints
 * them (a run's state, host and attempt say all a person needs).
 */
const SECRET_KEYS = new Set(['token']);

/** Fields holding the user's own data: their keys are not ours, so `params.start: 5` stays 5. */
const OPAQUE_KEYS = new Set(['params']);

/** `ms` as an ISO 8601 string; a number no date can hold (another tool's bad write) stays a number. */
function isoTimeOrNumber(ms: number): string | number {
  return isDateMs(ms) ? new Date(ms).toISOString() : ms;
}

/** JSON text of `value`, indented (or on one line with `indent` 0, for JSON lines), times as ISO 8601 strings. */
export function jsonText(value: unknown, indent = 2): string {
  const opaque = new WeakSet<object>();
  return JSON.stringify(
    value,
    function replace(this: unknown, key: string, field: unknown) {
      const inOpaque = typeof this === 'object' && this !== null && opaque.has(this);
      if (inOpaque || OPAQUE_KEYS.has(key)) {
        if (typeof field === 'object' && field !== null) opaque.add(field);
        return field;
      }
      if (SECRET_KEYS.has(key)) return undefined;
      if (typeof field === 'number' && TIME_KEYS.has(key)) return isoTimeOrNumber(field);
      return field;
    },
    indent,
  );
}
