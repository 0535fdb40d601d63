#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { globalOptions } from './common.js';
import { abandonCommand } from './abandon.js';
import { cleanupCommand } from './cleanup.js';
import { daemonCommand } from './daemon.js';
import { demoCommand } from './demo.js';
import { diagramCommand } from './diagram.js';
import { failCommand } from './fail.js';
import { holdCommand, releaseCommand } from './hold.js';
import { inspectCommand } from './inspect.js';
import { listCommand } from './list.js';
import { logCommand } from './log.js';
import { logsCommand } from './logs.js';
import { processCommand } from './process.js';
import { retryCommand } from './retry.js';
import { showCommand } from './show.js';
import { statusCommand } from './status.js';
import { submitCommand } from './submit.js';
import { topCommand } from './top.js';
import { VERSION } from '../version.js';
import { exitCodeOf } from '../errors.js';

// runwarden's command line. Each command lives in its own file; this one only assembles them and
// makes every usage error exit 2 with the problem named (DESIGN §7).

export async function main(argv: string[]): Promise<void> {
  const parser = globalOptions(yargs(argv))
    .scriptName('runwarden')
    .usage('$0 <command> [options]\n\nClaims runs from a runs database and processes them under supervision.')
    .command(daemonCommand)
    .command(submitCommand)
    .command(listCommand)
    .command(statusCommand)
    .command(topCommand)
    .command(showCommand)
    .command(logsCommand)
    .command(logCommand)
    .command(failCommand)
    .command(abandonCommand)
    .command(retryCommand)
    .command(holdCommand)
    .command(releaseCommand)
    .command(processCommand)
    .command(cleanupCommand)
    .command(diagramCommand)
    .command(inspectCommand)
    .command(demoCommand)
    .demandCommand(1, 'name a command; see runwarden --help')
    .strict()
    .recommendCommands()
    .version(VERSION)
    .alias('h', 'help')
    .epilogue('Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.')
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((message, error, instance) => {
      if (error) throw error;
      // yargs does not say which argument is missing: its usage line for the command does.
      if (/^Not enough non-option arguments/.test(message)) instance.showHelp();
      process.stderr.write(`runwarden: ${message}\nSee runwarden --help.\n`);
      process.exit(2);
    });
  await parser.parseAsync();
}

main(hideBin(process.argv)).catch((error: unknown) => {
  process.stderr.write(`runwarden: ${error instanceof Error ? error.message : String(error)}\n`);
  // A UsageError thrown by a yargs check() arrives here: still exit 2.
  process.exitCode = exitCodeOf(error);
});
