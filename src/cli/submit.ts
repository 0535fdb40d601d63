import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import { parseSubmittedRun } from '../policy/run-validation.js';
import { stagesForRun, type SelectableRun } from '../policy/pipeline.js';
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
  describe: 'add a run (or many with --file) for processing: one task per stage whose select matches it',
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
      // Each run gets a task of every stage whose selection it matches (a config without stages: one, process).
      const tasks = new Map(runs.map((run) => [run, stagesForRun(config, selectable(run))]));
      const staged = config.stages !== undefined && config.stages.length > 0;
      await withStore(config, async (store) => {
        const count =
          runs.length === 1
            ? (await store.insertRun(runs[0]!, tasks.get(runs[0]!)!), 1)
            : await store.insertRuns(runs, (run) => tasks.get(run) ?? stagesForRun(config, selectable(run)));
        const stageless = runs.filter((run) => tasks.get(run)!.length === 0).map((run) => run.number);
        if (stageless.length > 0) {
          process.stderr.write(
            `runwarden: warning: ${stageless.length === 1 ? `run ${stageless[0]} matches` : `runs ${preview(stageless)} match`} ` +
              `no stage's select: no task was created; a daemon processes nothing of ${stageless.length === 1 ? 'it' : 'them'}\n`,
          );
        }
        if (args.json) {
          printJson({
            submitted: runs.map((r) => r.number),
            ...(staged ? { tasks: Object.fromEntries(runs.map((r) => [r.number, tasks.get(r)!.map((t) => t.stage)])) } : {}),
          });
        } else {
          const stages = staged && runs.length === 1 ? ` (tasks: ${tasks.get(runs[0]!)!.map((t) => t.stage).join(', ') || 'none'})` : '';
          process.stdout.write(
            count === 1
              ? `submitted run ${runs[0]!.number}${stages}\n`
              : `submitted ${count} runs (${runs[0]!.number} … ${runs.at(-1)!.number})${staged ? `: ${taskSummary(runs, tasks)}` : ''}\n`,
          );
        }
      }, { create: true });
    }),
};

/** The fields a stage's selection looks at. */
export function selectable(run: NewRun): SelectableRun {
  return {
    number: run.number,
    ...(run.mode !== undefined ? { mode: run.mode } : {}),
    ...(run.end !== undefined ? { end: run.end } : {}),
    tags: run.tags ?? [],
    params: run.params ?? {},
  };
}

/** `7, 8, 9, … (12 runs)` */
function preview(numbers: number[]): string {
  const shown = numbers.slice(0, 8).join(', ');
  return numbers.length > 8 ? `${shown}, … (${numbers.length} runs)` : shown;
}

/** `tasks: process 40, compress 40, upload 12`: how many tasks of each stage the runs got. */
function taskSummary(runs: NewRun[], tasks: Map<NewRun, readonly { stage: string }[]>): string {
  const counts = new Map<string, number>();
  for (const run of runs) for (const task of tasks.get(run) ?? []) counts.set(task.stage, (counts.get(task.stage) ?? 0) + 1);
  return `tasks: ${[...counts].map(([stage, n]) => `${stage} ${n}`).join(', ') || 'none'}`;
}

/** Run numbers on the command line: decimal digits only, so "1e3" or "12abc" is refused. */
export function numberArgument(value: string | number | undefined, field = 'number'): number {
  const text = String(value ?? '');
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`${field}: expected a non-negative integer run number, got ${JSON.stringify(text)}`, field);
  }
  return Number(text);
}
