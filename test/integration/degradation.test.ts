import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Fewer targets and resources on retry (DESIGN §4 degradation), through a real daemon: each attempt of a
// failing run gets what the failure count allows, via placeholders and environment, and the run's processing
// document and run_events record it. no_retry_exit_codes abandon at once.

const sandbox = useSandbox();

describe('degradation on retry', () => {
  it('drops targets and shrinks cores per failure, records them, and abandons on a no-retry exit code', async () => {
    const seen = JSON.stringify(join(sandbox.dir, 'seen-'));
    const work = sandbox.script(
      'work.sh',
      [
        'number=$1 out=$2 attempt=$3 targets=$4 cores=$5',
        `echo "$attempt $targets $cores $RUNWARDEN_TARGETS $RUNWARDEN_CORES" >> ${seen}$number`,
        'if [ "$number" = 2 ]; then exit 42; fi',
        'if [ "$attempt" -lt 4 ]; then echo "attempt $attempt fails" >&2; exit 1; fi',
        'echo ok > "$out/result"',
      ].join('\n'),
    );
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}", "{attempt}", "{targets}", "{cores}"]
  output_root: ./out
  log_dir: ./logs
  targets: [raw, peaks, events]
  drop_targets_after: {"event*": 1, "*": 2}
  minimal_targets: [raw]
  resources: {cores: {start: 8, min: 2, shrink: 2}}
  no_retry_exit_codes: [42]
timeouts: {idle_poll: 1h}
retry: {base: 0, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 5}
`,
    );
    for (const n of ['1', '2']) expect((await sandbox.run(['submit', n])).exitCode).toBe(0);
    const result = await sandbox.run(['daemon', '--once']);
    expect(result.exitCode, result.stderr).toBe(0);

    // What the command saw on each attempt: placeholders, then the environment.
    expect(readFileSync(join(sandbox.dir, 'seen-1'), 'utf8').trim().split('\n')).toEqual([
      '1 raw,peaks,events 8 raw,peaks,events 8',
      '2 raw,peaks,events 4 raw,peaks,events 4',
      '3 raw,peaks 2 raw,peaks 2',
      '4 raw 2 raw 2',
    ]);
    const store = await sandbox.openStore();
    const run = (await store.getRun(1))!;
    expect(run.processing).toMatchObject({ state: 'done', attempt: 4, n_failures: 3, targets: ['raw'] });
    expect(run.processing!.resources).toEqual({ cores: 2 });
    const busy = (await store.listRunEvents(1)).filter((e) => e.to === 'busy');
    expect(busy.map((e) => [e.attempt, e.detail?.targets, e.detail?.resources])).toEqual([
      [1, ['raw', 'peaks', 'events'], { cores: 8 }],
      [2, ['raw', 'peaks', 'events'], { cores: 4 }],
      [3, ['raw', 'peaks'], { cores: 2 }],
      [4, ['raw'], { cores: 2 }],
    ]);

    const abandoned = (await store.getRun(2))!.processing!;
    expect(abandoned).toMatchObject({ state: 'abandoned', attempt: 1, n_failures: 1, exit_code: 42 });
    expect(abandoned.reason).toMatch(/^gave up: exit code 42 is in process.no_retry_exit_codes/);
    expect(readFileSync(join(sandbox.dir, 'seen-2'), 'utf8').trim().split('\n')).toHaveLength(1);
  });
});
