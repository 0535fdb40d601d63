import { createWriteStream, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { loadConfig } from '../config/index.js';
import { startDaemon } from '../daemon/daemon.js';
import { describeFatal, exitProcess, onProcessFault, STOP_SIGNALS } from '../daemon/process-exit.js';
import { UsageError } from '../errors.js';
import { createLogger } from '../log/logger.js';
import { openStore } from '../store/open-store.js';
import { stagesForRun, stagesOf } from '../policy/pipeline.js';
import type { RunStore, TaskCounts } from '../store/run-store.js';
import type { NewRun } from '../store/types.js';
import { integerFlag, printJson, runCommand, table, truncate, type GlobalArgs } from './common.js';
import { selectable } from './submit.js';

// `runwarden demo`: a fresh store in a new directory, sample runs and a two-stage pipeline (process, then
// compress reading process's output), the real daemon in this process, progress while it works, and a summary
// per run and stage. Everything it writes stays in
// that directory so the user can look, and rerun `runwarden daemon --config <dir>/runwarden.yaml`.

interface DemoArgs extends GlobalArgs {
  dir?: string;
  runs?: string;
  slots?: string;
}

const SAMPLE_SCRIPT = `#!/bin/sh
# A stand-in for a real processing command (strax, a simulation step, a training job).
# runwarden runs it as: sh process-run.sh {number} {output} {attempt} {params.behaviour} {params.seconds}
set -eu
number=$1 out=$2 attempt=$3 behaviour=$4 seconds=$5
echo "run $number attempt $attempt on $RUNWARDEN_HOST: processing for \${seconds}s ($behaviour)"
sleep "$seconds"
case "$behaviour" in
  flaky)
    if [ "$attempt" -eq 1 ]; then
      echo "run $number: calibration not available yet" >&2
      # The first line of this file becomes the run's failure reason.
      echo "calibration not available yet (attempt $attempt)" > "$RUNWARDEN_ERROR_FILE"
      exit 3
    fi ;;
  broken)
    echo "run $number: raw data is corrupt" >&2
    exit 4 ;;
esac
echo "processed events of run $number" > "$out/events.txt"
echo "run $number: done"
`;

const COMPRESS_SCRIPT = `#!/bin/sh
# The second stage: compresses what the process stage wrote. It starts only once that task is done.
# runwarden runs it as: sh compress-run.sh {number} {upstream.process.output} {output}
set -eu
number=$1 in=$2 out=$3
echo "run $number: compressing $in/events.txt"
gzip -c "$in/events.txt" > "$out/events.txt.gz"
echo "run $number: compressed to $out/events.txt.gz"
`;

/** The demo's stages, upstream first. */
const DEMO_STAGES = ['process', 'compress'] as const;

function demoConfigYaml(dir: string, slots: number): string {
  return `# Written by runwarden demo. Rerun with: runwarden daemon --config ${join(dir, 'runwarden.yaml')}
store: sqlite:./runwarden.db
slots: ${slots}
process:                 # what every stage shares
  output_root: ./processed
  log_dir: ./logs
stages:
  process:
    command: ["sh", "./process-run.sh", "{number}", "{output}", "{attempt}", "{params.behaviour}", "{params.seconds}"]
  compress:
    needs: [process]     # starts once the run's process task is done; never for an abandoned one (blocked)
    command: ["sh", "./compress-run.sh", "{number}", "{upstream.process.output}", "{output}"]
    slots: ${Math.max(1, Math.floor(slots / 2))}
timeouts:
  check_interval: 1s
  idle_poll: 1s
  signal_escalate: 1s
  max_processing_time: 2m
  max_no_output_time: 1m
# Retry delays shortened to seconds so the demo finishes quickly (defaults: 60 s × 5^n, 10 failures).
retry:
  base: 1s
  factor: 2
  max_exponent: 3
  jitter: [0.5, 1.5]
  max_failures: 3
`;
}

/** 20 runs: most succeed, every fifth fails on its first attempt, and one always fails. */
export function sampleRuns(count: number, now: number): NewRun[] {
  const runs: NewRun[] = [];
  for (let i = 0; i < count; i += 1) {
    const number = 1000 + i;
    const behaviour = i === 6 ? 'broken' : i % 5 === 2 ? 'flaky' : 'ok';
    runs.push({
      number,
      name: `demo_${String(number).padStart(6, '0')}`,
      start: now - (count - i) * 60_000,
      mode: i % 2 === 0 ? 'background' : 'calibration',
      params: { behaviour, seconds: (0.3 + ((i * 7) % 10) / 10).toFixed(1) },
    });
  }
  return runs;
}

function defaultDemoDir(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `runwarden-demo-${stamp}`;
}

/** Tasks of every stage added up by state. */
function sumCounts(byStage: Record<string, TaskCounts>): TaskCounts {
  const sum: TaskCounts = { pending: 0, considering: 0, busy: 0, done: 0, failed: 0, abandoned: 0, blocked: 0 };
  for (const counts of Object.values(byStage)) {
    for (const state of Object.keys(sum) as Array<keyof TaskCounts>) sum[state] += counts[state] ?? 0;
  }
  return sum;
}

/** A task is finished for the demo once done, abandoned, or blocked by an abandoned stage above it. */
function progressLine(byStage: Record<string, TaskCounts>, total: number, elapsedMs: number): string {
  const counts = sumCounts(byStage);
  const finished = counts.done + counts.abandoned + counts.blocked;
  const width = 20;
  const filled = Math.round((finished / total) * width);
  return (
    `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${finished}/${total} tasks  ` +
    `done ${counts.done}  abandoned ${counts.abandoned}  blocked ${counts.blocked}  ` +
    `busy ${counts.busy + counts.considering}  failed ${counts.failed}  pending ${counts.pending}  ` +
    `${(elapsedMs / 1000).toFixed(1)}s`
  );
}

interface TaskSummary {
  state: string;
  attempts: number;
  failures: number;
  reason: string;
}

/** Each run: its process task's figures (as the one-stage demo had them) and every task's, with the history's span. */
async function summary(store: RunStore, numbers: number[]) {
  const rows = [];
  for (const number of numbers) {
    const tasks: Record<string, TaskSummary> = {};
    let name = '';
    for (const stage of DEMO_STAGES) {
      const run = await store.getRun(number, stage);
      name = run?.name ?? name;
      const p = run?.processing;
      tasks[stage] = {
        state: run?.blocked ? 'blocked' : (p?.state ?? 'pending'),
        attempts: p?.attempt ?? 0,
        failures: p?.n_failures ?? 0,
        reason: run?.blocked ? `blocked: stage ${run.blocked.stage} was abandoned` : (p?.reason ?? ''),
      };
    }
    const events = await store.listRunEvents(number);
    const first = events[0]?.time;
    const last = events.at(-1)?.time;
    const process = tasks.process!;
    rows.push({
      number,
      name,
      state: process.state,
      attempts: process.attempts,
      failures: process.failures,
      duration_ms: first !== undefined && last !== undefined ? last - first : 0,
      reason: process.reason,
      tasks,
    });
  }
  return rows;
}

/** `process: 19 done, 1 abandoned; compress: 19 done, 1 blocked` */
function stageSummary(rows: Array<{ tasks: Record<string, TaskSummary> }>): string {
  return DEMO_STAGES.map((stage) => {
    const counts = new Map<string, number>();
    for (const row of rows) counts.set(row.tasks[stage]!.state, (counts.get(row.tasks[stage]!.state) ?? 0) + 1);
    const order = ['done', 'abandoned', 'blocked', 'failed', 'busy', 'considering', 'pending'];
    const parts = order.filter((state) => counts.has(state)).map((state) => `${counts.get(state)} ${state}`);
    return `${stage}: ${parts.join(', ')}`;
  }).join('; ');
}

export const demoCommand: CommandModule<GlobalArgs, DemoArgs> = {
  command: 'demo',
  describe: 'process 20 sample runs through a two-stage pipeline in a fresh directory and SQLite store, and show how it went',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option('dir', { type: 'string', describe: 'directory to create (default runwarden-demo-<time>)' })
      .option('runs', { type: 'string', describe: 'how many sample runs (default 20)' })
      .option('slots', { type: 'string', describe: 'runs processed at once (default 4)' })
      .example('$0 demo', 'the whole product in under a minute')
      .example('$0 demo --dir /tmp/try --runs 40 --slots 8', 'bigger'),
  handler: (args) =>
    runCommand(async () => {
      const total = integerFlag(args.runs, 'runs', { min: 1, max: 10_000 }) ?? 20;
      const slots = integerFlag(args.slots, 'slots', { min: 1 }) ?? 4;
      const dir = resolve(args.dir ?? defaultDemoDir());
      if (existsSync(dir) && readdirSync(dir).length > 0) {
        throw new UsageError(`--dir: ${dir} exists and is not empty; name a new directory`, 'dir');
      }
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'process-run.sh'), SAMPLE_SCRIPT, { mode: 0o755 });
      writeFileSync(join(dir, 'compress-run.sh'), COMPRESS_SCRIPT, { mode: 0o755 });
      writeFileSync(join(dir, 'runwarden.yaml'), demoConfigYaml(dir, slots));
      const config = loadConfig({
        file: join(dir, 'runwarden.yaml'),
        cwd: dir,
        env: {},
        flags: { ...(args.host ? { host: args.host } : {}) },
      });
      config.process.cwd = dir;
      for (const stage of stagesOf(config)) stage.cwd = dir;
      const now = Date.now();
      const runs = sampleRuns(total, now);
      writeFileSync(join(dir, 'runs.jsonl'), runs.map((r) => JSON.stringify(r)).join('\n') + '\n');

      const out = process.stdout;
      const say = (line: string) => {
        if (!args.json) out.write(`${line}\n`);
      };
      say(`runwarden demo in ${dir}`);
      say(`  store      ${config.store}`);
      for (const stage of stagesOf(config)) {
        const needs = stage.needs.length > 0 ? `  (needs ${stage.needs.join(', ')}; ${stage.slots} slots)` : `  (${stage.slots} slots)`;
        say(`  ${`stage ${stage.name}`.padEnd(16)}${stage.command.join(' ')}${needs}`);
      }
      say(`  runs       ${total} (every fifth fails once, run 1006 always fails: its compress is blocked), ${slots} slots`);
      say(`  logs       ${join(dir, 'daemon.log')} and ${config.process.log_dir}/<stage>/<number>/attempt-<k>.log`);
      say('');

      const store = await openStore(config.store);
      try {
        await store.insertRuns(runs, (run) => stagesForRun(config, selectable(run)));
        const totalTasks = total * DEMO_STAGES.length;
        const logStream = createWriteStream(join(dir, 'daemon.log'), { flags: 'a' });
        const logger = createLogger({ level: 'info', host: config.host, store, json: false, stream: logStream });
        const daemon = startDaemon({ config, store, logger, handleSignals: false, ownsProcess: false });
        const onSignal = () => daemon.stop();
        for (const signal of STOP_SIGNALS) process.once(signal, onSignal);
        // Crash-only as a daemon, but the demo still prints its summary: an unexpected error ends the host
        // actor (its commands killed), and the process exits 1 below.
        const offFault = onProcessFault((error, origin) => daemon.fatal(`${origin}: ${describeFatal(error)}`));

        const started = Date.now();
        const tty = Boolean(out.isTTY) && !args.json;
        let lastLine = '';
        let finished = false;
        let daemonExit: number | undefined;
        void daemon.done.then((code) => {
          daemonExit = code;
        });
        const deadline = started + 5 * 60_000;
        while (daemonExit === undefined) {
          const byStage = await store.countTasksByStage();
          const counts = sumCounts(byStage);
          const line = progressLine(byStage, totalTasks, Date.now() - started);
          const body = line.replace(/\s+[\d.]+s$/, '');
          if (tty) out.write(`\r${line.slice(0, Math.max(20, (out.columns ?? 80) - 1))}\x1b[K`);
          else if (body !== lastLine) say(line);
          lastLine = body;
          if (counts.done + counts.abandoned + counts.blocked === totalTasks && !finished) {
            finished = true;
            daemon.stop();
          }
          if (Date.now() > deadline && !finished) {
            daemon.stop();
            finished = true;
          }
          await new Promise((r) => setTimeout(r, 250));
        }
        if (tty) out.write('\n');
        for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
        offFault();
        await logger.flush();
        logStream.end();
        if (daemonExit !== 0) {
          process.stderr.write(`runwarden: the demo's daemon stopped on a fatal error; see ${join(dir, 'daemon.log')}\n`);
        }

        const rows = await summary(store, runs.map((r) => r.number));
        const allSettled = rows.every((r) =>
          Object.values(r.tasks).every((t) => t.state === 'done' || t.state === 'abandoned' || t.state === 'blocked'),
        );
        if (args.json) {
          printJson({ dir, store: config.store, runs: rows, daemon_exit: daemonExit });
        } else {
          say('');
          // The other columns take about 65 characters; the reason gets what the terminal has left.
          const reasonWidth = Math.max(30, (out.isTTY ? (out.columns ?? 100) : 120) - 66);
          // A task's cell: its state, and its attempts when it took more than one.
          const taskCell = (t: TaskSummary) => (t.attempts > 1 ? `${t.state} (${t.attempts})` : t.state);
          say(
            table(
              ['NUMBER', 'NAME', ...DEMO_STAGES.map((stage) => stage.toUpperCase()), 'DURATION', 'REASON'],
              rows.map((r) => {
                const unfinished = DEMO_STAGES.map((stage) => r.tasks[stage]!).find((t) => t.state !== 'done');
                return [
                  String(r.number),
                  r.name,
                  ...DEMO_STAGES.map((stage) => taskCell(r.tasks[stage]!)),
                  `${(r.duration_ms / 1000).toFixed(1)}s`,
                  unfinished ? truncate(unfinished.reason, reasonWidth) : '',
                ];
              }),
            ),
          );
          const done = rows.filter((r) => Object.values(r.tasks).every((t) => t.state === 'done')).length;
          say('');
          say(`${stageSummary(rows)}`);
          say(`${done} of ${total} runs done through every stage in ${((Date.now() - started) / 1000).toFixed(1)}s`);
          const cli = process.argv[1] ? `node ${process.argv[1]}` : 'runwarden';
          say(`look closer:  ${cli} show 1006 --store sqlite:${join(dir, 'runwarden.db')}`);
          say(`              ${cli} logs 1002 --stage compress --store sqlite:${join(dir, 'runwarden.db')} --config ${join(dir, 'runwarden.yaml')}`);
        }
        if (daemonExit !== 0) {
          // Explicitly: a host actor that crashed leaves its children's timers holding the event loop.
          return exitProcess(1, [() => store.close()]);
        }
        return allSettled ? 0 : 1;
      } finally {
        await store.close();
      }
    }),
};
