import { join } from 'node:path';

// Where an attempt of a task writes its output (issue 14): `log_dir/{stage}/{number}/attempt-{k}.log` for every
// stage; attempts of the first wave (one stage, `process`) logged to `log_dir/{number}/attempt-{k}.log`, and the
// faces still find them there. Pure path arithmetic.

/** The directory of a task's attempt logs: `log_dir/{stage}/{number}`. */
export function attemptLogDir(logDir: string, stage: string, number: number): string {
  return join(logDir, stage, String(number));
}

/** The first wave's directory of a run's attempt logs (the `process` stage only): `log_dir/{number}`. */
export function firstWaveAttemptLogDir(logDir: string, number: number): string {
  return join(logDir, String(number));
}

/** The log file of attempt `attempt` in a directory of attempt logs. */
export function attemptLogName(attempt: number): string {
  return `attempt-${attempt}.log`;
}
