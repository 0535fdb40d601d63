import { createWriteStream, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { loadConfig } from '../config/index.js';
import { startDaemon } from '../daemon/daemon.js';
import { describeFatal, exitProcess, onProcessFault, STOP_SIGNALS } from '../daemon/process-exit.js';
import { UsageError } from '../errors.js';
import { createLogger } from '../log/logger.js';
import { openStore } from '../store/open-store.js';
import type { RunStore, StateCounts } from '../store/run-store.js';
import type { NewRun } from '../store/types.js';
import { integerFlag, printJson, runCommand, table, truncate, type GlobalArgs } from './common.js';

// `runwarden demo`: a fresh store in a new directory, sample runs and a sample processing script, the
// real daemon in this process, progress while it works, and a summary. Everything it writes stays in
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

function demoConfigYaml(dir: string, slots: number): string {
  return `# Written by runwarden demo. Rerun with: runwarden daemon --config ${join(dir, 'runwarden.yaml')}
store: sqlite:./runwarden.db
slots: ${slots}
process:
  command: ["sh", "./process-run.sh", "{number}", "{output}", "{attempt}", "{params.behaviour}", "{params.seconds}"]
  output_root: ./processed
  log_dir: ./logs
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

function progressLine(counts: StateCounts, total: number, elapsedMs: number): string {
  const finished = counts.done + counts.abandoned;
  const width = 20;
  const filled = Math.round((finished / total) * width);
  return (
    `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${finished}/${total}  ` +
    `done ${counts.done}  abandoned ${counts.abandoned}  busy ${counts.busy + counts.considering}  ` +
    `failed ${counts.failed}  pending ${counts.pending}  ${(elapsedMs / 1000).toFixed(1)}s`
  );
}

async function summary(store: RunStore, numbers: number[]) {
  const rows = [];
  for (const number of numbers) {
    const run = await store.getRun(number);
    const events = await store.listRunEvents(number);
    const first = events[0]?.time;
    const last = events.at(-1)?.time;
    rows.push({
      number,
      name: run?.name ?? '',
      state: run?.processing?.state ?? 'pending',
      attempts: run?.processing?.attempt ?? 0,
      failures: run?.processing?.n_failures ?? 0,
      duration_ms: first !== undefined && last !== undefined ? last - first : 0,
      reason: run?.processing?.reason ?? '',
    });
  }
  return rows;
}

export const demoCommand: CommandModule<GlobalArgs, DemoArgs> = {
  command: 'demo',
  describe: 'process 20 sample runs in a fresh directory with a fresh SQLite store, and show how it went',
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
      writeFileSync(join(dir, 'runwarden.yaml'), demoConfigYaml(dir, slots));
      const config = loadConfig({
        file: join(dir, 'runwarden.yaml'),
        cwd: dir,
        env: {},
        flags: { ...(args.host ? { host: args.host } : {}) },
      });
      config.process.cwd = dir;
      const now = Date.now();
      const runs = sampleRuns(total, now);
      writeFileSync(join(dir, 'runs.jsonl'), runs.map((r) => JSON.stringify(r)).join('\n') + '\n');

      const out = process.stdout;
      const say = (line: string) => {
        if (!args.json) out.write(`${line}\n`);
      };
      say(`runwarden demo in ${dir}`);
      say(`  store      ${config.store}`);
      say(`  command    ${config.process.command.join(' ')}`);
      say(`  runs       ${total} (every fifth fails once, run 1006 always fails), ${slots} slots`);
      say(`  logs       ${join(dir, 'daemon.log')} and ${config.process.log_dir}/<number>/attempt-<k>.log`);
      say('');

      const store = await openStore(config.store);
      try {
        await store.insertRuns(runs);
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
          const counts = await store.countRunsByState();
          const line = progressLine(counts, total, Date.now() - started);
          const body = line.replace(/\s+[\d.]+s$/, '');
          if (tty) out.write(`\r${line.slice(0, Math.max(20, (out.columns ?? 80) - 1))}\x1b[K`);
          else if (body !== lastLine) say(line);
          lastLine = body;
          if (counts.done + counts.abandoned === total && !finished) {
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
        const allSettled = rows.every((r) => r.state === 'done' || r.state === 'abandoned');
        if (args.json) {
          printJson({ dir, store: config.store, runs: rows, daemon_exit: daemonExit });
        } else {
          say('');
          // The other columns take about 55 characters; the reason gets what the terminal has left.
          const reasonWidth = Math.max(30, (out.isTTY ? (out.columns ?? 100) : 120) - 56);
          say(
            table(
              ['NUMBER', 'NAME', 'STATE', 'ATTEMPTS', 'DURATION', 'REASON'],
              rows.map((r) => [
                String(r.number),
                r.name,
                r.state,
                String(r.attempts),
                `${(r.duration_ms / 1000).toFixed(1)}s`,
                r.state === 'done' ? '' : truncate(r.reason, reasonWidth),
              ]),
            ),
          );
          const done = rows.filter((r) => r.state === 'done').length;
          const abandoned = rows.filter((r) => r.state === 'abandoned').length;
          say('');
          say(`${done} done, ${abandoned} abandoned, ${total - done - abandoned} unfinished in ${((Date.now() - started) / 1000).toFixed(1)}s`);
          const cli = process.argv[1] ? `node ${process.argv[1]}` : 'runwarden';
          say(`look closer:  ${cli} show 1006 --store sqlite:${join(dir, 'runwarden.db')}`);
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
