import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/cli.js';

// The benchmarks' smoke mode: tiny sizes, real daemons. Only checks that every benchmark still runs and
// produces a finite figure; timing is never asserted here (that is what `npm run bench` reports).

const tsx = createRequire(import.meta.url).resolve('tsx/cli');

// The benchmarks start daemons and commands of their own: they run in a process group of their own, and the
// whole group is killed after the test, so a test that fails or times out leaves none of them behind.
let child: ChildProcess | undefined;

afterEach(() => {
  if (child?.pid !== undefined) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // the group is gone already
    }
  }
  child = undefined;
});

function run(file: string, args: string[], options: { cwd: string }): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => {
    const started = spawn(file, args, { cwd: options.cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    child = started;
    let stdout = '';
    let stderr = '';
    started.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    started.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    started.on('error', reject);
    started.on('close', (code, signal) => {
      if (code === 0) resolve({ stdout });
      else reject(new Error(`bench exited with ${code ?? signal}: ${stderr.slice(-2000)}`));
    });
  });
}

describe('npm run bench -- --smoke', () => {
  it('runs every benchmark and gets a finite figure from each', { timeout: 180_000 }, async () => {
    const { stdout } = await run(process.execPath, [tsx, join(repoRoot, 'bench', 'run-all.ts'), '--smoke', '--json'], {
      cwd: repoRoot,
    });
    const results = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
      results: { title: string; figures: { name: string; value: number | null }[]; notes: string[] }[];
    };
    expect(results.results.map((r) => r.title)).toEqual([
      '1. Throughput',
      '2. Pickup latency',
      '3. Claim cost at scale',
      '4. Memory',
      '5. Own-host recovery',
    ]);
    for (const result of results.results) {
      expect(result.figures.length, result.title).toBeGreaterThan(0);
      for (const figure of result.figures) {
        const what = `${result.title}: ${figure.name} (${result.notes.join('; ')})`;
        expect(Number.isFinite(figure.value), what).toBe(true);
      }
    }
  });
});
