import type { Argv, CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import { printable, printableLines } from '../policy/terminal-text.js';
import type { LogQuery, RunStore } from '../store/run-store.js';
import type { LogEntry, LogPriority } from '../store/types.js';
import { MAX_DATE_MS, parseIsoTime } from '../time-range.js';
import {
  configFromArgs,
  durationFlag,
  formatTime,
  integerFlag,
  isClosedPipe,
  printJson,
  runCommand,
  withStore,
  type GlobalArgs,
} from './common.js';
import { jsonText } from './json-output.js';
import { numberArgument } from './submit.js';

// `runwarden log`: the operator log every daemon and operator action writes into the store (DESIGN §3 log),
// oldest first, filtered by time, priority and run; --follow keeps printing what is written until ^C or until
// its reader goes away (`log -f | head`).

interface LogArgs extends GlobalArgs {
  since?: string;
  priority?: string;
  run?: string;
  limit?: string;
  follow?: boolean;
}

/** Priority names by number, as bootstrax's log: 0 debug … 4 fatal. */
export const PRIORITY_NAMES = ['debug', 'info', 'warning', 'error', 'fatal'] as const;

/** How many entries are printed without --since or --limit. */
const DEFAULT_LIMIT = 100;
/** How often --follow reads the log again. */
const FOLLOW_POLL_MS = 1_000;
/**
 * How far before the newest entry seen --follow reads again: an entry another host wrote a little late (its
 * clock behind, its write slow) is still printed, once.
 */
const FOLLOW_OVERLAP_MS = 60_000;

/** `--priority`: a name (`warn` for warning too) or 0..4; entries at least this important are printed. */
export function priorityFlag(value: string | undefined): LogPriority | undefined {
  if (value === undefined) return undefined;
  const text = value.trim().toLowerCase();
  const byName = (PRIORITY_NAMES as readonly string[]).indexOf(text === 'warn' ? 'warning' : text);
  if (byName >= 0) return byName as LogPriority;
  if (/^[0-4]$/.test(text)) return Number(text) as LogPriority;
  throw new UsageError(`--priority: expected ${PRIORITY_NAMES.join('|')} or 0..4, got ${JSON.stringify(value)}`, 'priority');
}

/**
 * `--since`: an ISO-8601 time (`2024-05-01`, `2024-05-01T12:00Z`) or a duration back from `now` (`90m`, `2h`,
 * `7d`; a bare number is seconds). Returns epoch ms.
 */
export function sinceFlag(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const time = parseIsoTime(value);
  if (time !== undefined) return time;
  if (/^\s*\d{4}-/.test(value)) {
    throw new UsageError(`--since: ${JSON.stringify(value)} is not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)`, 'since');
  }
  try {
    return now - durationFlag(value, 'since', { ms: 0 });
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    throw new UsageError(
      `--since: expected a duration back from now ("90m", "2h", "7d"; a number is seconds) or an ISO-8601 time ` +
        `("2024-05-01T12:00:00Z"), got ${JSON.stringify(value)}`,
      'since',
    );
  }
}

function priorityName(priority: number): string {
  return PRIORITY_NAMES[priority] ?? `priority ${printable(String(priority))}`;
}

/**
 * One entry as a person reads it: time, priority, who wrote it, the run it is about, and the message; a
 * multi-line message (a traceback) keeps its lines, indented under the first. Printable text only.
 */
export function logLines(entry: LogEntry): string {
  const run = entry.number !== undefined ? `  run ${entry.number}` : '';
  const [first = '', ...rest] = printableLines(entry.message).split('\n');
  const head = `${formatTime(entry.time)}  ${priorityName(entry.priority).padEnd(7)}  ${printable(entry.user || entry.host)}${run}  ${first}`;
  return [head.trimEnd(), ...rest.map((line) => `    ${line}`)].join('\n');
}

/** Identity of an entry for --follow (entries have no id of their own in every store). */
function entryKey(entry: LogEntry): string {
  return JSON.stringify([entry.time, entry.host, entry.user, entry.priority, entry.message, entry.number ?? null]);
}

/** The entries --follow has printed within its re-read window, counted, so identical twins each print once. */
class PrintedEntries {
  private readonly counts = new Map<string, { time: number; count: number }>();

  add(entry: LogEntry): void {
    const key = entryKey(entry);
    const known = this.counts.get(key);
    if (known) known.count += 1;
    else this.counts.set(key, { time: entry.time, count: 1 });
  }

  /** The entries of `window` (chronological) not printed yet, as many times as they are new. */
  unprinted(window: LogEntry[]): LogEntry[] {
    const met = new Map<string, number>();
    const fresh: LogEntry[] = [];
    for (const entry of window) {
      const key = entryKey(entry);
      const n = (met.get(key) ?? 0) + 1;
      met.set(key, n);
      if (n > (this.counts.get(key)?.count ?? 0)) fresh.push(entry);
    }
    return fresh;
  }

  forgetBefore(time: number): void {
    for (const [key, { time: at }] of this.counts) if (at < time) this.counts.delete(key);
  }
}

/**
 * Prints what is written to the log after `printed` (chronological, what was printed first) until SIGINT or
 * SIGTERM. `floor`: entries older than this were left out on purpose (--limit), never printed late.
 */
async function followLog(
  store: RunStore,
  query: LogQuery,
  printed: LogEntry[],
  floor: number | undefined,
  print: (entry: LogEntry) => void,
): Promise<void> {
  let stopped = false;
  let wake = (): void => {};
  const stop = (): void => {
    stopped = true;
    wake();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const done = new PrintedEntries();
    for (const entry of printed) done.add(entry);
    let newest = printed.at(-1)?.time ?? query.sinceMs ?? Date.now();
    while (!stopped) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, FOLLOW_POLL_MS);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (stopped) break;
      // clamped: a time another tool wrote beyond a date's range must not make the query itself invalid
      const windowStart = Math.min(
        MAX_DATE_MS,
        Math.max(newest - FOLLOW_OVERLAP_MS, floor ?? -MAX_DATE_MS, query.sinceMs ?? -MAX_DATE_MS),
      );
      const window = (await store.listLog({ ...query, sinceMs: windowStart })).reverse();
      for (const entry of done.unprinted(window)) {
        print(entry);
        done.add(entry);
        newest = Math.max(newest, entry.time);
      }
      done.forgetBefore(Math.max(newest - FOLLOW_OVERLAP_MS, floor ?? -Infinity));
    }
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
}

export const logCommand: CommandModule<GlobalArgs, LogArgs> = {
  command: 'log',
  describe: 'print the operator log: what daemons and operators did (newest 100 unless --since/--limit)',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('since', {
        type: 'string',
        describe: 'entries written since: a duration back from now ("90m", "2h", "7d") or an ISO-8601 time',
      })
      .option('priority', {
        type: 'string',
        describe: `at least this important: ${PRIORITY_NAMES.join('|')} or 0..4`,
      })
      .option('run', { type: 'string', describe: 'only entries about this run number' })
      .option('limit', { type: 'string', describe: `at most the newest N entries (default ${DEFAULT_LIMIT} without --since)` })
      .option('follow', { alias: 'f', type: 'boolean', describe: 'keep printing new entries until ^C' })
      .example('$0 log --priority warning --since 6h', 'warnings and worse of the last 6 hours')
      .example('$0 log --run 1042', 'what happened to run 1042')
      .example('$0 log -f --json', 'follow, one JSON object per line'),
  handler: (args) =>
    runCommand(async () => {
      const now = Date.now();
      const minPriority = priorityFlag(args.priority);
      const number = args.run !== undefined ? numberArgument(args.run, '--run') : undefined;
      const sinceMs = sinceFlag(args.since, now);
      const limit = integerFlag(args.limit, 'limit', { min: 1 }) ?? (sinceMs === undefined ? DEFAULT_LIMIT : undefined);
      const config = configFromArgs({ ...args, host: undefined });
      const query: LogQuery = {
        ...(minPriority !== undefined ? { minPriority } : {}),
        ...(number !== undefined ? { number } : {}),
        ...(sinceMs !== undefined ? { sinceMs } : {}),
      };
      // `log -f | head` closes our stdout: the reader has seen enough (exit 0).
      process.stdout.on('error', (error) => {
        if (isClosedPipe(error)) process.exit(0);
      });
      await withStore(config, async (store) => {
        const entries = (await store.listLog({ ...query, ...(limit !== undefined ? { limit } : {}) })).reverse();
        const print = args.json
          ? (entry: LogEntry) => process.stdout.write(`${jsonText(entry, 0)}\n`)
          : (entry: LogEntry) => process.stdout.write(`${logLines(entry)}\n`);
        if (!args.follow) {
          if (args.json) return printJson(entries);
          if (entries.length === 0) process.stdout.write('no log entries\n');
          for (const entry of entries) print(entry);
          return;
        }
        for (const entry of entries) print(entry);
        const truncated = limit !== undefined && entries.length >= limit;
        await followLog(store, query, entries, truncated ? entries[0]?.time : undefined, print);
      });
    }),
};
