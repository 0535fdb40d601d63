import type { Argv, CommandModule } from 'yargs';
import { abandonRunByOperator } from '../daemon/operator-actions.js';
import { runCommand, type GlobalArgs } from './common.js';
import { runOperatorCommand, runsAndReason, type OperatorArgs } from './fail.js';
import { CONFIRM_ABOVE, selectionOptions } from './run-selection.js';
import { stageOption } from './stage-choice.js';

export const abandonCommand: CommandModule<GlobalArgs, OperatorArgs> = {
  command: 'abandon [runs] [reason..]',
  describe: 'give runs up for good (terminal): no daemon claims them again unless you retry them',
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(selectionOptions(yargs), 'abandon')
      .positional('runs', { type: 'string', describe: 'run number, or several: 7,8,9 or 100-120' })
      .positional('reason', { type: 'string', array: true, describe: 'why (stored as "abandoned by USER@HOST: …")' })
      .epilogue(
        'Allowed in every state but abandoned, pending included; n_failures is kept. A busy run loses its ' +
          'lease: its owner kills the command within one check_interval and writes nothing more. Several runs: ' +
          'each is abandoned on its own, fenced on the state it was selected in (a run that changed meanwhile is ' +
          `skipped); more than ${CONFIRM_ABOVE} need a yes (a prompt, or --yes). The tasks of later stages that ` +
          'need an abandoned one become blocked until it is retried.',
      )
      .example('$0 abandon 1042 detector off', 'never process run 1042 (runwarden retry 1042 undoes it)')
      .example('$0 abandon 1042 --stage upload', 'give up the upload task of run 1042 only')
      .example('$0 abandon 1042 --json', 'the result, with the run document, as JSON')
      .example('$0 abandon --state failed --tag calib-v1 --yes superseded', 'every failed run tagged calib-v1'),
  handler: (args) =>
    runCommand(async () => {
      const { words, reason } = runsAndReason(args, 'abandon');
      return runOperatorCommand(args, words, 'abandon <runs> [reason..]', 'abandon', (deps, task, selected) =>
        abandonRunByOperator(deps, task, reason, { ...(selected ? { selected } : {}) }),
      );
    }),
};
