import { mkdirSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// The faces of a pipeline through the real CLI and a real SQLite store (issue 14 point 8): submit gives each run
// a task of every stage whose select matches it; --stage is needed only for a run of several tasks (exit 2
// naming the stages otherwise); an abandon blocks the stages below until the abandoned stage is retried; show,
// list, status and logs name each task's stage.

const sandbox = useSandbox();

function pipelineConfig(): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
process:
  output_root: ./out
  log_dir: ./logs
stages:
  process:
    command: ["true"]
    select: {not_tags: [skip]}
  compress:
    needs: [process]
    command: ["true", "{upstream.process.output}"]
    select: {modes: [physics]}
  upload:
    needs: [compress]
    command: ["true", "{upstream.compress.output}"]
`,
  );
}

describe('submit with stages', () => {
  it("creates each run's tasks by the stages' selections, and says which", async () => {
    pipelineConfig();
    const physics = await sandbox.run(['submit', '7', '--mode', 'physics']);
    expect(physics.exitCode, physics.stderr).toBe(0);
    expect(physics.stdout).toBe('submitted run 7 (tasks: process, compress, upload)');

    // compress does not select calibration runs: neither compress nor upload (below it) for run 8
    const calibration = await sandbox.run(['submit', '8', '--mode', 'calibration', '--json']);
    expect(JSON.parse(calibration.stdout)).toEqual({ submitted: [8], tasks: { 8: ['process'] } });

    const skipped = await sandbox.run(['submit', '9', '--tag', 'skip']);
    expect(skipped.exitCode).toBe(0);
    expect(skipped.stdout).toBe('submitted run 9 (tasks: none)');
    expect(skipped.stderr).toContain("warning: run 9 matches no stage's select: no task was created");

    writeFileSync(
      join(sandbox.dir, 'runs.jsonl'),
      [10, 11, 12].map((n) => JSON.stringify({ number: n, mode: n === 12 ? 'other' : 'physics' })).join('\n'),
    );
    const file = await sandbox.run(['submit', '--file', 'runs.jsonl']);
    expect(file.exitCode, file.stderr).toBe(0);
    expect(file.stdout).toBe('submitted 3 runs (10 … 12): tasks: process 3, compress 2, upload 2');
  });

  it('keeps the first-wave output without stages', async () => {
    writeConfig(sandbox.dir, 'store: sqlite:./runs.db\nprocess:\n  command: ["true"]\n');
    const result = await sandbox.run(['submit', '7', '--json']);
    expect(JSON.parse(result.stdout)).toEqual({ submitted: [7] });
    expect((await sandbox.run(['submit', '8'])).stdout).toBe('submitted run 8');
  });
});

describe('--stage on a run of several tasks', () => {
  it('is required to change one task, names the stages; abandon blocks below, retry of that stage unblocks', async () => {
    pipelineConfig();
    expect((await sandbox.run(['submit', '7', '--mode', 'physics'])).exitCode).toBe(0);
    expect((await sandbox.run(['submit', '8', '--mode', 'calibration'])).exitCode).toBe(0);
    const store = await sandbox.openStore();
    expect((await store.getRun(7))!.tasks!.map((t) => t.stage)).toEqual(['process', 'compress', 'upload']);
    expect((await store.getRun(8))!.tasks!.map((t) => t.stage)).toEqual(['process']);

    const unnamed = await sandbox.run(['abandon', '7', 'bad', 'calibration']);
    expect(unnamed.exitCode).toBe(2);
    expect(unnamed.stderr).toContain('--stage: run 7 has 3 stages (process, compress, upload); name the one to abandon with --stage');
    const unknown = await sandbox.run(['abandon', '7', '--stage', 'compres']);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain('--stage: run 7 has no stage "compres"; its stages: process, compress, upload');
    const logsUnnamed = await sandbox.run(['logs', '7']);
    expect(logsUnnamed.exitCode).toBe(2);
    expect((await store.getRun(7, 'process'))!.processing).toBeUndefined();

    const abandoned = await sandbox.run(['abandon', '7', '--stage', 'process', 'bad', 'calibration']);
    expect(abandoned.exitCode, abandoned.stderr).toBe(0);
    expect(abandoned.stdout).toMatch(/^run 7 stage process: pending → abandoned \(abandoned by \S+: bad calibration\)/);
    const blocked = await sandbox.run(['list', '--state', 'blocked']);
    expect(blocked.stdout).toMatch(/^NUMBER +STAGE +STATE/);
    expect(blocked.stdout).toMatch(/^7 +compress +blocked .*blocked by process: abandoned by \S+: bad/m);
    expect(blocked.stdout).toMatch(/^7 +upload +blocked/m);
    expect(blocked.stdout.trim().split('\n')).toHaveLength(3);

    const refused = await sandbox.run(['retry', '7', '--stage', 'compress']);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain('runwarden retry 7 --stage process unblocks it');
    const show = await sandbox.run(['show', '7']);
    expect(show.stdout).toMatch(/task compress \(needs process\)\n {2}blocked {6}stage process was abandoned/);
    expect(show.stdout).toMatch(/TIME +HOST +STAGE +ATTEMPT/);

    const retried = await sandbox.run(['retry', '7', '--stage', 'process', '--json']);
    expect(retried.exitCode, retried.stderr).toBe(0);
    expect(JSON.parse(retried.stdout)).toMatchObject({ action: 'retry', number: 7, stage: 'process', from: 'abandoned', to: 'failed' });
    expect((await store.getRun(7, 'compress'))!.blocked).toBeUndefined();
    expect((await store.getRun(7, 'upload'))!.blocked).toBeUndefined();

    // never before its upstream is done, --force or not
    const early = await sandbox.run(['process', '7', '--stage', 'upload', '--force']);
    expect(early.exitCode).toBe(1);
    expect(early.stderr).toContain('cannot process run 7 stage upload: it is pending (never processed); it needs compress (pending) done first');
    expect((await store.getRun(7, 'upload'))!.processing).toBeUndefined();

    // the run of one task needs no --stage
    const held = await sandbox.run(['hold', '8']);
    expect(held.exitCode, held.stderr).toBe(0);
    const stageHeld = await sandbox.run(['hold', '7', '--stage', 'upload']);
    expect(stageHeld.stdout).toMatch(/^run 7 stage upload: pending; tags: hold:upload$/m);
    expect((await store.getRun(7))!.tags).toEqual(['hold:upload']);
  });

  it('status counts tasks per stage and state; logs reads the stage\'s attempt log', async () => {
    pipelineConfig();
    expect((await sandbox.run(['submit', '7', '--mode', 'physics'])).exitCode).toBe(0);
    expect((await sandbox.run(['submit', '8', '--mode', 'calibration'])).exitCode).toBe(0);
    const store = await sandbox.openStore();
    const claimed = await store.claimNextRun({ host: 'h1', pid: 1, order: 'newest', stages: [{ stage: 'process', depth: 0 }] });
    await store.registerHost({ host: 'h1', pid: 1, token: 't', state: 'busy', time: Date.now(), started: Date.now(), version: 'x', slots: 2, running: [claimed!.number] });
    const status = await sandbox.run(['status']);
    expect(status.exitCode, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/^STAGE +PENDING +CONSIDERING +BUSY +DONE +FAILED +ABANDONED +BLOCKED$/m);
    expect(status.stdout).toMatch(/^h1 +busy +1 .* 1\/2 +8\/process /m);
    expect(status.stdout).toMatch(/^process +1 +1 +0 +0 +0 +0 +0$/m);
    expect(status.stdout).toMatch(/^compress +1 +0/m);
    expect(JSON.parse((await sandbox.run(['status', '--json'])).stdout).stages.upload).toMatchObject({ pending: 1 });

    const dir = join(sandbox.dir, 'logs', 'compress', '7');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'attempt-1.log'), 'compress says hello\n');
    const logs = await sandbox.run(['logs', '7', '--stage', 'compress']);
    expect(logs.exitCode, logs.stderr).toBe(0);
    expect(logs.stdout).toBe('compress says hello');
    const none = await sandbox.run(['logs', '7', '--stage', 'upload']);
    expect(none.exitCode).toBe(1);
    expect(none.stderr).toMatch(/run 7 stage upload: no log for any attempt in \S+logs\/upload\/7 \(no attempt has logged yet\)/);
  });
});

describe('process N --stage S', () => {
  it('runs each task in the foreground in pipeline order, the downstream one on its upstream output', async () => {
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
process:
  output_root: ./out
  log_dir: ./logs
timeouts: {check_interval: 1s, signal_escalate: 500ms}
stages:
  process:
    command: ["sh", "-c", "echo events of $0 > \\"$1/events.txt\\"", "{number}", "{output}"]
  compress:
    needs: [process]
    command: ["sh", "-c", "gzip -c \\"$0/events.txt\\" > \\"$1/events.txt.gz\\"; echo compressed", "{upstream.process.output}", "{output}"]
    check: ["test", "-s", "{output}/events.txt.gz"]
`,
    );
    expect((await sandbox.run(['submit', '7'])).exitCode).toBe(0);
    const early = await sandbox.run(['process', '7', '--stage', 'compress']);
    expect(early.exitCode).toBe(1);
    expect(early.stderr).toContain('it needs process (pending) done first');

    const upstream = await sandbox.run(['process', '7', '--stage', 'process']);
    expect(upstream.exitCode, upstream.stderr).toBe(0);
    expect(upstream.stdout).toMatch(/^run 7 stage process done \(attempt 1\)/m);
    const downstream = await sandbox.run(['process', '7', '--stage', 'compress', '--json']);
    expect(downstream.exitCode, downstream.stderr).toBe(0);
    expect(JSON.parse(downstream.stdout)).toMatchObject({ number: 7, stage: 'compress', outcome: 'done' });
    const logs = await sandbox.run(['logs', '7', '--stage', 'compress']);
    expect(logs.stdout).toContain('compressed');
    const store = await sandbox.openStore();
    expect((await store.getRun(7, 'compress'))!.processing!.state).toBe('done');
    expect((await store.listRunEvents(7, 'compress')).map((e) => e.to)).toContain('done');
  });
});

describe('process N on a run another tool inserted', () => {
  it('gives the run its tasks under the configuration, then processes it; a run matching no stage is refused', async () => {
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
process:
  output_root: ./out
  log_dir: ./logs
stages:
  process:
    command: ["sh", "-c", "echo ok > \\"$0/out\\"", "{output}"]
    select: {not_tags: [skip]}
`,
    );
    expect((await sandbox.run(['submit', '1'])).exitCode).toBe(0); // creates the store
    const store = await sandbox.openStore();
    // as the acquisition system would: a plain row in the runs table, no tasks, never staged
    const db = new Database(join(sandbox.dir, 'runs.db'));
    try {
      db.prepare(`INSERT INTO runs (number, start, tags) VALUES (5, 1000, '[]'), (6, 1000, '["skip"]')`).run();
    } finally {
      db.close();
    }
    expect((await store.getRun(5))!.tasks).toEqual([]);

    const processed = await sandbox.run(['process', '5']);
    expect(processed.exitCode, processed.stderr).toBe(0);
    expect((await store.getRun(5, 'process'))!.processing!.state).toBe('done');

    const refused = await sandbox.run(['process', '6']);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain("run 6 has no task: it matches the selection (select:) of none of this configuration's stages");
    expect((await store.getRun(6))!.tasks).toEqual([]);
  });
});
