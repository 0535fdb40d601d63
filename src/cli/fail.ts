import type { Argv, CommandModule } from 'yargs';
import type { Config } from '../config/schema.js';
import {
  failRunByOperator,
  operatorUser,
  type OperatorDeps,
  type OperatorResult,
} from '../daemon/operator-actions.js';
import type { RunStore } from '../store/run-store.js';
import {
  configFromArgs,
  formatRelative,
  formatTime,
  printJson,
  runCommand,
  withStore,
  type GlobalArgs,
} from './common.js';
import { numberArgument } from './submit.js';

// `runwarden fail N [reason]`. Also the printing shared by the operator commands (abandon, retry, hold).

export interface OperatorArgs extends GlobalArgs {
  number?: string;
  reason?: string[];
}

export function operatorDeps(config: Config, store: RunStore): OperatorDeps {
  return { store, config, host: config.host, user: operatorUser(), random: Math.random, clock: Date.now };
}

/** `reason..` collects the words after N, so `fail 7 calibration missing` needs no quotes. */
export function reasonArgument(words: string[] | undefined): string | undefined {
  const text = (words ?? []).map(String).join(' ').trim();
  return text === '' ? undefined : text;
}

/** One line for people (warnings to stderr), or the whole result as JSON. */
export function printOperatorResult(result: OperatorResult, json: boolean | undefined): void {
  if (json) return printJson(result);
  for (const warning of result.warnings) process.stderr.write(`runwarden: warning: ${warning}\n`);
  const p = result.run.processing;
  const change = result.from === result.to ? result.to : `${result.from} → ${result.to}`;
  let line = `run ${result.number}: ${change}`;
  if (result.action === 'hold' || result.action === 'release') {
    line += `; tags: ${result.run.tags.length ? result.run.tags.join(', ') : '(none)'}`;
  } else if (p) {
    line += ` (${p.reason ?? 'no reason'}); failures ${p.n_failures}, attempt ${p.attempt}`;
    if (p.state === 'failed' && p.next_retry !== undefined) {
      const now = Date.now();
      const later = `at ${formatTime(p.next_retry)} (${formatRelative(p.next_retry, now)})`;
      line += `; eligible ${p.next_retry <= now ? 'now' : later}`;
    }
  }
  process.stdout.write(`${line}\n`);
}

export const failCommand: CommandModule<GlobalArgs, OperatorArgs> = {
  command: 'fail <number> [reason..]',
  describe:
    'fail a considering, busy or done run by hand: counts as a failure, retried later by the backoff formula',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number' })
      .positional('reason', { type: 'string', array: true, describe: 'why (stored as "failed by USER@HOST: …")' })
      .epilogue(
        'A busy run loses its lease: its owner kills the command within one check_interval and writes nothing ' +
          'more. n_failures grows by one and next_retry follows retry.*; the run stays failed even when this ' +
          'reaches retry.max_failures (the next automatic failure abandons it). Refused for pending, failed and ' +
          'abandoned runs.',
      )
      .example('$0 fail 1042 calibration was wrong', 'stop run 1042 now; it is retried after the backoff')
      .example('$0 fail 1042 --json', 'the result, with the run document, as JSON'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const result = await withStore(config, (store) =>
        failRunByOperator(operatorDeps(config, store), number, reasonArgument(args.reason)),
      );
      printOperatorResult(result, args.json);
    }),
};
