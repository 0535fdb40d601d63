import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, tempDir } from '../helpers/cli.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

describe('runwarden demo', () => {
  it('processes 20 sample runs to done or abandoned with 4 slots and exits 0', async () => {
    const result = await runCli(['demo', '--dir', 'demo', '--json'], { cwd: dir });
    expect(result.exitCode, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as {
      dir: string;
      runs: Array<{ number: number; state: string; attempts: number; reason: string }>;
    };
    expect(report.dir).toBe(join(dir, 'demo'));
    expect(report.runs).toHaveLength(20);
    const byState = (state: string) => report.runs.filter((r) => r.state === state);
    expect(byState('abandoned').map((r) => r.number)).toEqual([1006]);
    expect(byState('done')).toHaveLength(19);
    // Every fifth run fails once and succeeds on its second attempt.
    expect(report.runs.filter((r) => r.attempts === 2).map((r) => r.number)).toEqual([1002, 1007, 1012, 1017]);
    expect(byState('abandoned')[0]!.reason).toMatch(/^gave up: 3 failures reached retry.max_failures \(3\); last failure: exit code 4/);
    expect(existsSync(join(dir, 'demo', 'runwarden.db'))).toBe(true);
    expect(readdirSync(join(dir, 'demo', 'logs', 'process', '1002')).sort()).toEqual(['attempt-1.error', 'attempt-1.log', 'attempt-2.log']);
  });

  it('shows progress and a summary for people; refuses a directory that is not empty, with exit 2', async () => {
    const first = await runCli(['demo', '--dir', 'demo', '--runs', '1'], { cwd: dir });
    expect(first.exitCode, first.stderr).toBe(0);
    // Not a terminal here, so progress comes as one line per change, ending complete.
    expect(first.stdout).toMatch(/^\[\.{20}\] 0\/1 /m);
    expect(first.stdout).toMatch(/^\[#{20}\] 1\/1 {2}done 1 /m);
    expect(first.stdout).toMatch(/^NUMBER\s+NAME\s+STATE\s+ATTEMPTS\s+DURATION\s+REASON$/m);
    expect(first.stdout).toMatch(/^1000\s+demo_001000\s+done\s+1\s+[\d.]+s$/m);
    expect(first.stdout).toContain('1 done, 0 abandoned, 0 unfinished');
    const again = await runCli(['demo', '--dir', 'demo'], { cwd: dir });
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toMatch(/--dir: .* is not empty/);
  });
});
