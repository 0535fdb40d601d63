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

interface ListArgs extends GlobalArgs {
  state?: string;
  host?: string;
  tag?: string;
  limit?: string;
}

export const listCommand: CommandModule<GlobalArgs, ListArgs> = {
  command: 'list',
  describe: 'list runs, newest number first',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('state', { type: 'string', choices: ['pending', ...RUN_STATES], describe: 'only runs in this state' })
      .option('host', { type: 'string', describe: 'only runs last claimed by this host' })
      .option('tag', { type: 'string', describe: 'only runs with this tag (e.g. hold)' })
      .option('limit', { type: 'string', describe: 'at most this many runs (default 50)' })
      .example('$0 list --state failed', 'failed runs waiting for a retry')
      .example('$0 list --host daq01 --json', 'runs last handled by host daq01, as JSON')
      .example('$0 list --tag hold', 'runs held back from processing'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs({ ...args, host: undefined });
      const limit = integerFlag(args.limit, 'limit', { min: 1 }) ?? 50;
      const runs = await withStore(config, (store) =>
        store.listRuns({
          ...(args.state ? { state: args.state as RunFilter['state'] } : {}),
          ...(args.host ? { host: args.host } : {}),
          ...(args.tag !== undefined ? { tag: args.tag } : {}),
          limit,
        }),
      );
      if (args.json) return printJson(runs);
      if (runs.length === 0) {
        process.stdout.write('no runs\n');
        return;
      }
      const now = Date.now();
      process.stdout.write(
        `${table(
          ['NUMBER', 'STATE', 'ATTEMPT', 'FAILURES', 'HOST', 'UPDATED', 'NEXT RETRY', 'NAME', 'REASON'],
          runs.map((run) => {
            const p = run.processing;
            return [
              String(run.number),
              runStateLabel(run, config),
              p ? String(p.attempt) : '-',
              p ? String(p.n_failures) : '-',
              p ? cellText(p.host, 24) : '-',
              p ? formatRelative(p.time, now) : formatTime(run.start),
              p?.state === 'failed' ? formatRelative(p.next_retry, now) : '-',
              cellText(run.name, 24),
              cellText(reasonLine(p?.reason), 60),
            ];
          }),
        )}\n`,
      );
    }),
};
