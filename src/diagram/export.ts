// Machine → diagram exporter for XState v5 machines (no npm package does this for v5).
//
// Everything is read from the machine's StateNode tree (machine.root): `states`, `type`, `initial`,
// `transitions` (a Map that already holds `on`, `onDone`, invoke onDone/onError/onSnapshot and `after`
// transitions), `always`, `invoke`, and the raw guard / delay values XState keeps on each transition
// definition. The output is deterministic (definition order), so it can be compared to a committed file.

import { and, not, or, stateIn } from 'xstate';
import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from 'xstate';

/** What produced a transition, as far as the diagram is concerned. */
export type TransitionKind =
  | 'event' // `on: { EVENT: ... }` (including wildcards)
  | 'after' // `after: { delay: ... }` (event xstate.after.<delay>.<state id>)
  | 'always' // eventless
  | 'done' // invoke onDone (xstate.done.actor.<invoke id>)
  | 'error' // invoke onError (xstate.error.actor.<invoke id>)
  | 'snapshot' // invoke onSnapshot (xstate.snapshot.<invoke id>)
  | 'stateDone' // the state's own onDone (xstate.done.state.<state id>)
  | 'route'; // xstate.route (routable states)

export interface TransitionSummary {
  /** Dotted path of the source state; '' is the machine's root node. */
  from: string;
  /**
   * The event descriptor exactly as XState stores it in `transition.eventType`, so it can be matched
   * against transitions seen at run time: e.g. `START`, `xstate.after.checkInterval.run.busy`,
   * `xstate.done.actor.0.run.considering`; '' for `always` (XState's null event).
   */
  event: string;
  /** Dotted paths of the targets ('' is the root); empty for a targetless (actions-only) transition. */
  to: string[];
  /** Human-readable guard: `name`, `name(k=v)`, `!name`, `and(a, b)`, `or(a, b)`, `in(#id)`, `inline`. */
  guard?: string;
  kind: TransitionKind;
  /** The edge label drawn in the diagrams (trigger, then ` [guard]` when guarded). */
  label: string;
  /** For `after`: the delay's name (named delay from setup) or its number of milliseconds. */
  delay?: string | number;
  /** For `done` / `error` / `snapshot`: the invoked actor's src name (or its id when the logic is inline). */
  actor?: string;
}

export interface MachineSummary {
  /** Dotted paths of every state node except the root and history pseudo-states, in definition order. */
  states: string[];
  transitions: TransitionSummary[];
}

export interface SummaryOptions {
  /** Also list transitions without a target (actions only). The diagrams never draw them. */
  includeTargetless?: boolean;
}

// ---------------------------------------------------------------------------------------------------
// Model shared by both exporters

interface DiagramNode {
  node: AnyStateNode;
  /** Dotted path ('' for the root). */
  path: string;
  /** Diagram id: path joined with '_', reduced to [A-Za-z0-9_], unique, never a Mermaid keyword. */
  id: string;
  /** The label shown: the state key (the machine id for the root). */
  label: string;
  type: AnyStateNode['type'];
  parent?: DiagramNode;
  children: DiagramNode[];
  /** DOT only: point node of the initial transition (compound nodes). */
  initialId: string;
  /** DOT only: invisible node inside the cluster that edges to / from a cluster attach to. */
  anchorId: string;
}

interface DiagramEdge {
  source: DiagramNode;
  targets: DiagramNode[];
  summary: TransitionSummary;
}

interface DiagramModel {
  root: DiagramNode;
  /** Every node except the root, pre-order (definition order). */
  nodes: DiagramNode[];
  edges: DiagramEdge[];
  /** The root is drawn as a box of its own when it is an edge endpoint or parallel. */
  wrapRoot: boolean;
}

// Words the Mermaid state-diagram lexer treats specially at the start of a statement.
const MERMAID_RESERVED = new Set([
  'root',
  'state',
  'note',
  'class',
  'classdef',
  'style',
  'scale',
  'direction',
  'hide',
  'click',
  'end',
]);

function safeId(raw: string): string {
  let id = raw.replace(/[^A-Za-z0-9_]/g, '_');
  if (id === '') id = '_';
  if (MERMAID_RESERVED.has(id.toLowerCase()) || /^(default|statediagram)/i.test(id)) id = `_${id}`;
  return id;
}

class IdRegistry {
  private readonly used = new Set<string>();
  claim(raw: string): string {
    const base = safeId(raw);
    let id = base;
    for (let n = 2; this.used.has(id); n++) id = `${base}_${n}`;
    this.used.add(id);
    return id;
  }
}

function buildModel(machine: AnyStateMachine, options: SummaryOptions = {}): DiagramModel {
  const registry = new IdRegistry();
  const nodes: DiagramNode[] = [];
  const byStateNode = new Map<AnyStateNode, DiagramNode>();

  const visit = (node: AnyStateNode, parent: DiagramNode | undefined): DiagramNode => {
    const isRoot = parent === undefined;
    const id = registry.claim(isRoot ? machine.id : node.path.join('_'));
    const dn: DiagramNode = {
      node,
      path: node.path.join('.'),
      id,
      label: isRoot ? machine.id : node.key,
      type: node.type,
      parent,
      children: [],
      initialId: registry.claim(`${id}__initial`),
      anchorId: registry.claim(`${id}__anchor`),
    };
    byStateNode.set(node, dn);
    if (!isRoot) nodes.push(dn);
    for (const child of Object.values(node.states) as AnyStateNode[]) {
      dn.children.push(visit(child, dn));
    }
    return dn;
  };
  const root = visit(machine.root, undefined);

  const edges: DiagramEdge[] = [];
  for (const dn of [root, ...nodes]) {
    for (const t of orderedTransitions(dn.node)) {
      const targets = (t.target ?? []).map((target) => {
        const found = byStateNode.get(target);
        if (!found) throw new Error(`diagram: target #${target.id} of ${dn.node.id} is not in the machine`);
        return found;
      });
      if (targets.length === 0 && !options.includeTargetless) continue;
      edges.push({ source: dn, targets, summary: summarize(dn, t, targets) });
    }
  }

  const wrapRoot =
    root.type === 'parallel' ||
    edges.some((e) => e.source === root || e.targets.includes(root));
  return { root, nodes, edges, wrapRoot };
}

// ---------------------------------------------------------------------------------------------------
// Transitions

type Group = 'on' | 'after' | 'always' | 'invoke' | 'onDone' | 'route';
const GROUP_FALLBACK_ORDER: Group[] = ['on', 'always', 'after', 'invoke', 'onDone', 'route'];

function invokeIdOf(eventType: string): { kind: 'done' | 'error' | 'snapshot'; invokeId: string } | undefined {
  for (const [prefix, kind] of [
    ['xstate.done.actor.', 'done'],
    ['xstate.error.actor.', 'error'],
    ['xstate.snapshot.', 'snapshot'],
  ] as const) {
    if (eventType.startsWith(prefix)) return { kind, invokeId: eventType.slice(prefix.length) };
  }
  return undefined;
}

function groupOf(node: AnyStateNode, t: AnyTransitionDefinition): Group {
  if ('delay' in t) return 'after';
  const eventType = String(t.eventType);
  if (eventType === 'xstate.route') return 'route';
  if (eventType === `xstate.done.state.${node.id}` && node.config.onDone !== undefined) return 'onDone';
  const inv = invokeIdOf(eventType);
  if (inv && node.invoke.some((d) => d.id === inv.invokeId)) return 'invoke';
  return 'on';
}

/**
 * The node's transitions in definition order: groups follow the order of the keys in the state's
 * config (`on`, `after`, `always`, `invoke`, `onDone`), transitions keep their order inside a group.
 * (JavaScript lists integer-like keys first, so `after: { checkInterval: …, 5000: … }` yields 5000 first.)
 */
function orderedTransitions(node: AnyStateNode): AnyTransitionDefinition[] {
  const groups = new Map<Group, AnyTransitionDefinition[]>(GROUP_FALLBACK_ORDER.map((g) => [g, []]));
  for (const list of node.transitions.values()) {
    for (const t of list) groups.get(groupOf(node, t))!.push(t);
  }
  for (const t of node.always ?? []) groups.get('always')!.push(t);

  const configKeys = Object.keys(node.config).filter((k): k is Group =>
    (GROUP_FALLBACK_ORDER as string[]).includes(k),
  );
  const order = [...configKeys, ...GROUP_FALLBACK_ORDER.filter((g) => !configKeys.includes(g))];
  return order.flatMap((g) => groups.get(g)!);
}

function actorName(node: AnyStateNode, invokeId: string): string {
  const index = node.invoke.findIndex((d) => d.id === invokeId);
  if (index < 0) return invokeId;
  const def = node.invoke[index]!;
  if (typeof def.src === 'string' && !def.src.startsWith('xstate.invoke.')) return def.src;
  // Inline logic: its generated id is `${index}.${state id}`; a user-given id is more telling.
  return def.id !== `${index}.${node.id}` ? def.id : 'inline';
}

function delayOf(node: AnyStateNode, t: AnyTransitionDefinition): string | number {
  const raw = (t as { delay?: unknown }).delay;
  if (typeof raw === 'string' || typeof raw === 'number') return raw;
  if (typeof raw === 'function') return 'dynamic';
  // Fallback: xstate.after.<delay>.<state id>
  const eventType = String(t.eventType);
  const suffix = `.${node.id}`;
  const inner = eventType.slice('xstate.after.'.length, eventType.endsWith(suffix) ? -suffix.length : undefined);
  return Number.isNaN(Number(inner)) ? inner : Number(inner);
}

function summarize(dn: DiagramNode, t: AnyTransitionDefinition, targets: DiagramNode[]): TransitionSummary {
  const node = dn.node;
  const eventType = String(t.eventType);
  const group = groupOf(node, t);
  let kind: TransitionKind;
  let trigger: string;
  let delay: string | number | undefined;
  let actor: string | undefined;

  if (eventType === '' && (node.always ?? []).includes(t)) {
    kind = 'always';
    trigger = 'always';
  } else if (group === 'after') {
    kind = 'after';
    delay = delayOf(node, t);
    trigger = `after ${typeof delay === 'number' ? `${delay}ms` : delay}`;
  } else if (group === 'route') {
    kind = 'route';
    trigger = 'route';
  } else if (group === 'onDone') {
    kind = 'stateDone';
    trigger = 'onDone';
  } else {
    const inv = invokeIdOf(eventType);
    if (inv) {
      kind = inv.kind;
      actor = actorName(node, inv.invokeId);
      trigger = `${inv.kind}: ${actor}`;
    } else {
      kind = 'event';
      trigger = eventType;
    }
  }

  const rawGuard = kind === 'route' ? routeGuard(t) : t.guard;
  const guard = rawGuard === undefined ? undefined : formatGuard(rawGuard);
  const summary: TransitionSummary = {
    from: dn.path,
    event: eventType,
    to: targets.map((x) => x.path),
    kind,
    label: guard === undefined ? trigger : `${trigger} [${guard}]`,
  };
  if (guard !== undefined) summary.guard = guard;
  if (delay !== undefined) summary.delay = delay;
  if (actor !== undefined) summary.actor = actor;
  return summary;
}

/** xstate.route wraps the user's guard in and([routeMatches, guard]); show only the user's part. */
function routeGuard(t: AnyTransitionDefinition): unknown {
  const target = t.target?.[0];
  const route = target?.config.route as { guard?: unknown } | undefined;
  return route?.guard;
}

// ---------------------------------------------------------------------------------------------------
// Guards

// Higher-order guards are functions carrying `check` (the evaluator, shared by every instance of one
// kind) and `guards` / `stateValue`. Compare `check` with reference instances; fall back to the
// function's name, which XState's builds keep ('not', 'and', 'or', 'stateIn').
const NOT_CHECK = (not('x') as unknown as { check: unknown }).check;
const AND_CHECK = (and(['x']) as unknown as { check: unknown }).check;
const OR_CHECK = (or(['x']) as unknown as { check: unknown }).check;
const IN_CHECK = (stateIn('x') as unknown as { check: unknown }).check;

interface HigherOrderGuard {
  name: string;
  check?: unknown;
  guards?: unknown[];
  stateValue?: unknown;
}

function formatValue(value: unknown): string {
  if (typeof value === 'function') return 'dynamic';
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json;
}

function formatParams(params: unknown): string | undefined {
  if (params === undefined || typeof params === 'function') return undefined;
  if (params !== null && typeof params === 'object' && !Array.isArray(params)) {
    return Object.entries(params as Record<string, unknown>)
      .map(([k, v]) => `${k}=${formatValue(v)}`)
      .join(', ');
  }
  return formatValue(params);
}

/** Best-effort readable form of a guard as written in the machine config. */
export function formatGuard(guard: unknown): string {
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'function') {
    const g = guard as HigherOrderGuard;
    const inner = Array.isArray(g.guards) ? g.guards : [];
    if (g.check === NOT_CHECK || (g.name === 'not' && inner.length === 1)) return `!${formatGuard(inner[0])}`;
    if (g.check === AND_CHECK || (g.name === 'and' && Array.isArray(g.guards))) {
      return `and(${inner.map(formatGuard).join(', ')})`;
    }
    if (g.check === OR_CHECK || (g.name === 'or' && Array.isArray(g.guards))) {
      return `or(${inner.map(formatGuard).join(', ')})`;
    }
    if (g.check === IN_CHECK || (g.name === 'stateIn' && 'stateValue' in g)) {
      return `in(${typeof g.stateValue === 'string' ? g.stateValue : formatValue(g.stateValue)})`;
    }
    // An inline arrow written as `guard: () => ...` is named 'guard' by JS: that says nothing.
    return g.name && g.name !== 'guard' ? g.name : 'inline';
  }
  if (guard !== null && typeof guard === 'object' && 'type' in guard) {
    const { type, params } = guard as { type: unknown; params?: unknown };
    const name = typeof type === 'string' ? type : formatGuard(type);
    const shown = formatParams(params);
    return shown === undefined ? name : `${name}(${shown})`;
  }
  return 'inline';
}

// ---------------------------------------------------------------------------------------------------
// Public API

/** States and transitions of a machine, in definition order; what both diagrams draw. */
export function machineSummary(machine: AnyStateMachine, options: SummaryOptions = {}): MachineSummary {
  const model = buildModel(machine, options);
  return {
    states: model.nodes.filter((n) => n.type !== 'history').map((n) => n.path),
    transitions: model.edges.map((e) => e.summary),
  };
}

const INDENT = '    ';

/**
 * Mermaid text must not contain ':' or ';' in an edge label (the lexer ends the label there) and
 * treats `#…;` as an entity: write those characters as Mermaid entity codes, which render as the
 * characters themselves.
 */
function mermaidLabel(text: string): string {
  return text.replace(/[#:;\n"]/g, (c) => {
    if (c === '\n') return ' ';
    if (c === '"') return '#quot;';
    return `#${c.charCodeAt(0)};`;
  });
}

function mermaidDeclaration(n: DiagramNode): string | undefined {
  return n.id === n.label ? undefined : `state "${mermaidLabel(n.label)}" as ${n.id}`;
}

function mermaidBlockBody(n: DiagramNode, depth: number, lines: string[]): void {
  const pad = INDENT.repeat(depth);
  if (n.type === 'compound') {
    const initial = n.node.initial?.target?.[0];
    const initialNode = n.children.find((c) => c.node === initial);
    if (initialNode) lines.push(`${pad}[*] --> ${initialNode.id}`);
  }
  n.children.forEach((child, i) => {
    if (n.type === 'parallel' && i > 0) lines.push(`${pad}--`);
    mermaidState(child, depth, lines);
    if (child.type === 'final') lines.push(`${pad}${child.id} --> [*]`);
  });
}

function mermaidState(n: DiagramNode, depth: number, lines: string[]): void {
  const pad = INDENT.repeat(depth);
  const declaration = mermaidDeclaration(n);
  // A composite with a label is declared on a line of its own before its block: `state "x" as id {`
  // is not understood by every Mermaid version when nested.
  if (n.children.length === 0) {
    lines.push(`${pad}${declaration ?? n.id}`);
    return;
  }
  if (declaration) lines.push(`${pad}${declaration}`);
  lines.push(`${pad}state ${n.id} {`);
  mermaidBlockBody(n, depth + 1, lines);
  lines.push(`${pad}}`);
}

/** Mermaid `stateDiagram-v2` text of the machine. */
export function toMermaid(machine: AnyStateMachine): string {
  const model = buildModel(machine);
  const lines: string[] = ['stateDiagram-v2'];
  if (model.wrapRoot) {
    mermaidState(model.root, 1, lines);
  } else {
    mermaidBlockBody(model.root, 1, lines);
  }
  // Transitions go last and at the top level: Mermaid places a state in the composite where it is
  // mentioned, so a transition written inside another composite would move its target there.
  for (const e of model.edges) {
    for (const target of e.targets) {
      lines.push(`${INDENT}${e.source.id} --> ${target.id} : ${mermaidLabel(e.summary.label)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function dotString(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

function isCluster(n: DiagramNode, model: DiagramModel): boolean {
  if (n === model.root) return model.wrapRoot;
  return n.children.length > 0;
}

function isAncestor(a: DiagramNode, b: DiagramNode): boolean {
  for (let p = b.parent; p; p = p.parent) if (p === a) return true;
  return false;
}

function dotState(n: DiagramNode, model: DiagramModel, depth: number, lines: string[]): void {
  const pad = '  '.repeat(depth);
  if (!isCluster(n, model)) {
    const attrs = [`label=${dotString(n.label)}`];
    if (n.type === 'final') attrs.push('shape=doublecircle');
    if (n.type === 'history') attrs.push('shape=circle');
    lines.push(`${pad}${dotString(n.id)} [${attrs.join(', ')}];`);
    return;
  }
  lines.push(`${pad}subgraph ${dotString(`cluster_${n.id}`)} {`);
  lines.push(`${pad}  label=${dotString(n.label)};`);
  lines.push(`${pad}  style=${n.type === 'parallel' ? '"rounded,dashed"' : 'rounded'};`);
  dotBody(n, model, depth + 1, lines);
  lines.push(`${pad}}`);
}

function dotBody(n: DiagramNode, model: DiagramModel, depth: number, lines: string[]): void {
  const pad = '  '.repeat(depth);
  if (n.type === 'compound') {
    const initial = n.node.initial?.target?.[0];
    const initialNode = n.children.find((c) => c.node === initial);
    lines.push(`${pad}${dotString(n.initialId)} [shape=point, width=0.15];`);
    if (initialNode) {
      const lhead = isCluster(initialNode, model) ? ` [lhead=${dotString(`cluster_${initialNode.id}`)}]` : '';
      lines.push(`${pad}${dotString(n.initialId)} -> ${dotEndpoint(initialNode, model)}${lhead};`);
    }
  }
  if (isCluster(n, model) && needsAnchor(n, model)) {
    lines.push(`${pad}${dotString(n.anchorId)} [shape=point, style=invis, width=0, label=""];`);
  }
  for (const child of n.children) dotState(child, model, depth, lines);
}

function needsAnchor(n: DiagramNode, model: DiagramModel): boolean {
  const parentInitial = n.parent?.type === 'compound' ? n.parent.node.initial?.target?.[0] : undefined;
  return parentInitial === n.node || model.edges.some((e) => e.source === n || e.targets.includes(n));
}

function dotEndpoint(n: DiagramNode, model: DiagramModel): string {
  return dotString(isCluster(n, model) ? n.anchorId : n.id);
}

/** Graphviz DOT text of the machine. */
export function toDot(machine: AnyStateMachine): string {
  const model = buildModel(machine);
  const lines: string[] = [
    `digraph ${dotString(machine.id)} {`,
    '  compound=true;',
    '  rankdir=LR;',
    '  node [shape=box, style=rounded, fontname="Helvetica"];',
    '  edge [fontname="Helvetica", fontsize=10];',
  ];
  if (model.wrapRoot) {
    dotState(model.root, model, 1, lines);
  } else {
    dotBody(model.root, model, 1, lines);
  }
  for (const e of model.edges) {
    for (const target of e.targets) {
      const attrs = [`label=${dotString(e.summary.label)}`];
      if (isCluster(e.source, model) && !isAncestor(e.source, target) && e.source !== target) {
        attrs.push(`ltail=${dotString(`cluster_${e.source.id}`)}`);
      }
      if (isCluster(target, model) && !isAncestor(target, e.source) && e.source !== target) {
        attrs.push(`lhead=${dotString(`cluster_${target.id}`)}`);
      }
      lines.push(`  ${dotEndpoint(e.source, model)} -> ${dotEndpoint(target, model)} [${attrs.join(', ')}];`);
    }
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
