// Wake-ups across processes on one host without polling (snappea's idea): inserting a run writes a file in
// a directory beside the database; idle daemons watch that directory (inotify through fs.watch).

import fs from 'node:fs';
import path from 'node:path';

const WAKE_FILE = 'new-run';
/** Bursts of inserts within this many ms become one call. */
const COALESCE_MS = 20;

export function wakeDirFor(dbPath: string): string {
  return `${dbPath}.wake`;
}

/** Best effort: a missing wake-up only delays a daemon until its next poll. Never throws. */
export function signalWake(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, WAKE_FILE), `${process.pid} ${Date.now()}\n`);
  } catch {
    // ignored: polling is the fallback
  }
}

/**
 * Calls `onWake` (coalesced) whenever anything in `dir` changes. Never throws, neither here nor from the
 * watcher; when the directory cannot be watched it returns a no-op and polling is the only wake-up.
 */
export function watchWake(dir: string, onWake: () => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  let watcher: fs.FSWatcher | undefined;
  let closed = false;

  const fire = (): void => {
    timer = undefined;
    if (closed) return;
    try {
      onWake();
    } catch {
      // a throwing callback must not kill the watcher or the process
    }
  };

  const stop = (): void => {
    if (closed) return;
    closed = true;
    if (timer) clearTimeout(timer);
    timer = undefined;
    try {
      watcher?.close();
    } catch {
      // already closed
    }
  };

  try {
    fs.mkdirSync(dir, { recursive: true });
    watcher = fs.watch(dir, { persistent: false }, () => {
      if (closed || timer) return;
      timer = setTimeout(fire, COALESCE_MS);
    });
    watcher.on('error', () => stop());
  } catch {
    closed = true;
  }
  return stop;
}
