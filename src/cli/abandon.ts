import type { Argv, CommandModule } from 'yargs';
import { abandonRunByOperator } from '../daemon/operator-actions.js';
import { configFromArgs, runCommand, withStore, type GlobalArgs } from './common.js';
import { operatorDeps, printOperatorResult, reasonArgument, type OperatorArgs } from './fail.js';
import { numberArgument } from './submit.js';

export const abandonCommand: CommandModule<GlobalArgs, OperatorArgs> = {
  command: 'abandon <number> [reason..]',
  describe: 'give a run up for good (terminal): no daemon claims it again unless you retry it',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional('number', { type: 'string', describe: 'run number' })
      .positional('reason', { type: 'string', array: true, describe: 'why (stored as "abandoned by USER@HOST: …")' })
      .epilogue(
        'Allowed in every state but abandoned, pending included; n_failures is kept. A busy run loses its ' +
          'lease: its owner kills the command within one check_interval and writes nothing more.',
      )
      .example('$0 abandon 1042 detector off', 'never process run 1042 (runwarden retry 1042 undoes it)')
      .example('$0 abandon 1042 --json', 'the result, with the run document, as JSON'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      const result = await withStore(config, (store) =>
        abandonRunByOperator(operatorDeps(config, store), number, reasonArgument(args.reason)),
      );
      printOperatorResult(result, args.json);
    }),
};
