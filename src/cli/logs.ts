import { closeSync, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { RunNotFoundError, UsageError } from '../errors.js';
import { configFromArgs, printJson, runCommand, withStore, type GlobalArgs } from './common.js';
import { numberArgument } from './submit.js';

// `runwarden logs N`: the output of a run's attempt, as the supervisor wrote it to
// <log_dir>/<number>/attempt-<k>.log; --follow keeps printing until the attempt's closing line.

interface LogsArgs extends GlobalArgs {
  number?: string;
  attempt?: number;
  follow?: boolean;
}

/** The supervisor's last line for an attempt: exit status or a failed spawn. */
const CLOSING_LINE = /^=== runwarden \S+ (exit|spawn failed)/m;

export function attemptsIn(dir: string): number[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((name) => /^attempt-(\d+)\.log$/.exec(name)?.[1])
    .filter((k): k is string => k !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

function readFrom(file: string, offset: number): { text: string; offset: number } {
  const size = statSync(file).size;
  if (size <= offset) return { text: '', offset };
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(size - offset);
    const read = readSync(fd, buffer, 0, buffer.length, offset);
    return { text: buffer.subarray(0, read).toString('utf8'), offset: offset + read };
  } finally {
    closeSync(fd);
  }
}

export const logsCommand: CommandModule<GlobalArgs, LogsArgs> = {
  command: 'logs <number>',
  describe: "print a run's command output (the latest attempt unless --attempt)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number' })
      .option('attempt', { type: 'number', describe: 'which attempt (1, 2, …); default the latest' })
      .option('follow', { alias: 'f', type: 'boolean', describe: 'keep printing until the attempt ends' })
      .example('$0 logs 1042', 'output of the latest attempt of run 1042')
      .example('$0 logs 1042 --attempt 1', 'output of its first attempt')
      .example('$0 logs 1042 -f', 'follow a running attempt'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const run = await withStore(config, (store) => store.getRun(number));
      if (!run) throw new RunNotFoundError(number);
      const dir = join(config.process.log_dir, String(number));
      const attempts = attemptsIn(dir);
      if (args.attempt !== undefined && (!Number.isInteger(args.attempt) || args.attempt < 1)) {
        throw new UsageError(`--attempt: expected a positive integer, got ${args.attempt}`, 'attempt');
      }
      const attempt = args.attempt ?? attempts.at(-1);
      if (attempt === undefined || !attempts.includes(attempt)) {
        const known = attempts.length ? `attempts with logs: ${attempts.join(', ')}` : 'no attempt has logged yet';
        throw new Error(`run ${number}: no log for ${attempt === undefined ? 'any attempt' : `attempt ${attempt}`} in ${dir} (${known})`);
      }
      const file = join(dir, `attempt-${attempt}.log`);
      if (args.json) {
        return printJson({ number, attempt, file, attempts, text: readFrom(file, 0).text });
      }
      let { text, offset } = readFrom(file, 0);
      process.stdout.write(text);
      if (!args.follow) return;
      let seen = text;
      while (!CLOSING_LINE.test(seen)) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        ({ text, offset } = readFrom(file, offset));
        process.stdout.write(text);
        seen = seen.slice(-4096) + text;
      }
    }),
};
