import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { openStore } from '../src/store/open-store.js';
import { cliMain, compiledBench } from './lib/build.js';
import { makeWorkspace, spawnDaemon, stopProcess, writeDaemonConfig, cleanEnv } from './lib/processes.js';
import { isEntryPoint, runAsProgram, type BenchOptions, type BenchResult } from './lib/result.js';
import { median } from './lib/stats.js';

// 1. Throughput: N runs of a trivial command with 4 slots on SQLite, from the first claim to the last done,
// against a bare loop that spawns the same command through execa with the same concurrency. Both run as
// fresh node processes of compiled code, alternately, and the median of the per-pair ratios is reported.

const run = promisify(execFile);
const COMMAND = ['/bin/true'];
const SLOTS = 4;

interface Sizes {
  runs: number;
  pairs: number;
}

/** The bare loop; with `withFiles`, each command also gets the directories and log file an attempt has. */
async function bareLoop(runs: number, withFiles = false): Promise<number> {
  const script = compiledBench('lib/bare-loop.js');
  const workspace = withFiles ? makeWorkspace('throughput-files') : undefined;
  try {
    const job = JSON.stringify({ runs, concurrency: SLOTS, argv: COMMAND, filesIn: workspace?.dir });
    const { stdout } = await run(process.execPath, [script, job], { env: cleanEnv(), maxBuffer: 1 << 20 });
    const result = JSON.parse(stdout) as { elapsedMs: number; failed: number };
    if (result.failed > 0) throw new Error(`bare loop: ${result.failed} of ${runs} commands failed`);
    return result.elapsedMs;
  } finally {
    workspace?.cleanup();
  }
}

/** The daemon (compiled CLI, `--once`) on a store holding `runs` pending runs; ms from first claim to last done. */
async function daemonRun(cli: string, runs: number): Promise<number> {
  const workspace = makeWorkspace('throughput');
  try {
    const store = await openStore(workspace.store);
    const base = Date.now();
    await store.insertRuns(Array.from({ length: runs }, (_, i) => ({ number: i + 1, start: base - i * 1000 })));
    await store.close();
    const config = writeDaemonConfig(workspace, {
      host: 'bench-throughput',
      slots: SLOTS,
      command: COMMAND,
      requireOutput: false,
    });
    const daemon = spawnDaemon(cli, config, workspace, ['--once']);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 10 * 60_000);
    });
    const exit = await Promise.race([daemon.exited, timedOut]);
    clearTimeout(timer);
    if (exit === 'timeout') {
      await stopProcess(daemon, 'SIGKILL');
      throw new Error('the daemon did not finish within 10 minutes');
    }
    if (exit.code !== 0) throw new Error(`the daemon exited with ${exit.code ?? exit.signal}; see ${daemon.logFile}`);
    const db = new Database(join(workspace.dir, 'runs.db'), { readonly: true });
    try {
      const done = db.prepare(`SELECT count(*) AS n FROM tasks WHERE state = 'done'`).get() as { n: number };
      if (done.n !== runs) throw new Error(`only ${done.n} of ${runs} runs are done; see ${daemon.logFile}`);
      const span = db
        .prepare(
          `SELECT (SELECT min(time) FROM run_events WHERE to_state = 'considering') AS first,
                  (SELECT max(time) FROM run_events WHERE to_state = 'done') AS last`,
        )
        .get() as { first: number; last: number };
      return span.last - span.first;
    } finally {
      db.close();
    }
  } finally {
    workspace.cleanup();
  }
}

export async function throughput(options: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const sizes: Sizes = options.smoke ? { runs: 40, pairs: 1 } : { runs: 2000, pairs: 5 };
  const cli = cliMain();
  const ratios: number[] = [];
  const fileRatios: number[] = [];
  const daemonRates: number[] = [];
  const bareRates: number[] = [];
  const fileRates: number[] = [];
  for (let pair = 0; pair < sizes.pairs; pair += 1) {
    // Alternate which goes first, so a trend in the machine's load favours neither.
    let bareMs = 0;
    let daemonMs = 0;
    let filesMs = 0;
    if (pair % 2 === 0) {
      bareMs = await bareLoop(sizes.runs);
      daemonMs = await daemonRun(cli, sizes.runs);
      filesMs = await bareLoop(sizes.runs, true);
    } else {
      filesMs = await bareLoop(sizes.runs, true);
      daemonMs = await daemonRun(cli, sizes.runs);
      bareMs = await bareLoop(sizes.runs);
    }
    ratios.push(bareMs / daemonMs);
    fileRatios.push(filesMs / daemonMs);
    daemonRates.push((sizes.runs / daemonMs) * 1000);
    bareRates.push((sizes.runs / bareMs) * 1000);
    fileRates.push((sizes.runs / filesMs) * 1000);
  }
  const list = (xs: number[], digits: number) => xs.map((x) => x.toFixed(digits)).join(', ');
  return {
    id: 'throughput',
    title: '1. Throughput',
    smoke: options.smoke,
    elapsedMs: performance.now() - t0,
    figures: [
      {
        name: `runwarden ÷ bare execa loop, ${sizes.runs} runs of /bin/true, ${SLOTS} slots ` +
          `(median of ${sizes.pairs})`,
        value: median(ratios),
        unit: '×',
        digits: 2,
        target: { op: '>=', limit: 0.9, text: '≥ 0.90 ×' },
        detail: `per pair: ${list(ratios, 2)}`,
      },
      {
        name: 'control: runwarden ÷ bare loop that also makes each attempt\'s directories and log file',
        value: median(fileRatios),
        unit: '×',
        digits: 2,
        detail: `per pair: ${list(fileRatios, 2)}`,
      },
      {
        name: 'runwarden daemon, runs/s (median)',
        value: median(daemonRates),
        unit: 'runs/s',
        digits: 0,
        detail: `per pair: ${list(daemonRates, 0)}`,
      },
      {
        name: 'bare execa loop, runs/s (median)',
        value: median(bareRates),
        unit: 'runs/s',
        digits: 0,
        detail: `per pair: ${list(bareRates, 0)}`,
      },
      {
        name: 'control loop with per-attempt files, runs/s (median)',
        value: median(fileRates),
        unit: 'runs/s',
        digits: 0,
        detail: `per pair: ${list(fileRates, 0)}`,
      },
    ],
    how: [
      `${sizes.runs} pending runs are inserted into a fresh SQLite file; then \`runwarden daemon --once\` (compiled ` +
        `CLI, slots ${SLOTS}, command \`/bin/true\`, require_output false, clean_output true, log level info with ` +
        `its JSON log lines going to a file) processes them. Its time is from the first claim to the last done, ` +
        `both read from run_events. The baseline is a fresh node process running ${SLOTS} async workers that each ` +
        `\`await execa('/bin/true')\` until ${sizes.runs} commands ran, timed from the first spawn to the last exit. ` +
        `The two alternate (bare first in even pairs, daemon first in odd ones) ${sizes.pairs} times; the figure is ` +
        `the median of the per-pair ratios bare time ÷ daemon time. A control loop, alternated as well, is the ` +
        `bare loop plus what each runwarden attempt needs on disk (an output directory, a log directory, a log ` +
        `file with a header and a footer): it separates the daemon's bookkeeping from the cost of those files.`,
    ],
    notes: [],
  };
}

if (isEntryPoint(import.meta.url)) void runAsProgram(throughput);
