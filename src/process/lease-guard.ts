// The lease guard (DESIGN §1 "Fenced leases", "Real supervision"): one small bash process per daemon (and per
// foreground `runwarden process N`) that binds each command to its lease. The daemon tells it which process
// groups it runs and renews each one's deadline whenever the run's lease heartbeat reached the store. The
// guard kills a group whose deadline passed (its daemon is frozen: SIGSTOP, a VM pause, a stuck system call;
// or its heartbeats cannot reach the store), and every group it watches when its stdin reaches EOF (the
// daemon died, whatever killed it). It runs in its own session, so a signal to the daemon's terminal or
// process group does not reach it, and it ignores every catchable signal.

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';
import { LEASE_GUARD_SCRIPT } from './lease-guard.sh.js';

/** The guard's name in `ps` (its $0). */
export const LEASE_GUARD_NAME = 'runwarden-lease-guard';

/** The guard cannot be started on this host (no bash in PATH): a host problem, refused at start with exit 2. */
export class LeaseGuardUnavailableError extends Error {
  readonly exitCode = 2;
  constructor(message: string) {
    super(message);
    this.name = 'LeaseGuardUnavailableError';
  }
}

export interface LeaseGuard {
  /** Pid of the guard process. */
  readonly pid: number;
  /**
   * Watch group `pgid` (its leader started at `procStart`, /proc field 22): kill it once `deadline` (ms since
   * boot, readUptimeMs) passed without a renewal; a deadline already past kills it at once.
   */
  watch(pgid: number, procStart: number, deadline: number): void;
  /** Move the group's deadline to `deadline` (ms since boot); an earlier one is ignored. */
  renew(pgid: number, deadline: number): void;
  /** Stop watching the group (its command has ended). */
  forget(pgid: number): void;
  /**
   * Before a spawn: once `deadline` passes without a renewal, kill the groups of every process carrying
   * RUNWARDEN_ATTEMPT_ID=`marker` (found in /proc). Covers the command between its spawn and its watch line, and
   * descendants that left its group.
   */
  watchMarker(marker: string, deadline: number): void;
  renewMarker(marker: string, deadline: number): void;
  forgetMarker(marker: string): void;
  /** Called with the group's number when the guard SIGTERMed it because its deadline passed. */
  onExpired(listener: (pgid: number) => void): void;
  /**
   * Called once if the guard ends without close() having been called (killed, crashed): commands are no longer
   * bound to their leases, which a crash-only daemon treats as fatal.
   */
  onLost(listener: (reason: string) => void): void;
  /** Ends the guard's stdin: it kills what it still watches (nothing, after a clean stop) and exits. */
  close(): Promise<void>;
}

export interface LeaseGuardOptions {
  /** Wait between the group's SIGTERM and its SIGKILL (timeouts.signal_escalate). */
  escalateMs: number;
  /** PATH to look for bash in; default process.env.PATH. */
  path?: string;
  /**
   * The RUNWARDEN_DAEMON value every command of this daemon carries: at EOF the guard also kills the groups of
   * processes carrying it that it was never told to watch (the daemon died between a spawn and its watch line).
   */
  daemonTag?: string;
}

/** Absolute path of bash in `path`, or undefined. */
export function findBash(path = process.env.PATH ?? ''): string | undefined {
  for (const dir of [...path.split(delimiter), '/bin', '/usr/bin']) {
    if (!dir) continue;
    const candidate = join(dir, 'bash');
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Starts the guard. Throws LeaseGuardUnavailableError when bash cannot be found. Lines written before the guard
 * is up wait in its pipe, so it is usable at once; it never keeps the Node process alive by itself.
 */
export function startLeaseGuard(options: LeaseGuardOptions): LeaseGuard {
  const bash = findBash(options.path);
  if (!bash) {
    throw new LeaseGuardUnavailableError(
      'bash not found in PATH, /bin or /usr/bin: runwarden needs bash (4 or newer) for its lease guard, ' +
        'the watchdog that kills a command whose daemon froze or died; install bash',
    );
  }
  const escalateMs = Math.max(0, Math.round(options.escalateMs));
  // --norc and a bare environment: no BASH_ENV or profile of the operator's runs inside the guard.
  const child: ChildProcessByStdio<Writable, Readable, null> = spawn(
    bash,
    ['--norc', '--noprofile', '-c', LEASE_GUARD_SCRIPT, LEASE_GUARD_NAME, String(escalateMs)],
    {
      detached: true,
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { LC_ALL: 'C', ...(options.daemonTag !== undefined ? { GUARD_TAG: options.daemonTag } : {}) },
    },
  );
  child.unref();
  const stdin = child.stdin;
  const stdout = child.stdout;
  // Neither end of the pipes may keep the event loop alive; close() ends the guard explicitly.
  (stdin as unknown as { unref?: () => void }).unref?.();
  (stdout as unknown as { unref?: () => void }).unref?.();
  stdin.on('error', () => undefined); // EPIPE after the guard died: reported through onLost

  const expiredListeners: Array<(pgid: number) => void> = [];
  const lostListeners: Array<(reason: string) => void> = [];
  let closing = false;
  let lostReason: string | undefined;
  const lose = (reason: string) => {
    if (closing || lostReason !== undefined) return;
    lostReason = reason;
    for (const listener of lostListeners) listener(reason);
  };
  const exited = new Promise<void>((resolve) => {
    child.once('error', (error) => {
      lose(`lease guard could not run (${bash}): ${error.message}`);
      resolve();
    });
    child.once('exit', (code, signal) => {
      lose(`lease guard (pid ${child.pid ?? '?'}) ended unexpectedly (${signal ?? `exit code ${code}`})`);
      resolve();
    });
  });
  createInterface({ input: stdout }).on('line', (line) => {
    const [word, rest] = [line.split(' ', 1)[0], line.slice(line.indexOf(' ') + 1)];
    if (word === 'expired') {
      const pgid = Number(rest);
      for (const listener of expiredListeners) listener(pgid);
    } else if (word === 'error') {
      // A line the guard could not read is a bug in this file, never input from a command: make it loud.
      lose(`lease guard refused a request: ${rest}`);
    }
  });

  const send = (line: string) => {
    if (closing || lostReason !== undefined || stdin.destroyed) return;
    stdin.write(`${line}\n`);
  };
  const int = (n: number) => Math.round(n);
  // Markers are ours (UUIDs); anything else would be a bug here, never a command's input.
  const markerLine = (verb: string, marker: string, rest: string) => {
    if (/^[A-Za-z0-9-]{1,64}$/.test(marker)) send(`${verb} ${marker}${rest}`);
  };
  return {
    pid: child.pid ?? -1,
    watch: (pgid, procStart, deadline) => send(`watch ${int(pgid)} ${int(procStart)} ${int(deadline)}`),
    renew: (pgid, deadline) => send(`renew ${int(pgid)} ${int(deadline)}`),
    forget: (pgid) => send(`forget ${int(pgid)}`),
    watchMarker: (marker, deadline) => markerLine('mwatch', marker, ` ${int(deadline)}`),
    renewMarker: (marker, deadline) => markerLine('mrenew', marker, ` ${int(deadline)}`),
    forgetMarker: (marker) => markerLine('mforget', marker, ''),
    onExpired: (listener) => void expiredListeners.push(listener),
    onLost: (listener) => {
      lostListeners.push(listener);
      if (lostReason !== undefined) listener(lostReason);
    },
    close: async () => {
      closing = true;
      child.ref(); // waiting for its exit must keep the event loop alive
      stdin.end();
      await exited;
    },
  };
}
