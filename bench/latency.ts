import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { openStore } from '../src/store/open-store.js';
import { outputDirName } from '../src/policy/placeholders.js';
import { cliMain, compiledBench } from './lib/build.js';
import { readRssMb } from './lib/rss.js';
import { calibrateClock, epochMs, parseEpochRealtime } from './lib/clock.js';
import { makeWorkspace, sleep, spawnDaemon, stopProcess, waitFor, writeDaemonConfig } from './lib/processes.js';
import { isEntryPoint, runAsProgram, type BenchOptions, type BenchResult } from './lib/result.js';
import { percentile } from './lib/stats.js';

// 2. Pickup latency: an idle daemon (idle_poll 1 h, so only the wake-up path counts) gets runs submitted one at
// a time; each is timed from the submit's commit to the command's first instruction, which the command
// records itself. The baseline is execa's spawn latency for the very same command, alternated with the
// daemon's samples in the same run.

const HOST = 'bench-latency';
// bash's $EPOCHREALTIME is gettimeofday() in µs, read without forking another process; bash's own start-up
// happens before it in the baseline too, so the difference between the two is the daemon's.
const RECORD_START = 'printf "%s" "$EPOCHREALTIME" > "$RUNWARDEN_OUTPUT/start"';
const COMMAND = ['bash', '-c', RECORD_START];

function pauseMs(): number {
  // Irregular pauses, so neither side can fall into step with a timer of the other.
  return 20 + Math.random() * 20;
}

export async function latency(options: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const samples = options.smoke ? 10 : 200;
  const cli = cliMain();
  const workspace = makeWorkspace('latency');
  const store = await openStore(workspace.store);
  const config = writeDaemonConfig(workspace, {
    host: HOST,
    slots: 4,
    command: COMMAND,
    requireOutput: true,
    timeouts: { idle_poll: '1h' },
  });
  const daemon = spawnDaemon(cli, config, workspace);
  const daemonSamples: number[] = [];
  const baselineSamples: number[] = [];
  let daemonRssMb = 0;
  let probe: { samples: number[]; rssMb: number } = { samples: [], rssMb: 0 };
  try {
    await waitFor(async () => (await store.getHost(HOST))?.state === 'idle', 'the daemon to be idle', {
      timeoutMs: 30_000,
    });

    const baseline = async (i: number) => {
      const dir = join(workspace.dir, 'baseline', String(i));
      mkdirSync(dir, { recursive: true });
      calibrateClock();
      const called = epochMs();
      const result = await execa(COMMAND[0], COMMAND.slice(1), { env: { RUNWARDEN_OUTPUT: dir }, reject: false });
      if (result.exitCode !== 0) throw new Error(`baseline command failed: ${result.stderr}`);
      baselineSamples.push(parseEpochRealtime(readFileSync(join(dir, 'start'), 'utf8')) - called);
    };
    const submitted = async (i: number) => {
      const number = i + 1;
      calibrateClock();
      await store.insertRun({ number, start: Date.now() });
      const committed = epochMs();
      await waitFor(async () => (await store.getRun(number))?.processing?.state === 'done', `run ${number} done`, {
        timeoutMs: 30_000,
        intervalMs: 5,
      });
      const file = join(workspace.dir, 'out', outputDirName(number), 'start');
      daemonSamples.push(parseEpochRealtime(readFileSync(file, 'utf8')) - committed);
    };

    for (let i = 0; i < samples; i += 1) {
      const order = i % 2 === 0 ? [baseline, submitted] : [submitted, baseline];
      for (const measure of order) {
        await sleep(pauseMs());
        await measure(i);
      }
      daemonRssMb = Math.max(daemonRssMb, readRssMb(daemon.pid) ?? 0);
    }
    // The control: the same bare spawn from a process as resident as the daemon was.
    const job = { samples, rssMb: daemonRssMb, dir: join(workspace.dir, 'probe'), argv: COMMAND };
    const { stdout } = await execa(process.execPath, [compiledBench('lib/spawn-probe.js'), JSON.stringify(job)]);
    probe = JSON.parse(stdout) as typeof probe;
  } finally {
    await stopProcess(daemon);
    await store.close();
    workspace.cleanup();
  }

  const p = (xs: number[], q: number) => percentile(xs, q);
  const fmt = (xs: number[]) =>
    `p50 ${p(xs, 50).toFixed(2)} ms, p90 ${p(xs, 90).toFixed(2)} ms, p99 ${p(xs, 99).toFixed(2)} ms, ` +
    `max ${Math.max(...xs).toFixed(2)} ms`;
  return {
    id: 'latency',
    title: '2. Pickup latency',
    smoke: options.smoke,
    elapsedMs: performance.now() - t0,
    figures: [
      {
        name: `p50 above the bare spawn's p50 (${samples} submits)`,
        value: p(daemonSamples, 50) - p(baselineSamples, 50),
        unit: 'ms',
        digits: 2,
        target: { op: '<=', limit: 3, text: '≤ 3 ms' },
        detail: `runwarden ${fmt(daemonSamples)}; bare spawn ${fmt(baselineSamples)}`,
      },
      {
        name: 'p99, submit commit → command start',
        value: p(daemonSamples, 99),
        unit: 'ms',
        digits: 2,
        target: { op: '<=', limit: 15, text: '≤ 15 ms' },
      },
      { name: 'p50, submit commit → command start', value: p(daemonSamples, 50), unit: 'ms', digits: 2 },
      { name: 'p50, bare spawn: execa call → command start', value: p(baselineSamples, 50), unit: 'ms', digits: 2 },
      {
        name: `control: p50 of the bare spawn from a process as resident as the daemon (${Math.round(probe.rssMb)} MB)`,
        value: p(probe.samples, 50),
        unit: 'ms',
        digits: 2,
        detail: `bare spawn from a process of ${Math.round(probe.rssMb)} MB: ${fmt(probe.samples)}`,
      },
    ],
    how: [
      `One daemon (compiled CLI, slots 4, idle_poll 1 h so that only the wake-up path can pick a run up) waits ` +
        `idle on a fresh SQLite file. The benchmark process submits ${samples} runs one at a time with ` +
        `\`store.insertRun\`, waiting 20–40 ms (random) before each and until the run is done after it. ` +
        `The command ` +
        `is \`bash -c 'printf "%s" "$EPOCHREALTIME" > "$RUNWARDEN_OUTPUT/start"'\`: it records its own start ` +
        `(gettimeofday, µs) without forking. A sample is that time minus the epoch time right after insertRun ` +
        `resolved. The baseline sample, alternating with the daemon's, is the same command started by ` +
        `\`execa\` from the benchmark process, timed from just before the call. Clocks: the benchmark's times are ` +
        `performance.now() plus an offset to the realtime clock, re-measured before every sample by spinning until ` +
        `Date.now() ticks over (error about 1 µs), so both sides read the same realtime clock at µs resolution. ` +
        `Afterwards, as a control, a separate node process holding as much touched memory as the daemon's largest ` +
        `resident size during the run takes the same number of bare-spawn samples the same way: fork copies ` +
        `page tables, so this shows what the spawn alone costs in a process of the daemon's size.`,
    ],
    notes: [],
  };
}

if (isEntryPoint(import.meta.url)) void runAsProgram(latency);
