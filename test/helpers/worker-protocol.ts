import fs from 'node:fs';

// The child side of the tsx workers (see tsx-worker.ts): positional arguments, then "ready" on stdout and a wait
// for the parent's go file, so that several workers start their race at the same moment.

/** The worker's positional arguments, one per name; a missing one prints the usage and exits 2. */
export function workerArgs<const N extends readonly string[]>(worker: string, names: N): { [K in keyof N]: string } {
  const args = process.argv.slice(2);
  if (names.some((_, i) => !args[i])) {
    console.error(`usage: ${worker} ${names.map((name) => `<${name}>`).join(' ')}`);
    process.exit(2);
  }
  return args.slice(0, names.length) as { [K in keyof N]: string };
}

/** Prints "ready", then waits for `goFile` to exist; exits 3 if it has not appeared within 20 s. */
export async function readyThenAwaitGo(goFile: string): Promise<void> {
  process.stdout.write('ready\n');
  const deadline = Date.now() + 20_000;
  while (!fs.existsSync(goFile)) {
    if (Date.now() > deadline) {
      console.error('no go file');
      process.exit(3);
    }
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
