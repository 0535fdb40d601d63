import type { ClaimedRun, RunInput } from '../../machines/run.machine.js';
import type { SupervisorTiming } from '../../machines/types.js';
import type { Config, StageConfig } from '../config/schema.js';
import { stageNamed } from '../policy/pipeline.js';
import { DEFAULT_STAGE, type RunDoc, type TaskRef } from '../store/types.js';

// What a run actor is started with, from a task the store has just claimed: one place for the daemon's claims,
// a foreground `process N` and the crash tests, so they cannot drift apart.

/**
 * How the daemon names a task to the store: a bare number for the `process` stage (the contract reads it so,
 * and a first-wave store knows nothing else), `{number, stage}` for any other stage.
 */
export function taskRefOf(number: number, stage: string = DEFAULT_STAGE): TaskRef {
  return stage === DEFAULT_STAGE ? number : { number, stage };
}

/** "run 42" for the `process` stage, "run 42 stage compress" for another: how messages name a task. */
export function taskLabel(number: number, stage: string = DEFAULT_STAGE): string {
  return stage === DEFAULT_STAGE ? `run ${number}` : `run ${number} stage ${stage}`;
}

/** The claimed task as the run chart sees it; `doc` must carry the claim's processing document. */
export function claimedRunOf(doc: RunDoc): ClaimedRun {
  const p = doc.processing;
  if (!p) throw new Error(`internal: run ${doc.number} has no processing document; it was not claimed`);
  const stage = doc.stage ?? DEFAULT_STAGE;
  return {
    number: doc.number,
    ...(stage !== DEFAULT_STAGE ? { stage } : {}),
    token: p.token,
    attempt: p.attempt,
    nFailures: p.n_failures,
    nInterruptions: p.n_interruptions ?? 0,
    doc,
  };
}

/** The configured stage of a task; throws naming the stage when this configuration has no such stage. */
export function stageConfigFor(config: Config, stage: string): StageConfig {
  const found = stageNamed(config, stage);
  if (!found) {
    throw new Error(`stage "${stage}" is not in this configuration (its stages: ${stageNamesOf(config)})`);
  }
  return found;
}

function stageNamesOf(config: Config): string {
  return (config.stages ?? []).map((s) => s.name).join(', ') || DEFAULT_STAGE;
}

/** The supervisor's limits for one stage: its own processing and output timeouts, the daemon's escalation. */
export function stageTiming(config: Config, stage: StageConfig): SupervisorTiming {
  return {
    maxProcessingTimeMs: stage.timeouts.max_processing_time,
    maxNoOutputTimeMs: stage.timeouts.max_no_output_time,
    signalEscalateMs: config.timeouts.signal_escalate,
  };
}


/** The run actor's input for one claimed attempt under `config`: its stage's retry policy and limits. */
export function runInputFor(config: Config, doc: RunDoc): RunInput {
  const run = claimedRunOf(doc);
  const stage = stageNamed(config, doc.stage ?? DEFAULT_STAGE);
  // A task of a stage this config lacks gets the daemon's limits; its preflight fails it naming the stage.
  return {
    run,
    maxFailures: (stage?.retry ?? config.retry).max_failures,
    maxInterruptions: (stage?.retry ?? config.retry).max_interruptions,
    noRetryExitCodes: stage?.no_retry_exit_codes ?? config.process.no_retry_exit_codes,
    timing: stage
      ? stageTiming(config, stage)
      : {
          maxProcessingTimeMs: config.timeouts.max_processing_time,
          maxNoOutputTimeMs: config.timeouts.max_no_output_time,
          signalEscalateMs: config.timeouts.signal_escalate,
        },
  };
}
