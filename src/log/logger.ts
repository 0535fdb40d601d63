import winston from 'winston';
import Transport from 'winston-transport';
import type { RunStore } from '../store/run-store.js';
import type { LogPriority } from '../store/types.js';

// Readable lines on a terminal, JSON lines otherwise (journald, files, pipes). Warnings and above (and info
// marked `operator`) also go to the store's operator log, where every host's operators read them (bootstrax).

export const LOG_LEVELS = { fatal: 0, error: 1, warn: 2, info: 3, debug: 4 } as const;
export type LogLevel = keyof typeof LOG_LEVELS;

const PRIORITY_OF: Record<LogLevel, LogPriority> = { debug: 0, info: 1, warn: 2, error: 3, fatal: 4 };

export interface Logger {
  debug(message: string, meta?: LogMeta): void;
  info(message: string, meta?: LogMeta): void;
  warn(message: string, meta?: LogMeta): void;
  error(message: string, meta?: LogMeta): void;
  fatal(message: string, meta?: LogMeta): void;
  /** Resolves once entries already handed to the operator log are written. */
  flush(): Promise<void>;
}

export interface LogMeta {
  number?: number;
  /** An info entry that also belongs in the store's operator log (warnings and worse always go there). */
  operator?: boolean;
  [key: string]: unknown;
}

export interface LoggerOptions {
  level: LogLevel;
  host: string;
  /** Force JSON (true) or text (false); default: text when stderr is a terminal. */
  json?: boolean;
  store?: RunStore;
  stream?: NodeJS.WritableStream;
}

/** Writes warn/error/fatal entries (and info marked `operator`) into the store's operator log; never throws. */
class OperatorLogTransport extends Transport {
  private pending = new Set<Promise<void>>();

  constructor(private readonly store: RunStore, private readonly host: string) {
    super({ level: 'info' });
  }

  override log(info: winston.Logform.TransformableInfo, next: () => void): void {
    const level = info.level as LogLevel;
    // Warnings and worse always; an info entry only when it is meant for operators (a repeated failure).
    if (PRIORITY_OF[level] < 2 && info.operator !== true) {
      next();
      return;
    }
    const number = typeof info.number === 'number' ? info.number : undefined;
    const write = this.store
      .appendLog({
        host: this.host,
        user: `runwarden@${this.host}`,
        priority: PRIORITY_OF[level] ?? 2,
        message: String(info.message),
        ...(number !== undefined ? { number } : {}),
      })
      .catch((error: unknown) => {
        process.stderr.write(`runwarden: could not write the operator log: ${String(error)}\n`);
      });
    this.pending.add(write);
    void write.finally(() => this.pending.delete(write));
    next();
  }

  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }
}

const guarded = new WeakSet<NodeJS.WritableStream>();

/**
 * A closed terminal or pipe (the ssh session ended, a `| tee` killed) makes writes fail with EIO or EPIPE,
 * reported as an 'error' event that would otherwise be an uncaught exception, fatal to a daemon that is
 * stopping cleanly. Lines that cannot be written are dropped; warnings and worse still reach the operator log.
 */
export function dropWriteErrors(stream: NodeJS.WritableStream): void {
  if (guarded.has(stream)) return;
  guarded.add(stream);
  stream.on('error', () => undefined);
}

export function createLogger(options: LoggerOptions): Logger {
  const stream = options.stream ?? process.stderr;
  dropWriteErrors(stream);
  const json = options.json ?? !(stream as NodeJS.WriteStream).isTTY;
  const textFormat = winston.format.printf((info) => {
    // Messages name their run themselves; `number` is for the operator log and JSON consumers.
    const { level, message, timestamp, number: _number, host: _host, operator: _operator, ...rest } = info as Record<
      string,
      unknown
    >;
    const extra = Object.keys(rest);
    const tail = extra.length ? ' ' + extra.map((k) => `${k}=${JSON.stringify(rest[k])}`).join(' ') : '';
    return `${String(timestamp)} ${String(level).toUpperCase().padEnd(5)} ${String(message)}${tail}`;
  });
  const operatorLog = options.store ? new OperatorLogTransport(options.store, options.host) : undefined;
  const logger = winston.createLogger({
    levels: LOG_LEVELS,
    level: options.level,
    defaultMeta: { host: options.host },
    format: winston.format.combine(
      winston.format.timestamp(),
      json ? winston.format.json() : textFormat,
    ),
    transports: [
      new winston.transports.Stream({ stream }),
      ...(operatorLog ? [operatorLog] : []),
    ],
  });
  const at = (level: LogLevel) => (message: string, meta?: LogMeta) => {
    logger.log(level, message, meta ?? {});
  };
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    fatal: at('fatal'),
    flush: async () => {
      // Let winston hand lines logged just now to its transports before waiting for the operator log.
      await new Promise((resolve) => setImmediate(resolve));
      await operatorLog?.flush();
    },
  };
}
