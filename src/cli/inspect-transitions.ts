// `runwarden inspect`: turns the @statelyai/inspect stream of `daemon --inspect` into transitions. Each machine
// actor's last state is remembered, so a snapshot event becomes (actor, from, event, to). Promise and callback
// actors (store writes, heartbeats) have no states and are left out.

/** The parts of a @statelyai/inspect message this reads; anything else in it is ignored. */
interface InspectMessage {
  type?: unknown;
  sessionId?: unknown;
  name?: unknown;
  createdAt?: unknown;
  event?: { type?: unknown };
  snapshot?: { status?: unknown; value?: unknown };
}

export type InspectLine =
  /** An actor changed state (or, with `all`, took any event). `from` is null for an actor's first state. */
  | { kind: 'transition'; time: number; actor: string; from: string | null; event: string; to: string }
  /** An actor that was already running when the viewer connected, in its current state. */
  | { kind: 'current'; time: number; actor: string; state: string };

/** `idle`, `running.busy`, `busy.supervising`; parallel regions as `a.(x, y.z)`. */
export function formatStateValue(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || typeof value !== 'object') return String(value);
  const regions = Object.entries(value as Record<string, unknown>).map(([key, inner]) =>
    inner && typeof inner === 'object' && Object.keys(inner).length === 0 ? key : `${key}.${formatStateValue(inner)}`,
  );
  return regions.length === 1 ? regions[0]! : `(${regions.join(', ')})`;
}

/** The state as printed: the value, marked when the actor was stopped or failed rather than finished. */
function stateOf(snapshot: { status?: unknown; value?: unknown }): string {
  const value = formatStateValue(snapshot.value);
  return snapshot.status === 'stopped' || snapshot.status === 'error' ? `${value} (${snapshot.status})` : value;
}

function timeOf(message: InspectMessage, now: () => number): number {
  const time = Number(message.createdAt);
  return Number.isFinite(time) && time > 0 ? time : now();
}

interface KnownActor {
  name: string;
  state: string | null;
}

export interface TransitionTracker {
  /** Reads one message of the stream; returns what it says to print (nothing for most messages). */
  feed(message: unknown): InspectLine[];
  /** Every machine actor alive and its state, in the order they appeared. */
  current(): Array<{ actor: string; state: string }>;
}

/** With `all`, every event an actor takes is a line, also when its state stays the same. */
export function createTransitionTracker(options: { all?: boolean; now?: () => number } = {}): TransitionTracker {
  const now = options.now ?? Date.now;
  const actors = new Map<string, KnownActor>();

  const onActor = (message: InspectMessage, sessionId: string): InspectLine[] => {
    const name = typeof message.name === 'string' ? message.name : sessionId;
    const snapshot = message.snapshot;
    // A new actor is announced before its first snapshot; one announced with a state was already running.
    if (!snapshot || snapshot.value === undefined) {
      actors.set(sessionId, { name, state: null });
      return [];
    }
    const state = stateOf(snapshot);
    actors.set(sessionId, { name, state });
    return [{ kind: 'current', time: timeOf(message, now), actor: name, state }];
  };

  const onSnapshot = (message: InspectMessage, sessionId: string): InspectLine[] => {
    const snapshot = message.snapshot ?? {};
    const known = actors.get(sessionId);
    const ended = snapshot.status !== undefined && snapshot.status !== 'active';
    if (snapshot.value === undefined) {
      if (ended) actors.delete(sessionId);
      return []; // not a state machine
    }
    const actor = known ?? { name: sessionId, state: null };
    const event = typeof message.event?.type === 'string' ? message.event.type : '?';
    const to = stateOf(snapshot);
    const from = event === 'xstate.init' ? null : actor.state;
    actor.state = to;
    if (ended) actors.delete(sessionId);
    else actors.set(sessionId, actor);
    if (!options.all && from === to) return [];
    return [{ kind: 'transition', time: timeOf(message, now), actor: actor.name, from, event, to }];
  };

  return {
    feed(raw) {
      if (!raw || typeof raw !== 'object') return [];
      const message = raw as InspectMessage;
      if (typeof message.sessionId !== 'string') return [];
      if (message.type === '@xstate.actor') return onActor(message, message.sessionId);
      if (message.type === '@xstate.snapshot') return onSnapshot(message, message.sessionId);
      return [];
    },
    current() {
      return [...actors.values()]
        .filter((actor): actor is KnownActor & { state: string } => actor.state !== null)
        .map(({ name, state }) => ({ actor: name, state }));
    },
  };
}

/** 10:57:25.123Z — time of day (UTC) to the millisecond; transitions come close together. */
export function formatTimeOfDay(ms: number): string {
  return new Date(ms).toISOString().slice(11);
}

/** Fits `run-123456/supervisor`. */
const ACTOR_WIDTH = 21;

/** One line for people: `TIME  ACTOR  FROM --EVENT--> TO`, or `TIME  ACTOR  is STATE` for a current state. */
export function formatInspectLine(line: InspectLine): string {
  const head = `${formatTimeOfDay(line.time)}  ${line.actor.padEnd(ACTOR_WIDTH)}`;
  if (line.kind === 'current') return `${head}  is ${line.state}`;
  return `${head}  ${line.from ?? '(start)'} --${line.event}--> ${line.to}`;
}

/** One JSON object per line: the same fields, the time as ISO. */
export function inspectLineJson(line: InspectLine): string {
  return JSON.stringify({ ...line, time: new Date(line.time).toISOString() });
}
