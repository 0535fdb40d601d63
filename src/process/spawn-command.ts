// Spawn the processing command in its own process group (DESIGN §1 "Real supervision", §4 Supervisor, §5).
// No XState here: the supervisor machine drives a CommandHandle from a callback actor.
//
// Hot path (benchmarks spawn thousands of commands): per spawn there is one mkdir + open of the log file, one
// read of /proc/<pid>/stat (the start time) and, after the leader exited, one `kill(-pgid, 0)` and one
// asynchronous pass over /proc for processes carrying the attempt's marker (RUNWARDEN_ATTEMPT_ID: processes that
// left the group with setsid or a double fork); it reads the environment only of processes younger than the
// leader. /proc is scanned synchronously only when something is left in the group, or when the caller signals.

import {
  closeSync,
  constants as fsConstants,
  createWriteStream,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  statSync,
  unlinkSync,
  type Stats,
  type WriteStream,
} from 'node:fs';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { StringDecoder } from 'node:string_decoder';
import { execa } from 'execa';
import {
  ATTEMPT_MARKER_VARIABLE,
  findMarkedProcesses,
  killMarkedProcessesNow,
  newAttemptMarker,
  sweepMarkedProcesses,
} from './attempt-marker.js';
import { groupAlive, groupEscapees, pollUntil, signalGroup, signalEscapees, signalVerified } from './kill-group.js';
import { isSameProcess, processGroupMembers, readProcStart } from './proc.js';

export interface CommandSpec {
  argv: string[];
  cwd: string;
  /**
   * The command's COMPLETE environment: it is passed with execa's `extendEnv: false`, so nothing of
   * process.env is added here. The caller merges (e.g. `{ ...process.env, ...config.env, RUNWARDEN_* }`);
   * without PATH in it, argv[0] must be a path.
   */
  env: Record<string, string>;
  /** Output of stdout and stderr is appended here (parent directories are created). */
  logFile: string;
  /** Lines of stderr kept for `stderrTail`; default 20. */
  stderrTailLines?: number;
  /**
   * The attempt's RUNWARDEN_ATTEMPT_ID; a fresh one when absent. Given by a caller that announced it to the lease
   * guard before the spawn, so the command is guarded from its first instruction.
   */
  attemptMarker?: string;
  /**
   * How long a process of the attempt that left its group and is still alive after the leader exited gets
   * between SIGTERM and SIGKILL (the daemon passes timeouts.signal_escalate); default 0: SIGKILL at once.
   */
  escalateMs?: number;
  /**
   * Bytes of command output the log keeps; what comes later is discarded after one marker line (it still counts
   * as output for the caller's listeners). Default: no bound.
   */
  maxLogBytes?: number;
}

export interface CommandExit {
  /** Exit code of the group leader; null when it was ended by a signal. */
  exitCode: number | null;
  /** Signal that ended the group leader (e.g. 'SIGKILL'); null when it exited by itself. */
  signal: string | null;
  /** Last `stderrTailLines` lines of stderr ('' when none). */
  stderrTail: string;
  /** From the spawn to the leader's exit (not including the clean-up of stragglers). */
  durationMs: number;
  /**
   * Processes still alive after the leader exited that were killed: members of the group, descendants that had
   * left the group and were recorded when the command was signalled, and processes carrying the attempt's marker.
   */
  groupLeftovers: number;
  /** Processes of the attempt still alive when `exited` gave up waiting (normally 0; > 0 means unkillable). */
  groupRemaining: number;
  /** Set when the log file could not be written (e.g. disk full); output after that point was discarded. */
  logError?: string;
  /** Bytes of output discarded because the log reached `maxLogBytes` (0 when it never did). */
  discardedBytes: number;
}

export interface CommandHandle {
  pid: number;
  pgid: number;
  procStart: number | undefined;
  /** The value of RUNWARDEN_ATTEMPT_ID in the command's environment (and so in every process it starts). */
  attemptMarker: string;
  /**
   * Resolves once the leader exited AND no process of its group, and none carrying the attempt's marker, is
   * left (stragglers are SIGKILLed); never rejects.
   */
  exited: Promise<CommandExit>;
  /**
   * Called whenever the command writes bytes to stdout or stderr (once per chunk read, so possibly very often:
   * keep it cheap). Returns a function that removes the listener.
   */
  onOutput(listener: () => void): () => void;
  /** Signal the whole group and every process carrying the attempt's marker; on SIGKILL also tree-kill descendants that left the group. */
  signal(signal: 'SIGTERM' | 'SIGKILL'): void;
}

export class SpawnError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'SpawnError';
  }
}

/** How long `exited` waits for the group to empty after SIGKILLing stragglers. */
export const STRAGGLER_KILL_TIMEOUT_MS = 5_000;
/** How long `exited` waits for stdout/stderr to close once the group is empty (a process that left the group may hold them). */
export const STDIO_CLOSE_GRACE_MS = 1_000;
/** Characters of stderr kept in memory to cut the tail from. */
const STDERR_KEEP_CHARS = 64 * 1024;

function codeOf(error: unknown): string | undefined {
  return error && typeof error === 'object' && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}

function stamp(): string {
  return new Date().toISOString();
}

function spawnFailureMessage(spec: CommandSpec, code: string | undefined, detail: string | undefined): string {
  const name = JSON.stringify(spec.argv[0]);
  let cwdOk = true;
  try {
    cwdOk = statSync(spec.cwd).isDirectory();
  } catch {
    cwdOk = false;
  }
  if (!cwdOk) return `cannot start ${name}: working directory ${JSON.stringify(spec.cwd)} does not exist or is not a directory`;
  if (code === 'ENOENT') return `cannot start ${name}: executable not found${spec.argv[0].includes('/') ? '' : ' in PATH'}`;
  if (code === 'EACCES') return `cannot start ${name}: permission denied (not executable?)`;
  return `cannot start ${name}: ${code ?? 'error'}${detail ? ` (${detail})` : ''}`;
}

const LOG_OPEN_FLAGS = fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW;

function kindOf(stat: Stats): string {
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isSymbolicLink()) return 'a symbolic link';
  if (stat.isSocket()) return 'a socket';
  if (stat.isCharacterDevice() || stat.isBlockDevice()) return 'a device';
  if (stat.isDirectory()) return 'a directory';
  return 'something other than a regular file';
}

/**
 * Opens an attempt log for appending. A previous attempt's command can write into the log directory, so what is
 * at this path may be a FIFO (a blocking open would freeze the daemon), a symbolic link, a device: the open
 * never blocks (O_NONBLOCK) nor follows a link (O_NOFOLLOW), and what is not a regular file is removed and a
 * fresh file created. A directory there is an error (the attempt fails with it), never removed.
 */
function openAttemptLog(path: string): { fd: number; replaced?: string } {
  let fd: number | undefined;
  try {
    fd = openSync(path, LOG_OPEN_FLAGS | fsConstants.O_NONBLOCK, 0o644);
    if (fstatSync(fd).isFile()) return { fd };
    closeSync(fd);
    fd = undefined;
  } catch (error) {
    if (fd !== undefined) closeSync(fd);
    // ENXIO: a FIFO nobody reads; ELOOP: a symbolic link; EISDIR: a directory.
    const code = codeOf(error);
    if (code !== 'ENXIO' && code !== 'ELOOP' && code !== 'EWOULDBLOCK' && code !== 'EAGAIN') throw error;
  }
  const stat = lstatSync(path);
  if (stat.isDirectory()) throw new Error('it is a directory');
  const replaced = kindOf(stat);
  unlinkSync(path);
  // O_EXCL: if something else appears here meanwhile, fail rather than open it.
  return { fd: openSync(path, LOG_OPEN_FLAGS | fsConstants.O_EXCL, 0o644), replaced };
}

/**
 * Start `spec.argv` (never through a shell) as the leader of a new process group, its output appended to
 * `spec.logFile`. Rejects with SpawnError when the executable cannot be started (or the log file not opened).
 */
export async function spawnCommand(spec: CommandSpec): Promise<CommandHandle> {
  const argv0 = spec.argv[0];
  if (spec.argv.length === 0 || typeof argv0 !== 'string' || argv0 === '') {
    throw new SpawnError('cannot start the command: argv is empty', 'EINVAL');
  }
  const tailLines = Math.max(0, spec.stderrTailLines ?? 20);
  const escalateMs = Math.max(0, spec.escalateMs ?? 0);
  const attemptMarker = spec.attemptMarker ?? newAttemptMarker();

  let fd: number;
  let replaced: string | undefined;
  try {
    mkdirSync(dirname(spec.logFile), { recursive: true });
    ({ fd, replaced } = openAttemptLog(spec.logFile));
  } catch (error) {
    throw new SpawnError(`cannot open log file ${JSON.stringify(spec.logFile)}: ${(error as Error).message}`, codeOf(error));
  }
  const log: WriteStream = createWriteStream(spec.logFile, { fd, flags: 'a' });
  let logError: string | undefined;
  const streams: Readable[] = [];
  log.on('error', (error) => {
    logError ??= error.message;
    for (const s of streams) s.resume(); // never leave the command blocked on a full pipe
  });
  log.on('drain', () => {
    for (const s of streams) s.resume();
  });
  const writeLog = (chunk: string | Buffer): void => {
    if (logError !== undefined || log.destroyed) return;
    if (!log.write(chunk)) for (const s of streams) s.pause();
  };
  const closeLog = async (footer: string): Promise<void> => {
    if (logError === undefined && !log.destroyed) log.end(footer);
    else log.destroy();
    await finished(log).catch(() => undefined);
  };

  if (replaced) writeLog(`=== runwarden ${stamp()} removed ${replaced} found at the log's path\n`);
  writeLog(`=== runwarden ${stamp()} start argv=${JSON.stringify(spec.argv)} cwd=${JSON.stringify(spec.cwd)}\n`);
  const started = performance.now();

  let subprocess;
  try {
    subprocess = execa(argv0, spec.argv.slice(1), {
      cwd: spec.cwd,
      env: { ...spec.env, [ATTEMPT_MARKER_VARIABLE]: attemptMarker },
      extendEnv: false,
      shell: false,
      detached: true,
      cleanup: false,
      reject: false,
      buffer: false,
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
      forceKillAfterDelay: false,
    });
  } catch (error) {
    await closeLog(`=== runwarden ${stamp()} spawn failed: ${(error as Error).message}\n`);
    throw new SpawnError(spawnFailureMessage(spec, codeOf(error), (error as Error).message), codeOf(error));
  }
  // execa's promise (reject: false) resolves with an error result rather than rejecting; the catch is a guard
  // so no path can leave an unhandled rejection behind. It settles only once stdout and stderr closed.
  const settled: Promise<unknown> = subprocess.then(
    (result) => result,
    (error: unknown) => error,
  );

  const pid = subprocess.pid;
  if (pid === undefined) {
    const result = (await settled) as { code?: string; cause?: unknown; shortMessage?: string } | undefined;
    const code = result?.code ?? codeOf(result?.cause);
    const message = spawnFailureMessage(spec, code, result?.shortMessage?.split('\n').at(-1));
    await closeLog(`=== runwarden ${stamp()} spawn failed: ${message}\n`);
    throw new SpawnError(message, code);
  }
  // Synchronously after the spawn: the leader cannot have been reaped yet, so this is its start time.
  const procStart = readProcStart(pid);
  const pgid = pid;
  const markerScope = { marker: attemptMarker, ...(procStart !== undefined ? { since: procStart } : {}) };

  const listeners: Array<() => void> = [];
  const decoder = new StringDecoder('utf8');
  let stderrKept = '';
  const maxLogBytes = spec.maxLogBytes ?? Infinity;
  let outputBytes = 0;
  let discardedBytes = 0;
  let lastByteNewline = true;
  /** The command's output into the log, up to maxLogBytes; then one marker line, and the rest only counted. */
  const logOutput = (chunk: string | Buffer): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    const room = maxLogBytes - outputBytes;
    if (room <= 0) {
      discardedBytes += bytes.length;
      return;
    }
    const kept = bytes.length <= room ? bytes : bytes.subarray(0, room);
    outputBytes += kept.length;
    if (kept.length > 0) {
      writeLog(kept);
      lastByteNewline = kept[kept.length - 1] === 0x0a;
    }
    if (kept.length < bytes.length) {
      discardedBytes += bytes.length - kept.length;
      writeLog(
        `${lastByteNewline ? '' : '\n'}=== runwarden ${stamp()} log cut at ${maxLogBytes} bytes of output;` +
          ' further output discarded ===\n',
      );
      lastByteNewline = true;
    }
  };
  const onData = (chunk: string | Buffer, isStderr: boolean): void => {
    logOutput(chunk);
    if (isStderr && tailLines > 0) {
      stderrKept += typeof chunk === 'string' ? chunk : decoder.write(chunk);
      if (stderrKept.length > 2 * STDERR_KEEP_CHARS) stderrKept = stderrKept.slice(-STDERR_KEEP_CHARS);
    }
    for (const listener of listeners) listener();
  };
  if (subprocess.stdout) {
    streams.push(subprocess.stdout);
    subprocess.stdout.on('data', (chunk: string | Buffer) => onData(chunk, false));
  }
  if (subprocess.stderr) {
    streams.push(subprocess.stderr);
    subprocess.stderr.on('data', (chunk: string | Buffer) => onData(chunk, true));
  }

  /** True once the group is known empty: from then on its number may be reused and must not be signalled. */
  let groupDone = false;
  /** True once `exited` is settled: every process of the attempt is gone, nothing is left to signal. */
  let attemptOver = false;
  /** Descendants that had left the group when the caller signalled it (pid -> start time). */
  const escapees = new Map<number, number>();
  const recordEscapees = (): void => {
    for (const e of groupEscapees(pgid, { leaderPid: pid, procStart })) escapees.set(e.pid, e.starttime);
  };
  const killEscapees = (): number => {
    let n = 0;
    for (const [p, start] of escapees) {
      if (!isSameProcess(p, start)) continue;
      n++;
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    return n;
  };

  const finish = async (exitCode: number | null, signal: NodeJS.Signals | null): Promise<CommandExit> => {
    // Runs synchronously up to the first await, straight from the 'exit' event: the leader has just been reaped
    // and, while anything is left in its group, the group's number cannot be reused.
    const durationMs = performance.now() - started;
    let groupLeftovers = 0;
    let groupRemaining = 0;
    let alive = true;
    try {
      process.kill(-pgid, 0);
    } catch {
      alive = false; // ESRCH: nothing left, not even a zombie; the common case
    }
    if (alive) {
      const members = processGroupMembers(pgid);
      if (members.length > 0) {
        groupLeftovers += members.length;
        signalGroup(pgid, 'SIGKILL');
        const emptied = await pollUntil(() => !groupAlive(pgid), performance.now() + STRAGGLER_KILL_TIMEOUT_MS, 10);
        if (!emptied) groupRemaining = processGroupMembers(pgid).length;
      }
    }
    if (groupRemaining === 0) groupDone = true;
    if (escapees.size > 0) groupLeftovers += killEscapees();
    // Processes that left the group (setsid, a double fork into a new session) still carry the marker.
    const swept = await sweepMarkedProcesses(markerScope, escalateMs);
    groupLeftovers += swept.found;
    groupRemaining += swept.remaining;

    // stdout/stderr close when every holder is gone; one that left the group may keep them open: stop reading.
    let graceTimer: NodeJS.Timeout | undefined;
    const closed = await Promise.race([
      settled.then(() => true),
      new Promise<boolean>((resolve) => {
        graceTimer = setTimeout(() => resolve(false), STDIO_CLOSE_GRACE_MS);
      }),
    ]);
    clearTimeout(graceTimer);
    if (!closed) for (const s of streams) s.destroy();

    let stderrTail = '';
    if (tailLines > 0) {
      stderrKept += decoder.end();
      const lines = stderrKept.split(/\r?\n/);
      if (lines.at(-1) === '') lines.pop();
      stderrTail = lines.slice(-tailLines).join('\n');
    }
    const exit: CommandExit = {
      exitCode,
      signal,
      stderrTail,
      durationMs: Math.round(durationMs),
      groupLeftovers,
      groupRemaining,
      discardedBytes,
    };
    await closeLog(
      `${lastByteNewline ? '' : '\n'}=== runwarden ${stamp()} exit code=${exitCode} signal=${signal} duration_ms=${exit.durationMs}` +
        ` leftovers=${groupLeftovers}${groupRemaining > 0 ? ` remaining=${groupRemaining}` : ''}` +
        `${discardedBytes > 0 ? ` discarded_bytes=${discardedBytes}` : ''}\n`,
    );
    if (logError !== undefined) exit.logError = logError;
    attemptOver = true;
    return exit;
  };

  const exited = new Promise<CommandExit>((resolve) => {
    subprocess.once('exit', (code: number | null, signal: NodeJS.Signals | null) => {
      finish(code, signal).then(resolve, (error: unknown) => {
        // Not expected (signalGroup only throws on EPERM); still resolve, never reject.
        groupDone = true;
        resolve({
          exitCode: code,
          signal,
          stderrTail: `runwarden: clean-up after exit failed: ${(error as Error).message}`,
          durationMs: Math.round(performance.now() - started),
          groupLeftovers: 0,
          groupRemaining: 0,
          discardedBytes: 0,
        });
      });
    });
  });

  return {
    pid,
    pgid,
    procStart,
    attemptMarker,
    exited,
    onOutput(listener: () => void): () => void {
      listeners.push(listener);
      return () => {
        const i = listeners.indexOf(listener);
        if (i >= 0) listeners.splice(i, 1);
      };
    },
    signal(sig: 'SIGTERM' | 'SIGKILL'): void {
      if (attemptOver) return;
      if (groupDone) {
        // The group is gone but the sweep of marked processes may still be under way: a kill must not wait.
        if (sig === 'SIGKILL') killMarkedProcessesNow(markerScope);
        return;
      }
      recordEscapees();
      signalGroup(pgid, sig);
      if (sig === 'SIGKILL') {
        killEscapees();
        signalEscapees(pgid, 'SIGKILL', { leaderPid: pid, procStart });
        killMarkedProcessesNow(markerScope);
      } else {
        const termed = new Set<number>();
        for (const p of findMarkedProcesses(markerScope)) {
          if (p.pgrp === pgid) continue;
          termed.add(p.pid);
          signalVerified(p.pid, p.starttime, 'SIGTERM');
        }
        for (const [p, start] of escapees) {
          if (termed.has(p) || !isSameProcess(p, start)) continue;
          try {
            process.kill(p, 'SIGTERM');
          } catch {
            // gone meanwhile
          }
        }
      }
    },
  };
}
