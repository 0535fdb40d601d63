import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { parsePrometheusText, valueOf } from '../helpers/prometheus-text.js';
import { useSandbox } from '../helpers/sandbox.js';

// A large output tree never stalls the daemon (issue 12 fault 16): run 1's first attempt leaves 100,000 files
// in its output directory (clean_output off), its second attempt starts over that tree and stays silent long
// enough for the stall check to walk it. Meanwhile run 2 runs on the same daemon and a second daemon's cleanup,
// started once both runs are busy, watches every lease: the daemon's event-loop delay (runwarden_event_loop_delay_seconds) stays under a quarter
// of check_interval, and run 2's lease is never taken over.

const sandbox = useSandbox();

const CHECK_INTERVAL_S = 2;
const FILES = 100_000;

describe('a large output tree', () => {
  it(`${FILES} output files: the event loop is never held for a quarter of check_interval, no lease is taken over`, async () => {
    const gate = join(sandbox.dir, 'gate');
    // A node one-liner makes the entries quickly: 100 directories of 1,000 names, hard links to one empty file
    // per directory (a link is a directory entry without a new inode: several times faster to make than a file,
    // and the same for a directory walk or a recursive watch). It prints one line per directory.
    const makeTree =
      `for(let d=0;d<100;d++){const dir=process.argv[1]+'/d'+d;fs.mkdirSync(dir);fs.writeFileSync(dir+'/f0','');` +
      `for(let f=1;f<${FILES / 100};f++)fs.linkSync(dir+'/f0',dir+'/f'+f);console.log(dir)}`;
    const work = sandbox.script(
      'work.sh',
      [
        'number=$1; out=$2; attempt=$3',
        'if [ "$number" = 2 ]; then',
        `  while [ ! -e ${JSON.stringify(gate)} ]; do echo tick; sleep 0.2; done`,
        '  echo x > "$out/x"; exit 0',
        'fi',
        'if [ "$attempt" = 1 ]; then',
        `  ${JSON.stringify(process.execPath)} -e ${JSON.stringify(makeTree)} "$out" || exit 9`,
        '  echo "tree made"; exit 1',
        'fi',
        // Silent for longer than half of max_no_output_time: the stall check walks the whole tree (nothing in
        // it is newer than this attempt), at least once, before the command speaks and ends.
        'echo "attempt 2 starts over the tree"',
        'sleep 6',
        'echo "attempt 2 done"',
      ].join('\n'),
    );
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: alpha
slots: 2
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}", "{attempt}"]
  output_root: ./out
  log_dir: ./logs
  clean_output: false
timeouts:
  check_interval: ${CHECK_INTERVAL_S}s
  idle_poll: 200ms
  signal_escalate: 500ms
  cleanup_interval: 500ms
  max_considering_time: 7s
  max_busy_time: 10s # the lease guard kills a command unrenewed for 10 − 1 − 2 = 7 s
  max_no_output_time: 8s
retry: {base: 100ms, factor: 1, max_exponent: 0, jitter: [1, 1], max_failures: 5}
`,
    );
    for (const n of ['2', '1']) expect((await sandbox.run(['submit', n])).exitCode).toBe(0);
    const daemon = sandbox.start(['daemon', '--metrics', '0']);
    let output = '';
    (daemon as unknown as { all: Readable }).all.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const url = await waitFor(
      () => /serving Prometheus text on (http:\/\/[^\s"]+\/metrics)/.exec(output)?.[1],
      'the daemon to log its metrics address',
    );
    const s = await sandbox.openStore();
    await waitFor(async () => (await s.getRun(2))?.processing?.state === 'busy', 'run 2 to be busy');
    // Attempt 2 of run 1 starts over the tree on this daemon (no other daemon runs yet to claim the retry).
    await waitFor(
      async () => {
        const p = (await s.getRun(1))?.processing;
        return p?.state === 'busy' && p.attempt === 2 && p.host === 'alpha';
      },
      'run 1 attempt 2 to be busy on alpha',
      { timeoutMs: 90_000 },
    );
    // The watcher: a daemon of another host whose cleanup takes over any lease silent for max_busy_time; it
    // finds nothing to claim, both runs are busy.
    sandbox.start(['daemon', '--host', 'beta', '--slots', '1']);
    await waitFor(async () => (await s.getHost('beta'))?.state === 'idle', 'host beta to be idle', { timeoutMs: 30_000 });
    await waitFor(
      async () => {
        const run = await s.getRun(1);
        return run?.processing?.state === 'done' || run?.processing?.state === 'abandoned' ? run : null;
      },
      'run 1 to end',
      { timeoutMs: 90_000 },
    );
    writeFileSync(gate, '');
    await waitFor(async () => (await s.getRun(2))?.processing?.state === 'done', 'run 2 to be done');

    const run1 = (await s.getRun(1))!.processing!;
    expect(run1, run1.reason).toMatchObject({ state: 'done', attempt: 2, host: 'alpha' });
    expect(existsSync(join(sandbox.dir, 'out', '000001', 'd99', `f${FILES / 100 - 1}`))).toBe(true);
    const events2 = await s.listRunEvents(2);
    expect(events2.map((e) => `${e.from ?? '-'}>${e.to}@${e.attempt}`)).toEqual([
      '->considering@1',
      'considering>busy@1',
      'busy>done@1',
    ]);
    const metrics = parsePrometheusText(await (await fetch(url)).text());
    const maxDelay = valueOf(metrics, 'runwarden_event_loop_delay_seconds', { stat: 'max' });
    expect(maxDelay).toBeDefined();
    expect(maxDelay!).toBeGreaterThan(0);
    expect(maxDelay!).toBeLessThan(CHECK_INTERVAL_S / 4);
  }, 150_000);
});
