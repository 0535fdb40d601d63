import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createActor, type Actor } from 'xstate';
import { cleanupPass } from '../../src/daemon/cleanup.js';
import { createDaemonContext, type DaemonContext } from '../../src/daemon/context.js';
import { provideRunMachine } from '../../src/daemon/daemon.js';
import { recoverOwnRuns } from '../../src/daemon/recover-own-runs.js';
import { groupAlive } from '../../src/process/kill-group.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunDoc } from '../../src/store/types.js';
import { stateName } from '../machines/helpers.js';
import { tempDir, waitFor } from '../helpers/cli.js';
import {
  attemptOver,
  crashableStore,
  crashDaemon,
  deadPid,
  describePoint,
  modelConfig,
  processToEnd,
  runInputFor,
  silentLogger,
  TestClock,
  type CrashPoint,
  reap,
} from './crash-harness.js';
import { checkAttemptsGrow, checkRunHistory, checkRunSettled, checkStaleTokenRefused } from './invariants.js';

// Crash injection into the run machine with its real effects, a real SQLite store and real commands. For each
// way an attempt can go, a crash-free reference run lists the daemon's committed writes; then the daemon is
// killed right after each of them in turn (its commands left running), a successor recovers — the same host
// restarting (recoverOwnRuns) or another host's cleanup once max_busy_time has passed — and processes the run
// until it settles. After every crash the stored history must keep the guarantees of test/model/invariants.ts,
// the dead daemon's token must be refused by every fenced write, and a restart must leave no orphan alive.

const NUMBER = 7;
const HOST = 'h1';
const OTHER_HOST = 'h2';

type Mode = 'ok' | 'exit3' | 'exit42' | 'hang-stop' | 'bad-input';

const CLAIMED = 'after claimNextRun#1 ((claimed; no run actor yet))';
const BUSY = 'after markBusy#1 (considering)';
const SPAWNED = 'after recordProcessGroup#1 (busy.supervising)';

/**
 * How the first attempt goes (every later attempt writes its output and exits 0), and what the injection must
 * find: each committed write of the first daemon as a crash point, with the machine state it died in, and how
 * many orphaned commands the restarts kill. Exact, so a write that goes missing (or a crash that never lands)
 * fails the test instead of shrinking the evidence.
 */
const MODES: Array<{
  mode: Mode;
  firstAttempt: string;
  settles: 'done' | 'abandoned';
  crashes: string[];
  /** Orphans the restarts must kill; undefined where a quick command may or may not have ended by then. */
  orphansKilled?: number;
}> = [
  {
    mode: 'ok',
    firstAttempt: 'succeeds',
    settles: 'done',
    crashes: [CLAIMED, BUSY, SPAWNED, 'after finishRun#1 (busy.registering)'],
  },
  {
    mode: 'exit3',
    firstAttempt: 'exits 3 and is retried',
    settles: 'done',
    crashes: [CLAIMED, BUSY, SPAWNED, 'after failRun#1 (failed.recording)'],
  },
  {
    mode: 'exit42',
    firstAttempt: 'exits with a no-retry code',
    settles: 'abandoned',
    crashes: [CLAIMED, BUSY, SPAWNED, 'after abandonRun#1 (abandoned.recording)'],
  },
  {
    mode: 'hang-stop',
    firstAttempt: 'hangs until its host stops and releases it',
    settles: 'done',
    crashes: [CLAIMED, BUSY, SPAWNED, 'after releaseRun#1 (releasing)'],
    // The hanging command outlives its daemon only when the crash comes after it was spawned and recorded, and
    // before the stop killed it.
    orphansKilled: 1,
  },
  {
    mode: 'bad-input',
    firstAttempt: 'fails preflight (every attempt does)',
    settles: 'abandoned',
    crashes: [CLAIMED, 'after failRun#1 (failed.recording)'],
  },
];

const SCRIPT = `out=$1; attempt=$2; mode=$3
if [ "$attempt" = 1 ]; then
  case "$mode" in
    exit3) exit 3 ;;
    exit42) exit 42 ;;
    hang-stop) exec sleep 1000 ;;
  esac
fi
echo ok > "$out/result.txt"`;

let root: string;
let removeRoot: () => void;
let scenarios = 0;
const stores: RunStore[] = [];
const orphanGroups: number[] = [];

beforeEach(() => {
  ({ dir: root, cleanup: removeRoot } = tempDir('runwarden-model-'));
});

afterEach(async () => {
  await reap(orphanGroups.splice(0), stores.splice(0));
  removeRoot();
});

/** A fresh directory, database and command for one scenario. */
function scenarioDir(): { dir: string; script: string } {
  scenarios += 1;
  const dir = join(root, `scenario-${scenarios}`);
  mkdirSync(dir);
  const script = join(dir, 'command.sh');
  writeFileSync(script, SCRIPT);
  return { dir, script };
}

async function open(dir: string, clock: TestClock): Promise<RunStore> {
  const s = await openStore(`sqlite:${join(dir, 'runs.db')}`, { clock: clock.read });
  stores.push(s);
  return s;
}

interface FirstDaemon {
  writes: CrashPoint[];
  pgids: number[];
  /** The lease token the first daemon held, when it claimed the run. */
  token: string | undefined;
  /** The run machine's state when the daemon died (or when its attempt ended, without a crash). */
  state: string;
  crashed: boolean;
}

/** The first daemon claims the run and processes its first attempt, dying right after `crashAt` if given. */
async function firstDaemon(
  dir: string,
  script: string,
  clock: TestClock,
  mode: Mode,
  crashAt?: CrashPoint,
): Promise<FirstDaemon> {
  const real = await open(dir, clock);
  await real.insertRun({
    number: NUMBER,
    start: 1,
    params: { mode },
    ...(mode === 'bad-input' ? { input: join(dir, 'no-such-input') } : {}),
  });
  const pid = await deadPid();
  let actor: Actor<ReturnType<typeof provideRunMachine>> | undefined;
  let ctx: DaemonContext | undefined;
  const crashable = crashableStore(real, {
    deadPid: pid,
    ...(crashAt ? { crashAt } : {}),
    onCrash: () => crashDaemon(ctx!, actor),
  });
  const config = modelConfig(dir, HOST, script);
  ctx = createDaemonContext({ config, store: crashable.store, logger: silentLogger(HOST), clock: clock.read });
  await real.registerHost({
    host: HOST,
    pid,
    token: ctx.hostToken,
    state: 'busy',
    time: clock.now,
    started: clock.now,
    version: 'test',
    slots: 1,
    running: [],
  });
  // Only this daemon writes until it dies, so the token on record is the one its claim took.
  const finish = async (state: string): Promise<FirstDaemon> => {
    orphanGroups.push(...crashable.pgids);
    const token = (await real.getRun(NUMBER))?.processing?.token;
    return { writes: crashable.writes, pgids: crashable.pgids, token, state, crashed: crashable.crashed };
  };
  const claimed = await Promise.race([
    crashable.store.claimNextRun({ host: HOST, pid, order: 'newest' }),
    crashable.whenCrashed.then(() => null),
  ]);
  if (!claimed) return finish('(claimed; no run actor yet)');
  actor = createActor(provideRunMachine(ctx), { input: runInputFor(config, claimed) });
  actor.start();
  let stopSent = false;
  await waitFor(
    () => {
      const s = actor!.getSnapshot();
      // The host stops while the command runs, once its process group is on record.
      const commandRecorded = s.matches({ busy: 'supervising' }) && crashable.pgids.length > 0;
      if (mode === 'hang-stop' && !stopSent && !crashable.crashed && commandRecorded) {
        stopSent = true;
        actor!.send({ type: 'STOP' });
      }
      return crashable.crashed || attemptOver(s);
    },
    'the first daemon to crash or end its attempt',
    { intervalMs: 5 },
  );
  const state = stateName(actor.getSnapshot().value);
  if (!crashable.crashed) actor.stop();
  return finish(state);
}

type Recovery = 'restart' | 'cleanup';

/**
 * Crashes the first daemon at `point`, recovers as `recovery` says, processes the run to its end with a
 * healthy daemon, and returns every broken guarantee.
 */
async function crashScenario(mode: Mode, point: CrashPoint | undefined, recovery: Recovery) {
  const { dir, script } = scenarioDir();
  const clock = new TestClock();
  const first = await firstDaemon(dir, script, clock, mode, point);
  const problems: string[] = [];
  if (point && !first.crashed) problems.push(`the crash point ${describePoint(point)} was never reached`);
  const store = await open(dir, clock);
  const attempts: number[] = [];
  const observe = (doc: RunDoc | null) => {
    if (doc?.processing) attempts.push(doc.processing.attempt);
  };
  observe(await store.getRun(NUMBER));
  const host = recovery === 'restart' ? HOST : OTHER_HOST;
  const ctx = createDaemonContext({
    config: modelConfig(dir, host, script),
    store,
    logger: silentLogger(host),
    clock: clock.read,
  });
  // Commands the dead daemon left running: a restart must kill them (another host cannot reach them).
  const orphans = first.pgids.filter((pgid) => groupAlive(pgid));
  if (point) {
    if (recovery === 'restart') {
      await recoverOwnRuns(ctx, await store.getHost(HOST));
      for (const pgid of first.pgids.filter((g) => groupAlive(g))) {
        problems.push(`orphaned process group ${pgid} survived the restart`);
      }
    } else {
      const { max_busy_time: busy, max_considering_time: considering } = ctx.config.timeouts;
      clock.advance(Math.max(busy, considering) + 1);
      await cleanupPass({ store, config: ctx.config, host, random: () => 0.5, clock: clock.read });
    }
    const recovered = await store.getRun(NUMBER);
    observe(recovered);
    problems.push(...checkRunSettled(recovered).map((p) => `after recovery: ${p}`));
    if (first.token) {
      problems.push(...(await checkStaleTokenRefused(store, NUMBER, first.token)).map((p) => `after recovery: ${p}`));
    }
  }
  // Whenever a new owner holds a live lease, every earlier owner's token must be refused (no two owners).
  const earlier = first.token ? [first.token] : [];
  let tokens: string[] = [];
  try {
    tokens = await processToEnd(ctx, clock, NUMBER, observe, async (claimed) => {
      for (const token of earlier) {
        const refused = await checkStaleTokenRefused(store, NUMBER, token);
        problems.push(...refused.map((p) => `while attempt ${claimed.processing!.attempt} is live: ${p}`));
      }
      earlier.push(claimed.processing!.token);
    });
  } catch (error) {
    // A broken guarantee can leave the run where no healthy daemon finishes it: report it with the rest.
    problems.push(`processing to the end failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  const final = await store.getRun(NUMBER);
  problems.push(...checkRunHistory(await store.listRunEvents(NUMBER), final));
  const state = final?.processing?.state;
  if (state !== 'done' && state !== 'abandoned') problems.push(`processed to the end, the run is ${state}`);
  for (const token of [...(first.token ? [first.token] : []), ...tokens]) {
    problems.push(...(await checkStaleTokenRefused(store, NUMBER, token)).map((p) => `at the end: ${p}`));
  }
  problems.push(...checkAttemptsGrow(attempts));
  return { first, problems, settled: state, orphans: orphans.length };
}

describe('run machine, crash injection with real effects, SQLite and commands', () => {
  for (const { mode, firstAttempt, settles, crashes, orphansKilled: expectedOrphans } of MODES) {
    it(`the first attempt ${firstAttempt}: a crash after each of its writes, then restart or cleanup`, async () => {
      const reference = await crashScenario(mode, undefined, 'restart');
      expect(reference.problems).toEqual([]);
      expect(reference.settled).toBe(settles);
      const points = reference.first.writes;
      expect(points.map(describePoint)).toEqual(crashes.map((c) => c.replace(/ \(.*$/, '')));
      const broken: string[] = [];
      const states = new Set<string>();
      let orphansKilled = 0;
      let recoveries = 0;
      for (const point of points) {
        for (const recovery of ['restart', 'cleanup'] as const) {
          const outcome = await crashScenario(mode, point, recovery);
          recoveries += 1;
          if (recovery === 'restart') orphansKilled += outcome.orphans;
          states.add(`${describePoint(point)} (${outcome.first.state})`);
          for (const p of outcome.problems) broken.push(`${describePoint(point)}, ${recovery}: ${p}`);
        }
      }
      console.log(
        `run crash injection (${mode}): ${points.length} crash points × 2 recoveries; crashed ` +
          [...states].join(', ') +
          `; ${orphansKilled} orphaned command(s) killed by restarts`,
      );
      expect(broken).toEqual([]);
      // Each crash point crashed in the state listed, and was recovered from both ways.
      expect([...states]).toEqual(crashes);
      expect(recoveries).toBe(crashes.length * 2);
      // A command that ends by itself may still be alive right after the crash that follows its spawn: at most one.
      if (expectedOrphans === undefined) expect(orphansKilled).toBeLessThanOrEqual(1);
      else expect(orphansKilled).toBe(expectedOrphans);
    });
  }
});
