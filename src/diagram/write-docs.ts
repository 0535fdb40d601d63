// `npm run diagrams`: writes docs/machines.md from the machines (see machine-catalog.ts).
// `--check` writes nothing and exits 1 when the committed file is stale.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderMachinesDoc } from './docs.js';
import { machineCatalog } from './machine-catalog.js';

const MACHINES_DOC_PATH = fileURLToPath(new URL('../../docs/machines.md', import.meta.url));

function main(argv: string[]): number {
  const content = renderMachinesDoc(machineCatalog());
  const current = existsSync(MACHINES_DOC_PATH)
    ? readFileSync(MACHINES_DOC_PATH, 'utf8').replace(/\r\n/g, '\n')
    : undefined;
  if (argv.includes('--check')) {
    if (current === content) {
      console.log(`${MACHINES_DOC_PATH} is up to date`);
      return 0;
    }
    console.error('docs/machines.md is stale: run npm run diagrams');
    return 1;
  }
  if (current === content) {
    console.log(`${MACHINES_DOC_PATH} unchanged`);
    return 0;
  }
  mkdirSync(dirname(MACHINES_DOC_PATH), { recursive: true });
  writeFileSync(MACHINES_DOC_PATH, content);
  console.log(`wrote ${MACHINES_DOC_PATH}`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
