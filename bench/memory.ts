import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openStore } from '../src/store/open-store.js';
import { cliMain } from './lib/build.js';
import { makeWorkspace, sleep, spawnDaemon, stopProcess, waitFor, writeDaemonConfig } from './lib/processes.js';
import { isEntryPoint, runAsProgram, type BenchOptions, type BenchResult } from './lib/result.js';
import { readRssMb } from './lib/rss.js';
import { max, median } from './lib/stats.js';

// 4. Memory: the resident memory of a daemon process (compiled CLI) when idle, and while it works through
// the throughput workload of 10,000 runs, read from /proc/<pid>/status. Resident memory that grows with the
// number of runs handled would show as a higher figure after 10,000 runs than after 1,000.

const HOST = 'bench-memory';

interface Sample {
  done: number;
  rssMb: number;
}

/**
 * Median of the samples taken while `done` was within [from, to]: one sample is at the mercy of the GC. With
 * none in the window (tiny smoke sizes), the first sample after `from`.
 */
function rssWhile(samples: Sample[], from: number, to: number): number {
  const inside = samples.filter((s) => s.done >= from && s.done <= to).map((s) => s.rssMb);
  if (inside.length > 0) return median(inside);
  return samples.find((s) => s.done >= from)?.rssMb ?? Number.NaN;
}

export async function memory(options: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const total = options.smoke ? 100 : 10_000;
  const early = total / 10;
  const window = total / 40;
  const cli = cliMain();
  const workspace = makeWorkspace('memory');
  const store = await openStore(workspace.store);
  const config = writeDaemonConfig(workspace, {
    host: HOST,
    slots: 4,
    command: ['/bin/true'],
    requireOutput: false,
  });
  const daemon = spawnDaemon(cli, config, workspace);
  const samples: Sample[] = [];
  const idle: number[] = [];
  const notes: string[] = [];
  try {
    await waitFor(async () => (await store.getHost(HOST))?.state === 'idle', 'the daemon to be idle', {
      timeoutMs: 30_000,
    });
    // Let start-up garbage be collected as it would be in a daemon that has waited a while.
    await sleep(options.smoke ? 300 : 3_000);
    for (let i = 0; i < 10; i += 1) {
      const rss = readRssMb(daemon.pid);
      if (rss !== undefined) idle.push(rss);
      await sleep(options.smoke ? 30 : 100);
    }

    const base = Date.now();
    await store.insertRuns(Array.from({ length: total }, (_, i) => ({ number: i + 1, start: base - i * 1000 })));
    const db = new Database(join(workspace.dir, 'runs.db'), { readonly: true });
    const countDone = db.prepare(`SELECT count(*) AS n FROM tasks WHERE state = 'done'`);
    try {
      await waitFor(
        () => {
          const done = (countDone.get() as { n: number }).n;
          const rssMb = readRssMb(daemon.pid);
          if (rssMb === undefined) throw new Error(`the daemon exited; see ${daemon.logFile}`);
          samples.push({ done, rssMb });
          return done >= total;
        },
        `${total} runs done`,
        { timeoutMs: 10 * 60_000, intervalMs: 50 },
      );
    } finally {
      db.close();
    }
  } finally {
    await stopProcess(daemon);
    await store.close();
    workspace.cleanup();
  }
  const idleMb = max(idle);
  const earlyMb = rssWhile(samples, early, early + window);
  const lateMb = rssWhile(samples, total - window, total);
  const peakMb = max(samples.map((s) => s.rssMb));
  if (!Number.isFinite(earlyMb) || !Number.isFinite(lateMb)) notes.push('too few RSS samples in a window');
  return {
    id: 'memory',
    title: '4. Memory',
    smoke: options.smoke,
    elapsedMs: performance.now() - t0,
    figures: [
      {
        name: 'idle daemon, resident memory',
        value: idleMb,
        unit: 'MB',
        digits: 1,
        target: { op: '<=', limit: 90, text: '≤ 90 MB' },
      },
      {
        name: `resident memory after ${total} runs ÷ after ${early}`,
        value: lateMb / earlyMb,
        unit: '×',
        digits: 2,
        target: { op: '<=', limit: 1.2, text: '≤ 1.20 × (within 20 %)' },
        detail:
          `after ${early}: ${earlyMb.toFixed(1)} MB; after ${total}: ${lateMb.toFixed(1)} MB; ` +
          `peak ${peakMb.toFixed(1)} MB`,
      },
      { name: `resident memory after ${early} runs`, value: earlyMb, unit: 'MB', digits: 1 },
      { name: `resident memory after ${total} runs`, value: lateMb, unit: 'MB', digits: 1 },
    ],
    how: [
      `A daemon (compiled CLI, slots 4, \`/bin/true\`, require_output false, log lines to a file) starts on an ` +
        `empty SQLite file; once its host document says idle and ${options.smoke ? '0.3' : '3'} s have passed, ` +
        `VmRSS from /proc/<pid>/status is read 10 times and the largest reading is the idle figure. Then ${total} ` +
        `runs are inserted at once and VmRSS and the number of done runs are sampled every 50 ms. The figure ` +
        `"after k runs" is the median of the samples taken while between k and k + ${window} runs were done ` +
        `(the last ${window} for the final one), so a single garbage collection does not decide it.`,
    ],
    notes,
  };
}

if (isEntryPoint(import.meta.url)) void runAsProgram(memory);
