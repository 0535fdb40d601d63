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
import type { StateCounts, TaskCounts } from '../store/run-store.js';
import { DEFAULT_STAGE } from '../store/types.js';
import { stagesOf } from '../policy/pipeline.js';
import { orderedStages } from './stage-choice.js';

interface StatusArgs extends GlobalArgs {
  history?: boolean;
  since?: string;
}

const STATE_ORDER = ['pending', 'considering', 'busy', 'done', 'failed', 'abandoned'] as const;

/** True when the store holds a stage other than the first wave's `process`. */
function isStagedStore(stages: Record<string, TaskCounts>): boolean {
  return Object.keys(stages).some((stage) => stage !== DEFAULT_STAGE);
}

/**
 * Runs per state for the first wave's one `process` stage (as it always was); tasks per stage and state, with
 * `blocked`, as soon as the store holds a stage other than process.
 */
export function stageCountsTable(counts: StateCounts, stages: Record<string, TaskCounts>, order: readonly string[] = []): string {
  const names = orderedStages(Object.keys(stages), order);
  if (!isStagedStore(stages)) {
    return table(['STATE', 'RUNS'], STATE_ORDER.map((state) => [state, String(counts[state] ?? 0)]));
  }
  const states = [...STATE_ORDER, 'blocked'] as const;
  return table(
    ['STAGE', ...states.map((state) => state.toUpperCase())],
    names.map((stage) => [printable(stage), ...states.map((state) => String(stages[stage]?.[state] ?? 0))]),
  );
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
  describe: 'hosts and the number of runs (tasks per stage, with stages) in each state; --history: the last hour per host',
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
      const { hosts, counts, stages, live } = await withStore(config, async (store) => {
        const stages = await store.countTasksByStage();
        // With stages, each host's RUNNING names its tasks (`7/compress`): the host document holds only numbers.
        const live = isStagedStore(stages)
          ? [...(await store.listRuns({ state: 'considering' })), ...(await store.listRuns({ state: 'busy' }))]
          : [];
        return { hosts: await store.listHosts(), counts: await store.countRunsByState(), stages, live };
      });
      if (args.json) return printJson({ hosts, counts, stages });
      const now = Date.now();
      const tasksOn = (host: string): string[] =>
        live
          .filter((run) => run.processing?.host === host)
          .sort((a, b) => a.number - b.number)
          .map((run) => `${run.number}/${printable(run.stage ?? DEFAULT_STAGE)}`);
      const out: string[] = [];
      out.push(
        hosts.length === 0
          ? 'no hosts have registered yet'
          : table(
              ['HOST', 'STATE', 'PID', 'HEARTBEAT', 'SLOTS', 'RUNNING', 'DISK', 'VERSION'],
              hosts.map((h) => {
                // A stopped or dead host runs nothing, whatever an older document still lists.
                const running: Array<number | string> =
                  h.state === 'stopped' || h.state === 'dead' ? [] : live.length > 0 ? tasksOn(h.host) : h.running;
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
      out.push(stageCountsTable(counts, stages, stagesOf(config).map((stage) => stage.name)));
      process.stdout.write(`${out.join('\n')}\n`);
    }),
};
