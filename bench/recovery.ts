import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/open-store.js';
import { cliMain } from './lib/build.js';
import { calibrateClock, epochMs, parseEpochRealtime } from './lib/clock.js';
import {
  killGroup,
  makeWorkspace,
  spawnDaemon,
  stopProcess,
  waitFor,
  writeDaemonConfig,
  type DaemonProcess,
} from './lib/processes.js';
import { isEntryPoint, runAsProgram, type BenchOptions, type BenchResult } from './lib/result.js';

// 5. Own-host recovery: a daemon with 4 busy runs is SIGKILLed (its commands live on in their own process
// groups) and a new one is started with the same host name. The figure is the time from starting the new
// daemon until all 4 runs are running again, each new attempt's command recording its own start.

const HOST = 'bench-recovery';
const SLOTS = 4;
// Records "<EPOCHREALTIME> <pid>" per attempt, then sleeps as a long job would; exec keeps the pid (= pgid).
const COMMAND = [
  'bash',
  '-c',
  'printf "%s %s\\n" "$EPOCHREALTIME" "$$" > "$BENCH_STARTS/$RUNWARDEN_RUN_NUMBER-$RUNWARDEN_ATTEMPT"; exec sleep 900',
];

interface Start {
  number: number;
  attempt: number;
  at: number;
  pid: number;
}

function readStarts(dir: string): Start[] {
  const starts: Start[] = [];
  for (const name of readdirSync(dir)) {
    const match = /^(\d+)-(\d+)$/.exec(name);
    if (!match) continue;
    const text = readFileSync(join(dir, name), 'utf8');
    if (!text.endsWith('\n')) continue; // still being written
    starts.push({
      number: Number(match[1]),
      attempt: Number(match[2]),
      at: parseEpochRealtime(text),
      pid: Number(text.trim().split(/\s+/)[1]),
    });
  }
  return starts;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

export async function recovery(options: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  // Generous even in smoke mode: it ends as soon as the runs are back, and only waits this long when they are not.
  const limitMs = options.smoke ? 10_000 : 20_000;
  const cli = cliMain();
  const workspace = makeWorkspace('recovery');
  const starts = join(workspace.dir, 'starts');
  mkdirSync(starts);
  const store = await openStore(workspace.store);
  const config = writeDaemonConfig(workspace, {
    host: HOST,
    slots: SLOTS,
    command: COMMAND,
    requireOutput: false,
    env: { BENCH_STARTS: starts },
    // Large, so that the stale-run timeouts can never be what brings the runs back.
    timeouts: { max_busy_time: '2h', max_considering_time: '2h' },
  });
  const notes: string[] = [];
  const daemons: DaemonProcess[] = [];
  let recoveredMs: number | null = null;
  try {
    const base = Date.now();
    for (let number = 1; number <= SLOTS; number += 1) await store.insertRun({ number, start: base - number * 1000 });
    const first = spawnDaemon(cli, config, workspace);
    daemons.push(first);
    await waitFor(() => readStarts(starts).filter((s) => s.attempt === 1).length === SLOTS, 'the first attempts', {
      timeoutMs: 30_000,
    });
    first.child.kill('SIGKILL');
    await first.exited;
    const orphans = readStarts(starts).map((s) => s.pid);

    calibrateClock();
    const restarted = epochMs();
    const second = spawnDaemon(cli, config, workspace);
    daemons.push(second);
    try {
      const again = await waitFor(
        () => {
          const later = readStarts(starts).filter((s) => s.attempt >= 2);
          return new Set(later.map((s) => s.number)).size === SLOTS ? later : undefined;
        },
        'every run to run again',
        { timeoutMs: limitMs, intervalMs: 5 },
      );
      recoveredMs = Math.max(...again.map((s) => s.at)) - restarted;
    } catch {
      const states = await Promise.all(
        Array.from({ length: SLOTS }, async (_, i) => (await store.getRun(i + 1))?.processing?.state ?? 'pending'),
      );
      notes.push(
        `the runs were not running again ${limitMs / 1000} s after the restart (states: ${states.join(', ')}); ` +
          `the restarted daemon did not recover its predecessor's runs`,
      );
    }
    const survivors = orphans.filter(alive);
    notes.push(
      survivors.length === 0
        ? 'every command of the killed daemon was gone after the restart'
        : `${survivors.length} of ${orphans.length} commands of the killed daemon were still alive after the restart ` +
            `(killed by the benchmark)`,
    );
  } finally {
    for (const daemon of daemons) await stopProcess(daemon, 'SIGKILL');
    // The commands outlive a SIGKILLed daemon by design: reap every group this benchmark caused.
    if (existsSync(starts)) for (const start of readStarts(starts)) killGroup(start.pid);
    await store.close();
    workspace.cleanup();
  }
  return {
    id: 'recovery',
    title: '5. Own-host recovery',
    smoke: options.smoke,
    elapsedMs: performance.now() - t0,
    figures: [
      {
        name: `restart → all ${SLOTS} runs running again`,
        value: recoveredMs,
        unit: 'ms',
        digits: 0,
        target: { op: '<=', limit: 2000, text: '≤ 2000 ms' },
      },
    ],
    how: [
      `A daemon (compiled CLI, host ${HOST}, slots ${SLOTS}, max_busy_time and max_considering_time 2 h so that ` +
        `no timeout can be what brings the runs back) runs 4 commands that record "$EPOCHREALTIME $$" per ` +
        `attempt and then sleep. Once all 4 recorded their first attempt, the daemon is SIGKILLed (its commands ` +
        `keep running in their own process groups) and a new daemon with the same host name is started. The ` +
        `figure is from just before the new process is spawned (node start-up included) until the last of the ` +
        `4 second attempts recorded its start; the benchmark gives up after ${limitMs / 1000} s. Every process ` +
        `group the benchmark caused is SIGKILLed at the end.`,
    ],
    notes,
  };
}

if (isEntryPoint(import.meta.url)) void runAsProgram(recovery);
