import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cleanEnv, cliCommand, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';
import type { LogEntry } from '../../src/store/types.js';

// `runwarden log`: the operator log table (DESIGN §3) through the real CLI: filters by time, priority and run,
// printable text only, JSON with ISO times, and --follow printing each new entry once until ^C or until its
// reader goes away.

const sandbox = useSandbox();
const HOUR = 3_600_000;

function config(): void {
  writeConfig(sandbox.dir, 'store: sqlite:./runs.db\nhost: testhost\nprocess:\n  command: ["true"]\n');
}

async function append(entry: Partial<LogEntry> & { message: string }): Promise<void> {
  const store = await sandbox.openStore();
  await store.appendLog({ host: 'alpha', user: 'runwarden@alpha', priority: 1, ...entry });
}

async function log(args: string[]) {
  return sandbox.run(['log', ...args]);
}

/** A `log -f` child with its stdout collected; reaped by the sandbox. */
function follow(args: string[]) {
  const [program, argv] = cliCommand(['log', '--follow', ...args]);
  const child = spawn(program, argv, { cwd: sandbox.dir, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  sandbox.track(Object.assign(exited, { pid: child.pid, kill: (s: NodeJS.Signals) => child.kill(s) }));
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (chunk: Buffer) => (out.stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (out.stderr += chunk.toString()));
  return { child, exited, out };
}

describe('runwarden log', () => {
  it('prints entries oldest first, filtered by priority and run, as printable text', async () => {
    config();
    const now = Date.now();
    await append({ time: now - 3000, priority: 0, message: 'claim loop idle' });
    await append({ time: now - 2000, priority: 2, message: 'run 7 failed: \x1b[31mred\x1b[0m\x1b]52;c;cm0gLXJm\x07 done', number: 7 });
    await append({ time: now - 1000, priority: 3, message: 'cleanup pass failed:\nError: boom\n    at x (y.ts:1)', user: 'alice@ops' });
    await append({ time: now, priority: 4, message: 'fatal: store gone', number: 8 });

    const all = await log([]);
    expect(all.exitCode, all.stderr).toBe(0);
    const lines = all.stdout.trimEnd().split('\n');
    expect(lines.map((l) => /^\S+ \S+\s+(\w+)/.exec(l)?.[1] ?? 'cont')).toEqual(['debug', 'warning', 'error', 'cont', 'cont', 'fatal']);
    expect(all.stdout).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f]/);
    expect(lines[1]).toMatch(/warning\s+runwarden@alpha {2}run 7 {2}run 7 failed: red done$/);
    expect(lines[2]).toMatch(/error\s+alice@ops {2}cleanup pass failed:$/);
    expect(lines[3]).toBe('    Error: boom');

    const warnings = await log(['--priority', 'warning']);
    expect(warnings.stdout).not.toContain('claim loop idle');
    expect(warnings.stdout.match(/^\S+ \S+Z/gm)).toHaveLength(3);
    const errors = await log(['--priority', '3']);
    expect(errors.stdout).not.toContain('run 7 failed');
    expect(errors.stdout).toContain('fatal: store gone');

    const run7 = await log(['--run', '7']);
    expect(run7.stdout.trimEnd().split('\n')).toHaveLength(1);
    expect(run7.stdout).toContain('run 7 failed');
  });

  it('shows what an operator action wrote about a run', async () => {
    config();
    expect((await sandbox.run(['submit', '12'])).exitCode).toBe(0);
    expect((await sandbox.run(['hold', '12'])).exitCode).toBe(0);
    const result = await log(['--run', '12']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/info\s+\S+@\S+ {2}run 12 {2}run 12 held by /);
  });

  it('--since takes a duration back from now or an ISO-8601 time; --limit keeps the newest', async () => {
    config();
    const now = Date.now();
    await append({ time: now - 3 * HOUR, message: 'three hours ago' });
    await append({ time: now - 2 * HOUR, message: 'two hours ago' });
    await append({ time: now - 30 * 60_000, message: 'half an hour ago' });
    await append({ time: now, message: 'now' });

    const hour = await log(['--since', '1h']);
    expect(hour.stdout).not.toContain('two hours ago');
    expect(hour.stdout).toMatch(/half an hour ago\n.*now$/);
    const seconds = await log(['--since', '5400']); // a bare number is seconds: 90 minutes
    expect(seconds.stdout).not.toContain('two hours ago');
    expect(seconds.stdout).toContain('half an hour ago');
    const iso = await log(['--since', new Date(now - 2.5 * HOUR).toISOString()]);
    expect(iso.stdout).not.toContain('three hours ago');
    expect(iso.stdout).toMatch(/two hours ago\n.*half an hour ago\n.*now$/);

    const newest = await log(['--limit', '2']);
    expect(newest.stdout).toMatch(/^.*half an hour ago\n.*now$/);
    const both = await log(['--since', '4h', '--limit', '1']);
    expect(both.stdout).toMatch(/^[^\n]*now$/);
  });

  it('prints the newest 100 entries without --since or --limit', async () => {
    config();
    const store = await sandbox.openStore();
    const base = Date.now() - 1000;
    for (let i = 0; i < 130; i++) await store.appendLog({ time: base + i, host: 'a', user: 'u', priority: 1, message: `entry ${i}` });
    const result = await log([]);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(100);
    expect(lines[0]).toMatch(/entry 30$/);
    expect(lines.at(-1)).toMatch(/entry 129$/);
    expect((await log(['--since', '1h'])).stdout.trimEnd().split('\n')).toHaveLength(130);
  });

  it('--json prints the entries with ISO times', async () => {
    config();
    const time = Date.UTC(2026, 0, 2, 3, 4, 5, 6);
    await append({ time, priority: 2, message: 'disk full', number: 3 });
    const result = await log(['--json', '--since', '2026-01-01']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual([
      { time: '2026-01-02T03:04:05.006Z', host: 'alpha', user: 'runwarden@alpha', priority: 2, message: 'disk full', number: 3 },
    ]);
    expect(JSON.parse((await log(['--json', '--run', '4'])).stdout)).toEqual([]);
  });

  it.each([
    [['--priority', 'loud'], /--priority: expected debug\|info\|warning\|error\|fatal or 0\.\.4, got "loud"/],
    [['--priority', '5'], /--priority: .* got "5"/],
    [['--since', 'yesterday'], /--since: expected a duration back from now .* got "yesterday"/],
    [['--since', '2026-13-45'], /--since: "2026-13-45" is not an ISO-8601 time/],
    [['--run', 'seven'], /--run: expected a non-negative integer run number, got "seven"/],
    [['--limit', '0'], /--limit: expected an integer ≥ 1, got "0"/],
  ])('refuses %j with exit 2 naming the flag', async (args, message) => {
    config();
    await append({ message: 'x' });
    const result = await log(args);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stdout).toBe('');
  });

  it('--follow prints each new entry once, a late one too, and exits 0 on SIGINT', async () => {
    config();
    const now = Date.now();
    await append({ time: now - 1000, message: 'before follow' });
    const { child, exited, out } = follow(['--priority', 'info']);
    await waitFor(() => out.stdout.includes('before follow'), 'the backlog');
    await append({ time: now + 10, message: 'first new' });
    await append({ time: now + 10, message: 'debug noise', priority: 0 });
    await waitFor(() => out.stdout.includes('first new'), 'the first new entry');
    // written late by a host whose clock is behind: older than the newest printed, still printed once
    await append({ time: now - 500, message: 'late twin' });
    await append({ time: now - 500, message: 'late twin' });
    await append({ time: now + 20, message: 'second new' });
    await waitFor(() => out.stdout.includes('second new') && out.stdout.includes('late twin'), 'the later entries');
    // a few more polls: nothing printed twice
    await append({ time: now + 30, message: 'third new' });
    await waitFor(() => out.stdout.includes('third new'), 'the third entry');
    const messages = out.stdout.trimEnd().split('\n').map((l) => l.replace(/^.*runwarden@alpha {2}/, ''));
    expect(messages).toEqual(['before follow', 'first new', 'late twin', 'late twin', 'second new', 'third new']);
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(out.stderr).toBe('');
  });

  it('--follow --json prints one JSON object per line, and never prints entries --limit left out', async () => {
    config();
    const now = Date.now();
    for (let i = 0; i < 5; i++) await append({ time: now - 100 + i, message: `old ${i}` });
    const { child, exited, out } = follow(['--json', '--limit', '2']);
    await waitFor(() => out.stdout.includes('old 4'), 'the backlog');
    await append({ time: now + 1000, message: 'fresh', number: 9 });
    await waitFor(() => out.stdout.includes('fresh'), 'the new entry');
    await append({ time: now + 2000, message: 'fresher' });
    await waitFor(() => out.stdout.includes('fresher'), 'the next entry');
    const lines = out.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.map((l) => l.message)).toEqual(['old 3', 'old 4', 'fresh', 'fresher']);
    expect(lines[2]).toMatchObject({ time: new Date(now + 1000).toISOString(), number: 9, priority: 1 });
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('--follow exits 0 when its reader goes away (log -f | head)', async () => {
    config();
    await append({ message: 'first' });
    const { child, exited, out } = follow([]);
    await waitFor(() => out.stdout.includes('first'), 'the first line');
    child.stdout.destroy();
    for (let i = 0; i < 3; i++) await append({ message: `more ${i}` });
    expect(await exited).toBe(0);
  });
});
