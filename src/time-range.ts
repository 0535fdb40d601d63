// The range of times a JavaScript Date can hold (±8.64e15 ms, about ±275 000 years), and time formatting that
// never throws. A time another tool wrote beyond that range made `new Date(ms).toISOString()` throw
// ("Invalid time value") and took `list` and `show` down for every run; every time shown goes through here.

/** The largest |epoch ms| a Date holds (ECMA-262 §21.4.1.1). */
export const MAX_DATE_MS = 8.64e15;

/** True for a number of epoch ms a Date can hold. */
export function isDateMs(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && Math.abs(value) <= MAX_DATE_MS;
}

/** `2024-05-01T12:00:00.000Z`, or `invalid time (1e+20)` for a value no Date holds; never throws. */
export function isoTimeOrInvalid(ms: unknown): string {
  return isDateMs(ms) ? new Date(ms).toISOString() : `invalid time (${describeTimeValue(ms)})`;
}

function describeTimeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 39)}…` : value);
  if (typeof value === 'bigint') return `${value}n`;
  return String(value);
}

const ISO_8601 = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Epoch milliseconds of an ISO-8601 time (`2024-05-01`, `2024-05-01T12:00`, `2024-05-01 12:00:00.5+02:00`), or
 * undefined for anything else or a time no Date holds. A date alone is UTC midnight; a date and time without an
 * offset is local time (JavaScript's rule).
 */
export function parseIsoTime(text: string): number | undefined {
  const match = ISO_8601.exec(text.trim());
  if (!match) return undefined;
  const [, date, time, zone] = match;
  let iso = time === undefined ? date! : `${date}T${time}`;
  if (zone !== undefined) iso += /^[+-]\d{4}$/.test(zone) ? `${zone.slice(0, 3)}:${zone.slice(3)}` : zone.toUpperCase();
  const ms = Date.parse(iso);
  return isDateMs(ms) ? ms : undefined;
}
