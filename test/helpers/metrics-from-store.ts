import type { RunStore } from '../../src/store/run-store.js';
import type { RunEvent } from '../../src/store/types.js';
import { samplesOf, type Exposition } from './prometheus-text.js';

// What a daemon's counters must say, worked out independently from the store's run_events (the record the
// effects write), so a test compares the metrics with the truth rather than with themselves.

export interface ExpectedCounters {
  claims: number;
  failures: Record<string, number>;
  abandoned: Record<string, number>;
  /** Attempts whose command ran, by how it ended (the histogram's outcome label). */
  attempts: Record<string, number>;
}

function bump(into: Record<string, number>, key: string): void {
  into[key] = (into[key] ?? 0) + 1;
}

/** How the command of an attempt that left busy ended, read from the event that ended it. */
function commandOutcome(event: RunEvent): string | undefined {
  if (event.to === 'done') return 'success';
  const kind = event.detail?.kind;
  if (typeof kind !== 'string') return event.reason === 'host stopped' ? 'terminated' : undefined;
  if (kind === 'output') return 'success'; // exit 0, but nothing in the output directory
  return kind;
}

export async function countersFromStore(store: RunStore, host: string): Promise<ExpectedCounters> {
  const expected: ExpectedCounters = { claims: 0, failures: {}, abandoned: {}, attempts: {} };
  // listRuns gives one view per task; each run's events (every stage's) are read once
  for (const number of new Set((await store.listRuns()).map((run) => run.number))) {
    for (const event of await store.listRunEvents(number)) {
      if (event.host !== host) continue;
      if (event.to === 'considering') expected.claims += 1;
      const kind = event.detail?.kind;
      if ((event.to === 'failed' || event.to === 'abandoned') && typeof kind === 'string') {
        // an interruption (a host fault) is not a failure; a run it abandons is still abandoned
        if (event.detail?.interruption === undefined) bump(expected.failures, kind);
        if (event.to === 'abandoned') bump(expected.abandoned, kind);
      }
      if (event.from === 'busy') bump(expected.attempts, commandOutcome(event) ?? `unexplained: ${event.reason}`);
    }
  }
  return expected;
}

/** The same figures as the exposition shows them, summed over stages; zero-valued series are left out, as in the store's. */
export function countersFromMetrics(metrics: Exposition): ExpectedCounters {
  const byLabel = (name: string, label: string) => {
    const out: Record<string, number> = {};
    for (const sample of samplesOf(metrics, name)) {
      const key = sample.labels[label] ?? '?';
      if (sample.value !== 0) out[key] = (out[key] ?? 0) + sample.value;
    }
    return out;
  };
  const claims = samplesOf(metrics, 'runwarden_claims_total');
  return {
    claims: claims.length > 0 ? claims.reduce((sum, s) => sum + s.value, 0) : Number.NaN,
    failures: byLabel('runwarden_failures_total', 'kind'),
    abandoned: byLabel('runwarden_runs_abandoned_total', 'kind'),
    attempts: byLabel('runwarden_attempt_duration_seconds_count', 'outcome'),
  };
}
