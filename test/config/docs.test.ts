// Keeps docs/configuration.md true to the code: every key is documented and every YAML example loads.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { CONFIG_KEYS, STAGE_KEYS, knownKeyPaths } from '../../src/config/schema.js';
import { stagesOf } from '../../src/policy/pipeline.js';

const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
const examples = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((match) => match[1]);
const example = (marker: string) => {
  const found = examples.filter((text) => text.includes(marker));
  expect(found, marker).toHaveLength(1);
  return found[0];
};

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

  // A stage key is documented as stages.NAME.KEY; a stage's timeouts one by one (the others are refused there).
  it.each([
    ...Object.keys(STAGE_KEYS),
    ...Object.keys(STAGE_KEYS.timeouts).map((key) => `timeouts.${key}`),
  ])('documents stages.NAME.%s in the stage key table', (key) => {
    expect(doc).toContain(`| \`stages.NAME.${key}\` |`);
  });

  it('has four YAML examples', () => {
    expect(examples).toHaveLength(4);
  });

  it('the bootstrax-like example loads', () => {
    const file = join(dir, 'runwarden.yaml');
    writeFileSync(file, example('mongodb://runwarden:secret'));
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
    writeFileSync(file, example('# next to this file'));
    const config = loadConfig({ file, cwd: '/', env: {}, flags: {}, hostName: () => 'h' });
    expect(config.store).toBe(`sqlite:${join(dir, 'runwarden.db')}`);
  });

  it('the pipeline example loads as fetch → process → compress, with its check and shared settings', () => {
    const file = join(dir, 'runwarden.yaml');
    writeFileSync(file, example('# A pipeline'));
    const config = loadConfig({ file, cwd: '/', env: {}, flags: {}, hostName: () => 'h' });
    const stages = stagesOf(config);
    expect(stages.map((stage) => [stage.name, stage.needs, stage.depth, stage.slots])).toEqual([
      ['fetch', [], 0, 2],
      ['process', ['fetch'], 1, 4],
      ['compress', ['process'], 2, 2],
    ]);
    expect(stages[2].check).toEqual(['zstd', '-t', '{output}/{number06}.tar.zst']);
    expect(stages.every((stage) => stage.output_root === '/data/processed' && stage.env.STRAX_CONFIG !== undefined)).toBe(true);
    expect(stages[0].select).toEqual({ require_end: true });
    expect(config.select).toEqual({ not_tags: ['test'] });
  });

  it('the selection example loads', () => {
    const file = join(dir, 'runwarden.yaml');
    writeFileSync(file, example('hold_alcap'));
    const config = loadConfig({ file, cwd: '/', env: {}, flags: {}, hostName: () => 'h' });
    expect(config.select).toMatchObject({ tags: ['SiR2'], min_number: 10000, params: { target: 'Al100', field: 1 }, require_end: true });
  });
});
