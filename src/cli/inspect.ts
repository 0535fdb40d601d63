import type WebSocket from 'ws';
import type { Argv, CommandModule } from 'yargs';
import type { Config } from '../config/schema.js';
import { UsageError } from '../errors.js';
import { configFromArgs, integerFlag, printJson, runCommand, table, type GlobalArgs } from './common.js';
import {
  createTransitionTracker,
  formatInspectLine,
  inspectLineJson,
  type InspectLine,
  type TransitionTracker,
} from './inspect-transitions.js';

// `runwarden inspect`: reads the live state machines of a daemon started with `--inspect`. With --follow, one
// line per transition of every host, run and supervisor actor as it happens; without, the state of each actor
// now (what the daemon announces on connecting), then exit.

interface InspectArgs extends GlobalArgs {
  follow?: boolean;
  all?: boolean;
  url?: string;
  port?: string;
}

/** How long a one-shot `runwarden inspect` listens: the daemon announces its live actors at once on connect. */
export const SNAPSHOT_WINDOW_MS = 1000;
const CONNECT_TIMEOUT_MS = 5000;

/** Where the daemon of this configuration listens; an address that means "every interface" is reached on loopback. */
function connectHost(bind: string): string {
  if (bind === '' || bind === '0.0.0.0') return '127.0.0.1';
  if (bind === '::') return '[::1]';
  return bind.includes(':') ? `[${bind}]` : bind;
}

export function inspectUrl(args: { url?: string; port?: string | number }, config: Config): string {
  if (args.url !== undefined) {
    if (!/^wss?:\/\/[^/\s]+/.test(args.url)) {
      throw new UsageError(`--url: expected ws://HOST:PORT, got ${JSON.stringify(args.url)}`, 'url');
    }
    return args.url;
  }
  const port = integerFlag(args.port, 'port', { min: 1, max: 65535 }) ?? config.observe.inspect_port;
  if (port === 0) {
    throw new UsageError(
      'observe.inspect_port is 0 (the daemon picks a free port and logs it): give that port with --port N',
      'port',
    );
  }
  return `ws://${connectHost(config.observe.bind)}:${port}`;
}

/**
 * Connects and hands every message to `onMessage`. The daemon announces its actors right after the handshake;
 * those frames can arrive with the handshake and be emitted before an `await` on the opening returns, so the
 * listener is attached before the socket opens.
 */
async function connect(url: string, onMessage: (message: unknown) => void): Promise<WebSocket> {
  // Loaded here, not at start-up: every other command would pay for the WebSocket library.
  const { default: WebSocket } = await import('ws');
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { handshakeTimeout: CONNECT_TIMEOUT_MS });
    socket.on('message', (data) => {
      let message: unknown;
      try {
        message = JSON.parse(data.toString());
      } catch {
        return; // not the inspector's JSON: nothing to show
      }
      onMessage(message);
    });
    const fail = (error: Error) => {
      socket.terminate();
      reject(
        new Error(
          `cannot connect to the daemon's inspector at ${url}: ${error.message}; ` +
            'start the daemon with `runwarden daemon --inspect` (or give the right --url/--port)',
        ),
      );
    };
    socket.once('error', fail);
    socket.once('open', () => {
      socket.off('error', fail);
      resolve(socket);
    });
  });
}

/** Prints every transition until the daemon closes the connection (it says goodbye when it stops). */
async function follow(socket: WebSocket): Promise<number> {
  return new Promise((resolve) => {
    socket.on('error', (error) => process.stderr.write(`runwarden: inspector connection: ${error.message}\n`));
    socket.on('close', (code, reason) => {
      const why = reason.toString() || `code ${code}`;
      process.stderr.write(`runwarden: the daemon closed the inspector connection (${why})\n`);
      resolve(code === 1000 || code === 1001 ? 0 : 1);
    });
  });
}

async function snapshotNow(socket: WebSocket, tracker: TransitionTracker, json: boolean): Promise<number> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, SNAPSHOT_WINDOW_MS);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  socket.close(1000);
  const actors = tracker.current();
  if (json) printJson(actors);
  else if (actors.length === 0) process.stdout.write('no state machine actor announced itself\n');
  else process.stdout.write(`${table(['ACTOR', 'STATE'], actors.map(({ actor, state }) => [actor, state]))}\n`);
  return 0;
}

export const inspectCommand: CommandModule<GlobalArgs, InspectArgs> = {
  command: 'inspect',
  describe: "the daemon's live state machines (needs `runwarden daemon --inspect`)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('follow', {
        alias: 'f',
        type: 'boolean',
        describe: 'print every transition of every host, run and supervisor actor as it happens',
      })
      .option('all', { type: 'boolean', describe: 'with --follow: every event an actor takes, also when its state stays' })
      .option('url', {
        type: 'string',
        describe: "the inspector's WebSocket (default ws://<observe.bind>:<observe.inspect_port>)",
      })
      .option('port', { type: 'string', describe: 'the inspector port on observe.bind (when the daemon chose one)' })
      .example('$0 inspect', 'the state of each actor of the daemon now')
      .example('$0 inspect -f', 'every transition as it happens: time, actor, from --event--> to')
      .example('$0 inspect -f --json', 'the same, one JSON object per line')
      .example('$0 inspect -f --url ws://127.0.0.1:9400', 'a daemon started with --inspect=9400'),
  handler: (args) =>
    runCommand(async () => {
      const url = inspectUrl(args, configFromArgs(args));
      const json = args.json ?? false;
      const tracker = createTransitionTracker({ all: args.all ?? false });
      const print = (line: InspectLine) =>
        process.stdout.write(`${json ? inspectLineJson(line) : formatInspectLine(line)}\n`);
      if (args.follow) {
        // `runwarden inspect -f | head` closes our stdout: that is the reader's way of saying "enough".
        process.stdout.on('error', (error: NodeJS.ErrnoException) => {
          if (error.code === 'EPIPE') process.exit(0);
        });
      }
      const socket = await connect(url, (message) => {
        const lines = tracker.feed(message);
        if (args.follow) lines.forEach(print);
      });
      return args.follow ? follow(socket) : snapshotNow(socket, tracker, json);
    }),
};
