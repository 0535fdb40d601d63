import { fromCallback } from 'xstate';
import type { ProcessCommand, ProcessEvent } from '../../machines/supervisor.machine.js';
import type { CommandPlan } from '../../machines/types.js';
import { watchOutputActivity } from '../process/output-activity.js';
import { newAttemptMarker } from '../process/attempt-marker.js';
import { spawnCommand, type CommandHandle } from '../process/spawn-command.js';
import { formatDuration } from '../config/duration.js';
import type { DaemonContext } from './context.js';
import { hostFaultBehind } from './host-check.js';
import { PROCESS_STAGE, stageNamed } from '../policy/pipeline.js';
import { taskLabel, taskRefOf } from './run-input.js';

// The supervisor's `process` actor: owns one attempt's process group. It reports SPAWNED, OUTPUT
// (throttled) and EXITED, applies SIGNAL, and if the supervisor is stopped abruptly (the run actor left
// `busy` without waiting) it SIGKILLs the group so nothing outlives its supervisor.

/** The failure's words when the lease guard killed the command: the command did not cause its end. */
function guardNote(ctx: DaemonContext, stderrTail: string): string {
  const ttl = formatDuration(ctx.leases.ttlMs);
  const note =
    `the lease guard killed it: its lease was not renewed for ${ttl} (the daemon was frozen or its heartbeats ` +
    'could not reach the store)';
  return stderrTail ? `${note}\n${stderrTail}` : note;
}

export function processActor(ctx: DaemonContext) {
  return fromCallback<ProcessCommand, { plan: CommandPlan }>(({ input, sendBack, receive }) => {
    const { plan } = input;
    // The task's stage sets the stall limit and the log's size; a stage this config lacks never gets this far.
    const stage = stageNamed(ctx.config, plan.stage ?? PROCESS_STAGE);
    const maxNoOutputMs = stage?.timeouts.max_no_output_time ?? ctx.config.timeouts.max_no_output_time;
    // Enough to keep the stall clock honest without an event per output chunk.
    const outputThrottleMs = Math.max(10, Math.min(1000, maxNoOutputMs / 10));
    let handle: CommandHandle | undefined;
    let stopped = false;
    let exited = false;
    let pendingSignal: ProcessCommand['signal'] | undefined;
    let lastOutput = 0;
    let lastActivity = Date.now();
    const send = (event: ProcessEvent) => {
      if (!stopped) sendBack(event);
    };
    const output = () => {
      const now = Date.now();
      lastActivity = now;
      if (now - lastOutput < outputThrottleMs) return;
      lastOutput = now;
      send({ type: 'OUTPUT' });
    };
    // Hang ≠ slowness: a command that writes its results without printing anything is still alive. A change
    // under the output directory since the last activity counts as output for the stall clock
    // (max_no_output_time), found by a bounded asynchronous walk when the command has been silent for a while.
    const outputWatch = watchOutputActivity(
      plan.outputDir,
      maxNoOutputMs,
      () => lastActivity,
      output,
    );
    const unwatch = () => outputWatch.stop();

    // The guard learns the attempt's marker before the command exists: from its first instruction on, a command
    // whose lease lapses is killed, even if this daemon freezes before it could name the command's group.
    const attemptMarker = newAttemptMarker();
    ctx.leases.commandStarting(plan.token, attemptMarker);
    spawnCommand({
      attemptMarker,
      argv: plan.argv,
      cwd: plan.cwd,
      env: plan.env,
      logFile: plan.logFile,
      escalateMs: ctx.config.timeouts.signal_escalate,
      maxLogBytes: stage?.max_log_bytes ?? ctx.config.process.max_log_bytes,
    })
      .then((started) => {
        handle = started;
        ctx.liveCommands.add(started);
        ctx.leases.commandStarted(plan.token, started.pgid, started.procStart);
        if (stopped) {
          started.signal('SIGKILL');
        } else if (pendingSignal) {
          started.signal(pendingSignal);
        }
        void ctx.store
          .recordProcessGroup(taskRefOf(plan.number, plan.stage), plan.token, {
            pgid: started.pgid,
            ...(started.procStart !== undefined ? { proc_start: started.procStart } : {}),
          })
          .catch((error: unknown) =>
            ctx.logger.error(`${taskLabel(plan.number, plan.stage)}: could not record process group: ${String(error)}`),
          );
        send({ type: 'SPAWNED', pid: started.pid, pgid: started.pgid, procStart: started.procStart });
        started.onOutput(output);
        void started.exited.then((exit) => {
          exited = true;
          unwatch();
          ctx.liveCommands.delete(started);
          const killedByGuard = exit.signal !== null && ctx.leases.overdue(plan.token);
          ctx.leases.commandEnded(plan.token);
          send({
            type: 'EXITED',
            exitCode: exit.exitCode,
            signal: exit.signal,
            stderrTail: killedByGuard ? guardNote(ctx, exit.stderrTail) : exit.stderrTail,
            durationMs: exit.durationMs,
            groupRemaining: exit.groupRemaining,
            ...(killedByGuard ? { interruption: 'lease_guard' } : {}),
          });
        });
      })
      .catch(async (error: unknown) => {
        unwatch();
        ctx.leases.commandEnded(plan.token);
        // SpawnError names argv[0] and what went wrong (ENOENT, EACCES, a missing cwd). When the host's check
        // explains it (the executable gone, the log directory unwritable), no run could start here: a host fault.
        const hostFault = await hostFaultBehind(ctx.config, plan.stage ?? PROCESS_STAGE);
        send({
          type: 'SPAWN_FAILED',
          error: error instanceof Error ? error.message : String(error),
          ...(hostFault !== undefined ? { hostFault } : {}),
        });
      });

    receive((command) => {
      if (command.type !== 'SIGNAL') return;
      if (handle) handle.signal(command.signal);
      else pendingSignal = command.signal;
    });

    return () => {
      stopped = true;
      unwatch();
      if (handle && !exited) handle.signal('SIGKILL');
    };
  });
}
