import type { AnyStateMachine, AnyTransitionDefinition, InspectionEvent } from 'xstate';
import { getStateNodes, type AnyStateNode } from 'xstate/graph';

// What "every state and every transition" means, read from the machine definition itself: every state node
// (nested ones included) and every transition candidate (source × event type × position among the guarded
// candidates, `always` and `xstate.after.*` / `xstate.done.actor.*` / `xstate.error.actor.*` included). A
// coverage recorder ticks them off from the microsteps a real actor takes, as its inspector reports them.

/** Key of one transition candidate: `run.failed.deciding --always[1]--> run.failed.recording`. */
export function transitionKey(t: AnyTransitionDefinition): string {
  const source = t.source as AnyStateNode;
  const eventType = t.eventType || 'always';
  const candidates = t.eventType ? (source.transitions.get(t.eventType) ?? []) : (source.always ?? []);
  const index = candidates.indexOf(t);
  const targets = t.target?.map((node: AnyStateNode) => node.id).join(',') ?? '(no target)';
  return `${source.id} --${eventType}[${index}]--> ${targets}`;
}

export interface MachineUniverse {
  states: string[];
  transitions: string[];
}

export function machineUniverse(machine: AnyStateMachine): MachineUniverse {
  const nodes = getStateNodes(machine.root);
  const transitions: string[] = [];
  for (const node of nodes) {
    for (const candidates of node.transitions.values()) for (const t of candidates) transitions.push(transitionKey(t));
    for (const t of node.always ?? []) transitions.push(transitionKey(t));
  }
  return { states: nodes.map((n) => n.id), transitions };
}

/** Ticks off states and transitions as real actors take them; one recorder may watch many actors. */
export class CoverageRecorder {
  readonly states = new Set<string>();
  readonly transitions = new Set<string>();

  constructor(
    readonly name: string,
    readonly universe: MachineUniverse,
  ) {}

  /** An `inspect` observer for createActor; only the root actor (the machine under test) is counted. */
  observer(isSubject: (event: InspectionEvent) => boolean) {
    return (event: InspectionEvent) => {
      if (!isSubject(event)) return;
      if (event.type === '@xstate.microstep') {
        for (const t of event._transitions) this.transitions.add(transitionKey(t));
      }
      if (event.type === '@xstate.snapshot' || event.type === '@xstate.microstep') {
        const nodes = (event.snapshot as { _nodes?: AnyStateNode[] })._nodes ?? [];
        for (const node of nodes) if (node.parent) this.states.add(node.id);
      }
    };
  }

  missingStates(): string[] {
    return this.universe.states.filter((s) => !this.states.has(s));
  }

  missingTransitions(): string[] {
    return this.universe.transitions.filter((t) => !this.transitions.has(t));
  }

  /** Taken transitions the definition does not know: the key function would be wrong. */
  unknownTransitions(): string[] {
    const known = new Set(this.universe.transitions);
    return [...this.transitions].filter((t) => !known.has(t));
  }

  summary(paths: number): string {
    const coveredStates = this.universe.states.length - this.missingStates().length;
    const coveredTransitions = this.universe.transitions.length - this.missingTransitions().length;
    return (
      `${this.name} machine: states covered ${coveredStates}/${this.universe.states.length}, ` +
      `transitions covered ${coveredTransitions}/${this.universe.transitions.length} ` +
      `(${paths} generated paths replayed on the real actor)`
    );
  }
}
