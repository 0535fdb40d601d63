import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readProcStart } from '../../src/process/proc.js';
import type { RunStore } from '../../src/store/run-store.js';
import { isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { killWithGuard } from '../helpers/lease-guard.js';
import { useSandbox } from '../helpers/sandbox.js';

// No process an attempt started outlives the attempt (issue 12 fault 8), even one that left the command's
// process group: `setsid` (a new session), a double fork into a new session that ignores SIGTERM, and a plain
// double fork (reparented to init, still in the group). After a normal exit, after a clean stop (SIGTERM) and
// after restart recovery from a SIGKILLed daemon, none of them is left.

const sandbox = useSandbox();

const ESCAPEES = ['setsid', 'daemonized', 'double'] as const;

/** Starts the three escapees, waits until each wrote its pid, then exits 0 ($3 = done) or sleeps ($3 = hang). */
function escapeeConfig(): void {
  const command = sandbox.script(
    'escape.sh',
    [
      'out=$1',
      `setsid sh -c 'echo $$ > "$0/setsid.pid"; exec sleep 1000' "$out" </dev/null >/dev/null 2>&1 &`,
      // The classic daemon: a new session whose leader forks and exits, the grandchild ignoring SIGTERM.
      `setsid sh -c 'sh -c "trap \\"\\" TERM; echo \\$\\$ > \\"$0/daemonized.pid\\"; while :; do sleep 1; done" & exit 0' "$out" </dev/null >/dev/null 2>&1 &`,
      `( sh -c 'echo $$ > "$0/double.pid"; exec sleep 1000' "$out" </dev/null >/dev/null 2>&1 & )`,
      'for f in setsid daemonized double; do',
      '  while [ ! -s "$out/$f.pid" ]; do sleep 0.02; done',
      'done',
      'echo escapees started',
      'if [ "$2" = hang ]; then sleep 1000; fi',
      'echo ok > "$out/result.txt"',
    ].join('\n'),
  );
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(command)}, "{output}", "{params.mode}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 200ms
  signal_escalate: 500ms
  max_busy_time: 1h
  max_considering_time: 1h
  presumed_dead: 1h
  restart_pause: 300ms
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
  );
}

interface Escapee {
  name: string;
  pid: number;
  start: number | undefined;
}

async function escapeesOf(number: number): Promise<Escapee[]> {
  const out = join(sandbox.dir, 'out', String(number).padStart(6, '0'));
  return Promise.all(
    ESCAPEES.map(async (name) => {
      const file = join(out, `${name}.pid`);
      const pid = Number(await waitFor(() => existsSync(file) && readFileSync(file, 'utf8').trim(), `${file}`));
      return { name, pid, start: readProcStart(pid) };
    }),
  );
}

/** Registers each escapee so the sandbox reaps it whatever the test's outcome. */
function reapLater(escapees: Escapee[]): void {
  for (const e of escapees) {
    sandbox.track(
      Object.assign(Promise.resolve(), {
        pid: e.pid,
        kill: () => {
          if (readProcStart(e.pid) === e.start && isAlive(e.pid)) process.kill(e.pid, 'SIGKILL');
        },
      }),
    );
  }
}

function survivors(escapees: Escapee[]): string[] {
  return escapees.filter((e) => isAlive(e.pid) && readProcStart(e.pid) === e.start).map((e) => `${e.name} (${e.pid})`);
}

async function submit(number: number, mode: 'done' | 'hang'): Promise<void> {
  const result = await sandbox.run(['submit', String(number), '--param', `mode=${mode}`]);
  expect(result.exitCode, result.stderr).toBe(0);
}

async function stateOf(s: RunStore, number: number, state: string) {
  return waitFor(async () => {
    const run = await s.getRun(number);
    return run?.processing?.state === state ? run : null;
  }, `run ${number} to be ${state}`);
}

describe('processes that left the command group', () => {
  it('are gone when the attempt ends by a normal exit', async () => {
    escapeeConfig();
    await submit(1, 'done');
    sandbox.start(['daemon']);
    const escapees = await escapeesOf(1);
    reapLater(escapees);
    const s = await sandbox.openStore();
    await stateOf(s, 1, 'done');
    expect(survivors(escapees)).toEqual([]);
  });

  it('are gone after a clean stop (SIGTERM)', async () => {
    escapeeConfig();
    await submit(2, 'hang');
    const daemon = sandbox.start(['daemon']);
    const escapees = await escapeesOf(2);
    reapLater(escapees);
    const s = await sandbox.openStore();
    await stateOf(s, 2, 'busy');
    daemon.kill('SIGTERM');
    const result = await daemon;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    expect(survivors(escapees)).toEqual([]);
  });

  it('are gone after restart recovery from a SIGKILLed daemon', async () => {
    escapeeConfig();
    await submit(3, 'hang');
    const first = sandbox.start(['daemon']);
    const escapees = await escapeesOf(3);
    reapLater(escapees);
    const s = await sandbox.openStore();
    await stateOf(s, 3, 'busy');
    // With its lease guard, which would kill the command's group at once: the restart is the backstop under test.
    await killWithGuard(first);
    expect(survivors(escapees)).toHaveLength(3);
    sandbox.start(['daemon']);
    await waitFor(async () => {
      const events = await s.listRunEvents(3);
      return events.some((e) => e.from === 'busy' && e.to === 'failed');
    }, 'the new daemon to recover run 3');
    expect(survivors(escapees)).toEqual([]);
  });
});
