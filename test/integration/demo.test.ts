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
  it('processes 20 sample runs through process and compress to done, abandoned or blocked with 4 slots and exits 0', async () => {
    const result = await runCli(['demo', '--dir', 'demo', '--json'], { cwd: dir });
    expect(result.exitCode, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as {
      dir: string;
      runs: Array<{ number: number; state: string; attempts: number; reason: string; tasks: Record<string, { state: string; attempts: number; reason: string }> }>;
    };
    expect(report.dir).toBe(join(dir, 'demo'));
    expect(report.runs).toHaveLength(20);
    const byState = (state: string) => report.runs.filter((r) => r.state === state);
    expect(byState('abandoned').map((r) => r.number)).toEqual([1006]);
    expect(byState('done')).toHaveLength(19);
    // Every fifth run fails once and succeeds on its second attempt.
    expect(report.runs.filter((r) => r.attempts === 2).map((r) => r.number)).toEqual([1002, 1007, 1012, 1017]);
    expect(byState('abandoned')[0]!.reason).toMatch(/^gave up: 3 failures reached retry.max_failures \(3\); last failure: exit code 4/);
    // compress ran once process was done, on its output; the abandoned run's compress is blocked, never run
    const compress = (state: string) => report.runs.filter((r) => r.tasks.compress!.state === state).map((r) => r.number);
    expect(compress('blocked')).toEqual([1006]);
    expect(compress('done')).toHaveLength(19);
    expect(report.runs.find((r) => r.number === 1006)!.tasks.compress).toMatchObject({ attempts: 0, reason: 'blocked: stage process was abandoned' });
    expect(existsSync(join(dir, 'demo', 'processed', 'compress', '001002', 'events.txt.gz'))).toBe(true);
    expect(existsSync(join(dir, 'demo', 'processed', 'compress', '001006'))).toBe(false);
    expect(readdirSync(join(dir, 'demo', 'logs', 'compress', '1002'))).toEqual(['attempt-1.log']);
    expect(existsSync(join(dir, 'demo', 'runwarden.db'))).toBe(true);
    expect(readdirSync(join(dir, 'demo', 'logs', 'process', '1002')).sort()).toEqual(['attempt-1.error', 'attempt-1.log', 'attempt-2.log']);
  });

  it('shows progress and a summary for people; refuses a directory that is not empty, with exit 2', async () => {
    const first = await runCli(['demo', '--dir', 'demo', '--runs', '1'], { cwd: dir });
    expect(first.exitCode, first.stderr).toBe(0);
    // Not a terminal here, so progress comes as one line per change, ending complete.
    expect(first.stdout).toMatch(/^\[\.{20}\] 0\/2 tasks /m);
    expect(first.stdout).toMatch(/^\[#{20}\] 2\/2 tasks {2}done 2 /m);
    expect(first.stdout).toMatch(/^NUMBER\s+NAME\s+PROCESS\s+COMPRESS\s+DURATION\s+REASON$/m);
    expect(first.stdout).toMatch(/^1000\s+demo_001000\s+done\s+done\s+[\d.]+s$/m);
    expect(first.stdout).toContain('process: 1 done; compress: 1 done');
    expect(first.stdout).toContain('1 of 1 runs done through every stage');
    const again = await runCli(['demo', '--dir', 'demo'], { cwd: dir });
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toMatch(/--dir: .* is not empty/);
  });
});
