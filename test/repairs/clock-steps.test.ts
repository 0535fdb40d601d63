import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { startDaemon, type DaemonHandle } from '../../src/daemon/daemon.js';
import { createLogger } from '../../src/log/logger.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir, waitFor } from '../helpers/cli.js';

// Wall-clock steps (an NTP correction, a VM resumed, a host whose clock runs ahead) against real daemons on a
// real SQLite file with real commands. The injected wall clock jumps 3 h ahead and then races at an hour per
// real second, so every cleanup pass sees the owner's last heartbeat as hours old; the monotonic clock
// (performance.now) stays real. A lease is judged stale only once a cleaner saw it unchanged for the limit
// on its monotonic clock, and a daemon never fails a run it is processing itself.

const HOUR = 3_600_000;
const MAX_BUSY_MS = 1_000;

let dir: string;
let removeDir: () => void;
const stores: RunStore[] = [];
const daemons: DaemonHandle[] = [];

beforeEach(() => {
  ({ dir, cleanup: removeDir } = tempDir('runwarden-clock-'));
});

afterEach(async () => {
  writeFileSync(join(dir, 'gate'), '');
  for (const d of daemons.splice(0)) {
    d.stop();
    await d.done;
  }
  for (const s of stores.splice(0)) await s.close();
  removeDir();
});

/** A wall clock that is real until `jump()`, then 3 h ahead and racing at an hour per real second. */
function steppingClock() {
  let jumpedAt: number | undefined;
  return {
    now: (): number => {
      const real = Date.now();
      return jumpedAt === undefined ? real : real + 3 * HOUR + (real - jumpedAt) * 3_600;
    },
    jump: () => {
      jumpedAt = Date.now();
    },
  };
}

/** A store on the shared file whose writes use `clock`; counts the cleanup passes made through it. */
async function storeWith(clock: () => number) {
  const store = await openStore(`sqlite:${join(dir, 'runs.db')}`, { clock });
  stores.push(store);
  let passes = 0;
  const listStaleRuns = store.listStaleRuns.bind(store);
  store.listStaleRuns = (limits) => {
    passes += 1;
    return listStaleRuns(limits);
  };
  return { store, passes: () => passes };
}

function daemon(host: string, store: RunStore, clock: () => number): DaemonHandle {
  const config = loadConfig({
    cwd: dir,
    env: {},
    flags: {
      store: `sqlite:${join(dir, 'runs.db')}`,
      host,
      set: [
        // Waits for the gate file, then writes its output.
        `process.command=["sh", "-c", "while [ ! -e \\"$1\\" ]; do sleep 0.02; done; echo ok > \\"$2/out\\"", "sh", ${JSON.stringify(join(dir, 'gate'))}, "{output}"]`,
        `process.output_root=${JSON.stringify(join(dir, 'out'))}`,
        `process.log_dir=${JSON.stringify(join(dir, 'logs'))}`,
        'timeouts.check_interval=0.3s',
        // max_busy_time ≥ 3 × check_interval + 2 × signal_escalate: the lease guard's time to kill fits.
        'timeouts.signal_escalate=0.05s',
        `timeouts.max_busy_time=${MAX_BUSY_MS / 1000}s`,
        `timeouts.max_considering_time=${MAX_BUSY_MS / 1000}s`,
        'timeouts.cleanup_interval=0.05s',
        'timeouts.presumed_dead=1s',
        'timeouts.idle_poll=0.2s',
      ],
    },
  });
  const sink = new Writable({ write: (_chunk, _encoding, next) => next() });
  const logger = createLogger({ level: 'info', host, store, json: true, stream: sink });
  const handle = startDaemon({ config, store, logger, clock });
  daemons.push(handle);
  return handle;
}

/** Lets `passes` cleanup passes happen over at least 2.5 × max_busy_time of real time. */
async function letCleanupWatch(passes: () => number): Promise<void> {
  const from = passes();
  const since = performance.now();
  await waitFor(
    () => passes() >= from + 10 && performance.now() - since >= 2.5 * MAX_BUSY_MS,
    'cleanup passes over 2.5 × max_busy_time',
  );
}

async function expectDoneOnce(store: RunStore, number: number): Promise<void> {
  writeFileSync(join(dir, 'gate'), '');
  await waitFor(async () => (await store.getRun(number))?.processing?.state === 'done', `run ${number} to be done`);
  const p = (await store.getRun(number))!.processing!;
  expect(p).toMatchObject({ state: 'done', attempt: 1, n_failures: 0 });
  const events = await store.listRunEvents(number);
  expect(events.map((e) => `${e.from}->${e.to}`)).toEqual(['null->considering', 'considering->busy', 'busy->done']);
  const outputs = (await store.getRun(number))!.outputs;
  expect(outputs).toHaveLength(1);
  expect(existsSync(join(outputs[0]!.location, 'out'))).toBe(true);
}

describe('wall-clock steps never fail a healthy run', () => {
  it("a daemon whose wall clock steps hours ahead keeps its own busy run: done, no failure counted", async () => {
    const clock = steppingClock();
    const a = await storeWith(clock.now);
    daemon('a', a.store, clock.now);
    await a.store.insertRun({ number: 1, start: Date.now() });
    await waitFor(async () => (await a.store.getRun(1))?.processing?.state === 'busy', 'run 1 to be busy');

    clock.jump();
    await letCleanupWatch(a.passes);
    expect((await a.store.getRun(1))!.processing!.state).toBe('busy');
    await expectDoneOnce(a.store, 1);
  });

  it("another host's cleanup with a clock hours ahead does not take a run that keeps heartbeating", async () => {
    const a = await storeWith(Date.now);
    daemon('a', a.store, Date.now);
    await a.store.insertRun({ number: 7, start: Date.now() });
    await waitFor(async () => (await a.store.getRun(7))?.processing?.state === 'busy', 'run 7 to be busy on a');

    const ahead = steppingClock();
    ahead.jump();
    const b = await storeWith(ahead.now);
    daemon('b', b.store, ahead.now);
    await letCleanupWatch(b.passes);
    const p = (await a.store.getRun(7))!.processing!;
    expect(p).toMatchObject({ state: 'busy', host: 'a' });
    await expectDoneOnce(a.store, 7);
  });
});
