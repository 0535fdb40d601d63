import { closeSync, constants as fsConstants, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/schema.js';
import { degradationOf } from '../policy/degradation.js';
import type { RunStore } from '../store/run-store.js';
import { DEFAULT_STAGE, type RunDoc } from '../store/types.js';
import { firstWaveAttemptLogDir, stageNamed, stagesOf } from '../policy/pipeline.js';
import { orderedStages } from './stage-choice.js';
import { lastOutputLine, type TopSnapshot } from './top-view.js';

// One reading of the store for `runwarden top`: hosts, counts per state, busy runs with the last line of
// their attempt's log, and the most recent failures.

/** How much of the end of an attempt log is read for its last line: a bounded read, whatever the log's size. */
export const LOG_TAIL_BYTES = 4096;

/** Failed and abandoned runs read per refresh; more than any terminal shows. */
const FAILURES_READ = 200;
const BUSY_READ = 1000;

/**
 * The last `maxBytes` of a file as text, or null when it cannot be read here (another host's run). The command
 * can write into its log directory: a FIFO or a symbolic link there is never opened in a blocking way nor
 * followed, and only a regular file is read.
 */
export function readLogTail(file: string, maxBytes = LOG_TAIL_BYTES): string | null {
  let fd: number;
  try {
    fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW);
  } catch {
    return null;
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) return null;
    const size = stat.size;
    const length = Math.min(size, maxBytes);
    const buffer = Buffer.alloc(length);
    const read = readSync(fd, buffer, 0, length, size - length);
    return buffer.subarray(0, read).toString('utf8');
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/**
 * `<log_dir>/<stage>/<number>/attempt-<k>.log` of the task's current attempt, as the supervisor writes it; for
 * `process`, the first wave's `<log_dir>/<number>/attempt-<k>.log` when only that one exists.
 */
export function attemptLogFile(logDir: string, run: RunDoc): string | null {
  const attempt = run.processing?.attempt;
  if (attempt === undefined) return null;
  const stage = run.stage ?? DEFAULT_STAGE;
  const name = `attempt-${attempt}.log`;
  const file = join(logDir, stage, String(run.number), name);
  if (stage !== DEFAULT_STAGE || existsSync(file)) return file;
  const firstWave = join(firstWaveAttemptLogDir(logDir, run.number), name);
  return existsSync(firstWave) ? firstWave : file;
}

/**
 * One reading for the view. With `config`, each busy run says what its attempt runs without (degradationOf
 * against the configured targets and resources).
 */
export async function readTopSnapshot(
  store: RunStore,
  logDir: string,
  now: () => number = Date.now,
  config?: Config,
): Promise<TopSnapshot> {
  const [hosts, counts, byStage, busyRuns, failed, abandoned] = await Promise.all([
    store.listHosts(),
    store.countRunsByState(),
    store.countTasksByStage(),
    store.listRuns({ state: 'busy', limit: BUSY_READ }),
    store.listRuns({ state: 'failed', limit: FAILURES_READ }),
    store.listRuns({ state: 'abandoned', limit: FAILURES_READ }),
  ]);
  const busy = busyRuns.map((run) => {
    const stageLogDir = (config && stageNamed(config, run.stage ?? DEFAULT_STAGE)?.log_dir) ?? logDir;
    const file = attemptLogFile(stageLogDir, run);
    const tail = file === null ? null : readLogTail(file);
    const degraded = config ? degradationOf(run, config)?.summary : undefined;
    return { run, lastOutput: tail === null ? null : lastOutputLine(tail), ...(degraded ? { degraded } : {}) };
  });
  const failures = [...failed, ...abandoned]
    .sort((a, b) => (b.processing?.time ?? 0) - (a.processing?.time ?? 0) || b.number - a.number)
    .slice(0, FAILURES_READ);
  const order = config ? stagesOf(config).map((stage) => stage.name) : [];
  const stages = orderedStages(Object.keys(byStage), order).map((stage) => ({ stage, counts: byStage[stage]! }));
  return { hosts, counts, stages, busy, failures, readAt: now() };
}
