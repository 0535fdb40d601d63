import type { Argv, CommandModule } from 'yargs';
import { formatByteSize } from '../config/duration.js';
import type { Config } from '../config/schema.js';
import {
  configFromArgs,
  durationFlag,
  formatRelative,
  printJson,
  runCommand,
  table,
  withStore,
  type GlobalArgs,
} from './common.js';
import { formatHistory, summariseHistory } from './history.js';
import { printable } from '../policy/terminal-text.js';

interface StatusArgs extends GlobalArgs {
  history?: boolean;
  since?: string;
}

/** `status --history`: each host's monitor samples over the last `since` (DESIGN §3 monitor). */
async function printHistory(config: Config, args: StatusArgs): Promise<void> {
  const sinceMs = durationFlag(args.since ?? '1h', 'since', { ms: 60_000, why: 'samples are taken once a minute' });
  const nowMs = Date.now();
  const window = { sinceMs: nowMs - sinceMs, nowMs };
  const { samples, hosts, log } = await withStore(config, async (store) => ({
    samples: await store.listMonitor({ sinceMs: window.sinceMs }),
    hosts: await store.listHosts(),
    // Restarts without a stop are warnings in the operator log (newest first; a generous bound).
    log: await store.listLog({ minPriority: 2, limit: 20_000 }),
  }));
  const histories = summariseHistory(samples, window, hosts.map((h) => h.host), log);
  if (args.json) return printJson({ since: window.sinceMs, now: nowMs, hosts: histories, samples });
  process.stdout.write(`${formatHistory(histories, window)}\n`);
}

export const statusCommand: CommandModule<GlobalArgs, StatusArgs> = {
  command: 'status',
  describe: 'hosts and the number of runs in each state; --history: the last hour per host',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('history', {
        type: 'boolean',
        describe: "summarise each host's monitor samples (one per minute): states, slots, runs, disk, silences",
      })
      .option('since', {
        type: 'string',
        describe: 'with --history: how far back, as a duration ("1h", "90m", "7d"; samples are kept 7 days)',
        implies: 'history',
      })
      .example('$0 status', 'who is processing what')
      .example('$0 status --json', 'the same as JSON')
      .example('$0 status --history --since 6h', 'what each host did in the last 6 hours, and when it fell silent'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args);
      if (args.history) return printHistory(config, args);
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
              hosts.map((h) => {
                // A stopped or dead host runs nothing, whatever an older document still lists.
                const running = h.state === 'stopped' || h.state === 'dead' ? [] : h.running;
                return [
                  printable(h.host),
                  printable(h.state),
                  String(h.pid),
                  formatRelative(h.time, now),
                  `${running.length}/${h.slots}`,
                  running.join(',') || '-',
                  h.disk ? `${Math.round(h.disk.used_percent)}% used, ${formatByteSize(h.disk.free_bytes)} free` : '-',
                  printable(h.version),
                ];
              }),
            ),
      );
      // A paused host says why (a host fault: an unwritable directory, a missing executable).
      for (const h of hosts) {
        if (h.state === 'paused') out.push(`host ${printable(h.host)} paused: ${printable(h.paused_reason ?? '?')}`);
      }
      out.push('');
      const order = ['pending', 'considering', 'busy', 'done', 'failed', 'abandoned'] as const;
      out.push(table(['STATE', 'RUNS'], order.map((state) => [state, String(counts[state] ?? 0)])));
      process.stdout.write(`${out.join('\n')}\n`);
    }),
};
