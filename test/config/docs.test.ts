// Keeps docs/configuration.md true to the code: every key is documented and every YAML example loads.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { CONFIG_KEYS, knownKeyPaths } from '../../src/config/schema.js';

const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
const examples = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((match) => match[1]);

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'runwarden-docs-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('docs/configuration.md', () => {
  it.each(knownKeyPaths().filter((path) => typeof (CONFIG_KEYS as Record<string, unknown>)[path] !== 'object'))(
    'documents %s in the key table',
    (path) => {
      expect(doc).toContain(`| \`${path}\` |`);
    },
  );

  it('has two YAML examples', () => {
    expect(examples).toHaveLength(2);
  });

  it('the bootstrax-like example loads', () => {
    const file = join(dir, 'runwarden.yaml');
    writeFileSync(file, examples[0]);
    const config = loadConfig({ file, cwd: '/', env: {}, flags: {}, hostName: () => 'eb0' });
    expect(config.store).toMatch(/^mongodb:\/\/runwarden:secret@db1\.daq/);
    expect(config.slots).toBe(2);
    expect(config.process.resources.cores).toEqual({ start: 16, min: 4, shrink: 2 });
    expect(config.process.env.OMP_NUM_THREADS).toBe('1');
    expect(config.timeouts.presumed_dead).toBe(300_000);
    expect(config.disk.min_free_bytes).toBe(200 * 2 ** 30);
  });

  it('the single-host example loads, with the store beside the file', () => {
    const file = join(dir, 'runwarden.yaml');
    writeFileSync(file, examples[1]);
    const config = loadConfig({ file, cwd: '/', env: {}, flags: {}, hostName: () => 'h' });
    expect(config.store).toBe(`sqlite:${join(dir, 'runwarden.db')}`);
  });
});
