import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// What misleads the person on shift (issue 13), through the real CLI against real SQLite files.

const sandbox = useSandbox('runwarden-operator-faults-');

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
  require_output: false
${extra}
timeouts:
  check_interval: 0.2s
  idle_poll: 1h
  signal_escalate: 0.3s
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
  );
}

async function submit(number: number, tags: string[] = []) {
  await (await sandbox.openStore()).insertRun({ number, start: Date.now(), tags });
}

describe('process N', () => {
  it('exits 1 and says so when the attempt ends abandoned, in text and with --json', async () => {
    config(['sh', '-c', 'echo boom >&2; exit 3'], '  no_retry_exit_codes: [3]');
    await submit(5);
    await submit(6);
    const text = await sandbox.run(['process', '5']);
    expect(text.exitCode, text.stderr).toBe(1);
    expect(text.stdout).toMatch(/run 5 abandoned: gave up: exit code 3 .*boom/);

    const json = await sandbox.run(['process', '6', '--json']);
    expect(json.exitCode, json.stderr).toBe(1);
    const result = JSON.parse(json.stdout) as { number: number; outcome: string; run: { processing: { state: string } } };
    expect(result).toMatchObject({ number: 6, outcome: 'abandoned', run: { processing: { state: 'abandoned' } } });
  });
});
