import type { ClaimedRun, RunInput } from '../../machines/run.machine.js';
import type { Config } from '../config/schema.js';
import type { RunDoc } from '../store/types.js';
import { supervisorTiming } from './context.js';

// What a run actor is started with, from a run the store has just claimed: one place for the daemon's claims,
// a foreground `process N` and the crash tests, so they cannot drift apart.

/** The claimed run as the run chart sees it; `doc` must carry the claim's processing document. */
export function claimedRunOf(doc: RunDoc): ClaimedRun {
  const p = doc.processing;
  if (!p) throw new Error(`internal: run ${doc.number} has no processing document; it was not claimed`);
  return {
    number: doc.number,
    token: p.token,
    attempt: p.attempt,
    nFailures: p.n_failures,
    nInterruptions: p.n_interruptions ?? 0,
    doc,
  };
}

/** The run actor's input for one claimed attempt under `config`. */
export function runInputFor(config: Config, doc: RunDoc): RunInput {
  return {
    run: claimedRunOf(doc),
    maxFailures: config.retry.max_failures,
    maxInterruptions: config.retry.max_interruptions,
    noRetryExitCodes: config.process.no_retry_exit_codes,
    timing: supervisorTiming(config),
  };
}
