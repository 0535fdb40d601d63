// Disk gate figures (DESIGN §3 hosts.disk, §6 disk): how full the filesystem holding `path` is.

import { statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { DiskFigures } from '../store/types.js';

/**
 * Used percentage (as df computes it: used / (used + available to unprivileged users)) and free bytes available
 * to unprivileged users (bavail * bsize) of the filesystem holding `path`. When `path` does not exist yet (an
 * output root not created so far), the nearest existing ancestor is measured. `path` is returned as given.
 */
export function diskFigures(path: string): DiskFigures {
  let probe = resolve(path);
  for (;;) {
    try {
      const s = statfsSync(probe);
      const bsize = Number(s.bsize);
      const used = Number(s.blocks) - Number(s.bfree);
      const avail = Number(s.bavail);
      const total = used + avail;
      const usedPercent = total > 0 ? Math.round((used / total) * 10_000) / 100 : 0;
      return { path, used_percent: usedPercent, free_bytes: avail * bsize };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const parent = dirname(probe);
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || parent === probe) throw error;
      probe = parent;
    }
  }
}
