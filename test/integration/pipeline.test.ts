import Database from 'better-sqlite3';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';
import { migrate } from '../../src/store/sqlite/schema.js';

// A pipeline of two stages (process → compress) through the real CLI, a real daemon, real commands and a real
// SQLite file. What the commands did is read from their own journal (one line per start and end, with a
// nanosecond time), never from the daemon's word.

const sandbox = useSandbox('runwarden-pipeline-');

/**
 * The stage command: journals its start, waits a little (so overlaps would show), fails when told to by a flag
 * file, checks its upstream output is there, writes its output, journals its end.
 */
const STAGE_SCRIPT = `stage=$1; n=$2; out=$3; up=$4
j="$(dirname "$0")/journal"
echo "start $stage $n $(date +%s%N)" >> "$j"
sleep 0.2
if [ -e "$(dirname "$0")/fail-$stage-$n" ]; then echo "end $stage $n $(date +%s%N) failed" >> "$j"; echo "told to fail" >&2; exit 3; fi
if [ -n "$up" ]; then [ -s "$up/data" ] || { echo "upstream output missing: $up" >&2; exit 4; }; fi
echo "$stage of $n from \${up:-nothing} env \${RUNWARDEN_UPSTREAM_PROCESS:-none} stage \${RUNWARDEN_STAGE}" > "$out/data"
echo "end $stage $n $(date +%s%N)" >> "$j"`;

interface Span {
  stage: string;
  number: number;
  start: number;
  end?: number;
  failed: boolean;
}

/** The journal's attempts in order of their start; an attempt killed mid-way has no end. */
function journal(): Span[] {
  const file = join(sandbox.dir, 'journal');
  if (!existsSync(file)) return [];
  const spans: Span[] = [];
  for (const line of readFileSync(file, 'utf8').trim().split('\n')) {
    const [what, stage, n, t, flag] = line.split(' ');
    const number = Number(n);
    const time = Number(BigInt(t!) / 1000n) / 1000; // ms with µs precision
    if (what === 'start') spans.push({ stage: stage!, number, start: time, failed: false });
    else {
      const open = spans.findLast((s) => s.stage === stage && s.number === number && s.end === undefined)!;
      open.end = time;
      open.failed = flag === 'failed';
    }
  }
  return spans;
}

/** The most attempts of `stage` (any stage when undefined) that ran at once, by the journal. */
function maxConcurrent(spans: Span[], stage?: string): number {
  const edges = spans
    .filter((s) => stage === undefined || s.stage === stage)
    .flatMap((s) => [
      { t: s.start, d: 1 },
      { t: s.end ?? Infinity, d: -1 },
    ])
    .sort((a, b) => a.t - b.t || a.d - b.d);
  let now = 0;
  let max = 0;
  for (const e of edges) {
    now += e.d;
    max = Math.max(max, now);
  }
  return max;
}

/** Every compress attempt started after its run's process attempt that succeeded had ended. */
function downstreamStartedEarly(spans: Span[]): string[] {
  const problems: string[] = [];
  for (const c of spans.filter((s) => s.stage === 'compress')) {
    const upstreamDone = spans.find((s) => s.stage === 'process' && s.number === c.number && s.end !== undefined && !s.failed);
    if (!upstreamDone || upstreamDone.end! > c.start) problems.push(`compress of run ${c.number} started at ${c.start} before process ended`);
  }
  return problems;
}

function config(options: { check?: string; processRetry?: string; slots?: number } = {}): void {
  const script = sandbox.script('stage.sh', STAGE_SCRIPT);
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: testhost
slots: ${options.slots ?? 3}
process:
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
  signal_escalate: 1s
retry: {base: 1h, factor: 2, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 3}
stages:
  process:
    command: [sh, ${JSON.stringify(script)}, process, "{number}", "{output}"]
    slots: 2
${options.processRetry ? `    retry: ${options.processRetry}\n` : ''}  compress:
    needs: [process]
    command: [sh, ${JSON.stringify(script)}, compress, "{number}", "{output}", "{upstream.process.output}"]
    slots: 1
${options.check ? `    check: ${options.check}\n` : ''}`,
  );
}

async function submit(...numbers: number[]) {
  for (const n of numbers) {
    const result = await sandbox.run(['submit', String(n)]);
    expect(result.exitCode, result.stderr).toBe(0);
  }
}

async function once() {
  const result = await sandbox.run(['daemon', '--once']);
  expect(result.exitCode, result.stderr).toBe(0);
  return result;
}

const out = (stage: string, n: number) => join(sandbox.dir, 'out', stage, String(n).padStart(6, '0'));

describe('a two-stage pipeline under a real daemon', () => {
  it('processes every run through both stages: upstream output handed down, per-stage slots, downstream never early', async () => {
    config();
    const numbers = [1, 2, 3, 4, 5, 6, 7, 8];
    await submit(...numbers);
    await once();

    const s = await sandbox.openStore();
    for (const n of numbers) {
      for (const stage of ['process', 'compress']) {
        const task = await s.getRun(n, stage);
        expect(task?.stage, `run ${n} ${stage}`).toBe(stage);
        expect(task?.processing?.state, `run ${n} ${stage}`).toBe('done');
      }
      const run = (await s.getRun(n))!;
      expect(run.outputs.map((o) => [o.stage, o.location]).sort()).toEqual([
        ['compress', out('compress', n)],
        ['process', out('process', n)],
      ]);
      // {upstream.process.output}, RUNWARDEN_UPSTREAM_PROCESS and RUNWARDEN_STAGE reached the command
      expect(readFileSync(join(out('compress', n), 'data'), 'utf8').trim()).toBe(
        `compress of ${n} from ${out('process', n)} env ${out('process', n)} stage compress`,
      );
      expect(readFileSync(join(sandbox.dir, 'logs', 'compress', String(n), 'attempt-1.log'), 'utf8')).toContain('start argv');
      const events = await s.listRunEvents(n, 'compress');
      expect(events.map((e) => `${e.stage}:${e.from ?? '-'}>${e.to}`)).toEqual([
        'compress:->considering',
        'compress:considering>busy',
        'compress:busy>done',
      ]);
    }
    const spans = journal();
    expect(spans).toHaveLength(2 * numbers.length);
    expect(downstreamStartedEarly(spans)).toEqual([]);
    // slots 3 in all, process 2, compress 1: the journal never shows more at once
    expect(maxConcurrent(spans, 'process')).toBeLessThanOrEqual(2);
    expect(maxConcurrent(spans, 'compress')).toBeLessThanOrEqual(1);
    expect(maxConcurrent(spans)).toBeLessThanOrEqual(3);
    // the slots were used: both stages ran side by side at some point (compress of one run, process of others)
    expect(maxConcurrent(spans)).toBeGreaterThanOrEqual(2);
  });

  it('a failed upstream task makes its downstream wait; an abandoned one blocks it (visible); retry of the upstream unblocks it', async () => {
    config({ processRetry: '{base: 1h, max_failures: 2}' });
    writeFileSync(join(sandbox.dir, 'fail-process-5'), '');
    await submit(5, 6);
    await once();
    const s = await sandbox.openStore();
    // failed once, retry in an hour: compress of run 5 waits, never started
    expect((await s.getRun(5, 'process'))?.processing?.state).toBe('failed');
    expect((await s.getRun(5, 'compress'))?.processing).toBeUndefined();
    expect((await s.getRun(5, 'compress'))?.blocked).toBeUndefined();
    expect((await s.getRun(6, 'compress'))?.processing?.state).toBe('done');
    expect(journal().filter((x) => x.stage === 'compress').map((x) => x.number)).toEqual([6]);

    // the second failure reaches max_failures 2: process abandoned, compress blocked with the reason
    const again = await sandbox.run(['retry', '5', '--stage', 'process']);
    expect(again.exitCode, again.stderr).toBe(0);
    await once();
    expect((await s.getRun(5, 'process'))?.processing?.state).toBe('abandoned');
    const blocked = (await s.getRun(5, 'compress'))!;
    expect(blocked.processing).toBeUndefined();
    expect(blocked.blocked).toMatchObject({ stage: 'process' });
    expect(blocked.blocked?.reason).toMatch(/told to fail/);
    const listed = await sandbox.run(['list', '--state', 'blocked', '--json']);
    expect(listed.exitCode, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as Array<{ number: number; stage?: string }>).map((r) => [r.number, r.stage])).toEqual([
      [5, 'compress'],
    ]);
    // a daemon leaves a blocked task alone
    await once();
    expect((await s.getRun(5, 'compress'))?.processing).toBeUndefined();

    // retry of the upstream (its command fixed) unblocks: both tasks done
    const { rmSync } = await import('node:fs');
    rmSync(join(sandbox.dir, 'fail-process-5'));
    const retry = await sandbox.run(['retry', '5', '--stage', 'process']);
    expect(retry.exitCode, retry.stderr).toBe(0);
    expect((await s.getRun(5, 'compress'))?.blocked).toBeUndefined();
    await once();
    expect((await s.getRun(5, 'process'))?.processing?.state).toBe('done');
    expect((await s.getRun(5, 'compress'))?.processing?.state).toBe('done');
    expect(downstreamStartedEarly(journal())).toEqual([]);
  });

  it("a failing check fails the attempt with the check's reason; a passing one lets the task be done", async () => {
    const check = sandbox.script(
      'check.sh',
      'echo "checking $1"\nif [ "$2" = 2 ]; then echo "checksum mismatch in $1" >&2; exit 1; fi\n[ -s "$1/data" ]',
    );
    config({ check: JSON.stringify(['sh', check, '{output}', '{number}']) });
    await submit(1, 2);
    await once();
    const s = await sandbox.openStore();
    expect((await s.getRun(1, 'compress'))?.processing?.state).toBe('done');
    const failed = (await s.getRun(2, 'compress'))!.processing!;
    expect(failed.state).toBe('failed');
    expect(failed.n_failures).toBe(1);
    expect(failed.reason).toBe(`check failed: exit code 1: checksum mismatch in ${out('compress', 2)}`);
    expect(failed.exit_code).toBe(1);
    const event = (await s.listRunEvents(2, 'compress')).find((e) => e.to === 'failed')!;
    expect(event.detail).toMatchObject({ kind: 'check' });
    // the check's output follows the command's in the attempt's log
    const log = readFileSync(join(sandbox.dir, 'logs', 'compress', '2', 'attempt-1.log'), 'utf8');
    expect(log.indexOf(`checking ${out('compress', 2)}`)).toBeGreaterThan(log.indexOf('start argv=["sh"'));
    expect(log).toMatch(/start argv=\["sh",".*check\.sh"/);
    // the process stage has no check: its task is done
    expect((await s.getRun(2, 'process'))?.processing?.state).toBe('done');
  });

  it('SIGKILL of the daemon mid-pipeline, then a restart: every task ends done, none ran before its upstream', async () => {
    config();
    const numbers = [1, 2, 3, 4, 5, 6];
    await submit(...numbers);
    const s = await sandbox.openStore();
    const daemon = sandbox.start(['daemon']);
    // mid-pipeline: some compress task busy while others wait
    await waitFor(async () => {
      const busy = await s.listRuns({ state: 'busy', stage: 'compress' });
      return busy.length > 0;
    }, 'a compress task to be busy');
    daemon.kill('SIGKILL');
    await daemon.catch(() => undefined);
    const killedAt = journal().length;
    expect(killedAt).toBeLessThan(2 * numbers.length * 2);

    await once();
    for (const n of numbers) {
      for (const stage of ['process', 'compress']) {
        expect((await s.getRun(n, stage))?.processing?.state, `run ${n} ${stage}`).toBe('done');
      }
    }
    const spans = journal();
    expect(downstreamStartedEarly(spans)).toEqual([]);
    // the interrupted attempts were recovered as interruptions, not failures
    const interrupted = (await s.listRuns({ state: 'done' })).filter((t) => (t.processing?.n_interruptions ?? 0) > 0);
    expect(interrupted.length).toBeGreaterThan(0);
    for (const t of interrupted) expect(t.processing?.n_failures).toBe(0);
    // the restart did not overlap an attempt of a task with another attempt of the same task
    for (const n of numbers) {
      for (const stage of ['process', 'compress']) {
        const attempts = spans.filter((x) => x.number === n && x.stage === stage);
        for (let i = 1; i < attempts.length; i++) {
          const before = attempts[i - 1]!;
          if (before.end !== undefined) expect(before.end).toBeLessThanOrEqual(attempts[i]!.start);
        }
      }
    }
  });

  it('a first-wave store file (schema 4) is upgraded in place: its pending runs get every stage and are processed, its done run stays done', async () => {
    const db = new Database(join(sandbox.dir, 'runs.db'));
    db.pragma('journal_mode = WAL');
    migrate(db, 4);
    const T = Date.now() - 60_000;
    const insert = db.prepare(
      `INSERT INTO runs (number, start, tags, params, outputs, state, host, pid, token, attempt, time, n_failures)
       VALUES (?, ?, '[]', '{}', ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const oldOutput = JSON.stringify([{ location: '/old/000001', host: 'oldhost', attempt: 1, at: T }]);
    insert.run(1, T, oldOutput, 'done', 'oldhost', 1, 'tok-1', 1, T, 0);
    insert.run(2, T + 1, '[]', null, null, null, null, null, null, null);
    insert.run(3, T + 2, '[]', null, null, null, null, null, null, null);
    db.close();
    config();
    await once();
    const s = await sandbox.openStore();
    for (const n of [2, 3]) {
      expect((await s.getRun(n))!.tasks!.map((t) => [t.stage, t.processing?.state])).toEqual([
        ['process', 'done'],
        ['compress', 'done'],
      ]);
    }
    expect((await s.getRun(1))!.processing).toMatchObject({ state: 'done', token: 'tok-1', host: 'oldhost' });
    expect((await s.getRun(1))!.outputs.map((o) => o.location)).toEqual(['/old/000001']);
    expect(journal().filter((x) => x.number === 1)).toEqual([]);
    expect(downstreamStartedEarly(journal())).toEqual([]);
  });

  it('runs another tool inserted without tasks get them from the daemon; a bad run document is logged, never fatal', async () => {
    config();
    const s = await sandbox.openStore();
    await s.insertRun({ number: 1, start: Date.now() }); // staged by the store: a process task only
    const raw = (s as unknown as { db: Database.Database }).db;
    raw.prepare(`INSERT INTO runs (number, start, tags, params, outputs) VALUES (7, ?, '[]', '{}', '[]')`).run(Date.now());
    raw.prepare(`INSERT INTO runs (number, start, tags, params, outputs) VALUES (8, ?, 'not json', '{}', '[]')`).run(Date.now());
    expect((await s.listUnstagedRuns(10)).map((r) => r.number)).toEqual([7, 8]);
    const result = await once();
    expect((await s.getRun(7))!.tasks!.map((t) => [t.stage, t.processing?.state])).toEqual([
      ['process', 'done'],
      ['compress', 'done'],
    ]);
    expect((await s.getRun(1))!.tasks!.map((t) => [t.stage, t.processing?.state])).toEqual([['process', 'done']]);
    expect(result.exitCode).toBe(0);
    expect(await s.getHost('testhost')).toMatchObject({ state: 'stopped' });
  });

  it('process N --stage S runs one task in the foreground, refused before its upstream is done', async () => {
    config();
    await submit(3);
    const early = await sandbox.run(['process', '3', '--stage', 'compress']);
    expect(early.exitCode).not.toBe(0);
    expect(early.stderr).toMatch(/compress/);
    expect(early.stderr).toMatch(/process/);
    const upstream = await sandbox.run(['process', '3', '--stage', 'process']);
    expect(upstream.exitCode, upstream.stderr).toBe(0);
    const downstream = await sandbox.run(['process', '3', '--stage', 'compress']);
    expect(downstream.exitCode, downstream.stderr).toBe(0);
    expect(downstream.stdout).toContain(join(sandbox.dir, 'logs', 'compress', '3', 'attempt-1.log'));
    const s = await sandbox.openStore();
    expect((await s.getRun(3, 'compress'))?.processing?.state).toBe('done');
    expect(readFileSync(join(out('compress', 3), 'data'), 'utf8')).toContain(`from ${out('process', 3)}`);
    expect(journal().map((x) => x.stage)).toEqual(['process', 'compress']);
  });
});
