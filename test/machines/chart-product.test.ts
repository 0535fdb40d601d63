import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AnyStateNode, InspectionEvent } from 'xstate';
import { runMachine } from '../../machines/run.machine.js';
import { loadConfig } from '../../src/config/index.js';
import type { Config } from '../../src/config/schema.js';
import { startDaemon, type DaemonHandle } from '../../src/daemon/daemon.js';
import { abandonRunByOperator, failRunByOperator, type OperatorDeps } from '../../src/daemon/operator-actions.js';
import { machineSummary } from '../../src/diagram/export.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir, waitFor } from '../helpers/cli.js';
import { silentLogger } from '../model/crash-harness.js';

// The charts (and so docs/machines.md) show only what the product does. A real daemon over a real SQLite file
// runs real commands while an inspector records every event a run actor receives from outside and every
// transition it takes; then:
// - every event the run chart handles is one the daemon sends to a run actor (the chart once handled RETRY,
//   which nothing sends: a retry is a new claim and a new actor);
// - every transition the actors took is one the chart draws (or an actions-only one it lists);
// - an operator's fail or abandon of a live attempt ends that actor in `lost`, never in `failed` or `abandoned`
//   (the store says what the operator wrote; the actor only lost its lease).

const HOST = 'charted';

let dir: string;
let cleanup: () => void;
let store: RunStore;
let daemon: DaemonHandle | undefined;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir('runwarden-chart-product-'));
  store = await openStore(`sqlite:${join(dir, 'runs.db')}`);
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

// Run 1's first attempt exits 3; every other attempt says it started and waits to be ended.
const SCRIPT =
  'if [ "$RUNWARDEN_RUN_NUMBER" = 1 ] && [ "$RUNWARDEN_ATTEMPT" = 1 ]; then exit 3; fi; echo started; exec sleep 60';

function config(): Config {
  return loadConfig({
    cwd: dir,
    env: {},
    flags: {
      store: `sqlite:${join(dir, 'runs.db')}`,
      host: HOST,
      set: [
        `process.command=${JSON.stringify(['sh', '-c', SCRIPT])}`,
        'process.output_root=./out',
        'process.log_dir=./logs',
        'process.require_output=false',
        'slots=4',
        'timeouts.check_interval=0.1s',
        'timeouts.idle_poll=0.05s',
        'timeouts.signal_escalate=0.5s',
        'retry.base=0.2s',
        'retry.jitter=[1, 1]',
        'disk.max_used_percent=100',
        'disk.min_free_bytes=0',
      ],
    },
  });
}

/** What one run actor (one attempt) did, as the inspector reported it. */
interface ActorRecord {
  number: number;
  /** Events it received from anyone but itself and XState (`xstate.*`). */
  received: string[];
  /** `from --event--> to` of every transition it took (dotted state paths; `(no target)` for actions only). */
  transitions: Array<{ from: string; event: string; to: string }>;
  /** Leaf states it has been in, in order. */
  states: string[];
  last: unknown;
  status: string;
}

function leafStates(value: unknown, prefix = ''): string[] {
  if (typeof value === 'string') return [prefix + value];
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => leafStates(v, `${prefix}${k}.`));
}

function recorder() {
  const actors = new Map<string, ActorRecord>();
  const isRun = (ref: unknown) => (ref as { logic?: { id?: unknown } } | undefined)?.logic?.id === 'run';
  const recordOf = (event: InspectionEvent): ActorRecord => {
    const id = event.actorRef.sessionId;
    let record = actors.get(id);
    if (!record) {
      const context = (event.actorRef.getSnapshot() as { context?: { run?: { number?: number } } }).context;
      record = { number: context?.run?.number ?? NaN, received: [], transitions: [], states: [], last: undefined, status: '' };
      actors.set(id, record);
    }
    return record;
  };
  const inspect = (event: InspectionEvent) => {
    if (!isRun(event.actorRef)) return;
    const record = recordOf(event);
    if (event.type === '@xstate.event') {
      const type = event.event.type;
      if (!type.startsWith('xstate.') && event.sourceRef !== event.actorRef) record.received.push(type);
    }
    if (event.type === '@xstate.microstep') {
      for (const t of event._transitions) {
        const source = t.source as AnyStateNode;
        record.transitions.push({
          from: source.path.join('.'),
          event: t.eventType,
          to: (t.target ?? []).map((n: AnyStateNode) => n.path.join('.')).join(',') || '(no target)',
        });
      }
    }
    if (event.type === '@xstate.snapshot' || event.type === '@xstate.microstep') {
      const snapshot = event.snapshot as unknown as { value?: unknown; status: string };
      record.status = snapshot.status;
      if (snapshot.value === undefined) return;
      for (const state of leafStates(snapshot.value)) if (record.states.at(-1) !== state) record.states.push(state);
      record.last = snapshot.value;
    }
  };
  return { actors, inspect };
}

describe('the charts show what the daemon does', () => {
  it('a real daemon sends a run actor only the events its chart handles, takes only drawn transitions, and an operator fail or abandon ends the actor in lost', { timeout: 30_000 }, async () => {
    const cfg = config();
    const { actors, inspect } = recorder();
    daemon = startDaemon({ config: cfg, store, logger: silentLogger(HOST), inspectors: [inspect] });
    // The operator's fail schedules its retry an hour away, so run 2 stays failed while the test looks.
    const operatorConfig = { ...cfg, retry: { ...cfg.retry, base: 3_600_000 } };
    const operator: OperatorDeps = { store, config: operatorConfig, host: 'desk', user: 'tester', random: () => 0.5, clock: Date.now };
    const actorsOf = (number: number) => [...actors.values()].filter((a) => a.number === number);
    const busy = (number: number, attempt: number) =>
      waitFor(async () => {
        const p = (await store.getRun(number))?.processing;
        return p?.state === 'busy' && p.attempt === attempt && p.pid ? p : undefined;
      }, `run ${number} busy in attempt ${attempt}`);
    const endedIn = (number: number, index: number, what: string) =>
      waitFor(() => {
        const actor = actorsOf(number)[index];
        const at = actor?.states.at(-1) ?? '';
        const resting = ['failed.waitingForRetry', 'abandoned.recorded'].includes(at);
        return actor && (resting || actor.status !== 'active') ? actor : undefined;
      }, `actor ${index + 1} of run ${number} to end (${what}): ${JSON.stringify(actorsOf(number)[index]?.states)}`);

    // Run 1 fails once, is retried by a new claim (a new actor), and its live retry is abandoned by an operator.
    await store.insertRun({ number: 1, start: 1 });
    await busy(1, 2);
    await abandonRunByOperator(operator, 1, 'chart test');
    // Run 2's live attempt is failed by an operator.
    await store.insertRun({ number: 2, start: 2 });
    await busy(2, 1);
    await failRunByOperator(operator, 2, 'chart test');
    const [firstOf1, retryOf1, failedOf2] = [
      await endedIn(1, 0, 'exit 3'),
      await endedIn(1, 1, 'abandoned by the operator'),
      await endedIn(2, 0, 'failed by the operator'),
    ];
    // An operator's abandon or fail of a live attempt: the actor loses its lease and ends in lost.
    for (const actor of [retryOf1, failedOf2]) {
      expect(actor.received).toContain('LEASE_LOST');
      expect(actor.states.slice(-2), `the states of run ${actor.number}`).toEqual(['confirmingGone', 'lost']);
      expect(actor.last).toBe('lost');
      expect(actor.states.filter((s) => /^(abandoned|failed|done|releas)/.test(s))).toEqual([]);
    }
    expect((await store.getRun(1))!.processing!.state).toBe('abandoned');
    expect((await store.getRun(2))!.processing!.state).toBe('failed');
    // Run 3 is busy when the host stops.
    await store.insertRun({ number: 3, start: 3 });
    await busy(3, 1);
    daemon.stop();
    expect(await daemon.done).toBe(0);
    daemon = undefined;
    const stoppedOf3 = await endedIn(3, 0, 'the host stopped');
    if (process.env.DEBUG_CHART) console.log(JSON.stringify([...actors.values()], null, 1));

    // One actor per attempt: the retry started a new one in considering; none ever went back to considering.
    expect(actorsOf(1)).toHaveLength(2);
    expect(firstOf1.states.at(-1)).toBe('failed.waitingForRetry');
    for (const actor of actors.values()) {
      expect(actor.states[0]).toBe('considering');
      expect(actor.transitions.filter((t) => t.to === 'considering' && t.from !== '')).toEqual([]);
    }
    expect(stoppedOf3.received).toContain('STOP');
    expect(stoppedOf3.last).toBe('released');

    // Every event the run chart handles is one the daemon sends: a handled event nobody sends is a transition
    // the product can never take.
    const sent = new Set([...actors.values()].flatMap((a) => a.received));
    const summary = machineSummary(runMachine, { includeTargetless: true });
    const handled = new Set(summary.transitions.filter((t) => t.kind === 'event').map((t) => t.event));
    expect([...handled].filter((event) => !sent.has(event)), 'events the run chart handles that the daemon never sends').toEqual([]);
    expect([...sent].filter((event) => !handled.has(event)), 'events the daemon sends that the run chart ignores').toEqual([]);

    // Every transition the actors took is one of the chart's (drawn, or listed as actions only).
    const known = new Set(summary.transitions.map((t) => `${t.from} --${t.event}--> ${t.to.join(',') || '(no target)'}`));
    const taken = [...actors.values()].flatMap((a) => a.transitions.map((t) => `${t.from} --${t.event}--> ${t.to}`));
    expect(taken.filter((t) => !t.startsWith(' --') && !known.has(t))).toEqual([]);
  });
});
