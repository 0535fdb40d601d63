import { UsageError } from '../errors.js';

// A flag that switches a listener on, with an optional port: `--metrics` listens on the configured port,
// `--metrics=9400` on that one, no flag means off. Shared by `daemon --metrics` and `daemon --inspect`.

/** The yargs declaration: a string, so `--flag` alone parses as '' and `--flag=0` keeps its 0. */
export function portOptionSpec(describe: string) {
  return { type: 'string' as const, describe };
}

/**
 * The port to listen on, or undefined when the flag was not given. A value that is not a port in 0..65535
 * (0 = any free port) is a usage error naming the flag.
 */
export function portFromOption(flag: string, value: unknown, configured: number): number | undefined {
  if (value === undefined || value === false) return undefined; // absent, or --no-FLAG
  if (Array.isArray(value)) throw new UsageError(`--${flag} given ${value.length} times; give it once`, flag);
  const text = String(value).trim();
  if (text === '') return configured;
  const port = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isInteger(port) || port > 65535) {
    throw new UsageError(`--${flag}: expected a port number 0..65535 (0 = any free port), got ${JSON.stringify(text)}`, flag);
  }
  return port;
}
