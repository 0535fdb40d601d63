import { execa } from 'execa';

// The baseline of the throughput benchmark, run as its own process so it pays the same process start-up and
// memory footprint costs as a daemon would: `node bare-loop.js '{"runs":2000,"concurrency":4,"argv":[...]}'`.
// Prints {"elapsedMs": …} measured from the first spawn to the last exit.

interface BareLoopJob {
  runs: number;
  concurrency: number;
  argv: string[];
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
      const result = await execa(file, args, { reject: false });
      if (result.exitCode !== 0) failed += 1;
    }
  }),
);
const elapsedMs = performance.now() - t0;
process.stdout.write(`${JSON.stringify({ elapsedMs, failed })}\n`);
