import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Child processes of the benchmarks: daemons started through the compiled CLI, and the workspaces they run
// in. Every process started here is reaped by the benchmark that started it.

/** The environment for children: no RUNWARDEN_* from the caller's shell changes what is measured. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('RUNWARDEN_')) env[key] = value;
  }
  return { ...env, ...extra };
}

export interface Workspace {
  dir: string;
  /** `sqlite:<dir>/runs.db` */
  store: string;
  cleanup(): void;
}

export function makeWorkspace(name: string): Workspace {
  const dir = mkdtempSync(join(tmpdir(), `runwarden-bench-${name}-`));
  return {
    dir,
    store: `sqlite:${join(dir, 'runs.db')}`,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface DaemonSettings {
  host: string;
  slots: number;
  command: string[];
  requireOutput: boolean;
  env?: Record<string, string>;
  /** Durations as the configuration file takes them ("1h", "10s"). */
  timeouts?: Record<string, string>;
}

/** Writes `<dir>/runwarden.yaml` (JSON is YAML, so no quoting can go wrong) and returns its path. */
export function writeDaemonConfig(workspace: Workspace, settings: DaemonSettings): string {
  const file = join(workspace.dir, 'runwarden.yaml');
  const config = {
    store: workspace.store,
    host: settings.host,
    slots: settings.slots,
    log_level: 'info',
    process: {
      command: settings.command,
      output_root: join(workspace.dir, 'out'),
      log_dir: join(workspace.dir, 'logs'),
      require_output: settings.requireOutput,
      clean_output: true,
      env: settings.env ?? {},
    },
    timeouts: settings.timeouts ?? {},
  };
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DaemonProcess {
  child: ChildProcess;
  pid: number;
  exited: Promise<Exit>;
  /** Where its stdout and stderr go (JSON log lines, as under a service manager). */
  logFile: string;
}

/** Starts `node <cli> daemon --config <file> [...args]` in the workspace, its output appended to a file. */
export function spawnDaemon(cli: string, configFile: string, workspace: Workspace, args: string[] = []): DaemonProcess {
  const logFile = join(workspace.dir, 'daemon.log');
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, [cli, 'daemon', '--config', configFile, ...args], {
    cwd: workspace.dir,
    env: cleanEnv(),
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`could not start the daemon (${cli})`);
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return { child, pid: child.pid, exited, logFile };
}

/** Sends `signal`, waits up to `graceMs` for the exit, then SIGKILLs; resolves once the process is gone. */
export async function stopProcess(
  proc: { child: ChildProcess; exited: Promise<Exit> },
  signal: NodeJS.Signals = 'SIGTERM',
  graceMs = 10_000,
): Promise<Exit> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), graceMs);
  });
  const exit = await Promise.race([proc.exited, late]);
  clearTimeout(timer);
  if (exit) return exit;
  proc.child.kill('SIGKILL');
  return proc.exited;
}

/** SIGKILLs a process group; quietly does nothing when it is already gone. */
export function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // gone already
  }
}

/** Polls `check` until it returns a truthy value; throws naming `what` after `timeoutMs`. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  { timeoutMs = 30_000, intervalMs = 20 } = {},
): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
