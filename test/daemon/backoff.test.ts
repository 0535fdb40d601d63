import Database from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import type { Config } from '../../src/config/schema.js';
import { startDaemon, type DaemonHandle } from '../../src/daemon/daemon.js';
import { failRunByOperator } from '../../src/daemon/operator-actions.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunEvent } from '../../src/store/types.js';
import { tempDir, waitFor } from '../helpers/cli.js';
import { deadPid, silentLogger, TestClock } from '../model/crash-harness.js';

// Backoff growth at every place that schedules a retry (DESIGN §4: base × U(jitter) × factor ^ min(n, max_exponent),
// n = failures before this one). A real daemon over a real SQLite file and real commands; the daemon and the store
// share a test clock that moves only when the test says, so next_retry − (the time of the failed event written in
// the same transaction) is exactly the delay the daemon chose. With jitter [1, 1] and factor 3 the delays after
// failures 1..4 must be 1 s, 3 s, 9 s, 9 s (max_exponent 2): a count that stays 0 or is off by one shows at once.
// Interruptions (a restart, a silent owner taken over by cleanup) are not the run's fault: due at once, counted
// in n_interruptions and never in n_failures.

const HOST = 'backoff';
const EXPECTED_DELAYS = [1_000, 3_000, 9_000, 9_000];

let dir: string;
let cleanup: () => void;
let clock: TestClock;
let store: RunStore;
let daemon: DaemonHandle | undefined;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir('runwarden-backoff-'));
  clock = new TestClock();
  store = await openStore(`sqlite:${join(dir, 'runs.db')}`, { clock: clock.read });
});

afterEach(async () => {
  if (daemon) {
    daemon.stop();
    await daemon.done;
    daemon = undefined;
  }
  await store.close();
  cleanup();
});

function config(command: string[], extra: string[] = []): Config {
  return loadConfig({
    cwd: dir,
    env: {},
    flags: {
      store: `sqlite:${join(dir, 'runs.db')}`,
      host: HOST,
      set: [
        `process.command=${JSON.stringify(command)}`,
        'timeouts.check_interval=0.1s',
        'timeouts.idle_poll=0.05s',
        'timeouts.cleanup_interval=0.05s',
        'timeouts.signal_escalate=0.5s',
        'timeouts.max_considering_time=1h',
        'timeouts.max_busy_time=2h',
        'timeouts.presumed_dead=3h',
        'retry.base=1s',
        'retry.factor=3',
        'retry.max_exponent=2',
        'retry.jitter=[1, 1]',
        'retry.max_failures=10',
        'disk.max_used_percent=100',
        'disk.min_free_bytes=0',
        ...extra,
      ],
    },
  });
}

function start(cfg: Config): DaemonHandle {
  daemon = startDaemon({ config: cfg, store, logger: silentLogger(HOST), clock: clock.read, monotonic: clock.read });
  return daemon;
}

/** The k-th event into `failed` of run `number`, once it exists. */
async function nthFailure(number: number, k: number, what: string): Promise<RunEvent> {
  return waitFor(
    async () => (await store.listRunEvents(number)).filter((e) => e.to === 'failed')[k - 1],
    `failure ${k} of run ${number} (${what})`,
  );
}

/** next_retry − the failed event's time, and n_failures, as the run says right after failure k. */
async function delayAfter(number: number, k: number, what: string): Promise<{ delay: number; nFailures: number }> {
  const event = await nthFailure(number, k, what);
  const p = (await store.getRun(number))!.processing!;
  expect(p.state, `run ${number} after failure ${k} (${what})`).toBe('failed');
  return { delay: p.next_retry! - event.time, nFailures: p.n_failures };
}

/** Lets the retry come due: the clock moves to next_retry, so the run is eligible exactly then. */
async function comeDue(number: number): Promise<void> {
  const p = (await store.getRun(number))!.processing!;
  clock.advance(p.next_retry! - clock.now);
}

describe('backoff grows with the failure count at every call site', () => {
  it('the daemon recording its command failures: 1 s, 3 s, 9 s, 9 s', async () => {
    start(config(['sh', '-c', 'exit 3']));
    await store.insertRun({ number: 1, start: 1 });
    const delays: number[] = [];
    for (let k = 1; k <= EXPECTED_DELAYS.length; k++) {
      const { delay, nFailures } = await delayAfter(1, k, 'the command exits 3');
      expect(nFailures).toBe(k);
      delays.push(delay);
      await comeDue(1);
    }
    expect(delays).toEqual(EXPECTED_DELAYS);
  });

  it('cleanup failing a done run whose output registration is missing: 1 s, 3 s, 9 s, 9 s', async () => {
    // Held, so the daemon never claims it itself: another host (a test stand-in) processes it to done, the
    // registered output goes missing (plain SQL, as another tool could do it), and the daemon's cleanup fails it.
    const cfg = config(['sh', '-c', 'exit 0']);
    start(cfg);
    await store.insertRun({ number: 2, start: 1, tags: ['hold'] });
    const other = { host: 'other', pid: await deadPid(), order: 'newest' as const };
    const db = new Database(join(dir, 'runs.db'), { timeout: 10_000 });
    const delays: number[] = [];
    try {
      for (let k = 1; k <= EXPECTED_DELAYS.length; k++) {
        const before = (await store.getRun(2))!.processing;
        const claimed = await store.claimRun(2, other, { state: before?.state ?? null, token: before?.token ?? null });
        const token = claimed!.processing!.token;
        expect(await store.markBusy(2, token, { started: clock.now })).toBe(true);
        const output = { location: join(dir, 'gone'), host: 'other', attempt: k, at: clock.now };
        expect(await store.finishRun(2, token, output)).toBe(true);
        db.prepare(`UPDATE runs SET outputs = '[]' WHERE number = 2`).run();
        const event = await nthFailure(2, k, 'cleanup of a done run without output');
        expect(event.detail).toMatchObject({ by: 'cleanup', kind: 'no_output' });
        const p = (await store.getRun(2))!.processing!;
        expect(p.n_failures).toBe(k);
        delays.push(p.next_retry! - event.time);
      }
    } finally {
      db.close();
    }
    expect(delays).toEqual(EXPECTED_DELAYS);
  });

  it('cleanup taking over a run whose owner went silent: an interruption, eligible at once, no failure counted', async () => {
    // Cleanup judges a lease stale once it saw it unchanged for the limit on its monotonic clock (the test clock
    // here too): time moves on by the limit until a pass that saw the claim judges it.
    const cfg = config(['sh', '-c', 'exit 0']);
    start(cfg);
    await store.insertRun({ number: 5, start: 1, tags: ['hold'] });
    const ghost = { host: 'ghost', pid: await deadPid(), order: 'newest' as const };
    const delays: number[] = [];
    const counts: Array<[number, number]> = [];
    for (let k = 1; k <= EXPECTED_DELAYS.length; k++) {
      const before = (await store.getRun(5))!.processing;
      const claimed = await store.claimRun(5, ghost, { state: before?.state ?? null, token: before?.token ?? null });
      expect(claimed?.processing?.state, `the silent owner's claim ${k}`).toBe('considering');
      const event = await waitFor(
        async () => {
          const found = (await store.listRunEvents(5)).filter((e) => e.to === 'failed')[k - 1];
          if (!found) clock.advance(cfg.timeouts.max_considering_time + 1);
          return found;
        },
        `cleanup ${k} of run 5`,
        { intervalMs: 100 },
      );
      expect(event.detail).toMatchObject({ by: 'cleanup', kind: 'stale' });
      const p = (await store.getRun(5))!.processing!;
      counts.push([p.n_failures, p.n_interruptions ?? 0]);
      delays.push(p.next_retry! - event.time);
    }
    expect(delays).toEqual([0, 0, 0, 0]);
    expect(counts).toEqual([
      [0, 1],
      [0, 2],
      [0, 3],
      [0, 4],
    ]);
  });

  it('an operator failing a run the daemon finished: 1 s, 3 s, 9 s, 9 s', async () => {
    const cfg = config(['sh', '-c', 'echo ok > "$RUNWARDEN_OUTPUT/result"']);
    start(cfg);
    await store.insertRun({ number: 3, start: 1 });
    const operator = { store, config: cfg, host: 'desk', user: 'tester', random: Math.random, clock: clock.read };
    const delays: number[] = [];
    for (let k = 1; k <= EXPECTED_DELAYS.length; k++) {
      await waitFor(async () => (await store.getRun(3))!.processing?.state === 'done', `run 3 done (attempt ${k})`);
      await failRunByOperator(operator, 3, `bad calibration ${k}`);
      const { delay, nFailures } = await delayAfter(3, k, 'operator fail');
      expect(nFailures).toBe(k);
      delays.push(delay);
      await comeDue(3);
    }
    expect(delays).toEqual(EXPECTED_DELAYS);
  });

  it('a restarted daemon failing the runs its predecessor held: an interruption, eligible at once', async () => {
    // A restart is not the run's fault: its retry is due at the restart's own time, and it counts as an
    // interruption, not a failure. Each round a dead predecessor of this host holds the run, and a fresh daemon recovers it.
    const cfg = config(['sh', '-c', 'exit 0'], []);
    await store.insertRun({ number: 4, start: 1, tags: ['hold'] });
    const delays: number[] = [];
    const counts: Array<[number, number]> = [];
    for (let k = 1; k <= EXPECTED_DELAYS.length; k++) {
      const previous = await deadPid();
      const before = (await store.getRun(4))!.processing;
      const claimed = await store.claimRun(
        4,
        { host: HOST, pid: previous, order: 'newest' },
        { state: before?.state ?? null, token: before?.token ?? null },
      );
      expect(claimed?.processing?.state).toBe('considering');
      clock.advance(1);
      const d = start(cfg);
      const event = await nthFailure(4, k, 'restart');
      expect(event.detail).toMatchObject({ kind: 'restart', previous_pid: previous });
      const p = (await store.getRun(4))!.processing!;
      delays.push(p.next_retry! - event.time);
      counts.push([p.n_failures, p.n_interruptions ?? 0]);
      d.stop();
      expect(await d.done).toBe(0);
      daemon = undefined;
      clock.advance(1);
    }
    expect(delays).toEqual([0, 0, 0, 0]);
    // An interruption, not a failure: counted apart.
    expect(counts).toEqual([
      [0, 1],
      [0, 2],
      [0, 3],
      [0, 4],
    ]);
  });
});
