// Random pipelines: whatever `needs` graph a config declares, validation either resolves it to an order in
// which every stage comes after all it needs (file order among stages free to go, depth = longest chain), or
// refuses it naming a real cycle of the graph. Never anything else.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/validate.js';
import { ConfigError, ConfigProblems } from '../../src/errors.js';
import { upstreamOf } from '../../src/policy/pipeline.js';

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
