import { mkdir, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

// The baseline of the throughput benchmark, run as its own process so it pays the same process start-up and
// memory footprint costs as a daemon would: `node bare-loop.js '{"runs":2000,"concurrency":4,"argv":[...]}'`.
// Prints {"elapsedMs": …} measured from the first spawn to the last exit. With "filesIn": DIR, each command also
// gets what a runwarden attempt needs on disk — an output directory, a log directory and a log file with a
// header and a footer — the control that tells the daemon's bookkeeping from the cost of those files.

interface BareLoopJob {
  runs: number;
  concurrency: number;
  argv: string[];
  filesIn?: string;
}

const job = JSON.parse(process.argv[2] ?? '{}') as BareLoopJob;
const [file, ...args] = job.argv;
if (!file || !(job.runs > 0) || !(job.concurrency > 0)) {
  process.stderr.write('usage: bare-loop.js \'{"runs":N,"concurrency":C,"argv":["/bin/true"]}\'\n');
  process.exit(2);
}
let started = 0;
let failed = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: job.concurrency }, async () => {
    while (started < job.runs) {
      started += 1;
      const n = started;
      if (job.filesIn) {
        const logDir = join(job.filesIn, 'logs', String(n));
        await Promise.all([
          mkdir(join(job.filesIn, 'out', String(n)), { recursive: true }),
          mkdir(logDir, { recursive: true }),
        ]);
        await writeFile(join(logDir, 'attempt-1.log'), `start ${n}\n`);
      }
      const result = await execa(file, args, { reject: false });
      if (result.exitCode !== 0) failed += 1;
      if (job.filesIn) {
        await appendFile(join(job.filesIn, 'logs', String(n), 'attempt-1.log'), `exit ${result.exitCode}\n`);
      }
    }
  }),
);
const elapsedMs = performance.now() - t0;
process.stdout.write(`${JSON.stringify({ elapsedMs, failed })}\n`);
