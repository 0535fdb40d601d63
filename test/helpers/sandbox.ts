import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { runCli, startCli, tempDir } from './cli.js';

// The per-test scaffolding of the integration tests: a fresh temp dir, the SQLite store on <dir>/runs.db opened
// on demand, and every child process started by the test SIGKILLed and awaited after it, then the dir removed.

/** A child process the sandbox can reap: killed with SIGKILL, then awaited. */
export type Reapable = { kill: (signal: NodeJS.Signals) => unknown; pid?: number | undefined } & PromiseLike<unknown>;

export interface Sandbox {
  /** The current test's temp dir. */
  readonly dir: string;
  /** Writes an executable `#!/bin/sh` script `name` into the dir; returns its path. */
  script(name: string, body: string): string;
  /** The store on <dir>/runs.db, opened on first use and closed after the test. */
  openStore(): Promise<RunStore>;
  /** Runs a CLI command to its end in the dir (runCli). */
  run(args: string[], options?: { env?: Record<string, string>; input?: string }): ReturnType<typeof runCli>;
  /** Starts a CLI command in the dir (startCli), reaped after the test. */
  start(args: string[], options?: { env?: Record<string, string> }): ReturnType<typeof startCli>;
  /** Reaps `child` after the test; with `group`, its process group (pgid = its pid) is SIGKILLed as well. */
  track<T extends Reapable>(child: T, options?: { group?: boolean }): T;
}

/** Registers beforeEach/afterEach hooks for the calling file (or describe block) and returns the sandbox. */
export function useSandbox(prefix?: string): Sandbox {
  let dir: string | undefined;
  let cleanup = () => {};
  let store: RunStore | undefined;
  const children: Reapable[] = [];
  const groups: number[] = [];

  beforeEach(() => {
    ({ dir, cleanup } = tempDir(prefix));
  });

  afterEach(async () => {
    try {
      for (const child of children.splice(0)) {
        child.kill('SIGKILL');
        await child;
      }
      for (const pgid of groups.splice(0)) {
        try {
          process.kill(-pgid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await store?.close();
    } finally {
      store = undefined;
      cleanup();
      dir = undefined;
    }
  });

  const sandbox: Sandbox = {
    get dir() {
      if (dir === undefined) throw new Error('the sandbox dir exists only while a test runs');
      return dir;
    },
    script(name, body) {
      const path = join(sandbox.dir, name);
      writeFileSync(path, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
      return path;
    },
    async openStore() {
      store ??= await openStore(`sqlite:${join(sandbox.dir, 'runs.db')}`);
      return store;
    },
    run(args, options = {}) {
      return runCli(args, { cwd: sandbox.dir, ...options });
    },
    start(args, options = {}) {
      return sandbox.track(startCli(args, { cwd: sandbox.dir, ...options }));
    },
    track(child, options = {}) {
      children.push(child);
      if (options.group && child.pid !== undefined) groups.push(child.pid);
      return child;
    },
  };
  return sandbox;
}
