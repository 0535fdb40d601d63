import type { Argv, CommandModule } from 'yargs';
import { setHoldByOperator } from '../daemon/operator-actions.js';
import { configFromArgs, runCommand, withStore, type GlobalArgs } from './common.js';
import { operatorDeps, printOperatorResult } from './fail.js';
import { numberArgument } from './submit.js';

// `hold N` and `release N`: the hold tag keeps a run from being claimed (first claims and retries alike).

interface HoldArgs extends GlobalArgs {
  number?: string;
}

function holdOrRelease(hold: boolean): CommandModule<GlobalArgs, HoldArgs> {
  const name = hold ? 'hold' : 'release';
  return {
    command: `${name} <number>`,
    describe: hold
      ? 'tag a run "hold": no daemon claims it until it is released (a running attempt goes on)'
      : 'remove the "hold" tag: the run may be claimed again',
    builder: (yargs: Argv<GlobalArgs>) =>
      yargs
        .positional('number', { type: 'string', describe: 'run number' })
        .epilogue(
          hold
            ? 'Works in any state. A considering or busy run keeps running: hold only stops future claims ' +
                '(use fail or abandon to stop it).'
            : 'Works in any state; prints the tags left.',
        )
        .example(`$0 ${name} 1042`, hold ? 'keep run 1042 from being claimed' : 'let run 1042 be claimed again')
        .example(`$0 ${name} 1042 --json`, 'the result, with the run document, as JSON'),
    handler: (args) =>
      runCommand(async () => {
        const number = numberArgument(args.number);
        const config = configFromArgs(args);
        const result = await withStore(config, (store) => setHoldByOperator(operatorDeps(config, store), number, hold));
        printOperatorResult(result, args.json);
      }),
  };
}

export const holdCommand = holdOrRelease(true);
export const releaseCommand = holdOrRelease(false);
