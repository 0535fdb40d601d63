import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanEnv, cliEntry, isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// `runwarden top` as an operator meets it: in a real pseudo-terminal (a tmux pane of 80x24 running a shell),
// against a real daemon and SQLite file; the screen is read back with capture-pane.

const tmuxVersion = spawnSync('tmux', ['-V'], { encoding: 'utf8' });
const hasTmux = tmuxVersion.status === 0;
if (!hasTmux) {
  console.warn(
    '\n*** tmux is not installed: the pseudo-terminal tests of `runwarden top` are SKIPPED (apt-get install tmux) ***\n',
  );
}

const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;
const sandbox = useSandbox('runwarden-top-');

/** The daemon's and top's runwarden.yaml: a failed run waits an hour for its retry, so it stays in view. */
function config(command: string[]): void {
  const settings = {
    store: 'sqlite:./runs.db',
    host: 'testhost',
    slots: 2,
    process: { command, output_root: './out', log_dir: './logs' },
    timeouts: { check_interval: '1s' },
    retry: { base: '1h' },
  };
  writeConfig(sandbox.dir, JSON.stringify(settings));
}

describe('runwarden top without a terminal', () => {
  it('refuses the live view when stdout is not a terminal, and prints one frame with --once', async () => {
    config(['true']);
    const store = await sandbox.openStore();
    await store.insertRun({ number: 5, start: Date.now() });
    const live = await sandbox.run(['top']);
    expect(live.exitCode).toBe(2);
    expect(live.stderr).toContain('standard output is not a terminal; use `runwarden top --once`');
    expect(live.stdout).toBe('');

    const once = await sandbox.run(['top', '--once']);
    expect(once.exitCode, once.stderr).toBe(0);
    const lines = once.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(new RegExp(`^runwarden top  .*runs\\.db +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ$`));
    expect(lines).toContain('runs  pending 1  considering 0  busy 0  done 0  failed 0  abandoned 0');
    expect(lines).toContain('no hosts have registered yet');
    expect(once.stdout).not.toMatch(/\x1b/);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(80);

    const narrow = await sandbox.run(['top', '--once'], { env: { COLUMNS: '30', LINES: '4' } });
    expect(narrow.stdout.trimEnd().split('\n')).toEqual([
      expect.stringMatching(/^runwarden top  .{15}$/),
      'runs  pending 1  considering…',
      '',
      'no hosts have registered yet',
    ]);

    const json = await sandbox.run(['top', '--once', '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ hosts: [], counts: { pending: 1 }, busy: [], failures: [] });
  });

  it('bad options exit 2 naming the option; a store that cannot be opened exits 1', async () => {
    config(['true']);
    for (const [interval, why] of [
      ['0', 'at least 100ms'],
      ['abc', 'not a duration'],
      ['-1s', 'not a duration'],
    ]) {
      const bad = await sandbox.run(['top', '--once', `--interval=${interval}`]);
      expect(bad.exitCode, interval).toBe(2);
      expect(bad.stderr).toContain('--interval: ');
      expect(bad.stderr).toContain(why);
    }
    const json = await sandbox.run(['top', '--json']);
    expect(json.exitCode).toBe(2);
    expect(json.stderr).toContain('--json: only with --once');
    writeFileSync(join(sandbox.dir, 'not-a-dir'), '');
    const unopenable = await sandbox.run(['top', '--once', '--store', 'sqlite:./not-a-dir/runs.db']);
    expect(unopenable.exitCode).toBe(1);
    expect(unopenable.stderr).toMatch(/^runwarden: no SQLite store at .*not-a-dir\/runs\.db: /);
  });
});

describe.skipIf(!hasTmux)(`runwarden top in a tmux pane of 80x24 (${tmuxVersion.stdout?.trim() ?? 'no tmux'})`, () => {
  let socket: string | undefined;
  let sockets = 0;

  // Registered after the sandbox's hook, so it runs first: the pane's processes end before the dir goes.
  afterEach(async () => {
    if (socket === undefined) return;
    await tmux('kill-server').catch(() => undefined);
    socket = undefined;
    const pidFile = join(sandbox.dir, 'top.pid');
    let pid: number | undefined;
    try {
      pid = Number(readFileSync(pidFile, 'utf8'));
    } catch {
      return;
    }
    // The server's SIGHUP ends top; make sure, and never leave it behind.
    await waitFor(() => !isAlive(pid), `top (pid ${pid}) to exit after its terminal closed`, { timeoutMs: 10_000 }).catch(
      () => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone after all
        }
      },
    );
  });

  function tmux(...args: string[]) {
    if (socket === undefined) throw new Error('no tmux server for this test');
    const env = cleanEnv();
    delete env.TMUX;
    return execa('tmux', ['-L', socket, '-f', '/dev/null', ...args], { env, extendEnv: false });
  }

  /** A detached 80x24 session whose pane runs a plain shell in the sandbox dir. */
  async function openPane(): Promise<void> {
    socket = `runwarden-top-${process.pid}-${Date.now()}-${sockets++}`;
    // top's wrapper records its pid (exec keeps it) so the test can tell when it is gone.
    writeFileSync(
      join(sandbox.dir, 'rw'),
      `#!/bin/sh\necho $$ > "${join(sandbox.dir, 'top.pid')}"\nexec "${process.execPath}" --import "${tsxLoader}" "${cliEntry}" "$@"\n`,
      { mode: 0o755 },
    );
    await tmux('new-session', '-d', '-s', 'view', '-x', '80', '-y', '24', '-c', sandbox.dir, 'sh');
    // Keys typed before the shell is up may be lost: wait for its prompt.
    await waitFor(async () => (await screen()).trim() !== '', 'the shell prompt');
  }

  const type = (text: string) => tmux('send-keys', '-t', 'view', '-l', text);
  const press = (...keys: string[]) => tmux('send-keys', '-t', 'view', ...keys);
  const screen = async () => (await tmux('capture-pane', '-p', '-t', 'view')).stdout;
  const pane = async (format: string) => (await tmux('display-message', '-p', '-t', 'view', format)).stdout.trim();
  const shell = async (line: string) => {
    await type(line);
    await press('Enter');
  };
  const screenMatching = async (pattern: RegExp, what: string, timeoutMs = 20_000) => {
    let last = '';
    try {
      return await waitFor(async () => {
        last = await screen();
        return pattern.test(last) ? last : undefined;
      }, what, { timeoutMs });
    } catch (error) {
      throw new Error(`${(error as Error).message}; the screen:\n${last}`);
    }
  };

  /** Starts top from the shell; resolves once its first full frame is on the screen. */
  async function startTop(expected: RegExp): Promise<string> {
    await shell('stty -g > tty.before; ./rw top; echo "TOP-EXIT=$?"; stty -g > tty.after; echo SHELL-BACK');
    const frame = await screenMatching(expected, `top to show ${expected}`);
    expect(await pane('#{alternate_on} #{cursor_flag}')).toBe('1 0');
    return frame;
  }

  /** top has exited with `code`: the shell's screen is back, the cursor shows, the tty modes are as before. */
  async function expectRestored(code: number, run: number): Promise<void> {
    const pattern = new RegExp(`(TOP-EXIT=\\d+\\nSHELL-BACK\\n[\\s\\S]*){${run}}`);
    const text = await screenMatching(pattern, `top's exit #${run}`);
    expect([...text.matchAll(/TOP-EXIT=(\d+)/g)].at(-1)?.[1]).toBe(String(code));
    expect(await pane('#{alternate_on} #{cursor_flag}')).toBe('0 1');
    expect(text).toContain('BEFORE-TOP');
    expect(text).not.toContain('runwarden top  sqlite');
    expect(readFileSafe('tty.after')).toBe(readFileSafe('tty.before'));
  }

  function readFileSafe(name: string): string | undefined {
    try {
      return readFileSync(join(sandbox.dir, name), 'utf8');
    } catch {
      return undefined;
    }
  }

  it('shows the host, the counts, the busy run with its last output line and the failure; q restores the terminal', async () => {
    const work = sandbox.script(
      'work.sh',
      `if [ "$1" = 2 ]; then echo "calibration missing for run $1" > "$RUNWARDEN_ERROR_FILE"; exit 3; fi\n` +
        // Each line also tries to retitle the terminal and colour itself: top must pass neither on.
        `i=0\nwhile [ $i -lt 100000 ]; do i=$((i+1)); printf '\\033]2;PWNED\\007\\033[31mstep %d of 100000\\033[0m\\n' $i; sleep 0.2; done`,
    );
    config(['sh', work, '{number}']);
    const store = await sandbox.openStore();
    await store.insertRun({ number: 1, start: Date.now() - 1000, name: 'slow' });
    await store.insertRun({ number: 2, start: Date.now(), name: 'broken' });
    const daemon = sandbox.start(['daemon']);
    let commandGroup: number | undefined;
    try {
      await waitFor(async () => (await store.getRun(2))?.processing?.state === 'failed', 'run 2 to fail');
      commandGroup = await waitFor(async () => {
        const p = (await store.getRun(1))?.processing;
        return p?.state === 'busy' ? p.pgid : undefined;
      }, 'run 1 to be busy');
      // The host document says busy from its first heartbeat on (check_interval after the start), not at once.
      await waitFor(async () => (await store.getHost('testhost'))?.state === 'busy', 'the host document to say busy');

      await openPane();
      await shell('echo BEFORE-TOP');
      await screenMatching(/^BEFORE-TOP$/m, 'the shell to echo');
      const frame = await startTop(/^1 +1 +testhost +\d+s +step \d+ of 100000\n[\s\S]*^2 +retry in/m);
      const rows = frame.split('\n').slice(0, 24);
      expect(rows[0]).toMatch(/^runwarden top  .*runs\.db +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
      expect(rows[1]).toBe('runs  pending 0  considering 0  busy 1  done 0  failed 1  abandoned 0');
      expect(frame).toMatch(/^HOST +STATE +HEARTBEAT +SLOTS +DISK\ntesthost +busy +\d+s ago +1\/2 +\d+% used, [\d.]+\w+ free$/m);
      expect(frame).toMatch(/^BUSY +ATTEMPT +HOST +ELAPSED +LAST OUTPUT$/m);
      expect(frame).toMatch(
        /^FAILED +STATE +FAILS +HOST +WHEN +REASON\n2 +retry in \S+ +1 +testhost +\d+s ago +calibration missing for run 2$/m,
      );
      expect(rows[23]).toBe('q or ^C quits · refreshed every 1s');
      // Live: the run's newest line replaces the one first seen.
      const firstStep = Number(/step (\d+) of/.exec(frame)?.[1]);
      await waitFor(async () => Number(/step (\d+) of/.exec(await screen())?.[1]) > firstStep, 'a newer output line');
      expect(await pane('#{pane_title}')).not.toBe('PWNED');

      await press('q');
      await expectRestored(0, 1);
      // The check above can fail: the same escape sequence from the shell does retitle the pane.
      await shell(`printf '\\033]2;CONTROL\\007'`);
      await waitFor(async () => (await pane('#{pane_title}')) === 'CONTROL', 'the control title');
    } finally {
      daemon.kill('SIGTERM');
      await daemon;
      if (commandGroup !== undefined) {
        try {
          process.kill(-commandGroup, 'SIGKILL');
        } catch {
          // the daemon stopped it, as it should
        }
      }
    }
  });

  it('^C, SIGTERM, SIGHUP and SIGINT end it too, each restoring the terminal; a resize redraws at the new size', async () => {
    config(['true']);
    const store = await sandbox.openStore();
    await store.insertRun({ number: 3, start: Date.now(), tags: ['hold'] });
    await openPane();
    await shell('echo BEFORE-TOP');
    await screenMatching(/^BEFORE-TOP$/m, 'the shell to echo');
    const shown = /runs {2}pending 1 [\s\S]*q or \^C quits/;

    await startTop(shown);
    await tmux('resize-window', '-t', 'view', '-x', '50', '-y', '10');
    const small = await screenMatching(/^runs {2}pending 1 +considering 0 +busy 0 +done 0 +f…$/m, 'a frame 50 wide');
    expect(small.split('\n').slice(0, 10).at(-1)).toBe('q or ^C quits · refreshed every 1s');
    await tmux('resize-window', '-t', 'view', '-x', '80', '-y', '24');
    await screenMatching(/^runs {2}pending 1 +considering 0 +busy 0 +done 0 +failed 0 +abandoned 0$/m, 'a frame 80 wide');
    await press('C-c');
    await expectRestored(0, 1);

    const pid = () => Number(readFileSafe('top.pid'));
    await startTop(shown);
    process.kill(pid(), 'SIGTERM');
    await expectRestored(143, 2);

    await startTop(shown);
    process.kill(pid(), 'SIGHUP');
    await expectRestored(129, 3);

    await startTop(shown);
    process.kill(pid(), 'SIGINT');
    await expectRestored(0, 4);
  });

  it('a store error during a refresh is shown on the status line, the last data stays, and the view recovers', async () => {
    config(['true']);
    const store = await sandbox.openStore();
    await store.registerHost({
      host: 'daq07',
      pid: process.pid,
      token: 'x',
      state: 'idle',
      time: Date.now(),
      started: Date.now(),
      version: 'test',
      slots: 3,
      running: [],
    });
    await openPane();
    await shell('echo BEFORE-TOP');
    await screenMatching(/^BEFORE-TOP$/m, 'the shell to echo');
    await startTop(/^daq07 +idle +\d+s ago +0\/3 +-$/m);

    // Another process breaks the database under the view, then mends it.
    const db = new Database(join(sandbox.dir, 'runs.db'));
    try {
      db.exec('ALTER TABLE hosts RENAME TO hosts_away');
      const broken = await screenMatching(/^store error, trying again every 1s \(data from \d+s ago\): no such table: hosts$/m, 'the error on the status line');
      expect(broken).toMatch(/^daq07 +idle/m);
      db.exec('ALTER TABLE hosts_away RENAME TO hosts');
    } finally {
      db.close();
    }
    await screenMatching(/q or \^C quits · refreshed every 1s$/, 'the view to recover');
    await press('q');
    await expectRestored(0, 1);
  });
});
