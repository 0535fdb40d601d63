import type { Argv, CommandModule } from 'yargs';
import { setHoldByOperator } from '../daemon/operator-actions.js';
import { runCommand, type GlobalArgs } from './common.js';
import { runOperatorCommand } from './fail.js';
import { CONFIRM_ABOVE, selectionOptions, type SelectionArgs } from './run-selection.js';
import { stageOption, type StageArgs } from './stage-choice.js';

// `hold N` and `release N`: the hold tag keeps a run from being claimed (first claims and retries alike);
// with --stage S the tag `hold:S` holds only that stage's task.

interface HoldArgs extends SelectionArgs, StageArgs {
  runs?: string[];
}

function holdOrRelease(hold: boolean): CommandModule<GlobalArgs, HoldArgs> {
  const name = hold ? 'hold' : 'release';
  return {
    command: `${name} [runs..]`,
    describe: hold
      ? 'tag runs "hold": no daemon claims them until they are released (a running attempt goes on)'
      : 'remove the "hold" tag: the runs may be claimed again',
    builder: (yargs: Argv<GlobalArgs>) =>
      stageOption(selectionOptions(yargs), hold ? 'hold (tag hold:STAGE)' : 'release (tag hold:STAGE)')
        .positional('runs', { type: 'string', array: true, describe: 'run numbers: 7 8 9, 7,8,9 or 100-120' })
        .epilogue(
          (hold
            ? 'Works in any state. A considering or busy run keeps running: hold only stops future claims ' +
              '(use fail or abandon to stop it).'
            : 'Works in any state; prints the tags left.') +
            ` Several runs: one line each and a count; more than ${CONFIRM_ABOVE} need a yes (a prompt, or --yes).`,
        )
        .example(`$0 ${name} 1042`, hold ? 'keep run 1042 from being claimed' : 'let run 1042 be claimed again')
        .example(`$0 ${name} 1042 --stage upload`, hold ? 'hold only its upload task (tag hold:upload)' : 'release only its upload task')
        .example(`$0 ${name} 1042 --json`, 'the result, with the run document, as JSON')
        .example(
          hold ? `$0 hold --state pending --tag calib-v1 --yes` : `$0 release 1040-1049 --yes`,
          hold ? 'keep every pending run tagged calib-v1 waiting' : 'release ten runs',
        ),
    handler: (args) =>
      runCommand(async () =>
        runOperatorCommand(
          args,
          (args.runs ?? []).map(String),
          `${name} <runs..>`,
          name,
          (deps, task) => setHoldByOperator(deps, task, hold),
          { wholeRun: true },
        ),
      ),
  };
}

export const holdCommand = holdOrRelease(true);
export const releaseCommand = holdOrRelease(false);
