import type { Logger } from '../log/logger.js';

// How a daemon (or a foreground `process N`, or `demo`) ends its process. Crash-only (DESIGN §4 host): any
// unexpected error is logged at fatal, every live process group is killed and the process exits non-zero,
// so systemd or `--undying` restarts it and recovery repairs what it left. The exit is explicit, after a
// bounded wait for the last log lines: XState leaves an errored actor's children running (their intervals
// hold the event loop), and a store that cannot take the last log line may never answer.

/** Signals that stop a daemon or a foreground attempt cleanly: ^C, `kill`, systemd, a closed terminal or ssh session. */
export const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** The longest an ending process waits for its last log lines and closing steps before it exits anyway. */
export const EXIT_BUDGET_MS = 5_000;

/** Runs `steps` one after the other, each error ignored, for at most `budgetMs`; false when the budget ran out. */
export async function settleWithin(steps: Array<() => unknown>, budgetMs = EXIT_BUDGET_MS): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), budgetMs);
  });
  const run = (async () => {
    for (const step of steps) {
      try {
        await step();
      } catch {
        // an ending process has nowhere better to report it
      }
    }
    return true as const;
  })();
  try {
    return await Promise.race([run, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Ends the process with `code` once `steps` (flush the log, close servers and the store) are done or
 * `budgetMs` has passed, whatever still holds the event loop.
 */
export async function exitProcess(code: number, steps: Array<() => unknown>, budgetMs = EXIT_BUDGET_MS): Promise<never> {
  await settleWithin(steps, budgetMs);
  process.exit(code);
}

/**
 * Makes an uncaught exception or an unhandled rejection fatal: `onFatal` gets it (kill the commands, log at
 * fatal, exit non-zero). Returns the function that removes the handlers.
 */
export function onProcessFault(onFatal: (error: unknown, origin: string) => void): () => void {
  const uncaught = (error: unknown) => onFatal(error, 'uncaught exception');
  const rejected = (error: unknown) => onFatal(error, 'unhandled rejection');
  process.on('uncaughtException', uncaught);
  process.on('unhandledRejection', rejected);
  return () => {
    process.off('uncaughtException', uncaught);
    process.off('unhandledRejection', rejected);
  };
}

/** The first line of an error with its stack, for the fatal log line. */
export function describeFatal(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

/** Logs `message` at fatal, runs `kill` (SIGKILL every live process group), then exits `code` within the budget. */
export function dieLoudly(logger: Logger, message: string, kill: () => void, code = 1): Promise<never> {
  for (const step of [kill, () => logger.fatal(message)]) {
    try {
      step();
    } catch {
      // the exit below must happen whatever failed here
    }
  }
  return exitProcess(code, [() => logger.flush()]);
}
