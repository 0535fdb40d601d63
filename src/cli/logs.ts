import { closeSync, createReadStream, existsSync, lstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { RunNotFoundError } from '../errors.js';
import { configFromArgs, integerFlag, isClosedPipe, printJson, runCommand, withStore, type GlobalArgs } from './common.js';
import { numberArgument } from './submit.js';
import { attemptLogDir, firstWaveAttemptLogDir, stageNamed } from '../policy/pipeline.js';
import { DEFAULT_STAGE } from '../store/types.js';
import { stageOfTask, stageOption, taskOfRun, type StageArgs } from './stage-choice.js';

// `runwarden logs N [--stage S]`: the output of an attempt of a run's task, as the supervisor wrote it to
// <log_dir>/<stage>/<number>/attempt-<k>.log (the first wave's <log_dir>/<number>/attempt-<k>.log for older
// attempts of `process`), copied byte for byte (never decoded, so invalid UTF-8 passes through and
// a log of any size streams in small chunks); --follow keeps printing until the attempt's closing line.

interface LogsArgs extends GlobalArgs, StageArgs {
  number?: string;
  attempt?: string;
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

/** Bytes of the end of a log `--json` decodes into its `text`: a JSON string has to fit in memory. */
export const JSON_TEXT_MAX_BYTES = 16 * 1024 * 1024;
/** How much of the end of what was printed `--follow` keeps to look for the closing line in. */
const CLOSING_WINDOW_BYTES = 4096;

function sizeOf(file: string): number {
  return statSync(file).size;
}

/** The bytes [start, end) of `file` decoded as UTF-8 (for --json only: the stream path never decodes). */
function readText(file: string, start: number, end: number): string {
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(Math.max(0, end - start));
    const read = readSync(fd, buffer, 0, buffer.length, start);
    return buffer.subarray(0, read).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * Copies the bytes [start, end) of `file` to stdout as they are (no decoding: invalid UTF-8 passes through, and a
 * log of any size streams in small chunks with back-pressure). Returns the bytes the last chunk ended with (at
 * most CLOSING_WINDOW_BYTES) as latin1, so every byte is one character.
 */
async function copyToStdout(file: string, start: number, end: number): Promise<string> {
  if (end <= start) return '';
  let tail = '';
  const source = createReadStream(file, { start, end: end - 1, highWaterMark: 256 * 1024 });
  source.on('data', (chunk) => {
    tail = (tail + (chunk as Buffer).subarray(-CLOSING_WINDOW_BYTES).toString('latin1')).slice(-CLOSING_WINDOW_BYTES);
  });
  await pipeline(source, process.stdout, { end: false });
  return tail;
}

async function printLog(file: string, follow: boolean): Promise<void> {
  let offset = sizeOf(file);
  let seen = await copyToStdout(file, 0, offset);
  while (follow && !CLOSING_LINE.test(seen)) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const size = sizeOf(file);
    if (size < offset) offset = 0; // replaced meanwhile: start again from its beginning
    seen = (seen + (await copyToStdout(file, offset, size))).slice(-CLOSING_WINDOW_BYTES);
    offset = Math.max(offset, size);
  }
}

export const logsCommand: CommandModule<GlobalArgs, LogsArgs> = {
  command: 'logs <number>',
  describe: "print a run's command output (the latest attempt unless --attempt)",
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(yargs, 'print the output of')
      .positional('number', { type: 'string', describe: 'run number' })
      .option('attempt', { type: 'string', describe: 'which attempt (1, 2, …); default the latest' })
      .option('follow', { alias: 'f', type: 'boolean', describe: 'keep printing until the attempt ends' })
      .example('$0 logs 1042', 'output of the latest attempt of run 1042')
      .example('$0 logs 1042 --attempt 1', 'output of its first attempt')
      .example('$0 logs 1042 -f', 'follow a running attempt')
      .example('$0 logs 1042 --stage compress', 'output of the latest attempt of its compress task'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const wanted = integerFlag(args.attempt, 'attempt', { min: 1 });
      const config = configFromArgs(args);
      const run = await withStore(config, (store) => store.getRun(number));
      if (!run) throw new RunNotFoundError(number);
      const stage = stageOfTask(taskOfRun(run, args.stage, 'print the output of'));
      const stageConfig = stageNamed(config, stage);
      // Where this stage's attempts log (a stage this configuration does not name: under process.log_dir); the
      // first wave's layout (no stage directory) for older `process` attempts.
      const dirs = [
        stageConfig ? attemptLogDir(stageConfig, number) : join(config.process.log_dir, stage, String(number)),
        ...(stage === DEFAULT_STAGE ? [firstWaveAttemptLogDir(stageConfig?.log_dir ?? config.process.log_dir, number)] : []),
      ];
      const where = new Map<number, string>();
      for (const dir of [...dirs].reverse()) for (const k of attemptsIn(dir)) where.set(k, dir);
      const attempts = [...where.keys()].sort((a, b) => a - b);
      const attempt = wanted ?? attempts.at(-1);
      if (attempt === undefined || !attempts.includes(attempt)) {
        const known = attempts.length ? `attempts with logs: ${attempts.join(', ')}` : 'no attempt has logged yet';
        const task = stage === DEFAULT_STAGE && args.stage === undefined ? `run ${number}` : `run ${number} stage ${stage}`;
        throw new Error(`${task}: no log for ${attempt === undefined ? 'any attempt' : `attempt ${attempt}`} in ${dirs.join(' or ')} (${known})`);
      }
      const file = join(where.get(attempt)!, `attempt-${attempt}.log`);
      // The command can write into the log directory: print only a regular file (a FIFO would block `logs`).
      if (!lstatSync(file).isFile()) throw new Error(`run ${number}: ${file} is not a regular file; not printed`);
      // `runwarden logs -f N | head` closes our stdout: that is the reader's way of saying "enough" (exit 0).
      process.stdout.on('error', (error) => {
        if (isClosedPipe(error)) process.exit(0);
      });
      if (args.json) {
        // A JSON string has to fit in memory: the last JSON_TEXT_MAX_BYTES of a larger log, and where they start.
        const size = sizeOf(file);
        const textOffset = Math.max(0, size - JSON_TEXT_MAX_BYTES);
        return printJson({ number, stage, attempt, file, attempts, size, text_offset: textOffset, text: readText(file, textOffset, size) });
      }
      try {
        await printLog(file, args.follow ?? false);
      } catch (error) {
        if (!isClosedPipe(error)) throw error;
      }
    }),
};
