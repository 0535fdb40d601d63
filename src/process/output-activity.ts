// Hang ≠ slowness (DESIGN §1): a command that writes its results without printing anything is still alive.
// Its stdout and stderr count as output; besides, when the stall clock has run half its course without any,
// the output directory is checked for a change since the last activity: first its own mtime (one stat), then
// an asynchronous walk of the tree that yields to the event loop every WALK_CHUNK entries and stops at the
// first entry changed since then. A recursive fs.watch did the same by setting up one inotify watch per
// directory, synchronously, and held the event loop for 18.6 s over 100,000 files: this costs the loop a few
// milliseconds per chunk, however large the tree.

import type { Dir } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import { join } from 'node:path';

/** Entries examined between two yields to the event loop. */
export const WALK_CHUNK = 256;

function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * True when `root` or anything under it (not following symbolic links) was modified after `sinceMs` (epoch
 * ms, compared with mtimes). Asynchronous and chunked; stops at the first such entry, or when `cancelled()`.
 * Unreadable entries and entries that vanish meanwhile are skipped.
 */
export async function changedSince(root: string, sinceMs: number, cancelled: () => boolean = () => false): Promise<boolean> {
  try {
    if ((await lstat(root)).mtimeMs > sinceMs) return true;
  } catch {
    return false;
  }
  const pending = [root];
  while (pending.length > 0) {
    if (cancelled()) return false;
    const dir = pending.pop()!;
    let handle: Dir;
    try {
      handle = await opendir(dir, { bufferSize: WALK_CHUNK });
    } catch {
      continue;
    }
    try {
      const batch: string[] = [];
      const check = async (): Promise<boolean> => {
        const stats = await Promise.all(batch.map((path) => lstat(path).catch(() => undefined)));
        batch.length = 0;
        return stats.some((stat) => stat !== undefined && stat.mtimeMs > sinceMs);
      };
      for await (const entry of handle) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) pending.push(path);
        batch.push(path);
        if (batch.length >= WALK_CHUNK) {
          if (await check()) return true;
          await yieldToLoop();
          if (cancelled()) return false;
        }
      }
      if (batch.length > 0 && (await check())) return true;
    } finally {
      // A for-await that ran to its end closed the directory already; one left early did not.
      await handle.close().catch(() => undefined);
    }
  }
  return false;
}

export interface OutputActivityWatch {
  stop(): void;
}

/**
 * Calls `onActivity` when the output directory changed although the command has been silent for half of
 * `maxNoOutputMs` (since `lastActivity()`, epoch ms). Checks every quarter of the window; one walk at a time.
 */
export function watchOutputActivity(
  dir: string,
  maxNoOutputMs: number,
  lastActivity: () => number,
  onActivity: () => void,
): OutputActivityWatch {
  let stopped = false;
  let walking = false;
  const period = Math.min(30_000, Math.max(50, Math.floor(maxNoOutputMs / 4)));
  const timer = setInterval(() => {
    const since = lastActivity();
    if (walking || stopped || Date.now() - since < maxNoOutputMs / 2) return;
    walking = true;
    changedSince(dir, since, () => stopped)
      .then((changed) => {
        if (changed && !stopped) onActivity();
      })
      .catch(() => undefined)
      .finally(() => {
        walking = false;
      });
  }, period);
  timer.unref();
  return {
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
