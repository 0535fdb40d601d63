import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { isSameProcess } from '../../src/process/proc.js';

// Runs the real CLI (src/cli/main.ts through tsx) as a child process, so tests see exactly what a user
// sees: exit codes, stdout, stderr, signals.

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../..');
export const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;
export const cliEntry = join(repoRoot, 'src/cli/main.ts');

/** Environment for children: no RUNWARDEN_* from the developer's shell leaks into a test. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('RUNWARDEN_')) env[key] = value;
  }
  return { ...env, ...extra };
}

/** The program and arguments that run the CLI with `args` (for a test that spawns it its own way). */
export function cliCommand(args: string[]): [string, string[]] {
  return [process.execPath, ['--import', tsxLoader, cliEntry, ...args]];
}

export function runCli(args: string[], options: { cwd: string; env?: Record<string, string>; input?: string }) {
  return execa(process.execPath, ['--import', tsxLoader, cliEntry, ...args], {
    cwd: options.cwd,
    env: cleanEnv(options.env),
    extendEnv: false,
    reject: false,
    ...(options.input !== undefined ? { input: options.input } : { stdin: 'ignore' as const }),
  });
}

/** Starts a long-running CLI command (the daemon); the caller must stop it. */
export function startCli(args: string[], options: { cwd: string; env?: Record<string, string> }): ResultPromise {
  return execa(process.execPath, ['--import', tsxLoader, cliEntry, ...args], {
    cwd: options.cwd,
    env: cleanEnv(options.env),
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    all: true,
  }) as unknown as ResultPromise;
}

export function tempDir(prefix = 'runwarden-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function writeConfig(dir: string, yaml: string): string {
  const file = join(dir, 'runwarden.yaml');
  writeFileSync(file, yaml);
  return file;
}

/** Polls `check` until it returns a truthy value or the deadline passes; never a bare sleep. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  { timeoutMs = 20_000, intervalMs = 50 } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last as NonNullable<T>;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out waiting for ${what} (last value: ${JSON.stringify(last)})`);
}

/** True while a process with this pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  return isSameProcess(pid, undefined);
}
