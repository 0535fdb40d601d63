import type { Argv, CommandModule } from 'yargs';
import { RunNotFoundError } from '../errors.js';
import { DEFAULT_STAGE, type Processing, type RunDoc, type RunEvent, type TaskDoc } from '../store/types.js';
import type { Config } from '../config/schema.js';
import { degradationOf } from '../policy/degradation.js';
import { printable, printableLines } from '../policy/terminal-text.js';
import { configFromArgs, formatTime, printJson, runCommand, table, withStore, type GlobalArgs } from './common.js';
import { reasonLine } from './run-view.js';
import { numberArgument } from './submit.js';
import { stageOption, stagesOfRun, taskOfRun, type StageArgs } from './stage-choice.js';
import { stageConfigOf } from './run-view.js';

interface ShowArgs extends GlobalArgs, StageArgs {
  number?: string;
  wide?: boolean;
}

const TIME_FIELDS = new Set(['start', 'end', 'time', 'started', 'ended', 'next_retry', 'at']);
/** Fields whose text keeps its lines (a traceback), each line printable. */
const MULTILINE_FIELDS = new Set(['reason']);
const FIELD_WIDTH = 12;

function describeValue(key: string, value: unknown): string {
  if (typeof value === 'number' && TIME_FIELDS.has(key)) return formatTime(value);
  if (typeof value === 'string') return MULTILINE_FIELDS.has(key) ? printableLines(value) : printable(value);
  // JSON escapes C0 controls but not C1 ones, DEL or bidi overrides: printable takes those too.
  return printable(JSON.stringify(value) ?? String(value));
}

/** `  key          value`, a value of several lines indented under its first. */
function field(key: string, text: string): string[] {
  const [first = '', ...rest] = text.split('\n');
  return [`  ${printable(key).padEnd(FIELD_WIDTH)} ${first}`, ...rest.map((line) => `  ${' '.repeat(FIELD_WIDTH)} ${line}`)];
}

/** `text` cut into lines of at most `width` characters, at spaces where it can. */
export function wrapText(text: string, width: number): string[] {
  const room = Math.max(10, Math.floor(width));
  const lines: string[] = [];
  let rest = text;
  while (rest.length > room) {
    const space = rest.lastIndexOf(' ', room);
    const cut = space > room / 2 ? space : room;
    lines.push(rest.slice(0, cut).trimEnd());
    rest = rest.slice(cut).trimStart();
  }
  lines.push(rest);
  return lines;
}

/** Why a failed run is not retried yet: the attempt taken from its owner may still be stopping (issue 12). */
function drainingLine(d: NonNullable<NonNullable<RunDoc['processing']>['draining']>): string {
  const group = d.pgid !== undefined ? `, process group ${d.pgid}` : '';
  return printable(
    `attempt ${d.attempt} on host ${d.host} (pid ${d.pid}${group}) may still be stopping its command: ` +
      `no new attempt starts before its owner confirms it gone, or ${formatTime(d.until)} at the latest`,
  );
}

export interface RenderOptions {
  /** The terminal's width: history reasons wrap within it. Undefined: each reason on one line, in full. */
  width?: number;
  /** The configuration in force, to say whether a done run did without targets or resources (degraded). */
  config?: Pick<Config, 'process'> & Partial<Pick<Config, 'stages'>>;
  /** Only this stage's task (show N --stage S). */
  stage?: string;
}

/** True when the run is more than the first wave's one `process` task: show it task by task, with stages. */
function hasStages(run: RunDoc): boolean {
  const stages = stagesOfRun(run);
  return stages.length > 1 || stages[0] !== DEFAULT_STAGE;
}

/** `process, compress` (what a task waits for), printable. */
function stageNames(stages: readonly string[]): string {
  return stages.map((stage) => printable(stage)).join(', ');
}

/** A task's block: what it needs, whether it is blocked or held, and its processing document. */
function taskLines(run: RunDoc, task: TaskDoc, options: RenderOptions): string[] {
  const stage = printable(task.stage);
  const lines = [`task ${stage}${task.needs.length > 0 ? ` (needs ${stageNames(task.needs)})` : ''}`];
  if (task.blocked) {
    lines.push(
      ...field(
        'blocked',
        `stage ${printable(task.blocked.stage)} was abandoned (${formatTime(task.blocked.time)}): ` +
          `${printable(task.blocked.reason)}; runwarden retry ${run.number} --stage ${printable(task.blocked.stage)} unblocks it`,
      ),
    );
  }
  if (run.tags.includes(`hold:${task.stage}`)) {
    lines.push(...field('held', `tag hold:${stage}: runwarden release ${run.number} --stage ${stage}`));
  }
  const view = { ...run, stage: task.stage, ...(task.processing ? { processing: task.processing } : { processing: undefined }) };
  lines.push(...processingLines(view, task.processing, options, '  '));
  return lines;
}

/** The lines of a processing document (every field but the token), `indent` before each. */
function processingLines(run: RunDoc, processing: Processing | undefined, options: RenderOptions, indent = ''): string[] {
  const lines: string[] = [];
  if (!processing) {
    lines.push(`${indent}processing    never claimed (pending)`);
    return lines;
  }
  lines.push(`${indent}processing`);
  const { problems, ...fields } = processing;
  const add = (key: string, text: string) => lines.push(...field(key, text).map((line) => `${indent}${line}`));
  for (const [key, value] of Object.entries(fields)) {
    // The lease token fences the owner's writes: it is never shown (see json-output's SECRET_KEYS).
    if (value === undefined || key === 'token') continue;
    if (key === 'draining' && fields.draining) {
      add(key, drainingLine(fields.draining));
      continue;
    }
    add(key, describeValue(key, value));
  }
  for (const problem of problems ?? []) add('invalid', printable(problem));
  const degraded = options.config ? degradationOf(run, stageConfigOf(options.config, run.stage)) : null;
  if (degraded) add('degraded', `${processing.state === 'done' ? 'done' : 'attempt'} with ${degraded.summary}`);
  return lines;
}

export function renderRun(run: RunDoc, events: RunEvent[], options: RenderOptions = {}): string {
  const lines: string[] = [`run ${run.number}`];
  const { processing, outputs, invalid, tasks, stage: _view, blocked, ...rest } = run;
  for (const [key, value] of Object.entries(rest)) {
    if (key === 'number' || value === undefined) continue;
    lines.push(...field(key, describeValue(key, value)));
  }
  for (const problem of invalid ?? []) lines.push(...field('invalid', printable(problem)));
  const staged = hasStages(run);
  if (staged && tasks && tasks.length > 0) {
    for (const task of tasks) {
      if (options.stage !== undefined && task.stage !== options.stage) continue;
      lines.push(...taskLines(run, task, options));
    }
  } else if (processing) {
    if (blocked) lines.push(...field('blocked', `stage ${printable(blocked.stage)} was abandoned: ${printable(blocked.reason)}`));
    lines.push(...processingLines(run, processing, options));
  } else {
    lines.push('processing    never claimed (pending)');
  }
  const shownOutputs = outputs.filter((o) => options.stage === undefined || (o.stage ?? DEFAULT_STAGE) === options.stage);
  if (shownOutputs.length > 0) {
    lines.push('outputs');
    for (const o of shownOutputs) {
      const stage = staged ? `stage ${printable(o.stage ?? DEFAULT_STAGE)}, ` : '';
      lines.push(`  ${printable(o.location)}  (${stage}host ${printable(o.host)}, attempt ${o.attempt}, ${formatTime(o.at)})`);
    }
  }
  lines.push('', 'history');
  lines.push(events.length === 0 ? '  (no events)' : historyTable(events, options.width, staged));
  return lines.join('\n');
}

/**
 * The history table, indented. Each reason is one printable line; with a width, a reason longer than the room
 * left of the other columns wraps onto lines of its own under the REASON column (nothing is cut).
 */
function historyTable(events: RunEvent[], width: number | undefined, staged = false): string {
  const INDENT = '  ';
  const rows = events.map((e) => [
    formatTime(e.time),
    printable(e.host),
    ...(staged ? [printable(e.stage ?? DEFAULT_STAGE)] : []),
    String(e.attempt),
    e.from ?? '-',
    e.to,
    e.exit_code !== undefined ? String(e.exit_code) : e.signal ?? '-',
    e.duration_ms !== undefined ? `${(e.duration_ms / 1000).toFixed(1)}s` : '-',
  ]);
  const reasons = events.map((e) => reasonLine(e.reason));
  const headers = ['TIME', 'HOST', ...(staged ? ['STAGE'] : []), 'ATTEMPT', 'FROM', 'TO', 'EXIT', 'DURATION', 'REASON'];
  const without = table(headers.slice(0, -1), rows).split('\n');
  // Where the REASON column starts: the widest of the other columns' lines, and two spaces.
  const reasonAt = Math.max(...without.map((l) => l.length)) + 2;
  const room = width === undefined ? Infinity : width - INDENT.length - reasonAt;
  // A terminal too narrow for a REASON column: each reason goes on its own lines under its row.
  const below = room < 30;
  const BELOW = '    ';
  const out: string[] = [];
  without.forEach((line, i) => {
    const reason = i === 0 ? (below ? '' : 'REASON') : reasons[i - 1] ?? '';
    if (below) {
      out.push(`${INDENT}${line}`.trimEnd());
      if (reason !== '') for (const part of wrapText(reason, (width ?? 80) - BELOW.length)) out.push(`${BELOW}${part}`);
      return;
    }
    const parts = reason === '' ? [''] : Number.isFinite(room) ? wrapText(reason, room) : [reason];
    out.push(`${INDENT}${line.padEnd(reasonAt)}${parts[0]}`.trimEnd());
    for (const more of parts.slice(1)) out.push(`${INDENT}${' '.repeat(reasonAt)}${more}`);
  });
  return out.join('\n');
}

export const showCommand: CommandModule<GlobalArgs, ShowArgs> = {
  command: 'show <number>',
  describe: "a run's document, each stage's task, and its history of transitions",
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(yargs, 'show alone (default: every task of the run)')
      .positional('number', { type: 'string', describe: 'run number' })
      .option('wide', {
        type: 'boolean',
        describe: 'each history reason on one line in full (the default when the output is not a terminal)',
      })
      .example('$0 show 1042', 'state, attempts, reasons and every transition of run 1042, task by task')
      .example('$0 show 1042 --stage compress', 'its compress task and that task\'s history only')
      .example('$0 show 1042 --json', 'the same as JSON: {run, events}'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const { run, events } = await withStore(config, async (store) => {
        const run = await store.getRun(number);
        if (!run || args.stage === undefined) return { run, events: run ? await store.listRunEvents(number) : [] };
        // refused (exit 2) when the run has no such stage, naming the ones it has
        taskOfRun(run, args.stage, 'show');
        return { run: await store.getRun(number, args.stage), events: await store.listRunEvents(number, args.stage) };
      });
      if (!run) throw new RunNotFoundError(number);
      if (args.json) return printJson({ run, events });
      const width = process.stdout.isTTY && !args.wide ? process.stdout.columns : undefined;
      const options = { config, ...(width ? { width } : {}), ...(args.stage !== undefined ? { stage: args.stage } : {}) };
      process.stdout.write(`${renderRun(run, events, options)}\n`);
    }),
};
