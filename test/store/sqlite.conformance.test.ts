import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { runStoreConformance } from './conformance.js';

runStoreConformance('sqlite', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runwarden-store-'));
  const store = await openSqliteStore(path.join(dir, 'runs.db'));
  return {
    store,
    cleanup: async () => {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
});
