import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { compileForBench, newBuildDir, repoRoot } from './lib/build.js';
import { describeCommit, describeMachine } from './lib/machine.js';
import { existingNotes, renderMarkdown, renderText, type Report } from './lib/report.js';
import { benchOptions, type BenchResult } from './lib/result.js';

// `npm run bench`: compiles the current source, runs every benchmark in its own process, prints the table and
// writes docs/performance.md. `--smoke` (or BENCH_SMOKE=1) runs tiny sizes in seconds to check that the
// scripts still work, and writes nothing unless `--write` is given. `--only throughput,latency` picks some;
// `--json` prints the report as JSON on stdout.

const BENCHMARKS = [
  { id: 'throughput', file: 'throughput.js', title: '1. Throughput' },
  { id: 'latency', file: 'latency.js', title: '2. Pickup latency' },
  { id: 'claim-cost', file: 'claim-cost.js', title: '3. Claim cost at scale' },
  { id: 'memory', file: 'memory.js', title: '4. Memory' },
  { id: 'recovery', file: 'recovery.js', title: '5. Own-host recovery' },
] as const;

function runBenchmark(
  build: string,
  file: string,
  smoke: boolean,
  resultFile: string,
): Promise<{ ok: boolean; stderr: string }> {
  return new Promise((resolve) => {
    const args = [join(build, 'bench', file), '--result', resultFile, ...(smoke ? ['--smoke'] : [])];
    const child = execFile(process.execPath, args, { maxBuffer: 16 << 20 }, (error, _stdout, stderr) => {
      resolve({ ok: !error, stderr });
    });
    child.stderr?.pipe(process.stderr);
  });
}

function failedResult(id: string, title: string, smoke: boolean, stderr: string): BenchResult {
  const tail = stderr.trim().split('\n').slice(-3).join(' ').slice(0, 400);
  return {
    id,
    title,
    figures: [{ name: 'the benchmark failed', value: null, unit: '', digits: 0 }],
    how: [],
    notes: [`failed: ${tail || 'no output'}`],
    elapsedMs: 0,
    smoke,
  };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { smoke } = benchOptions(argv);
  const write = !smoke || argv.includes('--write');
  const onlyAt = argv.indexOf('--only');
  const only = onlyAt >= 0 ? new Set((argv[onlyAt + 1] ?? '').split(',')) : undefined;
  const root = repoRoot();
  const t0 = performance.now();
  const machine = describeMachine();

  process.stderr.write('compiling src/, machines/ and bench/ for the benchmarks…\n');
  const build = newBuildDir(root);
  const scratch = mkdtempSync(join(os.tmpdir(), 'runwarden-bench-results-'));
  const results: BenchResult[] = [];
  try {
    const { warnings } = compileForBench(build, root);
    if (warnings) process.stderr.write(`tsc reported problems (emitted anyway):\n${warnings}\n`);
    for (const bench of BENCHMARKS) {
      if (only && !only.has(bench.id)) continue;
      process.stderr.write(`${bench.title}…\n`);
      const resultFile = join(scratch, `${bench.id}.json`);
      const { ok, stderr } = await runBenchmark(build, bench.file, smoke, resultFile);
      const result = ok
        ? (JSON.parse(readFileSync(resultFile, 'utf8')) as BenchResult)
        : failedResult(bench.id, bench.title, smoke, stderr);
      results.push(result);
      process.stderr.write(`${bench.title} took ${(result.elapsedMs / 1000).toFixed(1)} s\n`);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    rmSync(build, { recursive: true, force: true });
  }
  machine.loadAtEnd = os.loadavg()[0];
  const report: Report = {
    results,
    machine,
    commit: describeCommit(root),
    date: new Date(),
    elapsedMs: performance.now() - t0,
    smoke,
  };
  // With --json the report goes to stdout as JSON (for the smoke test) and the table to stderr.
  const json = argv.includes('--json');
  const say = (text: string) => (json ? process.stderr : process.stdout).write(text);
  say(`\n${renderText(report)}\n\n`);
  say(`${smoke ? 'smoke run' : 'run'} took ${(report.elapsedMs / 1000).toFixed(1)} s\n`);
  if (json) process.stdout.write(`${JSON.stringify(report)}\n`);
  if (write) {
    const file = join(root, 'docs', 'performance.md');
    writeFileSync(file, renderMarkdown(report, existingNotes(file)));
    say(`wrote ${file}\n`);
  }
  const failed = results.filter((r) => r.figures.some((f) => f.value === null && !f.target));
  process.exitCode = failed.length > 0 ? 1 : 0;
}

await main();
