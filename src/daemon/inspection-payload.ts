import type { AnyActorRef, InspectionEvent } from 'xstate';

// What of an inspection event may leave the daemon (`daemon --inspect`): plain, JSON-safe copies with the
// secrets taken out, so the @statelyai/inspect converter that turns them into its wire format can neither
// throw (it runs in a timer, where a throw would be an uncaught exception that stops the daemon) nor leak.
// Secrets that really are in the snapshots: a command plan's `env` is the daemon's whole environment
// (credentials included) and every claim carries its lease token. The configuration is not in any snapshot.

const MAX_DEPTH = 10; // as @statelyai/inspect's own serializationDepthLimit
const MAX_STRING = 4096;
const MAX_ITEMS = 200;
/** Values under these keys never leave the daemon, at any depth. */
const SECRET_KEY = /token|password|passwd|secret|credential|api_?key|^env$/i;

export const REDACTED = '[redacted]';

function plain(value: unknown, depth: number, ancestors: object[]): unknown {
  switch (typeof value) {
    case 'string':
      return value.length > MAX_STRING ? `${value.slice(0, MAX_STRING)}…` : value;
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'function':
      // As @statelyai/inspect's replacer: a machine definition's inline guards and actions show by name.
      return { type: value.name };
    case 'undefined':
    case 'symbol':
      return undefined;
  }
  if (value === null) return null;
  const object = value as object;
  if (ancestors.includes(object)) return '[Circular]';
  if (depth >= MAX_DEPTH) return '[…]';
  if (object instanceof Error) return { name: object.name, message: object.message };
  const toJSON = (object as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') {
    // Actor refs become {id}, machine snapshots drop their machine, dates become ISO strings.
    const json: unknown = toJSON.call(object);
    return json === object ? '[unserialisable]' : plain(json, depth, ancestors);
  }
  const inner = [...ancestors, object];
  if (Array.isArray(object) || object instanceof Set) {
    const items = [...object];
    const copied = items.slice(0, MAX_ITEMS).map((item) => safely(() => plain(item, depth + 1, inner)) ?? null);
    return items.length > MAX_ITEMS ? [...copied, `… ${items.length - MAX_ITEMS} more`] : copied;
  }
  const entries = object instanceof Map ? [...object.entries()].map(([k, v]) => [String(k), v] as const) : null;
  const copy: Record<string, unknown> = {};
  const keys = entries ? entries.map(([k]) => k) : Object.keys(object);
  for (const [index, key] of keys.slice(0, MAX_ITEMS).entries()) {
    if (SECRET_KEY.test(key)) {
      copy[key] = REDACTED;
      continue;
    }
    const item = safely(() => plain(entries ? entries[index]![1] : (object as Record<string, unknown>)[key], depth + 1, inner));
    if (item !== undefined) copy[key] = item;
  }
  return copy;
}

/** A getter or toJSON that throws makes its value '[unreadable]', never an exception. */
function safely(read: () => unknown): unknown {
  try {
    return read();
  } catch {
    return '[unreadable]';
  }
}

/** A plain, JSON-safe, redacted copy of any value: no cycles, actor refs, functions or throwing getters. */
export function plainCopy(value: unknown): unknown {
  return safely(() => plain(value, 0, []));
}

/**
 * An actor's snapshot, or undefined while it has none: XState's production build returns undefined while an
 * actor initialises, its development build throws.
 */
export function snapshotOf(ref: AnyActorRef): { status?: unknown } | undefined {
  try {
    return ref.getSnapshot() as { status?: unknown } | undefined;
  } catch {
    return undefined;
  }
}

/** The readable name of an actor: its system id (`host`, `run-42`), else its parent's name and its own id. */
export function actorName(ref: AnyActorRef): string {
  const systemId = (ref as { systemId?: unknown }).systemId;
  if (typeof systemId === 'string') return systemId;
  return ref._parent ? `${actorName(ref._parent)}/${ref.id}` : ref.id;
}

/** A machine's definition is the same for every actor of it: copied once. */
const definitions = new WeakMap<object, unknown>();

function definitionOf(ref: AnyActorRef): unknown {
  const logic = (ref as { logic?: { config?: unknown } }).logic;
  if (!logic || typeof logic !== 'object') return undefined;
  if (!definitions.has(logic)) definitions.set(logic, plainCopy(logic.config));
  return definitions.get(logic);
}

/**
 * What the converter reads of an actor, and nothing more. The name is computed when the converter runs
 * (after the constructor, which sets the system id only after announcing the actor).
 */
function describedActor(ref: AnyActorRef, snapshot: () => unknown) {
  return {
    get id() {
      return actorName(ref);
    },
    sessionId: ref.sessionId,
    logic: { config: definitionOf(ref) },
    _parent: ref._parent ? { sessionId: ref._parent.sessionId } : undefined,
    getSnapshot: snapshot,
  };
}

/**
 * The plain counterpart of a live inspection event, for @statelyai/inspect's `inspect.next`; undefined for the
 * kinds its wire format does not carry (microsteps, actions, transitions). A newly announced actor has no
 * snapshot yet (its first snapshot event follows), so it is sent as `{status: 'active'}` like the package's
 * own `inspector.actor()` default.
 */
export function inspectablePayload(event: InspectionEvent): InspectionEvent | undefined {
  switch (event.type) {
    case '@xstate.actor':
      return {
        type: '@xstate.actor',
        rootId: event.rootId,
        // The events of a running system carry the actors themselves, typed as the narrower ActorRefLike.
        actorRef: describedActor(event.actorRef as AnyActorRef, () => ({ status: 'active' })),
      } as unknown as InspectionEvent;
    case '@xstate.snapshot':
      return {
        type: '@xstate.snapshot',
        rootId: event.rootId,
        actorRef: { sessionId: event.actorRef.sessionId },
        event: plainCopy(event.event),
        snapshot: plainCopy(event.snapshot),
      } as unknown as InspectionEvent;
    case '@xstate.event':
      return {
        type: '@xstate.event',
        rootId: event.rootId,
        actorRef: { sessionId: event.actorRef.sessionId },
        sourceRef: event.sourceRef ? { sessionId: event.sourceRef.sessionId } : undefined,
        event: plainCopy(event.event),
      } as unknown as InspectionEvent;
    default:
      return undefined;
  }
}

/** An actor announced again to a viewer that connected after it started, with its current snapshot. */
export function currentActorPayload(ref: AnyActorRef, rootId: string): InspectionEvent {
  return {
    type: '@xstate.actor',
    rootId,
    actorRef: describedActor(ref, () => plainCopy(snapshotOf(ref))),
  } as unknown as InspectionEvent;
}
