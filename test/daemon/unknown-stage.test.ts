import { Writable } from 'node:stream';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { processOneRun } from '../../src/daemon/process-one.js';
import { createLogger } from '../../src/log/logger.js';
import { useSandbox } from '../helpers/sandbox.js';

// A task of a stage the configuration lacks (another daemon's pipeline, or a config changed since) reaches the
// run machine only through an explicit claim: its attempt fails naming the stage; nothing throws.

const sandbox = useSandbox('runwarden-unknown-stage-');

describe('a task of a stage this configuration lacks', () => {
  it('fails its attempt naming the stage, with the recording policy of the first stage, and never throws', async () => {
    const store = await sandbox.openStore();
    await store.insertRun({ number: 1, start: 1 }, [
      { stage: 'process', needs: [] },
      { stage: 'upload', needs: [] },
    ]);
    const config = loadConfig({
      cwd: sandbox.dir,
      env: {},
      flags: {
        store: `sqlite:${join(sandbox.dir, 'runs.db')}`,
        host: 'h',
        set: ['process.command=["sh","-c","true"]', 'retry.base=1h', 'timeouts.check_interval=0.2s'],
      },
    });
    const claimed = await store.claimRun(
      { number: 1, stage: 'upload' },
      { host: 'h', pid: process.pid, order: 'newest' },
      { state: null, token: null },
    );
    expect(claimed?.stage).toBe('upload');
    const logger = createLogger({ level: 'debug', host: 'h', json: true, stream: new Writable({ write: (_c, _e, next) => next() }) });
    const handle = processOneRun({ store, config, logger, host: 'h' }, claimed!);
    expect(handle.logFile).toBe(join(sandbox.dir, 'logs', 'upload', '1', 'attempt-1.log'));
    expect(await handle.done).toEqual({ settlement: 'failed' });
    const task = (await store.getRun(1, 'upload'))!.processing!;
    expect(task).toMatchObject({ state: 'failed', n_failures: 1 });
    expect(task.reason).toMatch(/^preflight failed: stage "upload" is not in this configuration \(its stages: process\)/);
    expect((await store.getRun(1, 'process'))!.processing).toBeUndefined();
  });
});
