// Random pipelines: whatever `needs` graph a config declares, validation either resolves it to an order in
// which every stage comes after all it needs (file order among stages free to go, depth = longest chain), or
// refuses it naming a real cycle of the graph. Never anything else.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/validate.js';
import { ConfigError, ConfigProblems } from '../../src/errors.js';
import { upstreamOf } from '../../src/policy/pipeline.js';
import { STAGE_KEYS } from '../../src/config/schema.js';

const options = { cwd: '/srv', hostName: () => 'h' };
const SEED = 14_003;
const RUNS = 500;

/** Up to 7 stages s0..s6 in a shuffled file order, each needing any of the others. */
const graph = fc
  .integer({ min: 1, max: 7 })
  .chain((n) =>
    fc.record({
      names: fc.shuffledSubarray(Array.from({ length: n }, (_, i) => `s${i}`), { minLength: n, maxLength: n }),
      needs: fc.array(fc.subarray(Array.from({ length: n }, (_, i) => `s${i}`)), { minLength: n, maxLength: n }),
    }),
  )
  .map(({ names, needs }) => names.map((name, i) => ({ name, needs: needs[i] })));

function raw(stages: { name: string; needs: string[] }[]) {
  return { stages: Object.fromEntries(stages.map(({ name, needs }) => [name, { command: [name, '{number}'], needs }])) };
}

/** Whether following needs from `name` comes back to it. */
function onCycle(stages: { name: string; needs: string[] }[], name: string): boolean {
  const needs = (stage: string) => stages.find((s) => s.name === stage)?.needs ?? [];
  return needs(name).includes(name) || upstreamOf(stages, name).some((above) => needs(above).includes(name));
}

describe('stages: random needs graphs', () => {
  it(`resolve to a stable topological order with depths, or name a real cycle (${RUNS} graphs)`, () => {
    fc.assert(
      fc.property(graph, (stages) => {
        let config;
        try {
          config = validateConfig(raw(stages), options);
        } catch (error) {
          expect(error).toBeInstanceOf(ConfigError);
          const problems = error instanceof ConfigProblems ? error.problems : [error as ConfigError];
          for (const problem of problems) {
            const match = /^config: stages\.(\w+)\.needs: a cycle: ([\w →]+);/.exec(problem.message);
            expect(match, problem.message).not.toBeNull();
            const cycle = match![2].split(' → ');
            expect(cycle[0]).toBe(match![1]);
            expect(cycle[cycle.length - 1]).toBe(cycle[0]);
            // Each step is a real need, and the cycle's stages are distinct.
            for (let i = 0; i + 1 < cycle.length; i++) {
              expect(stages.find((s) => s.name === cycle[i])!.needs).toContain(cycle[i + 1]);
            }
            expect(new Set(cycle.slice(0, -1)).size).toBe(cycle.length - 1);
          }
          // Refused only when the graph has a cycle.
          expect(stages.some((s) => onCycle(stages, s.name))).toBe(true);
          return;
        }
        expect(stages.some((s) => onCycle(stages, s.name))).toBe(false);
        const order = config.stages!.map((stage) => stage.name);
        expect([...order].sort()).toEqual(stages.map((s) => s.name).sort());
        const position = new Map(order.map((name, i) => [name, i]));
        const depth = new Map<string, number>();
        for (const stage of config.stages!) {
          for (const need of stage.needs) expect(position.get(need)!).toBeLessThan(position.get(stage.name)!);
          const expected = stage.needs.length === 0 ? 0 : 1 + Math.max(...stage.needs.map((need) => depth.get(need)!));
          expect(stage.depth).toBe(expected);
          depth.set(stage.name, expected);
        }
        // Stable: at each step the stage placed is the first in file order among those whose needs are placed.
        const placed = new Set<string>();
        for (const name of order) {
          const first = stages.find((s) => !placed.has(s.name) && s.needs.every((need) => placed.has(need)))!;
          expect(name).toBe(first.name);
          placed.add(name);
        }
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });
});

/** Values a stage key of each kind refuses, whatever the rest of the pipeline says. */
const BAD: Record<string, readonly unknown[]> = {
  path: ['', 5, ['a']],
  boolean: ['yes', 1],
  integer: [-1, 1.5, 'x', Number.NaN, 1e300],
  // Above the daemon's 4 slots.
  slots: [99, 5],
  number: ['x', Number.NaN, Infinity, -5],
  duration: [-1, 'soon', '5', {}, true, Infinity, 0],
  bytes: [-1, '5 parsecs', {}, true, 100],
  'string-list': ['echo x', [1], {}, [null]],
  'integer-list': [[256], ['x'], 5, [-1]],
  pair: [[2, 1], [0, 1], 'x', [1], [1, 2, 3]],
  'string-map': ['x', { '1A': 'v' }, { A: {} }, { A: 'nul\0' }, []],
  'count-map': ['x', { a: -1 }, { '': 1 }, { a: 'two' }],
  'resource-map': ['x', { cores: { start: 1, min: 4, shrink: 2 } }, { stage: { start: 1, min: 1, shrink: 1 } }, { cores: { start: 4 } }],
  'scalar-map': ['x', { a: null }, { a: [1] }, { a: { b: 1 } }],
};

/** A good pipeline touching every kind of stage key; `mid` is the one mutated below. */
const goodPipeline = () => ({
  slots: 4,
  stages: {
    top: { command: ['top', '{number}', '{output}'] },
    mid: {
      needs: ['top'],
      command: ['mid', '{upstream.top.output}', '{cores}'],
      check: ['test', '-d', '{output}'],
      cwd: 'w',
      env: { A: '1' },
      output_root: 'o',
      log_dir: 'l',
      require_output: true,
      clean_output: false,
      max_log_bytes: '1MiB',
      no_retry_exit_codes: [78],
      targets: ['a', 'b'],
      drop_targets_after: { 'a*': 1 },
      minimal_targets: ['a'],
      resources: { cores: { start: 4, min: 1, shrink: 2 } },
      slots: 2,
      select: { tags: ['x'], not_tags: ['y'], modes: ['m'], min_number: 1, max_number: 9, params: { p: 1 }, require_end: true },
      timeouts: { max_processing_time: '1h', max_no_output_time: '5m' },
      retry: { base: '10s', factor: 2, max_exponent: 2, jitter: [1, 1], max_failures: 3, max_interruptions: 5 },
    },
    low: { needs: ['mid'], command: ['low', '{upstream.mid.output}', '{upstream.top.output}'] },
  },
});

describe('stages: one bad stage value', () => {
  const keys: { path: string[]; kind: string }[] = [];
  for (const [key, kind] of Object.entries(STAGE_KEYS)) {
    if (typeof kind === 'object') for (const [inner, innerKind] of Object.entries(kind)) keys.push({ path: [key, inner], kind: innerKind });
    else keys.push({ path: [key], kind: key === 'slots' ? 'slots' : kind });
  }

  it('the good pipeline is accepted', () => {
    expect(validateConfig(goodPipeline(), options).stages!.map((stage) => stage.name)).toEqual(['top', 'mid', 'low']);
  });

  it(`is refused with exactly one problem naming that key (${RUNS} configs)`, () => {
    const mutation = fc.constantFrom(...keys).chain(({ path, kind }) =>
      fc.record({ path: fc.constant(path), bad: fc.constantFrom(...(kind === 'slots' ? [...BAD.integer, ...BAD.slots] : BAD[kind])) }),
    );
    fc.assert(
      fc.property(mutation, ({ path, bad }) => {
        const raw = goodPipeline();
        let node = raw.stages.mid as Record<string, unknown>;
        for (const key of path.slice(0, -1)) node = node[key] as Record<string, unknown>;
        node[path[path.length - 1]] = bad;
        // A bad command also loses the {cores} check's resources; a bad resource map loses {cores}: both are the same key's fault.
        let problems: ConfigError[] = [];
        try {
          validateConfig(raw, options);
        } catch (error) {
          if (!(error instanceof ConfigError)) throw error;
          problems = error instanceof ConfigProblems ? error.problems : [error];
        }
        const dotted = `stages.mid.${path.join('.')}`;
        const named = (field: string) => field === dotted || field.startsWith(`${dotted}[`) || field.startsWith(`${dotted}.`);
        const messages = problems.map((problem) => problem.message);
        expect(problems.length, `${dotted} = ${JSON.stringify(bad)}: ${messages.join(' | ')}`).toBeGreaterThan(0);
        expect(problems.filter((problem) => !named(problem.field!) && !(path[0] === 'resources' && problem.field === 'stages.mid.command[2]')), messages.join(' | ')).toEqual([]);
        expect(problems.filter((problem) => named(problem.field!)), messages.join(' | ')).toHaveLength(1);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });
});
