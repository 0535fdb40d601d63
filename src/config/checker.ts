// The validator's tools: a Checker that turns a bad value into a ConfigError naming its dotted field, and the
// nearest-key suggestion for unknown keys. Shared by validate.ts (the top level) and sections.ts / stages.ts.

import { resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { parseByteSize, parseDuration, showValue } from './duration.js';

export type Raw = Record<string, unknown>;

export function isPlainObject(value: unknown): value is Raw {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Edit distance between two strings (insertions, deletions, substitutions). */
export function levenshtein(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * The known key closest to an unknown one, or undefined when nothing is close. Compares the last segment, so
 * a key put in the wrong section (`check_interval` at the top) still finds `timeouts.check_interval`; on a tie
 * a key in the same section wins.
 */
export function nearestKey(unknownPath: string, candidates: readonly string[]): string | undefined {
  const parts = unknownPath.split('.');
  const key = parts[parts.length - 1].toLowerCase();
  const parent = parts.slice(0, -1).join('.');
  const limit = Math.max(2, Math.floor(key.length / 3));
  let best: { path: string; score: number } | undefined;
  for (const path of candidates) {
    const candidateParts = path.split('.');
    const candidate = candidateParts[candidateParts.length - 1];
    // The distance is at least the difference in length: skip the quadratic work for a key that is far off.
    if (Math.abs(key.length - candidate.length) > limit) continue;
    const distance = levenshtein(key, candidate);
    if (distance > limit) continue;
    const sameParent = candidateParts.slice(0, -1).join('.') === parent;
    const score = distance * 2 + (sameParent ? 0 : 1);
    if (!best || score < best.score) best = { path, score };
  }
  return best?.path;
}

export class Checker {
  /** Problems found so far: validation goes on past one, so every problem is reported at once. */
  readonly problems: ConfigError[] = [];

  constructor(readonly sourceOf: (field: string) => string | undefined) {}

  /** `read()`, or `fallback` when it finds a problem (kept for the report at the end). */
  keep<T>(fallback: T, read: () => T): T {
    try {
      return read();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      this.problems.push(error);
      return fallback;
    }
  }

  where(field: string): string {
    const source = this.sourceOf(field);
    return source ? ` (set by ${source})` : '';
  }

  fail(field: string, message: string): never {
    throw new ConfigError(field, `${message}${this.where(field)}`);
  }

  expected(field: string, what: string, value: unknown): never {
    this.fail(field, `expected ${what}, got ${showValue(value)}`);
  }

  unknownKey(field: string, candidates: readonly string[], siblings: readonly string[]): never {
    const near = nearestKey(field, candidates);
    this.fail(
      field,
      near ? `unknown key; did you mean ${near}?` : `unknown key; known keys here: ${siblings.join(', ')}`,
    );
  }

  string(field: string, value: unknown, fallback: string): string {
    if (value === undefined) return fallback;
    if (typeof value !== 'string' || value === '') this.expected(field, 'a non-empty string', value);
    return value;
  }

  path(field: string, value: unknown, fallback: string, cwd: string): string {
    return resolve(cwd, this.string(field, value, fallback));
  }

  oneOf<T extends string>(field: string, value: unknown, allowed: readonly T[], fallback: T): T {
    if (value === undefined) return fallback;
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
      this.expected(field, `one of ${allowed.join(', ')}`, value);
    }
    return value as T;
  }

  integer(field: string, value: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
      this.expected(field, `an integer ${range}`, value);
    }
    return value;
  }

  number(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) this.expected(field, 'a number', value);
    return value;
  }

  boolean(field: string, value: unknown, fallback: boolean): boolean {
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') this.expected(field, 'true or false', value);
    return value;
  }

  duration(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    try {
      return parseDuration(value, field);
    } catch (error) {
      if (error instanceof ConfigError) this.fail(field, error.message.slice(`config: ${field}: `.length));
      throw error;
    }
  }

  bytes(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    try {
      return parseByteSize(value, field);
    } catch (error) {
      if (error instanceof ConfigError) this.fail(field, error.message.slice(`config: ${field}: `.length));
      throw error;
    }
  }

  array(field: string, value: unknown, what: string, example: string): unknown[] {
    if (!Array.isArray(value)) this.expected(field, `${what}, e.g. ${example}`, value);
    return value;
  }

  mapping(field: string, value: unknown, what: string): Raw {
    if (!isPlainObject(value)) this.expected(field, what, value);
    return value;
  }
}

export function readStringList(check: Checker, field: string, value: unknown, example: string, noCommas: boolean): string[] {
  if (value === undefined) return [];
  const list = check.array(field, value, 'a list of strings', example);
  return list.map((item, index) => {
    const itemField = `${field}[${index}]`;
    if (typeof item !== 'string') check.expected(itemField, 'a string', item);
    if (noCommas && (item === '' || item.includes(','))) {
      check.fail(itemField, `expected a non-empty name without commas (targets reach the command comma-joined), got ${showValue(item)}`);
    }
    return item;
  });
}
