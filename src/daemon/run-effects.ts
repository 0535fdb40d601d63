import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fromCallback, fromPromise, type EventObject } from 'xstate';
import type { ClaimedRun, PreflightOutput } from '../../machines/run.machine.js';
import type { AttemptFailure, CommandPlan, FencedWriteResult } from '../../machines/types.js';
import { resourcesForAttempt, targetsForAttempt } from '../policy/degradation.js';
import { commandEnvironment, outputDirName, substituteArgv } from '../policy/placeholders.js';
import { DAEMON_TAG_VARIABLE, ownDaemonTag } from '../process/orphan-scan.js';
import { abandonReason } from '../policy/failure-decision.js';
import { retryDelay } from '../policy/retry-delay.js';
import { validateRunDocument } from '../policy/run-validation.js';
import type { RunDoc } from '../store/types.js';
import type { DaemonContext } from './context.js';
import { formatDuration } from '../config/duration.js';

// The effects of the run machine: every store write is fenced by the attempt's lease token, and each
// returns `ok: false` instead of writing when the lease is gone.

/** Keeps a stored reason readable and bounded, whatever a command wrote. */
function boundedReason(text: string, max = 2000): string {
  const clean = text.replace(/\r/g, '').trim();
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}

/** A retry delay for people: whole seconds once it is a second or more. */
function roundedDelay(ms: number): string {
  return formatDuration(ms < 1000 ? Math.round(ms) : Math.round(ms / 1000) * 1000);
}

function docOf(run: ClaimedRun): RunDoc {
  return run.doc as RunDoc;
}

async function hasEntries(dir: string): Promise<boolean> {
  try {
    return (await readdir(dir)).length > 0;
  } catch {
    return false;
  }
}

async function readErrorFile(path: string | undefined): Promise<string | undefined> {
  if (!path) return undefined;
  try {
    const text = (await readFile(path, 'utf8')).trim();
    return text.length > 0 ? text : undefined;
  } catch {
    return undefined;
  }
}

/** The reason stored for a failed attempt: the command's own words when it wrote the error file. */
export async function failureReason(ctx: DaemonContext, failure: AttemptFailure): Promise<string> {
  const written = await readErrorFile(failure.errorFile);
  switch (failure.kind) {
    case 'timed_out':
      return boundedReason(
        `timed out after ${formatDuration(ctx.config.timeouts.max_processing_time)}` + (written ? `: ${written}` : ''),
      );
    case 'stalled':
      return boundedReason(
        `stalled: no output for ${formatDuration(ctx.config.timeouts.max_no_output_time)}` +
          (written ? `: ${written}` : ''),
      );
    case 'exit':
      return boundedReason(written ?? failure.message);
    case 'preflight':
      return boundedReason(`preflight failed: ${failure.message}`);
    case 'spawn':
      return boundedReason(`could not start the command: ${failure.message}`);
    case 'output':
      return boundedReason(failure.message);
  }
}

export function runEffects(ctx: DaemonContext) {
  const { config, store, logger, clock } = ctx;
  // Names this daemon (or foreground `process N`) in every command, so a successor finds orphans no record names.
  const daemonTag = ownDaemonTag(ctx.host, store.location);

  const preflight = fromPromise<PreflightOutput, { run: ClaimedRun }>(async ({ input }) => {
    const { run } = input;
    const doc = docOf(run);
    // A field decoding already reported is not reported twice.
    const decoded = doc.invalid ?? [];
    const reported = (problem: string) => decoded.some((d) => d.split(':')[0] === problem.split(':')[0]);
    const problems = [...decoded, ...validateRunDocument(doc).filter((p) => !reported(p))];
    if (problems.length > 0) throw new Error(`invalid run document: ${problems.join('; ')}`);
    if (doc.input !== undefined && doc.input !== '' && !existsSync(doc.input)) {
      throw new Error(`input does not exist: ${doc.input}`);
    }
    const targets = targetsForAttempt(
      config.process.targets,
      config.process.drop_targets_after,
      config.process.minimal_targets,
      run.nFailures,
    );
    const resources = resourcesForAttempt(config.process.resources, run.nFailures);
    const outputDir = join(config.process.output_root, outputDirName(run.number));
    const logDir = join(config.process.log_dir, String(run.number));
    const logFile = join(logDir, `attempt-${run.attempt}.log`);
    const errorFile = join(logDir, `attempt-${run.attempt}.error`);
    // The two directories are independent: prepare them side by side (each file call is a thread-pool round
    // trip, which counts in pickup latency). Asynchronous on purpose: a hung file system must not freeze the
    // daemon's heartbeats and signal handling.
    await Promise.all([
      (async () => {
        // A fresh directory needs no cleaning (mkdir says whether it created it): one round trip, not two.
        const created = await mkdir(outputDir, { recursive: true });
        if (created === undefined && config.process.clean_output) {
          await rm(outputDir, { recursive: true, force: true });
          await mkdir(outputDir, { recursive: true });
        }
      })(),
      (async () => {
        await mkdir(logDir, { recursive: true });
        await rm(errorFile, { force: true });
      })(),
    ]);
    const values = {
      number: run.number,
      name: doc.name,
      input: doc.input,
      output: outputDir,
      attempt: run.attempt,
      host: ctx.host,
      targets,
      resources,
      params: doc.params ?? {},
    };
    // Throws on an unknown placeholder or a missing params key: the attempt fails with that reason.
    const argv = substituteArgv(config.process.command, values);
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value;
    Object.assign(env, config.process.env, commandEnvironment(values, errorFile));
    env[DAEMON_TAG_VARIABLE] = daemonTag;
    const startedAt = clock();
    const ok = await store.markBusy(
      run.number,
      run.token,
      { started: startedAt, targets, resources },
      { detail: { argv, targets, resources } },
    );
    if (!ok) return { ok: false };
    logger.info(`run ${run.number} attempt ${run.attempt} started`, { number: run.number });
    const plan: CommandPlan = {
      number: run.number,
      token: run.token,
      attempt: run.attempt,
      argv,
      cwd: config.process.cwd,
      env,
      logFile,
      outputDir,
      errorFile,
      targets,
      resources,
      startedAt,
    };
    return { ok: true, plan };
  });

  const registerOutput = fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null }>(
    async ({ input }) => {
      const { run, plan } = input;
      if (!plan) throw new Error('internal: no command plan');
      if (config.process.require_output && !(await hasEntries(plan.outputDir))) {
        throw new Error(`output missing: the command exited 0 but ${plan.outputDir} is empty or absent`);
      }
      const now = clock();
      const ok = await store.finishRun(
        run.number,
        run.token,
        { location: plan.outputDir, host: ctx.host, attempt: run.attempt, at: now },
        { duration_ms: now - plan.startedAt },
      );
      if (ok) logger.info(`run ${run.number} done (attempt ${run.attempt})`, { number: run.number });
      return { ok };
    },
  );

  const recordFailure = fromPromise<FencedWriteResult, { run: ClaimedRun; failure: AttemptFailure }>(
    async ({ input }) => {
      const { run, failure } = input;
      const reason = await failureReason(ctx, failure);
      const nFailures = run.nFailures + 1;
      const delay = retryDelay(run.nFailures, config.retry, ctx.random);
      const ok = await store.failRun(
        run.number,
        run.token,
        {
          reason,
          n_failures: nFailures,
          next_retry: clock() + delay,
          ...(failure.exitCode !== undefined ? { exit_code: failure.exitCode } : {}),
          ...(failure.signal !== undefined ? { signal: failure.signal } : {}),
        },
        {
          ...(failure.durationMs !== undefined ? { duration_ms: failure.durationMs } : {}),
          detail: { kind: failure.kind, retry_in_ms: Math.round(delay) },
        },
      );
      if (ok) {
        const message = `run ${run.number} failed (attempt ${run.attempt}, failure ${nFailures}), retry in ${roundedDelay(delay)}: ${reason}`;
        // A first failure deserves an operator's eye; repeats are expected while it retries.
        if (nFailures === 1) logger.warn(message, { number: run.number });
        else logger.info(message, { number: run.number, operator: true });
      }
      return { ok };
    },
  );

  const recordAbandon = fromPromise<
    FencedWriteResult,
    { run: ClaimedRun; failure: AttemptFailure; why: string }
  >(async ({ input }) => {
    const { run, failure } = input;
    const last = await failureReason(ctx, failure);
    const nFailures = run.nFailures + 1;
    const reason = abandonReason(input.why, last);
    const ok = await store.abandonRun(
      run.number,
      run.token,
      {
        reason: boundedReason(reason),
        n_failures: nFailures,
        ...(failure.exitCode !== undefined ? { exit_code: failure.exitCode } : {}),
        ...(failure.signal !== undefined ? { signal: failure.signal } : {}),
      },
      {
        ...(failure.durationMs !== undefined ? { duration_ms: failure.durationMs } : {}),
        detail: { kind: failure.kind },
      },
    );
    if (ok) logger.error(`run ${run.number} abandoned: ${reason}`, { number: run.number });
    return { ok };
  });

  const releaseRun = fromPromise<FencedWriteResult, { run: ClaimedRun }>(async ({ input }) => {
    const ok = await store.releaseRun(input.run.number, input.run.token, 'host stopped');
    if (ok) logger.info(`run ${input.run.number} released: host stopped`, { number: input.run.number });
    return { ok };
  });

  // Refreshes the lease every check_interval and reports when someone else changed the token.
  const leaseKeeper = fromCallback<EventObject, { run: ClaimedRun }>(({ input, sendBack }) => {
    let inFlight = false;
    let lost = false;
    const timer = setInterval(() => {
      if (inFlight || lost) return;
      inFlight = true;
      store
        .heartbeatRun(input.run.number, input.run.token)
        .then((ok) => {
          if (!ok && !lost) {
            lost = true;
            logger.warn(`run ${input.run.number}: lease lost (changed by an operator or cleanup); stopping it`, {
              number: input.run.number,
            });
            sendBack({ type: 'LEASE_LOST' });
          }
        })
        .catch((error: unknown) => logger.error(`run ${input.run.number}: heartbeat failed: ${String(error)}`))
        .finally(() => {
          inFlight = false;
        });
    }, config.timeouts.check_interval);
    return () => clearInterval(timer);
  });

  return { preflight, registerOutput, recordFailure, recordAbandon, releaseRun, leaseKeeper };
}
