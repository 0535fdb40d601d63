import { realpathSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// What every benchmark hands back to run-all: its figures (each beside its target, if it has one), how it
// measured them, and what it noticed. A figure that could not be measured is null, never a made-up number.

export interface Target {
  op: '>=' | '<=';
  limit: number;
  /** As the issue words it, e.g. "≥ 0.9 × bare loop". */
  text: string;
}

export interface Figure {
  name: string;
  value: number | null;
  unit: string;
  digits: number;
  target?: Target;
  /** Shown beside the figure, e.g. the raw samples behind a median. */
  detail?: string;
}

export interface BenchResult {
  id: string;
  title: string;
  figures: Figure[];
  /** "How measured", one paragraph per entry. */
  how: string[];
  /** Observations of this run (timeouts, leftovers, anomalies). */
  notes: string[];
  elapsedMs: number;
  smoke: boolean;
}

export interface BenchOptions {
  smoke: boolean;
}

export function benchOptions(argv: readonly string[] = process.argv.slice(2)): BenchOptions {
  return { smoke: argv.includes('--smoke') || process.env.BENCH_SMOKE === '1' };
}

export function isMet(figure: Figure): boolean | undefined {
  if (!figure.target) return undefined;
  if (figure.value === null || !Number.isFinite(figure.value)) return false;
  return figure.target.op === '>=' ? figure.value >= figure.target.limit : figure.value <= figure.target.limit;
}

export function formatValue(figure: Figure): string {
  if (figure.value === null || !Number.isFinite(figure.value)) return 'not measured';
  const number = figure.value.toFixed(figure.digits);
  return figure.unit ? `${number} ${figure.unit}` : number;
}

/** True when `moduleUrl` is the script node was started with (so each benchmark also runs on its own). */
export function isEntryPoint(moduleUrl: string): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(resolve(entry)) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

/**
 * Runs one benchmark as a program: `--smoke` for tiny sizes, `--result FILE` to write its JSON for run-all
 * (otherwise the figures are printed). Exits explicitly so no stray handle keeps a finished benchmark alive.
 */
export async function runAsProgram(run: (options: BenchOptions) => Promise<BenchResult>): Promise<void> {
  const argv = process.argv.slice(2);
  const resultAt = argv.indexOf('--result');
  const resultFile = resultAt >= 0 ? argv[resultAt + 1] : undefined;
  try {
    const result = await run(benchOptions(argv));
    if (resultFile) writeFileSync(resultFile, JSON.stringify(result, null, 2));
    else {
      process.stdout.write(`${result.title} (${(result.elapsedMs / 1000).toFixed(1)} s)\n`);
      for (const figure of result.figures) {
        const met = isMet(figure);
        const verdict = met === undefined ? '' : met ? '  met' : '  MISSED';
        const target = figure.target ? `  target ${figure.target.text}` : '';
        process.stdout.write(`  ${figure.name}: ${formatValue(figure)}${target}${verdict}\n`);
        if (figure.detail) process.stdout.write(`      ${figure.detail}\n`);
      }
      for (const note of result.notes) process.stdout.write(`  note: ${note}\n`);
    }
    process.exit(0);
  } catch (error) {
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`benchmark failed: ${text}\n`);
    process.exit(1);
  }
}
