// A broken pipeline stops the real CLI with exit code 2 and every problem named, before anything is opened.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, tempDir, writeConfig } from '../helpers/cli.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('runwarden-stages-cli-'));
});
afterEach(() => cleanup());

describe('runwarden with a broken stages: section', () => {
  it('daemon exits 2 naming the cycle, the unknown need and the stage without a command, and opens no store', async () => {
    const file = writeConfig(
      dir,
      [
        'store: sqlite:./runs.db',
        'stages:',
        '  fetch: {command: [fetch, "{number}"], needs: [compress]}',
        '  process: {needs: [fetch, fech]}',
        '  compress: {command: [xz, "{upstream.process.output}"], needs: [process]}',
        '',
      ].join('\n'),
    );
    const result = await runCli(['daemon', '--once', '--config', file], { cwd: dir });
    expect(result.exitCode, result.stderr).toBe(2);
    expect(result.stderr).toContain('config: 3 problems:');
    expect(result.stderr).toContain('stages.fetch.needs: a cycle: fetch → compress → process → fetch');
    expect(result.stderr).toContain('stages.process.needs[1]: unknown stage "fech"; did you mean fetch?');
    expect(result.stderr).toContain('stages.process.command: missing: every stage needs its own command');
    expect(existsSync(join(dir, 'runs.db'))).toBe(false);
  });

  it('an override of a stage from the environment is typed and judged like the file', async () => {
    const file = writeConfig(dir, ['store: sqlite:./runs.db', 'slots: 2', 'stages:', '  fetch: {command: [fetch]}', ''].join('\n'));
    const result = await runCli(['status', '--config', file], { cwd: dir, env: { RUNWARDEN_STAGES__FETCH__SLOTS: '3' } });
    expect(result.exitCode, result.stderr).toBe(2);
    expect(result.stderr).toContain("config: stages.fetch.slots: 3 is more than the daemon's slots (2, set by");
    expect(result.stderr).toContain('(set by RUNWARDEN_STAGES__FETCH__SLOTS)');
  });
});
