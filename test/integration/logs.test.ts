import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { cleanEnv, cliCommand, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// `runwarden logs N` copies an attempt log byte for byte with bounded memory (issue 12 fault 9), exits quietly
// when its reader goes away (`logs -f | head`, issue 13 point 3), and an attempt log is bounded by
// process.max_log_bytes with a marker where it was cut.

const sandbox = useSandbox();

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
${extra}timeouts:
  check_interval: 1s
  idle_poll: 200ms
  signal_escalate: 500ms
  max_busy_time: 1h
`,
  );
}

async function submit(number: number): Promise<void> {
  const result = await sandbox.run(['submit', String(number)]);
  expect(result.exitCode, result.stderr).toBe(0);
}

/** A 1 MiB block of bytes that are not UTF-8 (lone continuation bytes, 0xff, a cut sequence) and newlines. */
function invalidUtf8Block(): Buffer {
  const block = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < block.length; i++) block[i] = [0x80, 0xff, 0xe2, 0x82, 0x41, 0x0a, 0xc0, 0xfe][i % 8]!;
  return block;
}

/** Runs the CLI with stdout hashed as it arrives; returns the hash, byte count, peak RSS seen and exit code. */
async function hashedLogs(args: string[]): Promise<{ sha: string; bytes: number; peakRssKiB: number; code: number | null; stderr: string }> {
  const [program, argv] = cliCommand(args);
  const child = spawn(program, argv, { cwd: sandbox.dir, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  sandbox.track(Object.assign(new Promise((resolve) => child.once('close', resolve)), { pid: child.pid, kill: (s: NodeJS.Signals) => child.kill(s) }));
  const hash = createHash('sha256');
  let bytes = 0;
  let stderr = '';
  let peakRssKiB = 0;
  child.stdout.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // VmHWM is the peak resident set so far: the last value read before the exit bounds the whole run's peak
  // from below, and is read often enough to see a buffer of the whole file.
  const sample = setInterval(() => {
    try {
      const hwm = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (hwm) peakRssKiB = Math.max(peakRssKiB, Number(hwm[1]));
    } catch {
      // exited
    }
  }, 20);
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  clearInterval(sample);
  return { sha: hash.digest('hex'), bytes, peakRssKiB, code, stderr };
}

describe('runwarden logs', () => {
  it('copies a 200 MiB log with invalid UTF-8 byte for byte, with bounded memory', async () => {
    config(['true']);
    await submit(5);
    const dir = join(sandbox.dir, 'logs', '5');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'attempt-1.log');
    const block = invalidUtf8Block();
    const fd = openSync(file, 'w');
    const expected = createHash('sha256');
    for (let i = 0; i < 200; i++) {
      writeSync(fd, block);
      expected.update(block);
    }
    closeSync(fd);
    const result = await hashedLogs(['logs', '5']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.bytes).toBe(200 * block.length);
    expect(result.sha).toBe(expected.digest('hex'));
    // Node with the CLI loaded is ~100 MiB; a copy of the file in memory would be 200 MiB more at least.
    expect(result.peakRssKiB).toBeGreaterThan(0);
    expect(result.peakRssKiB).toBeLessThan(200 * 1024);
  });

  it('`logs N | head` and `logs -f N | head` exit quietly when head has read enough', async () => {
    config(['true']);
    await submit(6);
    const dir = join(sandbox.dir, 'logs', '6');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'attempt-1.log');
    const lines = Array.from({ length: 200_000 }, (_, i) => `line ${i}`).join('\n');
    appendFileSync(file, `${lines}\n`);
    const [program, argv] = cliCommand([]);
    const cli = [program, ...argv].map((a) => `'${a}'`).join(' ');
    for (const follow of ['', '-f']) {
      // No closing line: with -f, `logs` would follow for ever but for the pipe closing.
      const result = await execa('bash', ['-c', `set -o pipefail; ${cli} logs ${follow} 6 | head -n 1`], {
        cwd: sandbox.dir,
        env: cleanEnv(),
        reject: false,
        stdin: 'ignore',
        timeout: 60_000,
      });
      expect(result.stdout).toBe('line 0');
      expect(result.stderr).toBe('');
      expect(result.exitCode).toBe(0);
    }
  });

  it('an attempt log stops at process.max_log_bytes with a marker; the run still ends normally', async () => {
    const chatty = sandbox.script(
      'chatty.sh',
      ['i=0', 'while [ $i -lt 2000 ]; do echo "line $i of a chatty command"; i=$((i+1)); done', 'echo x > "$1/x"'].join('\n'),
    );
    config(['sh', chatty, '{output}'], '  max_log_bytes: 8KiB\n');
    await submit(7);
    const done = await sandbox.run(['daemon', '--once']);
    expect(done.exitCode, done.stderr).toBe(0);
    const s = await sandbox.openStore();
    expect((await s.getRun(7))?.processing?.state).toBe('done');
    const log = readFileSync(join(sandbox.dir, 'logs', 'process', '7', 'attempt-1.log'), 'utf8');
    const lines = log.split('\n');
    const cut = lines.findIndex((l) => /^=== runwarden \S+ log cut at 8192 bytes of output; further output discarded ===$/.test(l));
    expect(cut).toBeGreaterThan(0);
    // The header, 8192 bytes of output, the marker, the footer: nothing of the command after the cut.
    expect(lines.slice(cut + 1).filter((l) => l !== '')).toHaveLength(1);
    expect(lines[cut + 1]).toMatch(/^=== runwarden \S+ exit code=0 .* discarded_bytes=\d+$/);
    const header = lines[0]!.length + 1;
    expect(Buffer.byteLength(lines.slice(0, cut).join('\n'))).toBeLessThanOrEqual(header + 8192 + 1);
  });

  it('refuses a log path that is not a regular file (a FIFO would block it) instead of hanging', async () => {
    config(['true']);
    await submit(9);
    const dir = join(sandbox.dir, 'logs', '9');
    mkdirSync(dir, { recursive: true });
    await execa('mkfifo', [join(dir, 'attempt-1.log')]);
    const result = await sandbox.run(['logs', '9']);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(/attempt-1\.log is not a regular file; not printed/);
  });

  it('--follow stops at the closing line of a log whose output did not end with a newline', async () => {
    config(['sh', '-c', 'printf "no newline at the end" && echo x > "$0/x"', '{output}']);
    await submit(8);
    const done = await sandbox.run(['daemon', '--once']);
    expect(done.exitCode, done.stderr).toBe(0);
    const follow = await sandbox.run(['logs', '8', '-f']);
    expect(follow.exitCode).toBe(0);
    expect(follow.stdout).toMatch(/no newline at the end\n=== runwarden \S+ exit code=0/);
  });
});
