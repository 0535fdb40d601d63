import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, tempDir } from '../helpers/cli.js';

// The command line as a user meets it: exit codes 0/1/2, messages that name the problem, --json, --help.

let dir: string;
let cleanup: () => void;
const store = () => ['--store', `sqlite:${join(dir, 'runs.db')}`];

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

describe('runwarden CLI', () => {
  it('submit, list, show and status agree, in text and --json', async () => {
    expect((await runCli(['submit', '5', '--name', 'bg_5', '--mode', 'background', '--param', 'gain=2', ...store()], { cwd: dir })).exitCode).toBe(0);
    const lines = ['{"number": 6, "name": "a"}', '', '# comment', '{"number": 7, "priority": 3, "tags": ["hold"]}'].join('\n');
    writeFileSync(join(dir, 'runs.jsonl'), lines);
    const batch = await runCli(['submit', '--file', 'runs.jsonl', ...store()], { cwd: dir });
    expect(batch.exitCode, batch.stderr).toBe(0);
    expect(batch.stdout).toContain('submitted 2 runs');

    const list = await runCli(['list', '--json', ...store()], { cwd: dir });
    expect(list.exitCode).toBe(0);
    const runs = JSON.parse(list.stdout) as Array<{ number: number; tags: string[]; priority: number }>;
    expect(runs.map((r) => r.number)).toEqual([7, 6, 5]);
    expect(runs[0]).toMatchObject({ tags: ['hold'], priority: 3 });

    const pending = await runCli(['list', '--state', 'pending', ...store()], { cwd: dir });
    expect(pending.stdout.split('\n')[0]).toMatch(/^NUMBER\s+STATE/);
    expect(pending.stdout).toMatch(/^5\s+pending/m);

    const show = await runCli(['show', '5', '--json', ...store()], { cwd: dir });
    expect(JSON.parse(show.stdout)).toMatchObject({ run: { number: 5, name: 'bg_5', params: { gain: 2 } }, events: [] });
    const showText = await runCli(['show', '5', ...store()], { cwd: dir });
    expect(showText.stdout).toContain('never claimed (pending)');

    const status = await runCli(['status', '--json', ...store()], { cwd: dir });
    expect(JSON.parse(status.stdout)).toMatchObject({ hosts: [], counts: { pending: 3, done: 0 } });
  });

  it('usage errors exit 2 and name the problem', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['frobnicate'], /Unknown argument: frobnicate|frobnicate/],
      [[], /name a command/],
      [['submit', 'abc', ...store()], /number: expected a non-negative integer/],
      [['submit', '1', '--start', 'yesterday', ...store()], /start/],
      [['submit', '1', '--param', 'novalue', ...store()], /--param: expected key=value/],
      [['list', '--state', 'sleeping', ...store()], /state/],
      [['list', '--limit', '0', ...store()], /--limit/],
      [['daemon', ...store()], /process\.command/],
      [['list', '--store', 'postgres://x'], /store/],
      [['list', '--set', 'timeouts.chek_interval=5s', ...store()], /did you mean timeouts\.check_interval/],
      [['diagram', '--machine', 'nope'], /machine/],
    ];
    for (const [args, message] of cases) {
      const result = await runCli(args, { cwd: dir });
      expect({ args, code: result.exitCode }).toEqual({ args, code: 2 });
      expect(result.stderr).toMatch(message);
    }
  });

  it('a duplicate run number exits 2; a batch with a bad line names the line and submits nothing', async () => {
    expect((await runCli(['submit', '9', ...store()], { cwd: dir })).exitCode).toBe(0);
    const again = await runCli(['submit', '9', ...store()], { cwd: dir });
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toContain('run 9 already exists');

    writeFileSync(join(dir, 'bad.jsonl'), '{"number": 10}\n{"number": 11, "priority": "high"}\n');
    const bad = await runCli(['submit', '--file', 'bad.jsonl', ...store()], { cwd: dir });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/bad\.jsonl:2: priority/);
    const list = await runCli(['list', '--json', ...store()], { cwd: dir });
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(1);
  });

  it('configuration precedence: file < RUNWARDEN_* environment < flags', async () => {
    writeFileSync(join(dir, 'runwarden.yaml'), 'store: sqlite:./from-file.db\n');
    const submitTo = async (env: Record<string, string>, flags: string[], number: string) => {
      const result = await runCli(['submit', number, ...flags], { cwd: dir, env });
      expect(result.exitCode, result.stderr).toBe(0);
    };
    await submitTo({}, [], '1');
    await submitTo({ RUNWARDEN_STORE: 'sqlite:./from-env.db' }, [], '2');
    await submitTo({ RUNWARDEN_STORE: 'sqlite:./from-env.db' }, ['--store', 'sqlite:./from-flag.db'], '3');
    const numbersIn = async (db: string) =>
      (JSON.parse((await runCli(['list', '--json', '--store', `sqlite:./${db}`], { cwd: dir })).stdout) as Array<{ number: number }>).map(
        (r) => r.number,
      );
    expect(await numbersIn('from-file.db')).toEqual([1]);
    expect(await numbersIn('from-env.db')).toEqual([2]);
    expect(await numbersIn('from-flag.db')).toEqual([3]);
  });

  it('a broken config file exits 2 naming the field', async () => {
    writeFileSync(join(dir, 'runwarden.yaml'), 'slots: many\n');
    const result = await runCli(['status'], { cwd: dir });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/slots/);
  });

  it('runtime errors exit 1: an unknown run, an unopenable store', async () => {
    expect((await runCli(['submit', '1', ...store()], { cwd: dir })).exitCode).toBe(0);
    const missing = await runCli(['show', '404', ...store()], { cwd: dir });
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain('run 404 not found');
    writeFileSync(join(dir, 'file'), 'x');
    const unopenable = await runCli(['status', '--store', `sqlite:${join(dir, 'file', 'runs.db')}`], { cwd: dir });
    expect(unopenable.exitCode).toBe(1);
    expect(unopenable.stderr).toContain(join(dir, 'file', 'runs.db'));
  });

  it('every command has --help with examples', async () => {
    for (const command of ['daemon', 'submit', 'list', 'status', 'show', 'logs', 'diagram', 'demo']) {
      const result = await runCli([command, '--help'], { cwd: dir });
      expect(result.exitCode).toBe(0);
      expect(result.stdout, command).toContain('Examples:');
    }
  });

  it('diagram prints Mermaid and DOT generated from the machines', async () => {
    const mermaid = await runCli(['diagram', '--machine', 'run'], { cwd: dir });
    expect(mermaid.exitCode).toBe(0);
    expect(mermaid.stdout).toMatch(/^stateDiagram-v2/);
    expect(mermaid.stdout).toContain('considering --> busy');
    const dot = await runCli(['diagram', '--machine', 'supervisor', '--format', 'dot'], { cwd: dir });
    expect(dot.stdout).toMatch(/^digraph/);
    expect(dot.stdout).toContain('unkillable');
  });
});
