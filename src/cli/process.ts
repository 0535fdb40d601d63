import type { Argv, CommandModule } from 'yargs';
import { requireCommand } from '../config/index.js';
import { claimForProcessing, describeState } from '../daemon/operator-actions.js';
import { processOneRun, startCommandGuard, type ProcessOneOutcome } from '../daemon/process-one.js';
import { describeFatal, dieLoudly, exitProcess, onProcessFault, STOP_SIGNALS } from '../daemon/process-exit.js';
import { createLogger, dropWriteErrors } from '../log/logger.js';
import { openStore } from '../store/open-store.js';
import type { RunDoc } from '../store/types.js';
import { configFromArgs, formatTime, printJson, runCommand, type GlobalArgs } from './common.js';
import { operatorDeps } from './fail.js';
import { numberArgument } from './submit.js';
import { assertHostReady } from '../daemon/host-check.js';
import { RunNotFoundError } from '../errors.js';
import { taskName } from '../daemon/operator-actions.js';
import { stageOption, taskOfRun, type StageArgs } from './stage-choice.js';
import type { TaskRef } from '../store/types.js';

// `runwarden process N [--force]`: claims one run and runs one attempt of it in the foreground, with the
// daemon's run machine and effects. ^C once releases the run as a stopping daemon does; twice kills at once.

interface ProcessArgs extends GlobalArgs, StageArgs {
  number?: string;
  force?: boolean;
}

function outcomeLine(task: TaskRef, outcome: ProcessOneOutcome, run: RunDoc | null): string {
  const p = run?.processing;
  const number = taskName(task);
  switch (outcome.settlement) {
    case 'done':
      return `${number} done (attempt ${p?.attempt ?? '?'}); output ${run?.outputs.at(-1)?.location ?? '-'}`;
    case 'failed':
      return (
        `${number} failed (attempt ${p?.attempt ?? '?'}, failure ${p?.n_failures ?? '?'}): ${p?.reason ?? '?'}; ` +
        `a daemon retries it after ${formatTime(p?.next_retry)}`
      );
    case 'abandoned':
      return `${number} abandoned: ${p?.reason ?? '?'}`;
    case 'released':
      return `${number} released: stopped by a signal; failed and eligible again now, failure count unchanged`;
    case 'lost':
      return `${number} was taken away while processing (it is now ${run ? describeState(run) : 'gone'}): ` +
        `its command was stopped and nothing more was written`;
    case 'unkillable':
    case 'error':
      return `${number}: ${outcome.error ?? outcome.settlement}`;
  }
}

export const processCommand: CommandModule<GlobalArgs, ProcessArgs> = {
  command: 'process <number>',
  describe: 'claim one run and process one attempt of it in the foreground (exit 0 when done)',
  builder: (yargs: Argv<GlobalArgs>) =>
    stageOption(yargs, 'process')
      .positional('number', { type: 'string', describe: 'run number' })
      .option('force', {
        type: 'boolean',
        describe: 'also take a considering or busy run away from its owner, or process a done run again',
      })
      .epilogue(
        'Pending, failed, abandoned and held runs are processed as asked. Considering, busy and done runs are ' +
          'refused unless --force: a forced busy run loses its lease and its owner kills its command within one ' +
          'check_interval; a task whose upstream stages are not all done is refused, --force or not; this attempt starts its own command only once the old one is gone (on this host it ' +
          'kills the old process group itself; otherwise it waits for the owner, at most max_busy_time after ' +
          "the owner's last heartbeat, and says so). " +
          'The attempt writes its output to LOG_DIR/N/attempt-K.log and records every transition ' +
          'as a daemon would. Exit 0 when the run is done, or when ^C, SIGTERM or SIGHUP released it (failed, ' +
          'eligible again now, failure count unchanged); 1 when it failed, was abandoned or taken away, or on a ' +
          'fatal error (its store file replaced, an unexpected error: the command is killed). A second signal ' +
          "kills the command's process group at once and exits 130.",
      )
      .example('$0 process 1042', 'process run 1042 now, in this terminal')
      .example('$0 process 1042 --force', 'take run 1042 from whoever has it (or redo a done run)')
      .example('$0 process 1042 --stage compress', 'process the compress task of run 1042 (its upstream done)'),
  handler: (args) =>
    runCommand(async () => {
      const number = numberArgument(args.number);
      const config = configFromArgs(args);
      requireCommand(config);
      // Host-level faults (executable, cwd, output and log directories) refuse to start, naming the field.
      await assertHostReady(config);
      // Before the claim: a host without bash is refused (exit 2) without touching the run.
      const leaseGuard = startCommandGuard(config);
      const store = await openStore(config.store, { create: false }).catch(async (error: unknown) => {
        await leaseGuard.close();
        throw error;
      });
      const logger = createLogger({ level: config.log_level, host: config.host, store });
      // A terminal that went away (SIGHUP) must not turn the outcome line into a crash: it is dropped.
      dropWriteErrors(process.stdout);
      let signalsSeen = 0;
      let stop = () => {};
      let kill = () => {};
      const onSignal = (signal: NodeJS.Signals) => {
        signalsSeen += 1;
        if (signalsSeen === 1) {
          logger.info(`${signal} received: terminating the command and releasing run ${number}`, { number });
          stop();
          return;
        }
        logger.warn(`second signal (${signal}): killing run ${number}'s process group now`, { number });
        kill();
        void exitProcess(130, [() => logger.flush()]);
      };
      for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
      // Crash-only, as the daemon: an unexpected error kills the command's group and exits non-zero.
      const offFault = onProcessFault((error, origin) => {
        void dieLoudly(logger, `process ${number}: ${origin}: ${describeFatal(error)}`, () => kill());
      });
      let attempted = false;
      let code: number;
      try {
        const current = await store.getRun(number);
        if (!current) throw new RunNotFoundError(number);
        const task = taskOfRun(current, args.stage, 'process');
        const claim = await claimForProcessing(operatorDeps(config, store), task, { force: args.force ?? false });
        if (claim.takenFrom) {
          process.stderr.write(
            `runwarden: warning: ${taskName(task)} taken away from host ${claim.takenFrom.host} ` +
              `(pid ${claim.takenFrom.pid}, ${claim.takenFrom.state}); ` +
              (claim.takenFrom.state === 'busy'
                ? `this attempt starts its command only once that host's command is gone\n`
                : `it had not started its command yet\n`),
          );
        }
        const handle = processOneRun({ store, config, logger, host: config.host, leaseGuard }, claim.run);
        attempted = true;
        stop = handle.stop;
        kill = handle.killCommand;
        if (signalsSeen > 0) stop();
        if (!args.json) {
          process.stdout.write(
            `${taskName(task)} attempt ${claim.run.processing!.attempt} (was ${claim.from}) on host ${config.host}; ` +
              `log ${handle.logFile}\n`,
          );
        }
        const outcome = await handle.done;
        const { settlement, error } = outcome;
        if (settlement === 'error' || settlement === 'unkillable') logger.fatal(`run ${number}: ${error ?? settlement}`, { number });
        const run = await (typeof task === 'number' ? store.getRun(number) : store.getRun(number, task.stage)).catch(() => null);
        if (args.json) {
          printJson({ number, ...(typeof task === 'number' ? {} : { stage: task.stage }), outcome: settlement, error, log: handle.logFile, run });
        } else process.stdout.write(`${outcomeLine(task, outcome, run)}\n`);
        code = settlement === 'done' || (settlement === 'released' && signalsSeen > 0) ? 0 : 1;
      } finally {
        for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
        offFault();
        if (!attempted) {
          await leaseGuard.close();
          await logger.flush();
          await store.close();
        }
      }
      // After an attempt the process ends explicitly: an errored run actor's lease keeper or watcher must not
      // keep it alive (and writing) once the outcome is known.
      return exitProcess(code, [() => logger.flush(), () => store.close()]);
    }),
};
