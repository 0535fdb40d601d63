import { createServer, type Server } from 'node:net';
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// `runwarden daemon --inspect` and `runwarden inspect`: a real daemon over a real SQLite file, real followers
// connected over loopback, a real command. Everything is polled for; nothing depends on how fast it runs.

const sandbox = useSandbox('runwarden-inspect-');

function config(command: string[]): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: inspected
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 1s
retry: {base: 1h}
`,
  );
}

/** Collects a child's output as it comes. */
function collect(stream: Readable | null | undefined): () => string {
  let text = '';
  stream?.on('data', (chunk: Buffer) => {
    text += chunk.toString();
  });
  return () => text;
}

async function startInspectedDaemon(args: string[]) {
  const daemon = sandbox.start(['daemon', ...args]);
  const output = collect((daemon as unknown as { all: Readable }).all);
  const url = await waitFor(
    () => /live state machines on (ws:\/\/[^\s"]+)/.exec(output())?.[1],
    'the daemon to log its inspector address',
  );
  return { daemon, url, output };
}

/** A port taken by another listener for the duration of a test. */
async function takePort(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, server };
}

/** The lines of `text` that match each pattern, in that order; null while one is still missing. */
function inOrder(text: string, patterns: RegExp[]): string[] | null {
  const lines = text.split('\n');
  const found: string[] = [];
  let from = 0;
  for (const pattern of patterns) {
    const at = lines.findIndex((line, i) => i >= from && pattern.test(line));
    if (at < 0) return null;
    found.push(lines[at]!);
    from = at + 1;
  }
  return found;
}

const TIME = String.raw`\d\d:\d\d:\d\d\.\d{3}Z`;
/** Several CLI processes in one test (each a tsx start): room for a loaded machine, not a timing claim. */
const MANY_PROCESSES = { timeout: 90_000 };

describe('runwarden daemon --inspect / runwarden inspect', () => {
  it('--follow prints every transition of the host, the run and its supervisor as it happens', MANY_PROCESSES, async () => {
    const work = sandbox.script('work.sh', 'echo "working on $1"; echo result > "$2/result"');
    config(['sh', work, '{number}', '{output}']);
    const { daemon, url } = await startInspectedDaemon(['--inspect=0']);
    expect(url).toMatch(/^ws:\/\/127\.0\.0\.1:\d+$/);

    const follower = sandbox.start(['inspect', '--follow', '--url', url]);
    const followed = collect(follower.stdout);
    const jsonFollower = sandbox.start(['inspect', '--follow', '--json', '--url', url]);
    const followedJson = collect(jsonFollower.stdout);
    // Connected: the daemon announced its host actor in its current state.
    await waitFor(() => new RegExp(`^${TIME}  host +is running\\.idle$`, 'm').test(followed()), 'the host announced');
    await waitFor(() => followedJson().includes('"kind":"current"'), 'the host announced as JSON');

    // One-shot: the state of each actor now.
    const now = await sandbox.run(['inspect', '--url', url]);
    expect(now.exitCode, now.stderr).toBe(0);
    expect(now.stdout).toBe('ACTOR  STATE\nhost   running.idle');
    const nowJson = await sandbox.run(['inspect', '--url', url, '--json']);
    expect(JSON.parse(nowJson.stdout)).toEqual([{ actor: 'host', state: 'running.idle' }]);

    expect((await sandbox.run(['submit', '5'])).exitCode).toBe(0);
    const run = (from: string, event: string, to: string, actor = 'run-5/process') =>
      new RegExp(`^${TIME}  ${actor.replace('/', '\\/')} +${from} --${event}--> ${to}$`);
    await waitFor(
      () =>
        inOrder(followed(), [
          run('running\\.idle', 'WAKE', 'running\\.claiming', 'host'),
          run('\\(start\\)', 'xstate\\.init', 'considering'),
          run('running\\.claiming', 'xstate\\.done\\.actor\\.[^ ]+', 'running\\.busy', 'host'),
          run('considering', 'xstate\\.done\\.actor\\.[^ ]+', 'busy\\.supervising'),
          run('busy\\.supervising', 'xstate\\.done\\.actor\\.supervisor', 'busy\\.registering'),
          run('busy\\.registering', 'xstate\\.done\\.actor\\.[^ ]+', 'done'),
        ]) &&
        inOrder(followed(), [
          run('\\(start\\)', 'xstate\\.init', 'spawning', 'run-5/process/supervisor'),
          run('spawning', 'SPAWNED', 'running\\.producing', 'run-5/process/supervisor'),
          run('running\\.producing', 'EXITED', 'exited', 'run-5/process/supervisor'),
        ]) &&
        inOrder(followed(), [run('running\\.busy', 'RUN_SETTLED', 'running\\.claiming', 'host')]),
      'the follower to print run 5 from considering to done',
    );
    // Run 5's own actor: each of its transitions printed exactly once, in order, nothing else.
    const runFive = followed()
      .split('\n')
      .map((line) => new RegExp(`^${TIME}  run-5/process +(.+?) --\\S+--> (.+)$`).exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1], m[2]]);
    expect(runFive).toEqual([
      ['(start)', 'considering'],
      ['considering', 'busy.supervising'],
      ['busy.supervising', 'busy.registering'],
      ['busy.registering', 'done'],
    ]);
    // Only changes of state: the lease keeper's refreshes and the command's output change none.
    for (const line of followed().trim().split('\n')) {
      const [, from, to] = /  (\S+(?: \(\w+\))?) --\S+--> (.+)$/.exec(line) ?? [];
      if (from !== undefined) expect(from, line).not.toBe(to);
    }

    // The JSON follower saw the same transitions, one object per line.
    const transitions = await waitFor(() => {
      const objects = followedJson()
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      return objects.some((o) => o.actor === 'run-5/process' && o.to === 'done') ? objects : null;
    }, 'the JSON follower to see run 5 done');
    expect(transitions.filter((o) => o.actor === 'run-5/process').map((o) => [o.from, o.to])).toEqual([
      [null, 'considering'],
      ['considering', 'busy.supervising'],
      ['busy.supervising', 'busy.registering'],
      ['busy.registering', 'done'],
    ]);
    for (const o of transitions) expect(Number.isNaN(Date.parse(String(o.time)))).toBe(false);

    // The daemon stops: it says goodbye, and the followers end cleanly.
    daemon.kill('SIGTERM');
    expect(((await daemon) as { exitCode?: number }).exitCode).toBe(0);
    const ended = (await follower) as { exitCode?: number; stderr?: string };
    expect(ended.exitCode).toBe(0);
    expect(ended.stderr).toContain('the daemon closed the inspector connection (daemon stopping)');
    // The last transitions reach the viewers before the goodbye.
    expect(
      inOrder(followed(), [
        run('running\\.idle', 'STOP', '\\S+', 'host'),
        run('\\S+', '\\S+', 'stopped', 'host'),
      ]),
      followed(),
    ).not.toBeNull();
    expect(((await jsonFollower) as { exitCode?: number }).exitCode).toBe(0);
  });

  it('cannot connect: exit 1 naming the URL and how to start the inspector', async () => {
    config(['true']);
    const { port, server } = await takePort();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const result = await sandbox.run(['inspect', '--follow', '--port', String(port)]);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`cannot connect to the daemon's inspector at ws://127.0.0.1:${port}`);
    expect(result.stderr).toContain('start the daemon with `runwarden daemon --inspect`');
    expect(result.stdout).toBe('');
  });

  it('usage errors exit 2 naming the flag: a bad --inspect, a port in use, a bad --url', MANY_PROCESSES, async () => {
    config(['true']);
    for (const value of ['abc', '70000', '-1']) {
      const result = await sandbox.run(['daemon', `--inspect=${value}`]);
      expect(result.exitCode, value).toBe(2);
      expect(result.stderr).toContain('--inspect: expected a port number 0..65535');
    }
    const { port, server } = await takePort();
    try {
      for (const args of [[`--inspect=${port}`], ['--undying', `--inspect=${port}`]]) {
        const result = await sandbox.run(['daemon', ...args]);
        expect(result.exitCode, args.join(' ')).toBe(2);
        expect(result.stderr).toContain(
          `--inspect: port ${port} on 127.0.0.1 is already in use; choose another with --inspect=PORT or observe.inspect_port`,
        );
      }
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    const badUrl = await sandbox.run(['inspect', '--url', 'http://127.0.0.1:9390']);
    expect(badUrl.exitCode).toBe(2);
    expect(badUrl.stderr).toContain('--url: expected ws://HOST:PORT');
  });

  it('with --undying the daemon it runs gets --inspect and serves it', async () => {
    config(['true']);
    const result = await sandbox.run(['daemon', '--undying', '--once', '--inspect=0']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/live state machines on ws:\/\/127\.0\.0\.1:\d+/);
  });
});
