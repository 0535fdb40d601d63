import { createInterface } from 'node:readline';
import type { Argv } from 'yargs';
import type { OperatorAction, OperatorResult, RunStateLabel } from '../daemon/operator-actions.js';
import type { RunActionOutcome, RunSelection, SelectedRuns } from '../daemon/operator-selection.js';
import { UsageError } from '../errors.js';
import { RUN_STATES } from '../store/types.js';
import { printJson, type GlobalArgs } from './common.js';
import { printable } from '../policy/terminal-text.js';
import { numberArgument } from './submit.js';

// The run selection of fail, abandon, retry, hold and release: several numbers (7 8 9, 7,8,9, 100-120) and
// --state/--tag, a confirmation above a few runs, and one line per run with a count at the end.

/** More runs than this are written only after a yes (a prompt on a terminal, or --yes). */
export const CONFIRM_ABOVE = 5;
/** The longest range one word may name, so a typo like 1-1000000000 does not read a billion runs. */
const MAX_RANGE = 100_000;

export interface SelectionArgs extends GlobalArgs {
  state?: string;
  tag?: string;
  yes?: boolean;
}

export function selectionOptions<T>(yargs: Argv<T>) {
  return yargs
    .option('state', {
      type: 'string',
      choices: ['pending', ...RUN_STATES],
      describe: 'every run in this state (with numbers: only those of them in it)',
    })
    .option('tag', { type: 'string', describe: 'every run with this tag (with numbers: only those of them with it)' })
    .option('yes', {
      type: 'boolean',
      alias: 'y',
      describe: `do it without asking, also for more than ${CONFIRM_ABOVE} runs`,
    });
}

const RUN_WORD = /^\d+(-\d+)?(,\d+(-\d+)?)*$/;

/** True for a word that names runs: `7`, `7,8,9`, `100-120`, `7,10-12`. */
export function isRunWord(word: string): boolean {
  return RUN_WORD.test(word);
}

/** The run numbers a word names; anything else is a UsageError naming `number`. */
export function runNumbersOf(word: string): number[] {
  if (!isRunWord(word)) numberArgument(word);
  const numbers: number[] = [];
  for (const part of word.split(',')) {
    const [first, last] = part.split('-');
    const from = numberArgument(first);
    const to = last === undefined ? from : numberArgument(last);
    if (to < from) throw new UsageError(`number: the range ${part} goes backwards; write ${to}-${from}`, 'number');
    if (to - from >= MAX_RANGE) {
      throw new UsageError(`number: the range ${part} names more than ${MAX_RANGE} runs; use --state or --tag`, 'number');
    }
    for (let n = from; n <= to; n++) numbers.push(n);
  }
  return numbers;
}

export type Targets = { kind: 'one'; number: number } | { kind: 'many'; selection: RunSelection };

/**
 * What the words and flags select: one run named alone (the command behaves as it always did: a refusal is an
 * error), or a selection. Without numbers, --state or --tag is required.
 */
export function targetsOf(words: string[], args: SelectionArgs, usage: string): Targets {
  const numbers = words.flatMap(runNumbersOf);
  const filters: RunSelection = {
    ...(args.state !== undefined ? { state: args.state as RunStateLabel } : {}),
    ...(args.tag !== undefined ? { tag: args.tag } : {}),
  };
  const filtered = args.state !== undefined || args.tag !== undefined;
  if (numbers.length === 0 && !filtered) {
    throw new UsageError(`number: name the runs (${usage}), or select them with --state or --tag`, 'number');
  }
  if (words.length === 1 && numbers.length === 1 && !filtered) return { kind: 'one', number: numbers[0]! };
  return { kind: 'many', selection: { ...(numbers.length > 0 ? { numbers } : {}), ...filters } };
}

/** `7, 8, 9, … (12 runs)` */
function preview(numbers: number[]): string {
  const shown = numbers.slice(0, 8).join(', ');
  return numbers.length > 8 ? `${shown}, … (${numbers.length} runs)` : shown;
}

/**
 * Asks before writing more than CONFIRM_ABOVE runs: on a terminal a y/N prompt (on stderr), otherwise only
 * --yes will do (exit 2 naming it). Resolves false when the operator said no.
 */
export async function confirmSelection(action: OperatorAction, selected: SelectedRuns, yes: boolean): Promise<boolean> {
  const count = selected.runs.length;
  if (count <= CONFIRM_ABOVE || yes) return true;
  const numbers = selected.runs.map((r) => r.number);
  if (!process.stdin.isTTY) {
    throw new UsageError(
      `--yes: ${count} runs selected (${preview(numbers)}); standard input is not a terminal to ask, so add --yes ` +
        `to ${action} them all`,
      'yes',
    );
  }
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await new Promise<string>((resolve) => {
      prompt.once('close', () => resolve(''));
      prompt.question(`${action} ${count} runs: ${preview(numbers)}? [y/N] `, resolve);
    });
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    prompt.close();
  }
}

/** The one line a changed run gets, as the single-run commands print it. */
export function operatorResultLine(result: OperatorResult, now: number, formatRetry: (ms: number) => string): string {
  const p = result.run.processing;
  const change = result.from === result.to ? result.to : `${result.from} → ${result.to}`;
  let line = `run ${result.number}${result.stage !== undefined ? ` stage ${printable(result.stage)}` : ''}: ${change}`;
  if (result.action === 'hold' || result.action === 'release') {
    line += `; tags: ${result.run.tags.length ? result.run.tags.join(', ') : '(none)'}`;
  } else if (p) {
    line += ` (${p.reason ?? 'no reason'}); failures ${p.n_failures}, attempt ${p.attempt}`;
    if (p.state === 'failed' && p.next_retry !== undefined) {
      line += `; eligible ${p.next_retry <= now ? 'now' : formatRetry(p.next_retry)}`;
    }
  }
  return line;
}

/**
 * Prints each run's outcome and the count; exit code 0 when every selected run was changed, 1 when some were
 * skipped (not allowed in their state, or changed since they were selected) or do not exist.
 */
export function printOutcomes(
  action: OperatorAction,
  outcomes: RunActionOutcome[],
  json: boolean | undefined,
  line: (result: OperatorResult) => string,
): number {
  const count = (what: RunActionOutcome['outcome']) => outcomes.filter((o) => o.outcome === what).length;
  const summary = { changed: count('changed'), skipped: count('skipped'), not_found: count('not found') };
  if (json) {
    printJson({ action, selected: outcomes.length, ...summary, runs: outcomes });
  } else {
    for (const o of outcomes) {
      if (o.outcome === 'changed') {
        for (const warning of o.result.warnings) process.stderr.write(`runwarden: warning: ${warning}\n`);
        process.stdout.write(`${line(o.result)}\n`);
      } else if (o.outcome === 'skipped') {
        process.stdout.write(`run ${o.number}: skipped: ${o.why}\n`);
      } else {
        process.stdout.write(`run ${o.number}: not found\n`);
      }
    }
    const parts = [`${summary.changed} changed`];
    if (summary.skipped > 0) parts.push(`${summary.skipped} skipped`);
    if (summary.not_found > 0) parts.push(`${summary.not_found} not found`);
    const runs = outcomes.length === 1 ? 'run' : 'runs';
    process.stdout.write(
      outcomes.length === 0 ? `${action}: no runs selected\n` : `${action}: ${outcomes.length} ${runs} selected: ${parts.join(', ')}\n`,
    );
  }
  return summary.skipped + summary.not_found > 0 ? 1 : 0;
}
