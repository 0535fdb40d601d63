import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { degradationOf } from '../../src/policy/degradation.js';
import type { RunDoc } from '../../src/store/types.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Issue 12 fault 4: an attempt ended by its host (kill -9 of the daemon, an OOM, a reboot) is an interruption,
// not a failure. It is in the run's history, but it neither counts towards retry.max_failures nor degrades
// the next attempt's targets and resources; retry.max_interruptions stops a run that takes its host down
// with it every time.

const sandbox = useSandbox('runwarden-interruptions-');

/** Targets and cores that any counted failure would shrink: `*` drops every target after one failure. */
const DEGRADATION = `  targets: [raw_records, peaks, events]
  drop_targets_after: {"*": 0}
  minimal_targets: [raw_records]
  resources: {cores: {start: 8, min: 2, shrink: 2}}`;

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
${DEGRADATION}
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 1s
  max_busy_time: 1h
  max_considering_time: 1h
  presumed_dead: 1h
  restart_pause: 200ms
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 2, max_interruptions: 3}
${extra}`,
  );
}

async function runWhen(number: number, state: string): Promise<RunDoc> {
  const s = await sandbox.openStore();
  return waitFor(async () => {
    const run = await s.getRun(number);
    return run?.processing?.state === state ? run : null;
  }, `run ${number} to be ${state}`, { timeoutMs: 60_000 });
}

describe('interruptions', () => {
  it('a run whose daemon is killed (kill -9) ends done with every configured target and cores, n_failures 0', async () => {
    // The first attempt hangs until its daemon dies; the next one records what it was given and succeeds.
    const work = sandbox.script(
      'work.sh',
      [
        'out=$1',
        'if [ "$2" = 1 ]; then echo $$ > "$out/../attempt1.pid"; exec sleep 1000; fi',
        'echo "$RUNWARDEN_TARGETS cores=$3" > "$out/result.txt"',
      ].join('\n'),
    );
    config(['sh', work, '{output}', '{attempt}', '{cores}']);
    expect((await sandbox.run(['submit', '7'])).exitCode).toBe(0);
    const first = sandbox.start(['daemon']);
    await waitFor(() => existsSync(join(sandbox.dir, 'out/attempt1.pid')), 'attempt 1 to run');
    await runWhen(7, 'busy');
    first.kill('SIGKILL');
    await first;

    sandbox.start(['daemon']);
    const done = await runWhen(7, 'done');
    expect(done.processing).toMatchObject({
      attempt: 2,
      n_failures: 0,
      n_interruptions: 1,
      targets: ['raw_records', 'peaks', 'events'],
      resources: { cores: 8 },
    });
    expect(readFileSync(join(sandbox.dir, 'out/000007/result.txt'), 'utf8').trim()).toBe(
      'raw_records,peaks,events cores=8',
    );
    const cfg = loadConfig({ cwd: sandbox.dir, env: {}, flags: {} });
    expect(degradationOf(done, cfg)).toBeNull();

    // The history still tells what happened to attempt 1.
    const s = await sandbox.openStore();
    const interrupted = (await s.listRunEvents(7)).find((e) => e.to === 'failed')!;
    expect(interrupted).toMatchObject({ attempt: 1, from: 'busy' });
    expect(interrupted.reason).toContain('host testhost restarted while the run was busy');
    expect(interrupted.detail).toMatchObject({ interruption: 'restart' });
    const log = (await s.listLog({ number: 7 })).map((e) => e.message).join('\n');
    expect(log).toMatch(/run 7 interrupted \(1 of retry\.max_interruptions 3; not counted as a failure\)/);
  });

  it('a run whose command kills its daemon every time is abandoned at retry.max_interruptions, saying so', async () => {
    // An OOM or a kernel panic in miniature: the command takes its daemon down with it, every attempt.
    const killer = sandbox.script('killer.sh', 'kill -9 $PPID\nsleep 1000');
    config(['sh', killer]);
    expect((await sandbox.run(['submit', '9'])).exitCode).toBe(0);
    const undying = sandbox.start(['daemon', '--undying']);

    const abandoned = await runWhen(9, 'abandoned');
    expect(abandoned.processing).toMatchObject({ attempt: 3, n_failures: 0, n_interruptions: 3 });
    expect(abandoned.processing!.reason).toMatch(
      /^gave up: 3 interruptions reached retry\.max_interruptions \(3\): its host keeps going away while it runs; last interruption: host testhost restarted while the run was busy/,
    );
    const s = await sandbox.openStore();
    const events = await s.listRunEvents(9);
    expect(events.filter((e) => e.to === 'failed').map((e) => e.detail?.interruption)).toEqual(['restart', 'restart']);
    expect(events.at(-1)).toMatchObject({ to: 'abandoned', attempt: 3 });
    undying.kill('SIGTERM'); // the supervisor stops its current daemon on the way out
    expect(((await undying) as { exitCode?: number }).exitCode).toBe(0);
  });
});
