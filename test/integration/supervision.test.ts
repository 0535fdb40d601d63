import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Hang ≠ slowness (DESIGN §1): a command that produces nothing is *stalled*, one that keeps producing but
// runs too long is *timed out*, and one that only writes files under its output directory is alive.

const sandbox = useSandbox();

describe('stall and timeout', () => {
  it('tells a silent command (stalled) from a chatty slow one (timed out) and spares quiet file writers, deep ones too', async () => {
    // The stall window (2 s) is about 7 times the writers' cadence (0.3 s), so a loaded machine does not kill a
    // writer, and the writers go on for 2.4 windows, so a writer whose changes are not seen is surely stalled.
    const work = sandbox.script(
      'work.sh',
      [
        'out=$2',
        'case $1 in',
        '  1) sleep 1000 ;;', // silent: stalled
        '  2) while true; do echo tick; sleep 0.1; done ;;', // chatty, never ends: timed out
        // quiet on stdout and stderr, but new files keep appearing at the top of its output directory: done
        '  3) for i in $(seq 1 16); do echo $i > "$out/part-$i"; sleep 0.3; done ;;',
        // quiet, and only a file deep below its output directory keeps growing: done (the watch is recursive)
        '  4) mkdir -p "$out/a/b"; for i in $(seq 1 16); do echo $i >> "$out/a/b/data"; sleep 0.3; done ;;',
        'esac',
      ].join('\n'),
    );
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
slots: 4
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 0.5s
  max_no_output_time: 2s
  max_processing_time: 8s
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
`,
    );
    for (const n of ['1', '2', '3', '4']) expect((await sandbox.run(['submit', n])).exitCode).toBe(0);
    const result = await sandbox.run(['daemon', '--once']);
    expect(result.exitCode, result.stderr).toBe(0);

    const store = await sandbox.openStore();
    const stalled = (await store.getRun(1))!.processing!;
    expect(stalled.state).toBe('failed');
    expect(stalled.reason).toBe('stalled: no output for 2s');
    const timedOut = (await store.getRun(2))!.processing!;
    expect(timedOut.state).toBe('failed');
    expect(timedOut.reason).toBe('timed out after 8s');
    const top = (await store.getRun(3))!.processing!;
    expect(top.state, top.reason).toBe('done');
    expect(readFileSync(join(sandbox.dir, 'out/000003/part-16'), 'utf8').trim()).toBe('16');
    const deep = (await store.getRun(4))!.processing!;
    expect(deep.state, deep.reason).toBe('done');
    expect(readFileSync(join(sandbox.dir, 'out/000004/a/b/data'), 'utf8').trim().split('\n')).toHaveLength(16);
    // Both reasons, and their kinds, are in the run's history.
    const failedEvent = async (n: number) => (await store.listRunEvents(n)).find((e) => e.to === 'failed')!;
    expect(await failedEvent(1)).toMatchObject({ reason: 'stalled: no output for 2s', detail: { kind: 'stalled' } });
    expect(await failedEvent(2)).toMatchObject({ reason: 'timed out after 8s', detail: { kind: 'timed_out' } });
  });
});

describe('partial output', () => {
  it('a retry starts from an empty output directory with clean_output, and keeps it without', async () => {
    // The first attempt leaves a partial file and fails; the second records what it found, then succeeds.
    const work = sandbox.script(
      'partial.sh',
      ['out=$2', 'ls "$out" > "$out/../found-$1-$3"', 'if [ "$3" = 1 ]; then echo half > "$out/partial"; exit 1; fi',
        'echo ok > "$out/result"'].join('\n'),
    );
    for (const [clean, number] of [['true', '1'], ['false', '2']] as const) {
      writeConfig(
        sandbox.dir,
        `store: sqlite:./runs.db
host: testhost
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}", "{attempt}"]
  output_root: ./out
  log_dir: ./logs
  clean_output: ${clean}
timeouts: {idle_poll: 1h}
retry: {base: 0, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 3}
`,
      );
      expect((await sandbox.run(['submit', number])).exitCode).toBe(0);
      const result = await sandbox.run(['daemon', '--once']);
      expect(result.exitCode, result.stderr).toBe(0);
      expect((await (await sandbox.openStore()).getRun(Number(number)))!.processing!.state).toBe('done');
    }
    const found = (n: string, attempt: number) =>
      readFileSync(join(sandbox.dir, 'out', `found-${n}-${attempt}`), 'utf8').trim();
    expect(found('1', 1)).toBe('');
    expect(found('1', 2)).toBe('');
    expect(found('2', 2)).toBe('partial');
  });
});
