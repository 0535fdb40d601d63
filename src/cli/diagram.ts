import type { Argv, CommandModule } from 'yargs';
import { machineCatalog } from '../diagram/machine-catalog.js';
import { toDot, toMermaid } from '../diagram/export.js';
import { printJson, runCommand, type GlobalArgs } from './common.js';

interface DiagramArgs extends GlobalArgs {
  machine?: string;
  format?: string;
}

export const diagramCommand: CommandModule<GlobalArgs, DiagramArgs> = {
  command: 'diagram',
  describe: 'print the state machines as Mermaid or Graphviz DOT, generated from their definitions',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('machine', { type: 'string', choices: ['run', 'host', 'supervisor'], describe: 'one machine (default all)' })
      .option('format', { type: 'string', choices: ['mermaid', 'dot'], default: 'mermaid', describe: 'output format' })
      .example('$0 diagram --machine run', 'the run machine in Mermaid')
      .example('$0 diagram --machine host --format dot | dot -Tsvg > host.svg', 'render with Graphviz'),
  handler: (args) =>
    runCommand(async () => {
      const render = args.format === 'dot' ? toDot : toMermaid;
      const chosen = machineCatalog().filter((entry) => !args.machine || entry.name === args.machine);
      if (args.json) {
        return printJson(chosen.map((entry) => ({ machine: entry.name, format: args.format, text: render(entry.machine) })));
      }
      const comment = args.format === 'dot' ? '//' : '%%';
      const parts = chosen.map((entry) =>
        chosen.length > 1 ? `${comment} ${entry.name} machine\n${render(entry.machine)}` : render(entry.machine),
      );
      process.stdout.write(`${parts.join('\n\n')}\n`);
    }),
};
