import { constants as fsConstants, existsSync } from 'node:fs';
import { mkdir, open, opendir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fromCallback, fromPromise, type EventObject } from 'xstate';
import type { ClaimedRun, PreflightOutput } from '../../machines/run.machine.js';
import type { AttemptFailure, CommandPlan, FencedWriteResult } from '../../machines/types.js';
import { resourcesForAttempt, targetsForAttempt } from '../policy/degradation.js';
import { commandEnvironment, substituteArgv, type PlaceholderValues } from '../policy/placeholders.js';
import { DAEMON_TAG_VARIABLE, ownDaemonTag } from '../process/orphan-scan.js';
import { abandonReason } from '../policy/failure-decision.js';
import { HostFaultError, hostFaultBehind } from './host-check.js';
import { retryDelay } from '../policy/retry-delay.js';
import { validateRunDocument } from '../policy/run-validation.js';
import { printableLines } from '../policy/terminal-text.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_STAGE, type DrainingAttempt, type RunDoc, type TaskRef } from '../store/types.js';
import type { StageConfig } from '../config/schema.js';
import { stageOfRun } from '../../machines/run.machine.js';
import { stageConfigFor, taskLabel, taskRefOf } from './run-input.js';
import { attemptLogDir, stageNamed, stagesOf, taskOutputDir, upstreamOutputs } from '../policy/pipeline.js';
import { leaseClock } from './command-leases.js';
import type { DaemonContext } from './context.js';
import { formatDuration } from '../config/duration.js';
import { leaseHoldLimitMs } from '../policy/lease-limits.js';
import { killProcessGroup } from '../process/kill-group.js';
import { isStoreContention } from '../store/contention.js';

// The effects of the run machine: every store write is fenced by the attempt's lease token, and each
// returns `ok: false` instead of writing when the lease is gone.

/**
 * Keeps a stored reason readable, safe for a terminal and bounded, whatever a command wrote: escape sequences
 * and control characters are stripped (newlines kept), so `show`, `top` and the operator log never replay them.
 */
function boundedReason(text: string, max = 2000): string {
  const clean = printableLines(text);
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}

/** A retry delay for people: whole seconds once it is a second or more. */
function roundedDelay(ms: number): string {
  return formatDuration(ms < 1000 ? Math.round(ms) : Math.round(ms / 1000) * 1000);
}

function docOf(run: ClaimedRun): RunDoc {
  return run.doc as RunDoc;
}

/** The task as the store names it. */
function refOf(run: ClaimedRun): TaskRef {
  return taskRefOf(run.number, stageOfRun(run));
}

/** "run 42" / "run 42 stage compress". */
function labelOf(run: ClaimedRun): string {
  return taskLabel(run.number, stageOfRun(run));
}



/** True when `dir` has at least one entry; reads one entry, not the whole listing (it may hold 100,000 files). */
async function hasEntries(dir: string): Promise<boolean> {
  try {
    const handle = await opendir(dir, { bufferSize: 1 });
    try {
      return (await handle.read()) !== null;
    } finally {
      await handle.close().catch(() => undefined);
    }
  } catch {
    return false;
  }
}

/** Bytes of the error file read: a reason is one line, and a command must not make the daemon read gigabytes. */
export const ERROR_FILE_MAX_BYTES = 64 * 1024;

/**
 * The command's own failure reason from its error file. The command owns that path, so what is there may be a
 * FIFO (an open would block for ever), a symlink to anything, or huge: it is opened without blocking and without
 * following a symlink, used only when it is a regular file, and read up to ERROR_FILE_MAX_BYTES.
 */
async function readErrorFile(path: string | undefined, warn: (message: string) => void): Promise<string | undefined> {
  if (!path) return undefined;
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') warn(`error file ${path} is a symbolic link: ignored`);
    else if (code !== 'ENOENT') warn(`cannot read error file ${path}: ${(error as Error).message}`);
    return undefined;
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) {
      warn(`error file ${path} is not a regular file: ignored`);
      return undefined;
    }
    const buffer = Buffer.alloc(Math.min(ERROR_FILE_MAX_BYTES, stat.size));
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    const text = buffer.subarray(0, bytesRead).toString('utf8').trim();
    return text.length > 0 ? text : undefined;
  } catch (error) {
    warn(`cannot read error file ${path}: ${(error as Error).message}`);
    return undefined;
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/** The reason stored for a failed attempt: the command's own words when it wrote the error file. */
export async function failureReason(
  ctx: DaemonContext,
  failure: AttemptFailure,
  stage: StageConfig,
): Promise<string> {
  let ignored: string | undefined;
  const written = await readErrorFile(failure.errorFile, (message) => {
    ignored = message;
    ctx.logger.warn(message);
  });
  const reason = reasonFor(stage, failure, written);
  // The error file was there but unusable: say so, so the operator does not look for it in vain.
  return ignored ? boundedReason(`${reason} (${ignored})`) : reason;
}

function reasonFor(stage: StageConfig, failure: AttemptFailure, written: string | undefined): string {
  switch (failure.kind) {
    case 'timed_out':
      return boundedReason(
        `timed out after ${formatDuration(stage.timeouts.max_processing_time)}` + (written ? `: ${written}` : ''),
      );
    case 'stalled':
      return boundedReason(
        `stalled: no output for ${formatDuration(stage.timeouts.max_no_output_time)}` +
          (written ? `: ${written}` : ''),
      );
    case 'check': {
      const what =
        failure.message === 'timed out'
          ? `timed out after ${formatDuration(stage.timeouts.max_processing_time)}`
          : failure.message === 'stalled: no output'
            ? `stalled: no output for ${formatDuration(stage.timeouts.max_no_output_time)}`
            : failure.message;
      return boundedReason(`check failed: ${written ?? what}`);
    }
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

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isoTime(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString() : String(ms);
}

export function runEffects(ctx: DaemonContext) {
  const { config, store, logger, clock } = ctx;
  // Names this daemon (or foreground `process N`) in every command, so a successor finds orphans no record names.
  const daemonTag = ownDaemonTag(ctx.host, store.location);

  // The lease binds the command (issue 12 fault 11): an attempt that cannot renew its lease for this long
  // (the store locked by another process, or unreachable) gives it up and kills its command, before another
  // host may take the run over as stale and start it again.
  const holdMs = leaseHoldLimitMs(config.timeouts);
  const retryMs = Math.min(config.timeouts.check_interval, 1000);
  /**
   * Per attempt: the monotonic time its last successful lease write completed (the claim counts). A write that
   * waited long for a lock commits at its end, so completion is what the store's time says; a slow answer
   * from a remote server is covered by the check_interval of margin in holdMs.
   */
  const renewedAt = new Map<string, number>();
  const attemptKey = (run: ClaimedRun) => `${run.number}/${stageOfRun(run)}/${run.attempt}`;
  /** The task's stage as configured; throws naming the stage when this daemon's config lacks it (preflight). */
  const configuredStageOf = (run: ClaimedRun): StageConfig => stageConfigFor(config, stageOfRun(run));
  /**
   * The stage whose policy records the attempt's end: its own, or for a task of a stage this config lacks (its
   * preflight failed naming it) the first stage's, so recording never fails and never ends the daemon.
   */
  const stageOf = (run: ClaimedRun): StageConfig =>
    stageNamed(config, stageOfRun(run)) ?? { ...stagesOf(config)[0]!, name: stageOfRun(run) };
  const lastRenewal = (run: ClaimedRun): number => {
    const key = attemptKey(run);
    let at = renewedAt.get(key);
    if (at === undefined) {
      at = ctx.monotonic(); // the claim wrote the lease a moment ago
      renewedAt.set(key, at);
    }
    return at;
  };
  /** A lease write of the attempt has just succeeded. */
  const leaseRenewed = (run: ClaimedRun) => {
    renewedAt.set(attemptKey(run), ctx.monotonic());
  };

  /**
   * A fenced write of the attempt. Contention (SQLITE_BUSY, MongoDB unreachable) is retried while the lease
   * can still be held; past that the write counts as refused, as if the lease had been taken: the actor stops
   * writing and the run is left for cleanup to fail, never half-finished by two owners.
   */
  async function fencedWrite(run: ClaimedRun, what: string, write: () => Promise<boolean>): Promise<boolean> {
    let warned = false;
    for (;;) {
      try {
        const ok = await write();
        if (ok) leaseRenewed(run);
        return ok;
      } catch (error) {
        if (!isStoreContention(error)) throw error;
        const silent = ctx.monotonic() - lastRenewal(run);
        if (silent >= holdMs) {
          logger.error(
            `${labelOf(run)}: the store refused ${what} for ${formatDuration(Math.round(silent))} ` +
              `(${describeError(error)}); giving the lease up`,
            { number: run.number },
          );
          return false;
        }
        if (!warned) {
          logger.warn(`${labelOf(run)}: ${what} waits for the store: ${describeError(error)}`, { number: run.number });
          warned = true;
        }
        await sleep(retryMs);
      }
    }
  }

  /** Kills this host's own previous command of the run (its group, checked by start time); true when gone. */
  async function killOwnPreviousCommand(label: string, number: number, previous: DrainingAttempt): Promise<boolean> {
    if (previous.host !== ctx.host || previous.pgid === undefined || previous.proc_start === undefined) return false;
    if (previous.pgid <= 1) return false;
    const outcome = await killProcessGroup(previous.pgid, {
      escalateMs: config.timeouts.signal_escalate,
      procStart: previous.proc_start,
    });
    if (outcome === 'unkillable') {
      logger.error(
        `${label}: process group ${previous.pgid} of attempt ${previous.attempt} survived SIGKILL; ` +
          `waiting for its drain limit`,
        { number },
      );
      return false;
    }
    return true;
  }

  /**
   * Issue 12 faults 6 and 13: when the run was taken from a busy attempt whose command may still run (its
   * draining record), no command of this attempt starts, and its output directory is not touched, until that
   * command is gone: this host's own is killed at once; another host's is confirmed gone by its owner, or is
   * gone for certain once the record's time (store clock) has passed. The lease is renewed meanwhile.
   * False when this attempt lost its lease while waiting, or was stopped.
   */
  async function waitForPreviousAttempt(run: ClaimedRun, signal: AbortSignal): Promise<boolean> {
    if (!docOf(run).processing?.draining) return true;
    let announced = false;
    for (;;) {
      if (signal.aborted) return false;
      if (!(await fencedWrite(run, 'a lease heartbeat', () => store.heartbeatRun(refOf(run), run.token)))) {
        return false;
      }
      const p = (await store.getRun(run.number, stageOfRun(run)))?.processing;
      if (!p || p.token !== run.token) return false;
      const previous = p.draining;
      // p.time is the store's clock, just written by the heartbeat
      if (!previous || previous.until <= p.time) return true;
      if (await killOwnPreviousCommand(labelOf(run), run.number, previous)) {
        await store.confirmAttemptGone(refOf(run), { host: previous.host, attempt: previous.attempt });
        logger.info(
          `${labelOf(run)}: killed the command of attempt ${previous.attempt} (process group ${previous.pgid})`,
          { number: run.number },
        );
        continue;
      }
      if (!announced) {
        logger.warn(
          `${labelOf(run)} attempt ${run.attempt} waits for attempt ${previous.attempt} on host ${previous.host} ` +
            `(pid ${previous.pid}) to stop its command: until its owner confirms it gone, ` +
            `at the latest ${isoTime(previous.until)}`,
          { number: run.number },
        );
        announced = true;
      }
      try {
        await sleep(retryMs, undefined, { signal });
      } catch {
        return false; // stopped while waiting
      }
    }
  }

  const preflight = fromPromise<PreflightOutput, { run: ClaimedRun }>(async ({ input, signal }) => {
    const { run } = input;
    lastRenewal(run);
    if (!(await waitForPreviousAttempt(run, signal))) return { ok: false };
    const doc = docOf(run);
    const stage = configuredStageOf(run);
    // A field decoding already reported is not reported twice.
    const decoded = doc.invalid ?? [];
    const reported = (problem: string) => decoded.some((d) => d.split(':')[0] === problem.split(':')[0]);
    const problems = [...decoded, ...validateRunDocument(doc).filter((p) => !reported(p))];
    if (problems.length > 0) throw new Error(`invalid run document: ${problems.join('; ')}`);
    if (doc.input !== undefined && doc.input !== '' && !existsSync(doc.input)) {
      throw new Error(`input does not exist: ${doc.input}`);
    }
    const targets = targetsForAttempt(stage.targets, stage.drop_targets_after, stage.minimal_targets, run.nFailures);
    const resources = resourcesForAttempt(stage.resources, run.nFailures);
    const outputDir = taskOutputDir(config, stage, run.number);
    const logDir = attemptLogDir(stage, run.number);
    const logFile = join(logDir, `attempt-${run.attempt}.log`);
    const errorFile = join(logDir, `attempt-${run.attempt}.error`);
    const checkErrorFile = join(logDir, `attempt-${run.attempt}.check.error`);
    // The two directories are independent: prepare them side by side (each file call is a thread-pool round
    // trip, which counts in pickup latency). Asynchronous on purpose: a hung file system must not freeze the
    // daemon's heartbeats and signal handling.
    // A directory that cannot be prepared is a host fault when the host's check explains it (output_root or
    // log_dir unwritable: every run would fail so), else this run's own problem.
    await Promise.all([
      (async () => {
        // A fresh directory needs no cleaning (mkdir says whether it created it): one round trip, not two.
        const created = await mkdir(outputDir, { recursive: true });
        if (created === undefined && stage.clean_output) {
          await rm(outputDir, { recursive: true, force: true });
          await mkdir(outputDir, { recursive: true });
        }
      })(),
      (async () => {
        await mkdir(logDir, { recursive: true });
        // Whatever a previous attempt left at this path (a file, a FIFO, a symlink, a directory) goes; rm never
        // follows a symlink, it removes the link.
        await rm(errorFile, { force: true, recursive: true });
        await rm(checkErrorFile, { force: true, recursive: true });
      })(),
    ]).catch(async (error: unknown) => {
      const hostFault = await hostFaultBehind(config, stage.name);
      if (hostFault === undefined) throw error;
      throw new HostFaultError(error instanceof Error ? error.message : String(error), hostFault);
    });
    const values: PlaceholderValues = {
      number: run.number,
      name: doc.name,
      input: doc.input,
      output: outputDir,
      attempt: run.attempt,
      host: ctx.host,
      targets,
      resources,
      params: doc.params ?? {},
      stage: stage.name,
      upstream: upstreamOutputs(config, stage.name, Array.isArray(doc.outputs) ? doc.outputs : []),
    };
    // Throws on an unknown placeholder, a missing params key or upstream output: the attempt fails with that reason.
    const argv = substituteArgv(stage.command, values);
    const checkArgv = stage.check.length > 0 ? substituteArgv(stage.check, values) : undefined;
    const baseEnv: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) if (value !== undefined) baseEnv[key] = value;
    Object.assign(baseEnv, stage.env);
    const env = { ...baseEnv, ...commandEnvironment(values, errorFile), [DAEMON_TAG_VARIABLE]: daemonTag };
    const startedAt = clock();
    let leaseWrittenAt = leaseClock();
    const ok = await fencedWrite(run, 'the busy transition', () => {
      leaseWrittenAt = leaseClock(); // the write that succeeds was issued at its own try, not the first
      return store.markBusy(
        refOf(run),
        run.token,
        { started: startedAt, targets, resources },
        { detail: { argv, targets, resources } },
      );
    });
    if (!ok) return { ok: false };
    ctx.leases.leaseTaken(run.token, run.number, leaseWrittenAt);
    logger.info(`${labelOf(run)} attempt ${run.attempt} started`, { number: run.number });
    const plan: CommandPlan = {
      number: run.number,
      ...(run.stage !== undefined ? { stage: run.stage } : {}),
      token: run.token,
      attempt: run.attempt,
      argv,
      cwd: stage.cwd,
      env,
      logFile,
      outputDir,
      errorFile,
      targets,
      resources,
      startedAt,
    };
    // The check runs with the same placeholders and environment; its error file is its own, its output goes
    // to the attempt's log after the command's.
    const check: CommandPlan | undefined = checkArgv && {
      ...plan,
      argv: checkArgv,
      env: { ...baseEnv, ...commandEnvironment(values, checkErrorFile), [DAEMON_TAG_VARIABLE]: daemonTag },
      errorFile: checkErrorFile,
    };
    return { ok: true, plan, ...(check ? { check } : {}) };
  });

  // The command exited 0: its output must be there; before a check starts, the lease is renewed and the guard
  // given the check's deadline from that write (as markBusy does for the command).
  const verifyOutput = fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null; check: boolean }>(
    async ({ input }) => {
      const { run, plan } = input;
      if (!plan) throw new Error('internal: no command plan');
      if (stageOf(run).require_output && !(await hasEntries(plan.outputDir))) {
        throw new Error(`output missing: the command exited 0 but ${plan.outputDir} is empty or absent`);
      }
      if (!input.check) return { ok: true };
      let issuedAt = leaseClock();
      const ok = await fencedWrite(run, 'a lease heartbeat before the check', () => {
        issuedAt = leaseClock();
        return store.heartbeatRun(refOf(run), run.token);
      });
      if (ok) {
        ctx.leases.leaseTaken(run.token, run.number, issuedAt);
        logger.info(`${labelOf(run)} attempt ${run.attempt}: the command succeeded; running the check`, {
          number: run.number,
        });
      }
      return { ok };
    },
  );

  const registerOutput = fromPromise<FencedWriteResult, { run: ClaimedRun; plan: CommandPlan | null }>(
    async ({ input }) => {
      const { run, plan } = input;
      if (!plan) throw new Error('internal: no command plan');
      // Checked here too after a check: the check must not have taken the output away.
      if (stageOf(run).require_output && !(await hasEntries(plan.outputDir))) {
        throw new Error(`output missing: the command exited 0 but ${plan.outputDir} is empty or absent`);
      }
      const now = clock();
      const ok = await fencedWrite(run, 'the done transition', () =>
        store.finishRun(
          refOf(run),
          run.token,
          { location: plan.outputDir, stage: stageOfRun(run), host: ctx.host, attempt: run.attempt, at: now },
          { duration_ms: now - plan.startedAt },
        ),
      );
      if (ok) logger.info(`${labelOf(run)} done (attempt ${run.attempt})`, { number: run.number });
      return { ok };
    },
  );

  /** The reason of an attempt the host could not start: what went wrong, and what the host's check found. */
  const hostFaultReason = (reason: string, failure: AttemptFailure): string =>
    boundedReason(`${reason} (host fault, not counted as a failure: ${failure.hostFault})`);

  /** An attempt the host could not start: an interruption, eligible again at once, n_failures unchanged. */
  const recordHostFault = async (run: ClaimedRun, failure: AttemptFailure): Promise<FencedWriteResult> => {
    const reason = hostFaultReason(await failureReason(ctx, failure, stageOf(run)), failure);
    const nInterruptions = run.nInterruptions + 1;
    const ok = await fencedWrite(run, 'the failed transition', () =>
      store.failRun(
        refOf(run),
        run.token,
        { reason, n_failures: run.nFailures, n_interruptions: nInterruptions, next_retry: clock() },
        { detail: { kind: failure.kind, interruption: 'host_fault' } },
      ),
    );
    if (ok) {
      logger.warn(
        `${labelOf(run)} interrupted (attempt ${run.attempt}, ${nInterruptions} of retry.max_interruptions ` +
          `${stageOf(run).retry.max_interruptions}): ${reason}`,
        { number: run.number },
      );
    }
    return { ok };
  };

  const recordFailure = fromPromise<FencedWriteResult, { run: ClaimedRun; failure: AttemptFailure }>(
    async ({ input }) => {
      const { run, failure } = input;
      if (failure.hostFault !== undefined) return recordHostFault(run, failure);
      const stage = stageOf(run);
      const reason = await failureReason(ctx, failure, stage);
      if (failure.interruption === 'lease_guard') {
        // This daemon stalled (frozen, or cut off from the store) and its lease guard ended the command: an
        // interruption, counted in n_interruptions like a restart, never a failure of the run's command.
        const ok = await fencedWrite(run, 'the interruption', () =>
          store.releaseRun(refOf(run), run.token, reason, {
            ...(failure.durationMs !== undefined ? { duration_ms: failure.durationMs } : {}),
            detail: { interruption: 'lease_guard', kind: failure.kind },
          }),
        );
        if (ok) logger.warn(`${labelOf(run)} interrupted (attempt ${run.attempt}), eligible again now: ${reason}`, { number: run.number });
        return { ok };
      }
      const nFailures = run.nFailures + 1;
      const delay = retryDelay(run.nFailures, stage.retry, ctx.random);
      const ok = await fencedWrite(run, 'the failed transition', () =>
        store.failRun(
          refOf(run),
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
        ),
      );
      if (ok) {
        const message = `${labelOf(run)} failed (attempt ${run.attempt}, failure ${nFailures}), retry in ${roundedDelay(delay)}: ${reason}`;
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
    const interrupted = failure.hostFault !== undefined || failure.interruption !== undefined;
    const written = await failureReason(ctx, failure, stageOf(run));
    const last = failure.hostFault !== undefined ? hostFaultReason(written, failure) : written;
    // A host fault is an interruption: the run is given up on at max_interruptions, its failures unchanged.
    const nFailures = interrupted ? run.nFailures : run.nFailures + 1;
    const reason = abandonReason(input.why, last, interrupted ? 'last interruption' : 'last failure');
    const ok = await fencedWrite(run, 'the abandoned transition', () =>
      store.abandonRun(
        refOf(run),
        run.token,
        {
          reason: boundedReason(reason),
          n_failures: nFailures,
          ...(interrupted ? { n_interruptions: run.nInterruptions + 1 } : {}),
          ...(failure.exitCode !== undefined ? { exit_code: failure.exitCode } : {}),
          ...(failure.signal !== undefined ? { signal: failure.signal } : {}),
        },
        {
          ...(failure.durationMs !== undefined ? { duration_ms: failure.durationMs } : {}),
          detail: {
            kind: failure.kind,
            ...(interrupted ? { interruption: failure.interruption ?? 'host_fault' } : {}),
          },
        },
      ),
    );
    if (ok) logger.error(`${labelOf(run)} abandoned: ${reason}`, { number: run.number });
    return { ok };
  });

  const releaseRun = fromPromise<FencedWriteResult, { run: ClaimedRun }>(async ({ input }) => {
    // An interruption (counted in n_interruptions by the store), never a failure.
    const ok = await fencedWrite(input.run, 'the release', () =>
      store.releaseRun(refOf(input.run), input.run.token, 'host stopped', {
        detail: { interruption: 'stopped' },
      }),
    );
    if (ok) logger.info(`${labelOf(input.run)} released: host stopped`, { number: input.run.number });
    return { ok };
  });

  // Refreshes the lease every check_interval and reports when someone else changed the token, or when the lease
  // could not be renewed for longer than it may be held (then the command must stop: others may take over).
  const leaseKeeper = fromCallback<EventObject, { run: ClaimedRun }>(({ input, sendBack }) => {
    const { run } = input;
    lastRenewal(run);
    let inFlight = false;
    let lost = false;
    let lastError = '';
    const timer = setInterval(() => {
      if (lost) return;
      // checked even while a heartbeat hangs: an unreachable server must not keep the command running
      const silent = ctx.monotonic() - lastRenewal(run);
      if (silent >= holdMs) {
        lost = true;
        logger.error(
          `${labelOf(run)}: lease not renewed for ${formatDuration(Math.round(silent))}` +
            (lastError ? ` (${lastError})` : '') +
            `; giving it up and stopping the command before another host may take the run over`,
          { number: run.number },
        );
        sendBack({ type: 'LEASE_LOST' });
        return;
      }
      if (inFlight) return;
      inFlight = true;
      const issuedAt = leaseClock();
      store
        .heartbeatRun(refOf(run), run.token)
        .then((ok) => {
          if (ok) {
            leaseRenewed(run);
            // The lease guard lets the command run on only while heartbeats reach the store.
            ctx.leases.renewed(run.token, issuedAt);
            lastError = '';
          } else if (!lost) {
            lost = true;
            logger.warn(`${labelOf(run)}: lease lost (changed by an operator or cleanup); stopping it`, {
              number: run.number,
            });
            sendBack({ type: 'LEASE_LOST' });
          }
        })
        .catch((error: unknown) => {
          lastError = describeError(error);
          logger.error(`${labelOf(run)}: heartbeat failed: ${lastError}`, { number: run.number });
        })
        .finally(() => {
          inFlight = false;
        });
    }, config.timeouts.check_interval);
    return () => clearInterval(timer);
  });

  // The attempt is over and its command gone (the lease was lost): clear the run's drain fence if it names this
  // attempt, so the next attempt need not wait for its time to pass. A failure here only delays that attempt.
  const confirmAttemptGone = fromPromise<void, { run: ClaimedRun }>(async ({ input }) => {
    const { run } = input;
    renewedAt.delete(attemptKey(run));
    try {
      if (await store.confirmAttemptGone(refOf(run), { host: ctx.host, attempt: run.attempt })) {
        logger.info(`${labelOf(run)}: the command of attempt ${run.attempt} is gone; the run may start again`, {
          number: run.number,
        });
      }
    } catch (error) {
      logger.warn(
        `${labelOf(run)}: could not record that attempt ${run.attempt}'s command is gone ` +
          `(${describeError(error)}); its next attempt waits for the drain limit`,
        { number: run.number },
      );
    }
  });

  return {
    preflight,
    verifyOutput,
    registerOutput,
    recordFailure,
    recordAbandon,
    releaseRun,
    leaseKeeper,
    confirmAttemptGone,
  };
}
