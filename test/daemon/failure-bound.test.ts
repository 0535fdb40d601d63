import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { createLogger } from '../../src/log/logger.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir, waitFor } from '../helpers/cli.js';

// Issue 12 fault 2, for the effects that repeat on a timer and cannot report an error to the host chart (the
// cleaner, the host heartbeat): failing without a success for longer than max_busy_time ends the daemon with a
// fatal error instead of logging the same error for ever. A real daemon and SQLite store; one store operation
// is made to fail every time (a store the cleanup pass cannot use, while the rest of it works).

let dir: string;
let cleanup: () => void;
let store: RunStore;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir('runwarden-bound-'));
  store = await openStore(`sqlite:${join(dir, 'runs.db')}`);
});
afterEach(async () => {
  await store.close();
  cleanup();
});

function failing(inner: RunStore, method: keyof RunStore): RunStore {
  return new Proxy(inner, {
    get(target, property, receiver) {
      if (property === method) return () => Promise.reject(new Error(`${String(method)}: disk I/O error`));
      const value = Reflect.get(target, property, receiver) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe('a repeating effect that only fails', () => {
  it('a cleanup that fails pass after pass for longer than max_busy_time ends the daemon, fatal', async () => {
    const config = loadConfig({
      cwd: dir,
      env: {},
      flags: {
        store: `sqlite:${join(dir, 'runs.db')}`,
        host: 'bounded',
        set: [
          'process.command=["true"]',
          'timeouts.check_interval=0.2s',
          'timeouts.cleanup_interval=0.2s',
          'timeouts.max_busy_time=1s',
          'timeouts.signal_escalate=0.1s', // the lease guard rule: max_busy_time ≥ 3 × check + 2 × escalate
          'timeouts.idle_poll=1h',
        ],
      },
    });
    const sink = new Writable({ write: (_chunk, _encoding, next) => next() });
    const logger = createLogger({ level: 'info', host: 'bounded', store, json: true, stream: sink });
    const daemon = startDaemon({ config, store: failing(store, 'markSilentHostsDead'), logger });
    let code: number | undefined;
    void daemon.done.then((c) => {
      code = c;
    });
    await waitFor(() => code !== undefined, 'the daemon to end', { timeoutMs: 20_000 });
    expect(code).toBe(1);
    const fatal = (await store.listLog({ minPriority: 4 })).map((e) => e.message);
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatch(
      /^host bounded stops on an error: every cleanup pass failed for [\d.]+s \(timeouts\.max_busy_time is 1s\): Error: markSilentHostsDead: disk I\/O error$/,
    );
    const errors = (await store.listLog({ minPriority: 3 })).filter((e) => e.message.startsWith('cleanup pass failed'));
    expect(errors.length).toBeGreaterThanOrEqual(2);
  });
});
