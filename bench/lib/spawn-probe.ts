import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { calibrateClock, epochMs, parseEpochRealtime } from './clock.js';
import { readRssMb } from './rss.js';

// A control for the pickup-latency benchmark: the bare spawn latency measured from a process as large as the
// daemon. fork() copies the parent's page tables, so the same execa call is slower in a bigger process;
// this separates that cost from the daemon's own work.
// `node spawn-probe.js '{"samples":200,"rssMb":130,"dir":"/tmp/x","argv":["bash","-c","…"]}'` prints
// {"samples":[ms,…],"rssMb":…}.

interface ProbeJob {
  samples: number;
  rssMb: number;
  dir: string;
  argv: string[];
}

const job = JSON.parse(process.argv[2] ?? '{}') as ProbeJob;
const [file, ...args] = job.argv;
if (!file || !(job.samples > 0)) {
  process.stderr.write('usage: spawn-probe.js \'{"samples":N,"rssMb":M,"dir":D,"argv":[…]}\'\n');
  process.exit(2);
}
// Touched memory, in 1 MiB chunks, until this process is as resident as the daemon was.
const ballast: Buffer[] = [];
while ((readRssMb(process.pid) ?? 0) < job.rssMb && ballast.length < 4096) ballast.push(Buffer.alloc(1 << 20, 1));
const samples: number[] = [];
for (let i = 0; i < job.samples; i += 1) {
  await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 20));
  const dir = join(job.dir, String(i));
  mkdirSync(dir, { recursive: true });
  calibrateClock();
  const called = epochMs();
  const result = await execa(file, args, { env: { RUNWARDEN_OUTPUT: dir }, reject: false });
  if (result.exitCode !== 0) throw new Error(`probe command failed: ${result.stderr}`);
  samples.push(parseEpochRealtime(readFileSync(join(dir, 'start'), 'utf8')) - called);
}
process.stdout.write(`${JSON.stringify({ samples, rssMb: readRssMb(process.pid), ballastMb: ballast.length })}\n`);
