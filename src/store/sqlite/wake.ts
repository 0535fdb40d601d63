// Wake-ups across processes on one host without polling (snappea's idea): inserting a run writes a file in
// a directory beside the database; idle daemons watch that directory (inotify through fs.watch).

import fs from 'node:fs';
import path from 'node:path';

const WAKE_FILE = 'new-run';
/** After a call, further changes within this many ms become one more call at its end. */
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
  /** A change arrived while calls were being coalesced: call once more when the window ends. */
  let pending = false;

  const call = (): void => {
    try {
      onWake();
    } catch {
      // a throwing callback must not kill the watcher or the process
    }
  };
  // The first change wakes at once (pickup latency is what an idle daemon is judged by); a burst of inserts
  // after it costs one more call, not one per insert.
  const windowEnds = (): void => {
    timer = undefined;
    if (closed || !pending) return;
    pending = false;
    call();
    timer = setTimeout(windowEnds, COALESCE_MS);
  };
  const onChange = (): void => {
    if (closed) return;
    if (timer) {
      pending = true;
      return;
    }
    call();
    timer = setTimeout(windowEnds, COALESCE_MS);
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
    watcher = fs.watch(dir, { persistent: false }, onChange);
    watcher.on('error', () => stop());
  } catch {
    closed = true;
  }
  return stop;
}
