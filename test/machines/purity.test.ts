import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers/cli.js';

// machines/ holds charts only: effects (store, fs, processes) are provided from src/daemon. Pure policy
// functions (src/policy/, no I/O) may be shared, so a rule such as "when to abandon" lives in one place.
describe('machines/ purity', () => {
  it('imports nothing but xstate, its own files and pure policy', () => {
    const dir = join(repoRoot, 'machines');
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));
    expect(files.sort()).toEqual(['host.machine.ts', 'run.machine.ts', 'supervisor.machine.ts', 'types.ts']);
    for (const file of files) {
      const source = readFileSync(join(dir, file), 'utf8');
      const specifiers = [...source.matchAll(/^\s*import\s[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]);
      for (const specifier of specifiers) {
        expect({ file, specifier, allowed: specifier === 'xstate' || specifier!.startsWith('./') || specifier!.startsWith('../src/policy/') }).toEqual({
          file,
          specifier,
          allowed: true,
        });
      }
    }
  });
});
