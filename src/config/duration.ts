// Durations and byte sizes as people write them in runwarden.yaml, the environment and flags (DESIGN §6).

import { ConfigError } from '../errors.js';

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_ACCEPTED =
  'seconds as a number (e.g. 90 or 1.5), or a string with a unit ms, s, m, h or d (e.g. "250ms", "90s", "30m", "72h", "1h30m")';

const NUMBER = String.raw`\d+(?:\.\d+)?|\.\d+`;
const DURATION_PART = new RegExp(String.raw`(${NUMBER})\s*(ms|s|m|h|d)`, 'y');

/** Shows a bad value in an error message: strings quoted, long values cut. */
export function showValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  let text: string;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') text = String(value);
  else {
    try {
      text = JSON.stringify(value) ?? String(value);
    } catch {
      // Cyclic (a YAML alias inside its own anchor) or holding a BigInt; String() can throw too (a toString key).
      text = `${typeOf(value)} that cannot be shown as JSON`;
    }
  }
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

/**
 * A duration in milliseconds, rounded to the nearest millisecond. Numbers are seconds (fractions allowed);
 * strings carry units and may chain them ("1h30m"). Negative values are refused.
 */
export function parseDuration(value: unknown, field: string): number {
  const bad = (why: string) =>
    new ConfigError(field, `${why}: expected a duration — ${DURATION_ACCEPTED} — got ${showValue(value)}`);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw bad('not a finite number');
    if (value < 0) throw bad('a duration cannot be negative');
    return Math.round(value * 1_000);
  }
  if (typeof value !== 'string') throw bad(`wrong type (${typeOf(value)})`);
  const text = value.trim();
  if (text === '') throw bad('empty');
  let total = 0;
  let at = 0;
  while (at < text.length) {
    DURATION_PART.lastIndex = at;
    const match = DURATION_PART.exec(text);
    if (!match) {
      const hint = /^\d+(?:\.\d+)?$/.test(text) ? 'a number in a string needs a unit' : 'not a duration';
      throw bad(hint);
    }
    total += Number(match[1]) * DURATION_UNITS_MS[match[2]];
    at = DURATION_PART.lastIndex;
    while (text[at] === ' ') at++;
  }
  return Math.round(total);
}

/** Formats milliseconds the way a person would write them in the config ("90s", "30m", "250ms"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
  ] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  if (ms % 1 === 0 && ms < 1_000) return `${ms}ms`;
  return `${ms / 1_000}s`;
}

const BYTE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

const BYTES_ACCEPTED =
  'a number of bytes (e.g. 1073741824), or a string with a unit B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "1GiB" or "500MB"';

/** A byte count, rounded down to whole bytes. Units are case-insensitive; "MB" is 10^6, "MiB" is 2^20. */
export function parseByteSize(value: unknown, field: string): number {
  const bad = (why: string) =>
    new ConfigError(field, `${why}: expected a size — ${BYTES_ACCEPTED} — got ${showValue(value)}`);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw bad('not a finite number');
    if (value < 0) throw bad('a size cannot be negative');
    return Math.floor(value);
  }
  if (typeof value !== 'string') throw bad(`wrong type (${typeOf(value)})`);
  const match = new RegExp(String.raw`^\s*(${NUMBER})\s*([a-z]*)\s*$`, 'i').exec(value);
  if (!match) throw bad('not a size');
  const unit = match[2].toLowerCase();
  const size = unit === '' ? 1 : BYTE_UNITS[unit];
  if (size === undefined) throw bad(`unknown unit "${match[2]}"`);
  return Math.floor(Number(match[1]) * size);
}

/** The JSON-ish type name used in error messages ("array", "null", "object", ...). */
export function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/** A byte count for people, in powers of 1024 as `df -h` prints them: "1.5GiB", "512MiB", "800B". */
export function formatByteSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)}${units[unit]}`;
}

/** How long something took or has been, for people: "45s", "3m12s", "2h5m" (seconds dropped past an hour). */
export function formatElapsed(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
  const m = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)}h${m ? `${m}m` : ''}`;
}
