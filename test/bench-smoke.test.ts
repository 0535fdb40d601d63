import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/cli.js';

// The benchmarks' smoke mode: tiny sizes, real daemons. Only checks that every benchmark still runs and
// produces a finite figure; timing is never asserted here (that is what `npm run bench` reports).

const run = promisify(execFile);
const tsx = createRequire(import.meta.url).resolve('tsx/cli');

describe('npm run bench -- --smoke', () => {
  it('runs every benchmark and gets a finite figure from each', { timeout: 180_000 }, async () => {
    const { stdout } = await run(process.execPath, [tsx, join(repoRoot, 'bench', 'run-all.ts'), '--smoke', '--json'], {
      cwd: repoRoot,
      maxBuffer: 16 << 20,
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
