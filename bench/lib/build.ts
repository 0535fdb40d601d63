import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

// Benchmarks measure compiled JavaScript run by plain node, as an operator runs `node dist/src/cli/main.js`:
// no tsx loader in the measured processes. The current source (src, machines, bench) is compiled into a
// directory of this run's own, so a stale dist/ is never what is measured, `npm run build` is not disturbed
// and two runs at once (a bench and the smoke test) do not trip over each other. It sits under
// node_modules/ so that the compiled files resolve the project's dependencies.

const CACHE = join('node_modules', '.cache', 'runwarden-bench');
const here = fileURLToPath(import.meta.url);
const marker = `${sep}${CACHE}${sep}`;

/** The repository root, whether this file runs as bench/lib/build.ts or from a compiled copy. */
export function repoRoot(): string {
  const at = here.indexOf(marker);
  return at >= 0 ? here.slice(0, at) : resolve(dirname(here), '..', '..');
}

/** A fresh build directory name for this process. */
export function newBuildDir(root: string = repoRoot()): string {
  return join(root, CACHE, `build-${process.pid}`);
}

/**
 * Compiles src/, machines/ and bench/ with the project's tsc into `out`. Type errors elsewhere in a tree under
 * edit do not stop the emit; they are returned and the benchmark goes on.
 */
export function compileForBench(out: string, root: string = repoRoot()): { warnings: string } {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const tsconfig = join(out, 'tsconfig.json');
  writeFileSync(
    tsconfig,
    JSON.stringify({
      extends: join(root, 'tsconfig.json'),
      compilerOptions: { rootDir: root, outDir: out, sourceMap: false, noEmit: false },
      include: ['src', 'machines', 'bench'].map((dir) => join(root, dir)),
      exclude: [join(root, '**', '*.test.ts')],
    }),
  );
  let warnings = '';
  try {
    execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', tsconfig], { encoding: 'utf8', stdio: 'pipe' });
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    warnings = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim() || e.message;
  }
  if (!existsSync(join(out, 'src', 'cli', 'main.js'))) {
    throw new Error(`compiling for the benchmarks failed:\n${warnings}`);
  }
  // The compiled files are ES modules; below node_modules/ node looks no further up for "type".
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string };
  writeFileSync(join(out, 'package.json'), JSON.stringify({ name: pkg.name, version: pkg.version, type: 'module' }));
  return { warnings };
}

let ownBuild: string | undefined;

/**
 * The compiled tree the benchmarks use: the one this file belongs to when it runs compiled (under run-all),
 * otherwise (a benchmark started on its own through tsx) one compiled now and removed at exit.
 */
export function benchBuild(): string {
  const at = here.indexOf(marker);
  if (at >= 0) {
    const rest = here.slice(at + marker.length).split(sep);
    return join(here.slice(0, at), CACHE, rest[0]);
  }
  if (!ownBuild) {
    const out = newBuildDir();
    const { warnings } = compileForBench(out);
    if (warnings) process.stderr.write(`tsc reported problems (emitted anyway):\n${warnings}\n`);
    process.on('exit', () => rmSync(out, { recursive: true, force: true }));
    ownBuild = out;
  }
  return ownBuild;
}

/** The compiled CLI entry point, for daemons started as child processes. */
export function cliMain(): string {
  return join(benchBuild(), 'src', 'cli', 'main.js');
}

/** A compiled file of bench/, e.g. `lib/bare-loop.js`. */
export function compiledBench(relative: string): string {
  return join(benchBuild(), 'bench', relative);
}
