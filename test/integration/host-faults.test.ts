import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Issue 12 fault 5: a host-level fault (the executable missing, an output or log directory the daemon cannot
// write) must not burn the queue. What can be checked is refused at start with exit 2 naming the field; at run
// time, host_fault_threshold runs in a row that could not start pause claiming (host state `paused`, with the
// reason) instead of failing every run in turn, and the host resumes once its check passes.

const sandbox = useSandbox('runwarden-host-faults-');

function config(process: string, extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
${process}
timeouts:
  check_interval: 0.5s
  idle_poll: 1h
  max_busy_time: 1h
  max_considering_time: 1h
  presumed_dead: 1h
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 1}
${extra}`,
  );
}

describe('host faults at start: exit 2 naming the field', () => {
  it('a missing executable', async () => {
    config(`  command: ["runwarden-no-such-program", "{number}"]\n  output_root: ./out\n  log_dir: ./logs`);
    for (const args of [['daemon'], ['daemon', '--undying']]) {
      const result = await sandbox.run(args);
      expect(result.exitCode, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(/process\.command: the executable "runwarden-no-such-program" is not found in PATH/);
    }
    // a path that is not executable, relative to process.cwd
    writeFileSync(join(sandbox.dir, 'tool.sh'), 'echo hi\n', { mode: 0o644 });
    config(`  command: ["./tool.sh"]\n  output_root: ./out\n  log_dir: ./logs`);
    const result = await sandbox.run(['daemon']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/process\.command: the executable "\.\/tool\.sh" .* does not exist or is not executable/);
  });

  it('an output_root or log_dir that cannot be created or written, and a missing cwd', async () => {
    // root ignores permission bits: a path below a regular file can never be a directory
    writeFileSync(join(sandbox.dir, 'plain-file'), '');
    config(`  command: ["true"]\n  output_root: ./out\n  log_dir: ./plain-file/sub`);
    let result = await sandbox.run(['daemon']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/process\.log_dir: cannot create or write .*plain-file\/sub/);
    config(`  command: ["true"]\n  output_root: ./plain-file/out\n  log_dir: ./logs`);
    result = await sandbox.run(['process', '3']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/process\.output_root: cannot create or write .*plain-file\/out/);
    config(`  command: ["true"]\n  cwd: ./nowhere\n  output_root: ./out\n  log_dir: ./logs`);
    result = await sandbox.run(['daemon']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/process\.cwd: the working directory .*nowhere: ENOENT/);
  });

  it('a placeholder executable is checked per run, not at start', async () => {
    config(`  command: ["{params.tool}"]\n  output_root: ./out\n  log_dir: ./logs\n  require_output: false`);
    await (await sandbox.openStore()).insertRun({ number: 4, start: 4, params: { tool: 'true' } });
    const result = await sandbox.run(['daemon', '--once']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect((await (await sandbox.openStore()).getRun(4))?.processing?.state).toBe('done');
  });
});

describe('host faults at run time', () => {
  it('an unwritable log_dir pauses claiming after the threshold without failing a run, and claiming resumes once fixed', async () => {
    const work = sandbox.script('work.sh', 'echo ok > "$1/result"');
    config(`  command: ["sh", ${JSON.stringify(work)}, "{output}"]\n  output_root: ./out\n  log_dir: ./logs\n  host_fault_threshold: 3`);
    const s = await sandbox.openStore();
    sandbox.start(['daemon']);
    await waitFor(async () => (await s.getHost('testhost'))?.state === 'idle', 'the daemon to be idle');

    // The log directory becomes a file under the running daemon (a full or remounted disk looks the same).
    const logs = join(sandbox.dir, 'logs');
    rmSync(logs, { recursive: true, force: true });
    writeFileSync(logs, 'not a directory');
    for (const n of [1, 2, 3, 4, 5]) await s.insertRun({ number: n, start: n });

    const paused = await waitFor(async () => {
      const host = await s.getHost('testhost');
      return host?.state === 'paused' ? host : null;
    }, 'the host to pause');
    expect(paused.paused_reason).toMatch(/^process\.log_dir: cannot create or write .*logs/);
    const status = await sandbox.run(['status']);
    expect(status.stdout).toMatch(/^testhost\s+paused\s/m);
    expect(status.stdout).toMatch(/^host testhost paused: process\.log_dir: cannot create or write /m);
    const warning = (await s.listLog({ minPriority: 2 })).find((e) => e.message.includes('paused'));
    expect(warning?.message).toMatch(
      /^host testhost paused: 3 run\(s\) in a row could not start for a reason of this host \(process\.log_dir: /,
    );
    // max_failures is 1: had those attempts been charged, each run would be abandoned by now
    const runs = await s.listRuns();
    expect(runs.filter((r) => r.processing?.state === 'abandoned')).toEqual([]);
    for (const run of runs) expect(run.processing?.n_failures ?? 0).toBe(0);
    const interrupted = runs.reduce((sum, r) => sum + (r.processing?.n_interruptions ?? 0), 0);
    expect(interrupted).toBe(3);
    const events = (await Promise.all(runs.map((r) => s.listRunEvents(r.number)))).flat();
    const faults = events.filter((e) => e.to === 'failed');
    expect(faults).toHaveLength(3);
    for (const e of faults) {
      expect(e.detail).toMatchObject({ interruption: 'host_fault' });
      expect(e.reason).toMatch(/host fault, not counted as a failure: process\.log_dir: /);
    }

    // Fixed: the next check passes, the host resumes and every run is done.
    rmSync(logs, { force: true });
    mkdirSync(logs);
    await waitFor(async () => (await s.countRunsByState()).done === 5, 'every run to be done', { timeoutMs: 60_000 });
    // the host document follows within a heartbeat
    const resumed = await waitFor(async () => {
      const host = await s.getHost('testhost');
      return host && host.state !== 'paused' ? host : null;
    }, 'the host document to leave paused');
    expect(resumed.paused_reason).toBeUndefined();
    const info = (await s.listLog()).map((e) => e.message).join('\n');
    expect(info).toMatch(/host testhost: the host check passes again \(was: process\.log_dir: .*\); claiming again/);
  });
});
