import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { defaultConfig, type Config } from '../../src/config/schema.js';
import { assertHostReady, hostFaultBehind, hostProblems } from '../../src/daemon/host-check.js';
import { ConfigError } from '../../src/errors.js';
import { validateConfig } from '../../src/config/validate.js';
import { tempDir } from '../helpers/cli.js';

// The host check behind issue 12 fault 5: what every run needs, checked at start, after a run could not start,
// and while a paused host waits.

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('runwarden-host-check-'));
});
afterEach(() => cleanup());

function config(command: string[], change: (c: Config) => void = () => {}): Config {
  const c = defaultConfig(dir, 'h');
  c.process.command = command;
  change(c);
  return c;
}

const fields = async (c: Config) => (await hostProblems(c)).map((p) => p.field);

describe('host check', () => {
  it('passes for an executable found in PATH, and creates output_root and log_dir', async () => {
    expect(await hostProblems(config(['sh', '-c', 'true']))).toEqual([]);
    expect(await hostFaultBehind(config(['sh']))).toBeUndefined();
  });

  it('looks an executable up in the PATH the command gets (process.env.PATH wins)', async () => {
    mkdirSync(join(dir, 'bin'));
    writeFileSync(join(dir, 'bin', 'my-tool'), '#!/bin/sh\n', { mode: 0o755 });
    expect(await fields(config(['my-tool']))).toEqual(['process.command']);
    expect(await fields(config(['my-tool'], (c) => (c.process.env.PATH = join(dir, 'bin'))))).toEqual([]);
  });

  it('resolves a relative path against process.cwd and wants the execute bit', async () => {
    writeFileSync(join(dir, 'tool'), '#!/bin/sh\n', { mode: 0o644 });
    expect(await fields(config(['./tool']))).toEqual(['process.command']);
    chmodSync(join(dir, 'tool'), 0o755);
    expect(await fields(config(['./tool']))).toEqual([]);
    expect(await fields(config([join(dir, 'tool')]))).toEqual([]);
  });

  it('skips an executable named by a placeholder: it is the run’s', async () => {
    expect(await fields(config(['{params.tool}', '{number}']))).toEqual([]);
  });

  it('names every directory that cannot be used, and the first field in the exit-2 error', async () => {
    writeFileSync(join(dir, 'file'), '');
    const bad = config(['runwarden-no-such-program-xyz'], (c) => {
      c.process.cwd = join(dir, 'nowhere');
      c.process.output_root = join(dir, 'file', 'out');
      c.process.log_dir = join(dir, 'file', 'logs');
    });
    expect(await fields(bad)).toEqual(['process.cwd', 'process.command', 'process.output_root', 'process.log_dir']);
    const error = await assertHostReady(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).field).toBe('process.cwd');
    expect((error as ConfigError).exitCode).toBe(2);
    expect((error as Error).message).toMatch(/also process\.command: .*process\.output_root: .*process\.log_dir: /);
    expect(await hostFaultBehind(bad)).toMatch(/^process\.cwd: /);
  });
});

describe('host check of a pipeline', () => {
  const staged = (stages: Record<string, unknown>) =>
    validateConfig({ process: { output_root: join(dir, 'out'), log_dir: join(dir, 'logs') }, stages }, { cwd: dir, hostName: () => 'h' });

  it("checks every stage's command and check, naming the stage's key; one stage's fault is that stage's", async () => {
    const c = staged({
      process: { command: ['sh', '-c', 'true'] },
      compress: { needs: ['process'], command: ['no-such-compressor'], check: ['no-such-checker', '{output}'] },
    });
    expect(await fields(c)).toEqual(['stages.compress.command', 'stages.compress.check']);
    // a task of a sound stage that could not start is its own problem, not the host's
    expect(await hostFaultBehind(c, 'process')).toBeUndefined();
    expect(await hostFaultBehind(c, 'compress')).toMatch(/^stages\.compress\.command: the executable "no-such-compressor"/);
    await expect(assertHostReady(c)).rejects.toThrow(ConfigError);
  });

  it("names a stage's own directory by its key, an inherited one by process's", async () => {
    writeFileSync(join(dir, 'file'), '');
    const c = staged({
      process: { command: ['sh'], log_dir: join(dir, 'file', 'logs') },
      compress: { needs: ['process'], command: ['sh'] },
    });
    expect(await fields(c)).toEqual(['stages.process.log_dir']);
    const inherited = validateConfig(
      { process: { log_dir: join(dir, 'file', 'logs') }, stages: { process: { command: ['sh'] } } },
      { cwd: dir, hostName: () => 'h' },
    );
    expect(await fields(inherited)).toEqual(['process.log_dir']);
  });
});
