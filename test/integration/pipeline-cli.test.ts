import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// The faces of a pipeline through the real CLI (issue 14 point 8): submit gives each run a task of every stage
// whose select matches it.

const sandbox = useSandbox();

function pipelineConfig(): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  output_root: ./out
  log_dir: ./logs
stages:
  process:
    command: ["true"]
    select: {not_tags: [skip]}
  compress:
    needs: [process]
    command: ["true", "{upstream.process.output}"]
    select: {modes: [physics]}
  upload:
    needs: [compress]
    command: ["true", "{upstream.compress.output}"]
`,
  );
}

describe('submit with stages', () => {
  it("creates each run's tasks by the stages' selections, and says which", async () => {
    pipelineConfig();
    const physics = await sandbox.run(['submit', '7', '--mode', 'physics']);
    expect(physics.exitCode, physics.stderr).toBe(0);
    expect(physics.stdout).toBe('submitted run 7 (tasks: process, compress, upload)');

    // compress does not select calibration runs: neither compress nor upload (below it) for run 8
    const calibration = await sandbox.run(['submit', '8', '--mode', 'calibration', '--json']);
    expect(JSON.parse(calibration.stdout)).toEqual({ submitted: [8], tasks: { 8: ['process'] } });

    const skipped = await sandbox.run(['submit', '9', '--tag', 'skip']);
    expect(skipped.exitCode).toBe(0);
    expect(skipped.stdout).toBe('submitted run 9 (tasks: none)');
    expect(skipped.stderr).toContain("warning: run 9 matches no stage's select: no task was created");

    writeFileSync(
      join(sandbox.dir, 'runs.jsonl'),
      [10, 11, 12].map((n) => JSON.stringify({ number: n, mode: n === 12 ? 'other' : 'physics' })).join('\n'),
    );
    const file = await sandbox.run(['submit', '--file', 'runs.jsonl']);
    expect(file.exitCode, file.stderr).toBe(0);
    expect(file.stdout).toBe('submitted 3 runs (10 … 12): tasks: process 3, compress 2, upload 2');
  });

  it('keeps the first-wave output without stages', async () => {
    writeConfig(sandbox.dir, 'store: sqlite:./runs.db\nprocess:\n  command: ["true"]\n');
    const result = await sandbox.run(['submit', '7', '--json']);
    expect(JSON.parse(result.stdout)).toEqual({ submitted: [7] });
    expect((await sandbox.run(['submit', '8'])).stdout).toBe('submitted run 8');
  });
});
