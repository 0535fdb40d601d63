// Plain data the machines pass around. No effects here: the charts only carry these values between the
// actors that src/daemon provides.

/** Everything the supervisor needs to start one attempt's command; built by the run's preflight. */
export interface CommandPlan {
  number: number;
  /** The task's stage; absent: `process`. */
  stage?: string;
  token: string;
  attempt: number;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  logFile: string;
  outputDir: string;
  errorFile: string;
  targets: string[];
  resources: Record<string, number>;
  /** When the attempt became busy (store clock), for durations in run_events. */
  startedAt: number;
}

export interface SupervisorTiming {
  maxProcessingTimeMs: number;
  maxNoOutputTimeMs: number;
  signalEscalateMs: number;
}

/** How an attempt's command ended, as the supervisor saw it. */
export type CommandOutcome =
  | 'exited' // the command exited by itself (any code or signal)
  | 'timed_out' // max_processing_time passed; killed
  | 'stalled' // no output for max_no_output_time; killed
  | 'terminated' // stopped on request (lease lost, host stopping)
  | 'spawn_failed' // the command could not be started
  | 'unkillable'; // the group survived SIGKILL

export interface SupervisorResult {
  outcome: CommandOutcome;
  exitCode: number | null;
  signal: string | null;
  stderrTail: string;
  durationMs: number;
  pid?: number;
  pgid?: number;
  error?: string;
  /** Set with spawn_failed when the host, not the run, is at fault: what the host's check found. */
  hostFault?: string;
  /** The command was ended for a reason of the host, not its own (the lease guard): an interruption. */
  interruption?: string;
}

/** Why an attempt failed, as data; the effect that records it turns it into the stored reason. */
export interface AttemptFailure {
  /** `check`: the stage's check command failed (non-zero exit, timed out, stalled or not started). */
  kind: 'preflight' | 'exit' | 'timed_out' | 'stalled' | 'spawn' | 'output' | 'check';
  message: string;
  exitCode?: number;
  signal?: string;
  durationMs?: number;
  /** Set by the command through $RUNWARDEN_ERROR_FILE; the effect reads it. */
  errorFile?: string;
  /**
   * The attempt could not start for a reason of the host (what the host's check found: an executable missing,
   * an output or log directory not writable). An interruption, not the run's failure; the host counts these.
   */
  hostFault?: string;
  /**
   * The command was ended from outside for a reason of the host (`lease_guard`: this daemon stopped renewing the
   * lease, so its guard killed the command). An interruption judged against max_interruptions, never a failure.
   */
  interruption?: string;
}

/** How a run actor's life ended, reported to its host. */
export type RunSettlement =
  | 'done'
  | 'failed'
  | 'abandoned'
  | 'released'
  | 'lost' // lease taken away: wrote nothing more
  | 'unkillable'
  | 'error';

/** Result of a fenced write: false when the lease token no longer matched. */
export interface FencedWriteResult {
  ok: boolean;
}
