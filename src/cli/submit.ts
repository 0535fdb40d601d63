import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import { parseSubmittedRun } from '../policy/run-validation.js';
import type { NewRun } from '../store/types.js';
import { configFromArgs, printJson, runCommand, withStore, type GlobalArgs } from './common.js';

interface SubmitArgs extends GlobalArgs {
  number?: string;
  file?: string;
  input?: string;
  name?: string;
  start?: string;
  end?: string;
  mode?: string;
  tag?: string[];
  priority?: string;
  param?: string[];
}

/** `k=v` → params; a value that parses as JSON (numbers, booleans, arrays) keeps its type. */
function parseParams(pairs: string[]): Record<string, unknown> {
  const params: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--param: expected key=value, got ${JSON.stringify(pair)}`, 'param');
    const key = pair.slice(0, eq);
    const raw = pair.slice(eq + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      value = raw;
    }
    params[key] = value;
  }
  return params;
}

function runsFromFile(file: string, now: number): NewRun[] {
  const text = file === '-' ? readFileSync(0, 'utf8') : readFileSafely(file);
  const runs: NewRun[] = [];
  text.split('\n').forEach((line, index) => {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const where = `${file}:${index + 1}`;
    let raw: unknown;
    try {
      raw = JSON.parse(trimmed);
    } catch (error) {
      throw new UsageError(`${where}: not valid JSON: ${(error as Error).message}`, 'file');
    }
    runs.push(parseSubmittedRun(raw, where, now));
  });
  if (runs.length === 0) throw new UsageError(`${file}: no runs in it (one JSON object per line)`, 'file');
  return runs;
}

function readFileSafely(file: string): string {
  if (file === '') throw new UsageError('--file: empty; give a JSON lines file, or - to read standard input', 'file');
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new UsageError(`--file ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, 'file');
  }
}

export const submitCommand: CommandModule<GlobalArgs, SubmitArgs> = {
  command: 'submit [number]',
  describe: 'add a run (or many with --file) for processing',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number (a non-negative integer)' })
      .option('file', { type: 'string', describe: 'JSON lines, one run per line ("-" reads stdin)' })
      .option('input', { type: 'string', describe: 'input path handed to the command as {input}' })
      .option('name', { type: 'string', describe: 'run name, as {name}' })
      .option('start', { type: 'string', describe: 'start of data taking (ISO-8601); default now' })
      .option('end', { type: 'string', describe: 'end of data taking (ISO-8601)' })
      .option('mode', { type: 'string', describe: 'acquisition mode' })
      .option('tag', { type: 'string', array: true, describe: 'tag, repeatable; "hold" keeps it from being claimed' })
      .option('priority', { type: 'string', describe: 'higher is processed first (default 0)' })
      .option('param', { type: 'string', array: true, describe: 'key=value, repeatable; as {params.key}' })
      // `--file -` (stdin, with a space): yargs-parser reads the lone "-" as an empty option, leaving both --file
      // and the run number empty strings (`--file ''` leaves the number unset).
      .middleware((argv) => {
        if (argv.file === '' && argv.number === '') {
          argv.file = '-';
          delete argv.number;
        }
      }, true)
      .conflicts('file', ['input', 'name', 'start', 'end', 'mode', 'tag', 'priority', 'param'])
      .check((argv) => {
        if (argv.file === undefined && argv.number === undefined) throw new UsageError('give a run number or --file', 'number');
        if (argv.file !== undefined && argv.number !== undefined) throw new UsageError('give a run number or --file, not both', 'file');
        return true;
      })
      .example('$0 submit 1042 --input /data/raw/1042 --mode background', 'one run')
      .example('$0 submit 1043 --priority 5 --param lineage=v2 --tag hold', 'held until released')
      .example('$0 submit --file runs.jsonl', 'many runs, e.g. {"number": 7, "input": "/data/7"} per line'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args);
      const now = Date.now();
      let runs: NewRun[];
      if (args.file !== undefined) {
        runs = runsFromFile(args.file, now);
      } else {
        const raw: Record<string, unknown> = { number: numberArgument(args.number) };
        if (args.input !== undefined) raw.input = args.input;
        if (args.name !== undefined) raw.name = args.name;
        if (args.start !== undefined) raw.start = args.start;
        if (args.end !== undefined) raw.end = args.end;
        if (args.mode !== undefined) raw.mode = args.mode;
        if (args.tag !== undefined) raw.tags = args.tag;
        // Text that is a number becomes one; anything else goes to validation as given, which names it.
        if (args.priority !== undefined) {
          const text = String(args.priority).trim();
          raw.priority = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(text) ? Number(text) : args.priority;
        }
        if (args.param !== undefined) raw.params = parseParams(args.param);
        runs = [parseSubmittedRun(raw, 'submit', now)];
      }
      await withStore(config, async (store) => {
        const count = runs.length === 1 ? (await store.insertRun(runs[0]!), 1) : await store.insertRuns(runs);
        if (args.json) printJson({ submitted: runs.map((r) => r.number) });
        else
          process.stdout.write(
            count === 1 ? `submitted run ${runs[0]!.number}\n` : `submitted ${count} runs (${runs[0]!.number} … ${runs.at(-1)!.number})\n`,
          );
      }, { create: true });
    }),
};

/** Run numbers on the command line: decimal digits only, so "1e3" or "12abc" is refused. */
export function numberArgument(value: string | number | undefined, field = 'number'): number {
  const text = String(value ?? '');
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`${field}: expected a non-negative integer run number, got ${JSON.stringify(text)}`, field);
  }
  return Number(text);
}
