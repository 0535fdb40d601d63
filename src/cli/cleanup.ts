import type { Argv, CommandModule } from 'yargs';
import { cleanupPass } from '../daemon/cleanup.js';
import {
  configFromArgs,
  formatTime,
  printJson,
  runCommand,
  table,
  truncate,
  withStore,
  type GlobalArgs,
} from './common.js';

export const cleanupCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'cleanup',
  describe: 'one cleanup pass: repair what crashed or vanished hosts left behind',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .epilogue(
        'Marks hosts silent for timeouts.presumed_dead as dead and forgets hosts dead for timeouts.forget_dead_hosts; fails runs considering longer than ' +
          'timeouts.max_considering_time or busy longer than timeouts.max_busy_time without a heartbeat (a ' +
          'counted failure; abandoned once retry.max_failures is reached); fails done runs without a registered ' +
          'output when process.require_output is on; abandons runs tagged "abandon"; repairs half-written ' +
          'processing documents (failed, due at once, the reason naming what is wrong). Every repair is one ' +
          'conditional write, so cleaning from several hosts at once is safe. Daemons run this every ' +
          'timeouts.cleanup_interval.',
      )
      .example('$0 cleanup', 'repair now instead of waiting for a daemon to do it')
      .example('$0 cleanup --json', 'what was repaired, as JSON'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args);
      const report = await withStore(config, (store) =>
        cleanupPass({ store, config, host: config.host, random: Math.random, clock: Date.now }),
      );
      if (args.json) return printJson(report);
      const out: string[] = [];
      for (const h of report.deadHosts) {
        out.push(`host ${h.host} presumed dead: silent since ${formatTime(h.silentSince)}`);
      }
      for (const h of report.forgottenHosts) {
        out.push(`host ${h.host} forgotten: dead and silent since ${formatTime(h.silentSince)} (timeouts.forget_dead_hosts)`);
      }
      if (report.repairs.length > 0) {
        out.push(
          table(
            ['NUMBER', 'REPAIR', 'FROM', 'TO', 'REASON'],
            report.repairs.map((r) => [String(r.number), r.kind, r.from, r.to, truncate(r.reason, 90)]),
          ),
        );
      }
      for (const l of report.lost) {
        out.push(`run ${l.number}: changed meanwhile (${l.kind}); left to whoever changed it`);
      }
      for (const e of report.errors) out.push(`run ${e.number}: could not repair (${e.kind}): ${e.error}`);
      if (out.length === 0) out.push('nothing to repair');
      process.stdout.write(`${out.join('\n')}\n`);
    }),
};
