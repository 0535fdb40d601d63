import type { Argv, CommandModule } from 'yargs';
import { formatByteSize } from '../config/duration.js';
import {
  configFromArgs,
  formatRelative,
  printJson,
  runCommand,
  table,
  withStore,
  type GlobalArgs,
} from './common.js';

export const statusCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'status',
  describe: 'hosts and the number of runs in each state',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs.example('$0 status', 'who is processing what').example('$0 status --json', 'the same as JSON'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args);
      const { hosts, counts } = await withStore(config, async (store) => ({
        hosts: await store.listHosts(),
        counts: await store.countRunsByState(),
      }));
      if (args.json) return printJson({ hosts, counts });
      const now = Date.now();
      const out: string[] = [];
      out.push(
        hosts.length === 0
          ? 'no hosts have registered yet'
          : table(
              ['HOST', 'STATE', 'PID', 'HEARTBEAT', 'SLOTS', 'RUNNING', 'DISK', 'VERSION'],
              hosts.map((h) => [
                h.host,
                h.state,
                String(h.pid),
                formatRelative(h.time, now),
                `${h.running.length}/${h.slots}`,
                h.running.join(',') || '-',
                h.disk ? `${Math.round(h.disk.used_percent)}% used, ${formatByteSize(h.disk.free_bytes)} free` : '-',
                h.version,
              ]),
            ),
      );
      out.push('');
      const order = ['pending', 'considering', 'busy', 'done', 'failed', 'abandoned'] as const;
      out.push(table(['STATE', 'RUNS'], order.map((state) => [state, String(counts[state] ?? 0)])));
      process.stdout.write(`${out.join('\n')}\n`);
    }),
};
