import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { and, createActor, createMachine, fromPromise, not, or, setup, stateIn } from 'xstate';
import { formatGuard, machineSummary, toDot, toMermaid } from '../../src/diagram/export.js';
import { repoRoot } from '../helpers/cli.js';
import { buildLarge } from './fixtures/large-machine.js';

// A small machine whose diagrams are compared character for character.
const small = setup({
  guards: { isReady: () => true },
  delays: { checkInterval: 1000 },
}).createMachine({
  id: 'small',
  initial: 'idle',
  states: {
    idle: {
      on: {
        START: { target: 'working', guard: 'isReady' },
        LOG: { actions: () => undefined }, // targetless: not drawn
      },
    },
    working: {
      after: { checkInterval: { target: 'working', reenter: true }, 5000: 'done' },
      on: { CANCEL: { target: 'idle', guard: not('isReady') } },
    },
    done: { type: 'final' },
  },
});

// A larger machine using every construct the exporter knows about.
const large = buildLarge();

const SMALL_MERMAID = `stateDiagram-v2
    [*] --> idle
    idle
    working
    done
    done --> [*]
    idle --> working : START [isReady]
    working --> done : after 5000ms
    working --> working : after checkInterval
    working --> idle : CANCEL [!isReady]
`;

const SMALL_DOT = `digraph "small" {
  compound=true;
  rankdir=LR;
  node [shape=box, style=rounded, fontname="Helvetica"];
  edge [fontname="Helvetica", fontsize=10];
  "small__initial" [shape=point, width=0.15];
  "small__initial" -> "idle";
  "idle" [label="idle"];
  "working" [label="working"];
  "done" [label="done", shape=doublecircle];
  "idle" -> "working" [label="START [isReady]"];
  "working" -> "done" [label="after 5000ms"];
  "working" -> "working" [label="after checkInterval"];
  "working" -> "idle" [label="CANCEL [!isReady]"];
}
`;

/** Undo the Mermaid entity codes the exporter writes for ':', ';', '#' and '"' in labels. */
function unMermaid(text: string): string {
  return text.replace(/#quot;/g, '"').replace(/#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code)));
}

function mermaidEdges(mermaid: string): Array<{ from: string; to: string; label: string }> {
  return mermaid
    .split('\n')
    .map((line) => /^\s*(\S+) --> (\S+) : (.+)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ from: m[1]!, to: m[2]!, label: unMermaid(m[3]!) }));
}

function dotEdges(dot: string): Array<{ from: string; to: string; label: string }> {
  return dot
    .split('\n')
    .map((line) => /^\s*"([^"]+)" -> "([^"]+)" \[label="((?:[^"\\]|\\.)*)"/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ from: m[1]!, to: m[2]!, label: m[3]!.replace(/\\(.)/g, '$1') }));
}

describe('small machine', () => {
  it('exports the exact Mermaid text', () => {
    expect(toMermaid(small)).toBe(SMALL_MERMAID);
  });

  it('exports the exact DOT text', () => {
    expect(toDot(small)).toBe(SMALL_DOT);
  });

  it('summarizes states and transitions with XState event types', () => {
    expect(machineSummary(small)).toEqual({
      states: ['idle', 'working', 'done'],
      transitions: [
        { from: 'idle', event: 'START', to: ['working'], kind: 'event', label: 'START [isReady]', guard: 'isReady' },
        // Integer-like keys come first in a JS object, so `5000` precedes `checkInterval`.
        {
          from: 'working',
          event: 'xstate.after.5000.small.working',
          to: ['done'],
          kind: 'after',
          label: 'after 5000ms',
          delay: 5000,
        },
        {
          from: 'working',
          event: 'xstate.after.checkInterval.small.working',
          to: ['working'],
          kind: 'after',
          label: 'after checkInterval',
          delay: 'checkInterval',
        },
        { from: 'working', event: 'CANCEL', to: ['idle'], kind: 'event', label: 'CANCEL [!isReady]', guard: '!isReady' },
      ],
    });
  });

  it('lists targetless transitions only on request', () => {
    const all = machineSummary(small, { includeTargetless: true });
    expect(all.transitions.find((t) => t.event === 'LOG')).toMatchObject({ from: 'idle', to: [], label: 'LOG' });
  });
});

describe('large machine', () => {
  const summary = machineSummary(large);
  const mermaid = toMermaid(large);
  const dot = toDot(large);

  it('lists every state in definition order', () => {
    expect(summary.states).toEqual([
      'boot',
      'waiting-room',
      'main',
      'main.worker',
      'main.worker.fetching',
      'main.worker.saving',
      'main.worker.done',
      'main.monitor',
      'main.monitor.watching',
      'main.monitor.alarm',
      'main.monitor.quiet',
      'finished',
      'failed',
      'state',
    ]);
  });

  it('recovers named delays, guards, invoked actors and eventless transitions', () => {
    const labels = summary.transitions.map((t) => `${t.from} -> ${t.to.join(' + ')} : ${t.label}`);
    expect(labels).toEqual([
      ' -> boot : RESET',
      'boot -> main : always [isReady]',
      'boot -> waiting-room : always',
      // groups follow the order of the keys in each state's config: `after` before `on` here
      'waiting-room -> boot : after 250ms',
      'waiting-room -> waiting-room : POKE',
      'main -> finished : onDone',
      'main -> failed : ABORT [or(isReady, !hasSlot)]',
      'main.worker.fetching -> main.worker.saving : done: fetchJob [okOutput]',
      'main.worker.fetching -> main.worker.fetching : done: fetchJob',
      'main.worker.fetching -> failed : error: fetchJob',
      'main.worker.saving -> main.worker.done : done: saveJob',
      'main.worker.saving -> main.worker.fetching : error: saveJob',
      'main.worker.saving -> main.worker.done : error: saveJob',
      'main.monitor.watching -> main.monitor.watching : after checkInterval',
      'main.monitor.watching -> main.monitor.alarm : after escalate [and(hasSlot, !isReady)]',
      'main.monitor.watching -> main.worker.done + main.monitor.quiet : STATUS',
      'main.monitor.watching -> main.monitor.watching : BUMP [atLeast(n=3)]',
      'main.monitor.watching -> main.monitor.alarm : PEEK [in(#large.main.worker.saving)]',
      'main.monitor.alarm -> main.monitor.quiet : ACK',
      'state -> boot : GO',
    ]);
    const byLabel = new Map(summary.transitions.map((t) => [t.label, t]));
    expect(byLabel.get('after escalate [and(hasSlot, !isReady)]')).toMatchObject({
      kind: 'after',
      delay: 'escalate',
      event: 'xstate.after.escalate.large.main.monitor.watching',
      guard: 'and(hasSlot, !isReady)',
    });
    expect(byLabel.get('done: fetchJob [okOutput]')).toMatchObject({
      kind: 'done',
      actor: 'fetchJob',
      event: 'xstate.done.actor.0.large.main.worker.fetching',
    });
    // An explicit invoke id changes the event type; the label still names the src.
    expect(summary.transitions.filter((t) => t.label === 'error: saveJob').map((t) => [t.event, t.to])).toEqual([
      ['xstate.error.actor.0.large.main.worker.saving', ['main.worker.fetching']],
      ['xstate.error.actor.audit', ['main.worker.done']],
    ]);
    expect(byLabel.get('always [isReady]')).toMatchObject({ kind: 'always', event: '' });
    expect(byLabel.get('onDone')).toMatchObject({ kind: 'stateDone', event: 'xstate.done.state.large.main' });
  });

  it('draws every state in Mermaid with its key as label and a Mermaid-safe id', () => {
    expect(mermaid.startsWith('stateDiagram-v2\n')).toBe(true);
    for (const path of summary.states) {
      const key = path.split('.').at(-1)!;
      const id = path.replace(/[^A-Za-z0-9_]/g, '_');
      if (key === 'state') {
        expect(mermaid).toContain('state "state" as _state\n');
      } else if (id === key) {
        expect(mermaid).toMatch(new RegExp(`^\\s*(state )?${id}( \\{)?$`, 'm'));
      } else {
        expect(mermaid).toContain(`state "${key}" as ${id}\n`);
      }
    }
    // ids the Mermaid lexer accepts: no '-', ':', whitespace, '{'
    for (const e of mermaidEdges(mermaid)) {
      expect(e.from).toMatch(/^(\[\*\]|[A-Za-z0-9_]+)$/);
      expect(e.to).toMatch(/^(\[\*\]|[A-Za-z0-9_]+)$/);
    }
  });

  it('draws nesting, parallel regions, initials and finals in Mermaid', () => {
    // The root has a transition of its own, so it is a composite; `main` is parallel with `--`.
    expect(mermaid).toContain(
      [
        '    state large {',
        '        [*] --> boot',
        '        boot',
        '        state "waiting-room" as waiting_room',
        '        state main {',
        '            state "worker" as main_worker',
        '            state main_worker {',
        '                [*] --> main_worker_fetching',
        '                state "fetching" as main_worker_fetching',
        '                state "saving" as main_worker_saving',
        '                state "done" as main_worker_done',
        '                main_worker_done --> [*]',
        '            }',
        '            --',
        '            state "monitor" as main_monitor',
        '            state main_monitor {',
      ].join('\n'),
    );
    expect(mermaid).toContain('        finished --> [*]\n        failed\n        failed --> [*]\n');
  });

  it('draws every transition edge in Mermaid with its label', () => {
    const edges = mermaidEdges(mermaid).filter((e) => e.from !== '[*]' && e.to !== '[*]');
    const idOf = (path: string) => (path === '' ? 'large' : path === 'state' ? '_state' : path.replace(/[^A-Za-z0-9_]/g, '_'));
    const expected = summary.transitions.flatMap((t) => t.to.map((to) => ({ from: idOf(t.from), to: idOf(to), label: t.label })));
    expect(edges).toEqual(expected);
    // Labels never contain what would end a Mermaid label early.
    for (const line of mermaid.split('\n').filter((l) => l.includes(' : '))) {
      expect(line.slice(line.indexOf(' : ') + 3)).not.toMatch(/[:\n]|;(?<!#\d+;)/);
    }
    expect(mermaid).toContain('main_worker_fetching --> main_worker_saving : done#58; fetchJob [okOutput]\n');
  });

  it('draws clusters, initials, finals and every edge in DOT', () => {
    expect(dot.startsWith('digraph "large" {\n  compound=true;\n')).toBe(true);
    expect(dot.trimEnd().endsWith('}')).toBe(true);
    for (const cluster of ['large', 'main', 'main_worker', 'main_monitor']) {
      expect(dot).toContain(`subgraph "cluster_${cluster}" {`);
    }
    expect(dot).toContain('style="rounded,dashed";'); // the parallel state
    for (const initial of ['large', 'main_worker', 'main_monitor']) {
      expect(dot).toContain(`"${initial}__initial" [shape=point, width=0.15];`);
    }
    for (const final of ['main_worker_done', 'main_monitor_quiet', 'finished', 'failed']) {
      expect(dot).toMatch(new RegExp(`"${final}" \\[label="[^"]+", shape=doublecircle\\];`));
    }
    for (const path of summary.states) {
      expect(dot).toContain(`label="${path.split('.').at(-1)}"`);
    }
    const labels = dotEdges(dot).map((e) => e.label);
    const expectedLabels = summary.transitions.flatMap((t) => t.to.map(() => t.label));
    // The initial-point edges carry no label and are not matched.
    expect(labels).toEqual(expectedLabels);
    // Edges to and from a cluster attach to its anchor and clip at the border.
    expect(dot).toContain('"boot" -> "main__anchor" [label="always [isReady]", lhead="cluster_main"];');
    expect(dot).toContain('"main__anchor" -> "failed" [label="ABORT [or(isReady, !hasSlot)]", ltail="cluster_main"];');
    expect(dot).toContain('"large__anchor" -> "boot" [label="RESET"];');
  });

  it('is deterministic: the same definition built again, after other machines ran, exports the same text', () => {
    // xstate numbers things as machines are created and actors run; the export must depend on the definition only.
    for (let i = 0; i < 3; i++) createActor(buildLarge()).start().stop();
    const again = buildLarge();
    expect(again).not.toBe(large);
    expect(toMermaid(again)).toBe(mermaid);
    expect(toDot(again)).toBe(dot);
    expect(machineSummary(again)).toEqual(summary);
  });

  it('is deterministic across processes: a fresh process exports the same text', () => {
    const script = fileURLToPath(new URL('./fixtures/export-large.ts', import.meta.url));
    const out = execFileSync(process.execPath, ['--import', 'tsx', script], { cwd: repoRoot, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ mermaid, dot, summary });
  });
});

describe('a compound initial state', () => {
  it('is entered through its cluster in DOT and its block in Mermaid', () => {
    const machine = setup({}).createMachine({
      id: 'nest',
      initial: 'outer',
      states: { outer: { initial: 'inner', states: { inner: {} } } },
    });
    expect(toDot(machine)).toContain(
      [
        '  "nest__initial" [shape=point, width=0.15];',
        '  "nest__initial" -> "outer__anchor" [lhead="cluster_outer"];',
        '  subgraph "cluster_outer" {',
        '    label="outer";',
        '    style=rounded;',
        '    "outer__initial" [shape=point, width=0.15];',
        '    "outer__initial" -> "outer_inner";',
        '    "outer__anchor" [shape=point, style=invis, width=0, label=""];',
        '    "outer_inner" [label="inner"];',
        '  }',
      ].join('\n'),
    );
    expect(toMermaid(machine)).toBe(
      [
        'stateDiagram-v2',
        '    [*] --> outer',
        '    state outer {',
        '        [*] --> outer_inner',
        '        state "inner" as outer_inner',
        '    }',
        '',
      ].join('\n'),
    );
  });
});

describe('inline invoked logic', () => {
  it('names the actor by its id, or "inline" without one', () => {
    // setup() only accepts named actors, so this one is built without it.
    const machine = createMachine({
      id: 'inl',
      initial: 'a',
      states: {
        a: {
          invoke: [
            { src: fromPromise(async () => 1), onDone: 'b' },
            { id: 'audit', src: fromPromise(async () => 2), onError: 'b' },
          ],
        },
        b: {},
      },
    });
    expect(machineSummary(machine).transitions).toEqual([
      { from: 'a', event: 'xstate.done.actor.0.inl.a', to: ['b'], kind: 'done', actor: 'inline', label: 'done: inline' },
      { from: 'a', event: 'xstate.error.actor.audit', to: ['b'], kind: 'error', actor: 'audit', label: 'error: audit' },
    ]);
    expect(toMermaid(machine)).toContain('    a --> b : done#58; inline\n    a --> b : error#58; audit\n');
  });
});

describe('formatGuard', () => {
  it('formats named, parameterized, higher-order and inline guards', () => {
    expect(formatGuard('ready')).toBe('ready');
    expect(formatGuard({ type: 'atLeast', params: { n: 3, name: 'x' } })).toBe('atLeast(n=3, name="x")');
    expect(formatGuard({ type: 'dyn', params: () => ({}) })).toBe('dyn');
    expect(formatGuard(not('a'))).toBe('!a');
    expect(formatGuard(not(and(['a', or(['b', 'c'])])))).toBe('!and(a, or(b, c))');
    expect(formatGuard(stateIn({ a: 'b' }))).toBe('in({"a":"b"})');
    expect(formatGuard(() => true)).toBe('inline');
    function namedCheck(): boolean {
      return true;
    }
    expect(formatGuard(namedCheck)).toBe('namedCheck');
    expect(formatGuard(and([() => true, 'x']))).toBe('and(inline, x)');
  });
});
