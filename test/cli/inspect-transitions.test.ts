import { describe, expect, it } from 'vitest';
import {
  createTransitionTracker,
  formatInspectLine,
  formatStateValue,
  inspectLineJson,
  type InspectLine,
} from '../../src/cli/inspect-transitions.js';

// The follower's reading of the @statelyai/inspect stream: messages shaped as the package sends them
// (see node_modules/@statelyai/inspect/dist/index.mjs, convertXStateEvent).

const T0 = Date.UTC(2026, 11, 3, 10, 57, 25, 123);

function actor(sessionId: string, name: string, value?: unknown, at = T0) {
  return {
    type: '@xstate.actor',
    name,
    sessionId,
    parentId: undefined,
    definition: '{}',
    createdAt: String(at),
    _version: '0.7.2',
    id: null,
    rootId: 'x:0',
    snapshot: value === undefined ? { status: 'active' } : { status: 'active', value, context: {} },
  };
}

function snapshot(sessionId: string, event: string, value: unknown, status = 'active', at = T0) {
  return {
    type: '@xstate.snapshot',
    sessionId,
    event: { type: event },
    snapshot: { status, value, context: {} },
    createdAt: String(at),
    _version: '0.7.2',
    id: null,
    rootId: 'x:0',
  };
}

describe('formatStateValue', () => {
  it.each([
    ['idle', 'idle'],
    [{ running: 'busy' }, 'running.busy'],
    [{ busy: 'supervising' }, 'busy.supervising'],
    [{ running: { terminating: 'waiting' } }, 'running.terminating.waiting'],
    [{ a: 'x', b: { y: 'z' } }, '(a.x, b.y.z)'],
    [{ p: { a: 'x', b: 'y' } }, 'p.(a.x, b.y)'],
    [{ done: {} }, 'done'],
  ])('%j → %s', (value, text) => {
    expect(formatStateValue(value)).toBe(text);
  });
});

describe('the transition tracker', () => {
  it('turns a new actor\'s snapshots into (actor, from, event, to), leaving out events that change no state', () => {
    const tracker = createTransitionTracker();
    const lines: InspectLine[] = [];
    const feed = (message: unknown) => lines.push(...tracker.feed(message));
    feed(actor('x:7', 'run-42'));
    feed(snapshot('x:7', 'xstate.init', 'considering'));
    feed(snapshot('x:7', 'LEASE_REFRESHED', 'considering'));
    feed(snapshot('x:7', 'xstate.done.actor.preflight', { busy: 'supervising' }));
    feed(snapshot('x:7', 'xstate.done.actor.supervisor', { busy: 'registering' }));
    feed(snapshot('x:7', 'xstate.done.actor.registerOutput', 'done', 'done'));
    expect(lines).toEqual([
      { kind: 'transition', time: T0, actor: 'run-42', from: null, event: 'xstate.init', to: 'considering' },
      {
        kind: 'transition',
        time: T0,
        actor: 'run-42',
        from: 'considering',
        event: 'xstate.done.actor.preflight',
        to: 'busy.supervising',
      },
      {
        kind: 'transition',
        time: T0,
        actor: 'run-42',
        from: 'busy.supervising',
        event: 'xstate.done.actor.supervisor',
        to: 'busy.registering',
      },
      {
        kind: 'transition',
        time: T0,
        actor: 'run-42',
        from: 'busy.registering',
        event: 'xstate.done.actor.registerOutput',
        to: 'done',
      },
    ]);
    // A finished actor is forgotten.
    expect(tracker.current()).toEqual([]);
  });

  it('with all, every snapshot is a line, also when the state stays', () => {
    const tracker = createTransitionTracker({ all: true });
    tracker.feed(actor('x:1', 'host', { running: 'idle' }));
    expect(tracker.feed(snapshot('x:1', 'HEARTBEAT', { running: 'idle' }))).toEqual([
      { kind: 'transition', time: T0, actor: 'host', from: 'running.idle', event: 'HEARTBEAT', to: 'running.idle' },
    ]);
  });

  it('an actor announced with a state was running before the viewer connected: a current line, then transitions from it', () => {
    const tracker = createTransitionTracker();
    expect(tracker.feed(actor('x:0', 'host', { running: 'idle' }))).toEqual([
      { kind: 'current', time: T0, actor: 'host', state: 'running.idle' },
    ]);
    expect(tracker.feed(snapshot('x:0', 'WAKE', { running: 'claiming' }))).toEqual([
      { kind: 'transition', time: T0, actor: 'host', from: 'running.idle', event: 'WAKE', to: 'running.claiming' },
    ]);
    expect(tracker.current()).toEqual([{ actor: 'host', state: 'running.claiming' }]);
  });

  it('a stopped actor is marked and forgotten; promise and callback actors (no state value) are left out', () => {
    const tracker = createTransitionTracker();
    tracker.feed(actor('x:3', 'run-9/supervisor', { running: 'producing' }));
    tracker.feed(actor('x:4', 'host/0.host.running.claiming'));
    expect(tracker.feed({ ...snapshot('x:4', 'xstate.init', undefined), snapshot: { status: 'active' } })).toEqual([]);
    expect(tracker.feed(snapshot('x:3', 'xstate.stop', { running: 'producing' }, 'stopped'))).toEqual([
      {
        kind: 'transition',
        time: T0,
        actor: 'run-9/supervisor',
        from: 'running.producing',
        event: 'xstate.stop',
        to: 'running.producing (stopped)',
      },
    ]);
    expect(tracker.current()).toEqual([]);
  });

  it('ignores what is not an inspection message, and names an actor it never heard announced by its session id', () => {
    const tracker = createTransitionTracker({ now: () => T0 + 5 });
    for (const junk of [null, 42, 'text', {}, { type: '@xstate.event', sessionId: 'x:1', event: { type: 'E' } }]) {
      expect(tracker.feed(junk)).toEqual([]);
    }
    expect(tracker.feed({ ...snapshot('x:9', 'GO', 'b'), createdAt: 'not a time' })).toEqual([
      { kind: 'transition', time: T0 + 5, actor: 'x:9', from: null, event: 'GO', to: 'b' },
    ]);
  });
});

describe('printing', () => {
  it('a transition line: time of day (UTC, ms), actor, from --event--> to', () => {
    const line: InspectLine = {
      kind: 'transition',
      time: T0,
      actor: 'run-42',
      from: 'considering',
      event: 'xstate.done.actor.preflight',
      to: 'busy.supervising',
    };
    expect(formatInspectLine(line)).toBe(
      '10:57:25.123Z  run-42                 considering --xstate.done.actor.preflight--> busy.supervising',
    );
    expect(formatInspectLine({ ...line, from: null, event: 'xstate.init', to: 'considering' })).toBe(
      '10:57:25.123Z  run-42                 (start) --xstate.init--> considering',
    );
    expect(JSON.parse(inspectLineJson(line))).toEqual({ ...line, time: '2026-12-03T10:57:25.123Z' });
  });

  it('a current-state line', () => {
    expect(formatInspectLine({ kind: 'current', time: T0, actor: 'host', state: 'running.idle' })).toBe(
      '10:57:25.123Z  host                   is running.idle',
    );
  });
});
