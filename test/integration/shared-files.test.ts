import { existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { RunStore } from '../../src/store/run-store.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Nothing a command can create in its output, log or error-file paths may block or crash the daemon (issue 12
// fault 15): a FIFO where the error file is read, a FIFO or a symbolic link where the next attempt's log will
// be opened, a symbolic link out of the output directory that preflight cleans. Meanwhile the daemon keeps
// heartbeating and another run completes.

const sandbox = useSandbox();

/**
 * Run 1's first attempt plants `$2` (a shell snippet run in its log directory, `$L`) and exits 3; its later
 * attempts succeed. Run 2 waits for run 1's first attempt to have ended, then succeeds: it completes only if the
 * daemon survived what run 1 planted.
 */
function config(plant: string): void {
  const command = sandbox.script(
    'plant.sh',
    [
      'out=$1; attempt=$2; number=$3',
      'L=$(dirname "$RUNWARDEN_ERROR_FILE")',
      'if [ "$number" = 1 ] && [ "$attempt" = 1 ]; then',
      `  ${plant}`,
      '  echo "planted" >&2',
      '  exit 3',
      'fi',
      'echo "attempt $attempt ok"',
      'echo x > "$out/x"',
    ].join('\n'),
  );
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
slots: 2
process:
  command: ["sh", ${JSON.stringify(command)}, "{output}", "{attempt}", "{number}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 500ms
  idle_poll: 100ms
  signal_escalate: 500ms
  max_busy_time: 1h
retry: {base: 200ms, factor: 1, max_exponent: 0, jitter: [1, 1], max_failures: 5}
`,
  );
}

async function submit(...numbers: number[]): Promise<void> {
  for (const n of numbers) {
    const result = await sandbox.run(['submit', String(n)]);
    expect(result.exitCode, result.stderr).toBe(0);
  }
}

async function doneRun(s: RunStore, number: number) {
  return waitFor(async () => {
    const run = await s.getRun(number);
    return run?.processing?.state === 'done' ? run : null;
  }, `run ${number} to be done`, { timeoutMs: 30_000 });
}

/** Starts the daemon, waits until run 1's first attempt failed, then submits run 2 and sees it done. */
async function daemonSurvives(s: RunStore): Promise<void> {
  sandbox.start(['daemon']);
  const failed = await waitFor(async () => {
    const events = await s.listRunEvents(1);
    return events.find((e) => e.from === 'busy' && e.to === 'failed') ?? null;
  }, 'run 1 attempt 1 to fail', { timeoutMs: 30_000 });
  const beat = (await s.getHost('testhost'))!.time;
  await submit(2);
  await doneRun(s, 2);
  await waitFor(async () => ((await s.getHost('testhost'))?.time ?? 0) > beat, 'a later heartbeat');
  expect(failed.reason).toBeTruthy();
}

describe('files a command plants where the daemon reads or writes', () => {
  it('a FIFO at the error file: the run fails with a reason saying so, the daemon goes on', async () => {
    config('mkfifo "$RUNWARDEN_ERROR_FILE"');
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    const events = await s.listRunEvents(1);
    const failed = events.find((e) => e.from === 'busy' && e.to === 'failed')!;
    expect(failed.reason).toMatch(/error file .*attempt-1\.error is not a regular file: ignored/);
    await doneRun(s, 1);
  });

  it('escape sequences the command wrote into its error file never reach the stored reason', async () => {
    config(String.raw`printf ']52;c;cHduZWQ=bad [31minput[0m
line two
' > "$RUNWARDEN_ERROR_FILE"`);
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    const failed = (await s.listRunEvents(1)).find((e) => e.from === 'busy' && e.to === 'failed')!;
    expect(failed.reason).toBe('bad input\nline two');
  });

  it("a FIFO at the next attempt's log path does not block the daemon: the log is recreated", async () => {
    config('mkfifo "$L/attempt-2.log"');
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    await doneRun(s, 1);
    const log = join(sandbox.dir, 'logs', 'process', '1', 'attempt-2.log');
    expect(lstatSync(log).isFile()).toBe(true);
    const text = readFileSync(log, 'utf8');
    expect(text).toMatch(/=== runwarden \S+ removed a FIFO found at the log's path/);
    expect(text).toContain('attempt 2 ok');
  });

  it("a symbolic link at the next attempt's log path is not followed", async () => {
    const target = join(sandbox.dir, 'precious.txt');
    writeFileSync(target, 'precious\n');
    config(`ln -s ${JSON.stringify(target)} "$L/attempt-2.log"`);
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    await doneRun(s, 1);
    expect(readFileSync(target, 'utf8')).toBe('precious\n');
    expect(readFileSync(join(sandbox.dir, 'logs', 'process', '1', 'attempt-2.log'), 'utf8')).toMatch(/removed a symbolic link/);
  });

  it('an output directory replaced by a symbolic link: cleaning removes the link, the next attempt gets a directory', async () => {
    const outside = join(sandbox.dir, 'outside');
    mkdirSync(outside);
    writeFileSync(join(outside, 'keep.txt'), 'keep\n');
    config(`rm -rf "$out"; ln -s ${JSON.stringify(outside)} "$out"`);
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    await doneRun(s, 1);
    expect(readFileSync(join(outside, 'keep.txt'), 'utf8')).toBe('keep\n');
    expect(existsSync(join(outside, 'x'))).toBe(false);
    const out = join(sandbox.dir, 'out', '000001');
    expect(lstatSync(out).isDirectory()).toBe(true);
    expect(existsSync(join(out, 'x'))).toBe(true);
  });

  it('a symbolic link and a FIFO in the output directory: cleaning it removes them, not what the link points to', async () => {
    const outside = join(sandbox.dir, 'outside');
    mkdirSync(outside);
    writeFileSync(join(outside, 'keep.txt'), 'keep\n');
    config(`ln -s ${JSON.stringify(outside)} "$out/link"; mkfifo "$out/fifo"`);
    await submit(1);
    const s = await sandbox.openStore();
    await daemonSurvives(s);
    await doneRun(s, 1);
    expect(readFileSync(join(outside, 'keep.txt'), 'utf8')).toBe('keep\n');
    expect(existsSync(join(sandbox.dir, 'out', '000001', 'link'))).toBe(false);
    expect(existsSync(join(sandbox.dir, 'out', '000001', 'fifo'))).toBe(false);
  });
});
