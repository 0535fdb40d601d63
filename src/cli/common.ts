import type { Argv } from 'yargs';
import { formatDuration, formatElapsed, parseDuration } from '../config/duration.js';
import { loadConfig, type ConfigFlags } from '../config/index.js';
import type { Config } from '../config/schema.js';
import { ConfigError, UsageError, exitCodeOf } from '../errors.js';
import { isDateMs, isoTimeOrInvalid } from '../time-range.js';
import { openStore } from '../store/open-store.js';
import type { RunStore } from '../store/run-store.js';
import { jsonText } from './json-output.js';

// What every command shares: the global options, loading the configuration, opening the store,
// printing either for people or as JSON, and turning errors into exit codes (DESIGN §7).

export interface GlobalArgs {
  store?: string;
  config?: string;
  host?: string;
  json?: boolean;
  'log-level'?: string;
  set?: string[];
}

export function globalOptions<T>(yargs: Argv<T>) {
  return yargs
    .option('store', {
      type: 'string',
      describe: 'runs database: sqlite:PATH or mongodb://… (env RUNWARDEN_STORE)',
      global: true,
    })
    .option('config', {
      type: 'string',
      describe: 'YAML configuration file (default ./runwarden.yaml when present; env RUNWARDEN_CONFIG)',
      global: true,
    })
    .option('host', { type: 'string', describe: "this host's name in the database (default: hostname)", global: true })
    .option('json', { type: 'boolean', describe: 'print machine-readable JSON', global: true })
    .option('log-level', {
      type: 'string',
      choices: ['debug', 'info', 'warn', 'error'],
      describe: 'how much the daemon logs',
      global: true,
    })
    .option('set', {
      type: 'string',
      array: true,
      describe: 'override a configuration key: --set timeouts.check_interval=5s',
      global: true,
    });
}

export function configFromArgs(args: GlobalArgs, extra: ConfigFlags = {}): Config {
  const flags: ConfigFlags = {
    ...(args.store !== undefined ? { store: args.store } : {}),
    ...(args.host !== undefined ? { host: args.host } : {}),
    ...(args['log-level'] !== undefined ? { log_level: args['log-level'] } : {}),
    ...(args.set !== undefined ? { set: args.set } : {}),
    ...extra,
  };
  const file = args.config ?? process.env.RUNWARDEN_CONFIG;
  return loadConfig({ ...(file ? { file } : {}), cwd: process.cwd(), env: process.env, flags });
}

/**
 * Opens the store for one command's work and closes it after. Only commands that add work (submit; the daemon and
 * demo open their own) pass `create: true`; every other command refuses a SQLite store that does not exist.
 */
export async function withStore<T>(
  config: Config,
  use: (store: RunStore) => Promise<T>,
  options: { create?: boolean } = {},
): Promise<T> {
  const store = await openStore(config.store, { create: options.create ?? false });
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/** `--json` output: times as ISO 8601 strings (jsonText). */
export function printJson(value: unknown): void {
  process.stdout.write(`${jsonText(value)}\n`);
}

/** True when stdout was closed by its reader (`logs -f | head`): the reader has seen enough. */
export function isClosedPipe(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED' || code === 'ERR_STREAM_PREMATURE_CLOSE';
}

/** Runs a command's body; errors become one line on stderr and the exit code DESIGN §7 gives them. */
export async function runCommand(body: () => Promise<number | void>): Promise<void> {
  try {
    const code = await body();
    process.exitCode = code ?? 0;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`runwarden: ${message}\n`);
    process.exitCode = exitCodeOf(error);
  }
}

/** A left-aligned text table; cells are already strings. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** `2024-05-01 12:00:00Z`; `-` when absent; `invalid time (…)` for a value no Date holds (never throws). */
export function formatTime(ms: number | undefined): string {
  if (ms === undefined) return '-';
  if (!isDateMs(ms)) return isoTimeOrInvalid(ms);
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
}

/** `12s ago` / `in 3m`; for heartbeats and retries. */
export function formatRelative(ms: number | undefined, now: number): string {
  if (ms === undefined || !Number.isFinite(ms)) return '-';
  const delta = Math.round((ms - now) / 1000);
  const text = formatElapsed(Math.abs(delta) * 1000);
  return delta <= 0 ? `${text} ago` : `in ${text}`;
}

export function truncate(text: string | undefined, max: number): string {
  if (!text) return '';
  const single = text.replace(/\s+/g, ' ').trim();
  return single.length > max ? `${single.slice(0, max - 1)}…` : single;
}

/**
 * A duration flag such as `--interval 2s` or `--since 1h` (a bare number is seconds), at least `min.ms`; its errors
 * name the flag rather than a configuration key, and exit 2.
 */
export function durationFlag(value: string, flag: string, min: { ms: number; why?: string }): number {
  let ms: number;
  try {
    ms = parseDuration(/^\s*\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value, `--${flag}`);
  } catch (error) {
    if (error instanceof ConfigError) throw new UsageError(error.message.replace(/^config: /, ''), flag);
    throw error;
  }
  if (ms < min.ms) {
    throw new UsageError(`--${flag}: at least ${formatDuration(min.ms)}${min.why ? ` (${min.why})` : ''}, got ${value}`, flag);
  }
  return ms;
}

/**
 * An integer flag such as `--limit 20`, read from the text given (the option is a string to yargs, which would
 * turn `abc` into NaN): a UsageError names the flag, what was given and what is expected.
 */
export function integerFlag(value: string | number | undefined, flag: string, range: { min: number; max?: number }): number | undefined {
  if (value === undefined) return undefined;
  const text = String(value).trim();
  const number = Number(text);
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (!/^[-+]?\d+$/.test(text) || !Number.isSafeInteger(number) || number < range.min || number > max) {
    const expected =
      range.max !== undefined
        ? `an integer from ${range.min} to ${range.max}`
        : Number.isFinite(range.min)
          ? `an integer ≥ ${range.min}`
          : 'an integer';
    throw new UsageError(`--${flag}: expected ${expected}, got ${JSON.stringify(String(value))}`, flag);
  }
  return number;
}
