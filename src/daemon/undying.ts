import { execa } from 'execa';
import { formatDuration } from '../config/duration.js';
import type { Logger } from '../log/logger.js';
import type { RunStore } from '../store/run-store.js';
import { STOP_SIGNALS } from './process-exit.js';

// `runwarden daemon --undying` (DESIGN §4 host: "--undying restarts after a pause"). Crash-only means the
// daemon itself exits on any unexpected error; this small parent restarts it after `restart_pause`, logging
// each crash to the operator log. The daemon runs in its own process group so a terminal's ^C reaches it
// once, through this parent, and the daemon's own first/second-signal handling stays exactly as without it.

export interface UndyingOptions {
  /** The daemon's argv after the script, without --undying. */
  args: string[];
  host: string;
  pauseMs: number;
  logger: Logger;
  /** Opens the store to write a crash into the operator log; may fail (the store may be what crashed). */
  openStore: () => Promise<RunStore>;
}

/** Exit codes that end the supervision instead of restarting: a clean stop, a config error, a second ^C. */
const FINAL_EXIT_CODES = new Set([0, 2, 130]);

async function logCrash(options: UndyingOptions, message: string): Promise<void> {
  options.logger.error(message);
  let store: RunStore | undefined;
  try {
    store = await options.openStore();
    await store.appendLog({ host: options.host, user: `runwarden@${options.host}`, priority: 3, message });
  } catch (error) {
    options.logger.warn(`could not write the crash into the operator log: ${String(error)}`);
  } finally {
    await store?.close().catch(() => undefined);
  }
}

export async function superviseDaemon(options: UndyingOptions): Promise<number> {
  const script = process.argv[1]!;
  let stopping = false;
  let child: ReturnType<typeof execa> | undefined;
  let wakePause: (() => void) | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    stopping = true;
    if (child?.pid !== undefined && child.exitCode === null) child.kill(signal);
    wakePause?.();
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
  try {
    for (let crashes = 0; ; ) {
      child = execa(process.execPath, [...process.execArgv, script, ...options.args], {
        stdio: 'inherit',
        detached: true,
        reject: false,
      });
      const result = await child;
      const code = result.exitCode;
      if (stopping) return code ?? 1;
      if (code !== undefined && FINAL_EXIT_CODES.has(code)) return code;
      crashes += 1;
      const how = code !== undefined ? `exit code ${code}` : `signal ${result.signal ?? 'unknown'}`;
      await logCrash(
        options,
        `daemon of host ${options.host} crashed (${how}; crash ${crashes} since start); ` +
          `restarting in ${formatDuration(options.pauseMs)} (--undying)`,
      );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.pauseMs);
        wakePause = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wakePause = undefined;
      if (stopping) return 0;
    }
  } finally {
    for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
  }
}

/** The daemon's own arguments without --undying, so the child runs as a plain daemon. */
export function withoutUndying(argv: string[]): string[] {
  return argv.filter((arg) => !/^--(no-)?undying(=.*)?$/.test(arg));
}
