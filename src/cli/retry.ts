import type { Argv, CommandModule } from 'yargs';
import { retryRunByOperator } from '../daemon/operator-actions.js';
import { configFromArgs, runCommand, withStore, type GlobalArgs } from './common.js';
import { operatorDeps, printOperatorResult } from './fail.js';
import { numberArgument } from './submit.js';

interface RetryArgs extends GlobalArgs {
  number?: string;
  reset?: boolean;
}

export const retryCommand: CommandModule<GlobalArgs, RetryArgs> = {
  command: 'retry <number>',
  describe: 'make a failed, abandoned or done run eligible again at once',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number' })
      .option('reset', { type: 'boolean', describe: 'also set n_failures and n_interruptions to 0 (the attempt number keeps growing)' })
      .epilogue(
        'The run becomes failed with next_retry = now and reason "retry requested by USER@HOST"; the next free ' +
          'daemon claims it. Without --reset its failure count is kept, so an abandoned run at max_failures is ' +
          'abandoned again by its next failure. A hold tag is not removed (you are warned): use release. ' +
          'Refused for pending runs (claimed as soon as a daemon is free) and for considering/busy runs ' +
          '(use fail N first, or process N --force).',
      )
      .example('$0 retry 1042', 'process run 1042 again as soon as a daemon is free')
      .example('$0 retry 1042 --reset', 'the same, with its failure count back to 0'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const result = await withStore(config, (store) =>
        retryRunByOperator(operatorDeps(config, store), number, { reset: args.reset ?? false }),
      );
      printOperatorResult(result, args.json);
    }),
};
