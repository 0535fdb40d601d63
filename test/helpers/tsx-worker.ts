import { spawn, type ChildProcess } from 'node:child_process';
import { repoRoot } from './cli.js';

// Worker processes for tests that need several OS processes on one store: a TypeScript fixture run through tsx,
// its stdout collected line by line (the fixture's protocol), its stderr kept for failure messages.

export interface TsxWorker {
  child: ChildProcess;
  /** Complete stdout lines so far. */
  lines: string[];
  stderr: string[];
  /** The exit code once the worker has exited and its streams are closed. */
  done: Promise<number | null>;
}

export function startTsxWorker(script: string, args: string[]): TsxWorker {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const stderr: string[] = [];
  let buffer = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      lines.push(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => stderr.push(chunk));
  const done = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve(code));
  });
  return { child, lines, stderr, done };
}
