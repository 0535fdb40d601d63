import type { Argv, CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import { openStore } from '../store/open-store.js';
import type { Config } from '../config/schema.js';
import type { RunStore } from '../store/run-store.js';
import { configFromArgs, durationFlag, printJson, runCommand, type GlobalArgs } from './common.js';
import { LiveScreen } from './live-screen.js';
import { readTopSnapshot } from './top-snapshot.js';
import { renderTop, type ScreenSize, type TopView } from './top-view.js';

// `runwarden top`: hosts, counts, busy runs and recent failures, redrawn every --interval on the alternate
// screen until q or ^C; `--once` prints one frame for scripts and pipes.

interface TopArgs extends GlobalArgs {
  interval?: string;
  once?: boolean;
}

const MIN_INTERVAL_MS = 100;

/** Exit codes for the signals that end the view from outside: 128 + the signal's number, as shells report. */
const KILLED_BY: Partial<Record<NodeJS.Signals, number>> = { SIGTERM: 143, SIGHUP: 129 };

/** Keys that quit: q, Q and ^C (raw mode turns ^C into a byte instead of SIGINT). */
const QUIT_KEYS = new Set([0x71, 0x51, 0x03]);

/** The size of a printed frame: the terminal's when there is one, else $COLUMNS × $LINES, else 80×24. */
function printedFrameSize(): ScreenSize {
  const fromEnv = (name: string, fallback: number) => {
    const value = Number(process.env[name]);
    return Number.isInteger(value) && value > 0 ? value : fallback;
  };
  return {
    columns: process.stdout.isTTY ? process.stdout.columns : fromEnv('COLUMNS', 80),
    rows: process.stdout.isTTY ? process.stdout.rows : fromEnv('LINES', 24),
  };
}

export const topCommand: CommandModule<GlobalArgs, TopArgs> = {
  command: 'top',
  describe: 'live view of hosts, runs per state, busy runs and recent failures (q quits)',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('interval', { type: 'string', describe: 'time between refreshes, e.g. 2s or 500ms (default 1s)' })
      .option('once', {
        type: 'boolean',
        describe: 'print one frame (sized to the terminal, else $COLUMNS x $LINES, else 80x24) and exit',
      })
      .example('$0 top', 'watch the daemons until q')
      .example('$0 top --once', 'one frame, e.g. for a script or a mail')
      .example('$0 top --once --json', 'what the view reads, as JSON'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args);
      const intervalMs = durationFlag(args.interval ?? '1s', 'interval', { ms: MIN_INTERVAL_MS });
      if (!args.once) {
        if (args.json) throw new UsageError('--json: only with --once (the live view is for people)', 'json');
        if (!process.stdout.isTTY) {
          throw new UsageError(
            'top: standard output is not a terminal; use `runwarden top --once` to print one frame',
            'once',
          );
        }
      }
      const store = await openStore(config.store, { create: false });
      try {
        if (!args.once) return await runLiveView(store, config, intervalMs);
        const snapshot = await readTopSnapshot(store, config.process.log_dir, Date.now, config);
        if (args.json) return printJson(snapshot);
        const view: TopView = { location: store.location, snapshot, intervalMs, live: false };
        process.stdout.write(`${renderTop(view, printedFrameSize(), Date.now()).join('\n')}\n`);
      } finally {
        await store.close();
      }
    }),
};

/**
 * Refreshes and redraws until a quit key or a signal; resolves with the exit code, the terminal restored.
 * A failed refresh keeps the last data on screen and names the error on the status line.
 */
function runLiveView(store: RunStore, config: Config, intervalMs: number): Promise<number> {
  const screen = new LiveScreen(process.stdin, process.stdout);
  const view: TopView = { location: store.location, snapshot: null, intervalMs, live: true };
  return new Promise<number>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const signalHandlers = new Map<NodeJS.Signals, () => void>();

    const end = (outcome: { code: number } | { error: unknown }) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      for (const [signal, handler] of signalHandlers) process.off(signal, handler);
      process.stdout.off('resize', redraw);
      process.stdout.off('error', onOutputError);
      process.off('exit', restoreAtExit);
      screen.restore();
      if ('code' in outcome) resolve(outcome.code);
      else reject(outcome.error);
    };
    const restoreAtExit = () => screen.restore();
    const onOutputError = () => end({ code: KILLED_BY.SIGHUP ?? 1 });
    function redraw() {
      if (ended) return;
      try {
        screen.draw(renderTop(view, screen.size(), Date.now()));
      } catch (error) {
        end({ error });
      }
    }
    const refresh = async () => {
      try {
        view.snapshot = await readTopSnapshot(store, config.process.log_dir, Date.now, config);
        delete view.error;
      } catch (error) {
        view.error = error instanceof Error ? error.message : String(error);
      }
      if (ended) return;
      redraw();
      timer = setTimeout(() => void refresh(), intervalMs);
    };

    signalHandlers.set('SIGINT', () => end({ code: 0 }));
    for (const signal of ['SIGTERM', 'SIGHUP'] as const) signalHandlers.set(signal, () => end({ code: KILLED_BY[signal] ?? 1 }));
    for (const [signal, handler] of signalHandlers) process.on(signal, handler);
    process.stdout.on('resize', redraw);
    process.stdout.on('error', onOutputError);
    process.on('exit', restoreAtExit);
    try {
      screen.enter((key) => {
        if (key.some((byte) => QUIT_KEYS.has(byte))) end({ code: 0 });
      });
    } catch (error) {
      end({ error });
      return;
    }
    redraw();
    void refresh();
  });
}
