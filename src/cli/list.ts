import type { Argv, CommandModule } from 'yargs';
import type { RunFilter } from '../store/run-store.js';
import { RUN_STATES, type RunDoc } from '../store/types.js';
import {
  configFromArgs,
  formatRelative,
  formatTime,
  integerFlag,
  printJson,
  runCommand,
  table,
  withStore,
  type GlobalArgs,
} from './common.js';
import { cellText, reasonLine, runStateLabel } from './run-view.js';
import { isSingleProcessRun } from './stage-choice.js';
import { printable } from '../policy/terminal-text.js';
import { DEFAULT_STAGE } from '../store/types.js';

interface ListArgs extends GlobalArgs {
  state?: string;
  host?: string;
  tag?: string;
  stage?: string;
  limit?: string;
}

export const listCommand: CommandModule<GlobalArgs, ListArgs> = {
  command: 'list',
  describe: 'list runs (one line per task of a pipeline), newest number first',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('state', {
        type: 'string',
        choices: ['pending', 'blocked', ...RUN_STATES],
        describe: 'only tasks in this state (blocked: waiting for an abandoned upstream stage to be retried)',
      })
      .option('stage', { type: 'string', describe: "only this stage's tasks" })
      .option('host', { type: 'string', describe: 'only runs last claimed by this host' })
      .option('tag', { type: 'string', describe: 'only runs with this tag (e.g. hold)' })
      .option('limit', { type: 'string', describe: 'at most this many runs (default 50)' })
      .example('$0 list --state failed', 'failed runs waiting for a retry')
      .example('$0 list --host daq01 --json', 'runs last handled by host daq01, as JSON')
      .example('$0 list --tag hold', 'runs held back from processing')
      .example('$0 list --stage compress --state blocked', 'compress tasks waiting for an abandoned stage above'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs({ ...args, host: undefined });
      const limit = integerFlag(args.limit, 'limit', { min: 1 }) ?? 50;
      const runs = await withStore(config, (store) =>
        store.listRuns({
          ...(args.state ? { state: args.state as RunFilter['state'] } : {}),
          ...(args.host ? { host: args.host } : {}),
          ...(args.tag !== undefined ? { tag: args.tag } : {}),
          ...(args.stage !== undefined ? { stage: args.stage } : {}),
          limit,
        }),
      );
      if (args.json) return printJson(runs);
      if (runs.length === 0) {
        process.stdout.write('no runs\n');
        return;
      }
      const now = Date.now();
      // A STAGE column as soon as one run is more than the first wave's one `process` task.
      const staged = runs.some((run) => !isSingleProcessRun(run));
      process.stdout.write(
        `${table(
          ['NUMBER', ...(staged ? ['STAGE'] : []), 'STATE', 'ATTEMPT', 'FAILURES', 'HOST', 'UPDATED', 'NEXT RETRY', 'NAME', 'REASON'],
          runs.map((run) => {
            const p = run.processing;
            return [
              String(run.number),
              ...(staged ? [printable(run.stage ?? DEFAULT_STAGE)] : []),
              runStateLabel(run, config),
              p ? String(p.attempt) : '-',
              p ? String(p.n_failures) : '-',
              p ? cellText(p.host, 24) : '-',
              p ? formatRelative(p.time, now) : formatTime(run.start),
              p?.state === 'failed' ? formatRelative(p.next_retry, now) : '-',
              cellText(run.name, 24),
              cellText(run.blocked ? `blocked by ${run.blocked.stage}: ${run.blocked.reason}` : reasonLine(p?.reason), 60),
            ];
          }),
        )}\n`,
      );
    }),
};
