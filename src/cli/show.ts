import type { Argv, CommandModule } from 'yargs';
import { RunNotFoundError } from '../errors.js';
import type { RunDoc, RunEvent } from '../store/types.js';
import { configFromArgs, formatTime, printJson, runCommand, table, truncate, withStore, type GlobalArgs } from './common.js';
import { numberArgument } from './submit.js';

interface ShowArgs extends GlobalArgs {
  number?: string;
}

const TIME_FIELDS = new Set(['start', 'end', 'time', 'started', 'ended', 'next_retry', 'at']);

function describeValue(key: string, value: unknown): string {
  if (typeof value === 'number' && TIME_FIELDS.has(key)) return formatTime(value);
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

export function renderRun(run: RunDoc, events: RunEvent[]): string {
  const lines: string[] = [`run ${run.number}`];
  const { processing, outputs, ...rest } = run;
  for (const [key, value] of Object.entries(rest)) {
    if (key === 'number' || value === undefined) continue;
    lines.push(`  ${key.padEnd(12)} ${describeValue(key, value)}`);
  }
  if (processing) {
    lines.push('processing');
    for (const [key, value] of Object.entries(processing)) {
      if (value === undefined) continue;
      lines.push(`  ${key.padEnd(12)} ${describeValue(key, value)}`);
    }
  } else {
    lines.push('processing    never claimed (pending)');
  }
  if (outputs.length > 0) {
    lines.push('outputs');
    for (const o of outputs) lines.push(`  ${o.location}  (host ${o.host}, attempt ${o.attempt}, ${formatTime(o.at)})`);
  }
  lines.push('', 'history');
  lines.push(
    events.length === 0
      ? '  (no events)'
      : table(
          ['TIME', 'HOST', 'ATTEMPT', 'FROM', 'TO', 'EXIT', 'DURATION', 'REASON'],
          events.map((e) => [
            formatTime(e.time),
            e.host,
            String(e.attempt),
            e.from ?? '-',
            e.to,
            e.exit_code !== undefined ? String(e.exit_code) : e.signal ?? '-',
            e.duration_ms !== undefined ? `${(e.duration_ms / 1000).toFixed(1)}s` : '-',
            truncate(e.reason, 70),
          ]),
        )
          .split('\n')
          .map((l) => `  ${l}`)
          .join('\n'),
  );
  return lines.join('\n');
}

export const showCommand: CommandModule<GlobalArgs, ShowArgs> = {
  command: 'show <number>',
  describe: "a run's document and its history of transitions",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number' })
      .example('$0 show 1042', 'state, attempts, reasons and every transition of run 1042')
      .example('$0 show 1042 --json', 'the same as JSON: {run, events}'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const { run, events } = await withStore(config, async (store) => ({
        run: await store.getRun(number),
        events: await store.listRunEvents(number),
      }));
      if (!run) throw new RunNotFoundError(number);
      if (args.json) return printJson({ run, events });
      process.stdout.write(`${renderRun(run, events)}\n`);
    }),
};
