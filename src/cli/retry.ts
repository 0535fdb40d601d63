import type { Argv, CommandModule } from 'yargs';
import { retryRunByOperator } from '../daemon/operator-actions.js';
import { runCommand, type GlobalArgs } from './common.js';
import { runOperatorCommand } from './fail.js';
import { CONFIRM_ABOVE, selectionOptions, type SelectionArgs } from './run-selection.js';
import { stageOption, type StageArgs } from './stage-choice.js';

interface RetryArgs extends SelectionArgs, StageArgs {
  runs?: string[];
  reset?: boolean;
}

export const retryCommand: CommandModule<GlobalArgs, RetryArgs> = {
  command: 'retry [runs..]',
  describe: 'make failed, abandoned or done runs eligible again at once',
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(selectionOptions(yargs), 'retry')
      .positional('runs', { type: 'string', array: true, describe: 'run numbers: 7 8 9, 7,8,9 or 100-120' })
      .option('reset', { type: 'boolean', describe: 'also set n_failures and n_interruptions to 0 (the attempt number keeps growing)' })
      .epilogue(
        'The run becomes failed with next_retry = now and reason "retry requested by USER@HOST"; the next free ' +
          'daemon claims it. Without --reset its failure count is kept, so an abandoned run at max_failures is ' +
          'abandoned again by its next failure. A hold tag is not removed (you are warned): use release. ' +
          'Refused for pending runs (claimed as soon as a daemon is free) and for considering/busy runs ' +
          '(use fail N first, or process N --force). Several runs: each is retried on its own, fenced on the ' +
          `state it was selected in (a run that changed meanwhile is skipped); more than ${CONFIRM_ABOVE} need a ` +
          'yes (a prompt, or --yes). Retrying an abandoned task unblocks the tasks of later stages it blocked.',
      )
      .example('$0 retry 1042', 'process run 1042 again as soon as a daemon is free')
      .example('$0 retry 1042 --stage process', 'retry its process task; the stages below it are unblocked')
      .example('$0 retry 1042 --reset', 'the same, with its failure count back to 0')
      .example('$0 retry --state abandoned --reset --yes', 'every abandoned run, counts back to 0'),
  handler: (args) =>
    runCommand(async () =>
      runOperatorCommand(args, (args.runs ?? []).map(String), 'retry <runs..>', 'retry', (deps, task, selected) =>
        retryRunByOperator(deps, task, { reset: args.reset ?? false, ...(selected ? { selected } : {}) }),
      ),
    ),
};
