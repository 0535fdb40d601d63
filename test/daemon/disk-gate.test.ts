import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { createLogger } from '../../src/log/logger.js';
import { diskFigures } from '../../src/process/disk.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { DiskFigures } from '../../src/store/types.js';
import { runCli, startCli, tempDir, waitFor, writeConfig } from '../helpers/cli.js';

// The disk gate (DESIGN §6 disk): while the output disk is too full the host claims nothing, says disk_full,
// warns once, and resumes by itself. A real daemon and store; only the disk's fullness is simulated here,
// since a test cannot fill a real disk. The CLI test below uses the real statfs figures.

let dir: string;
let cleanup: () => void;
let store: RunStore;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir());
  store = await openStore(`sqlite:${join(dir, 'runs.db')}`);
});

afterEach(async () => {
  await store.close();
  cleanup();
});

describe('disk gate', () => {
  it('claims nothing while the disk is full, warns once, and resumes by itself when space returns', async () => {
    const work = join(dir, 'work.sh');
    writeFileSync(work, '#!/bin/sh\necho ok > "$2/result"\n', { mode: 0o755 });
    const config = loadConfig({
      cwd: dir,
      env: {},
      flags: {
        store: `sqlite:${join(dir, 'runs.db')}`,
        host: 'gated',
        set: [
          `process.command=["sh", ${JSON.stringify(work)}, "{number}", "{output}"]`,
          'timeouts.check_interval=0.2s',
          'timeouts.max_considering_time=1h',
          'timeouts.max_busy_time=1h',
          'timeouts.idle_poll=1h',
          'disk.max_used_percent=90',
          'disk.min_free_bytes=1000',
        ],
      },
    });
    let figures: DiskFigures = { path: config.disk.path, used_percent: 97.5, free_bytes: 1_000_000 };
    let probes = 0;
    const sink = new Writable({ write: (_chunk, _encoding, next) => next() });
    const logger = createLogger({ level: 'info', host: 'gated', store, json: true, stream: sink });
    const daemon = startDaemon({
      config,
      store,
      logger,
      diskProbe: () => {
        probes += 1;
        return figures;
      },
    });
    try {
      await store.insertRun({ number: 1, start: Date.now() });
      await waitFor(async () => (await store.getHost('gated'))?.state === 'disk_full', 'the host to say disk_full');
      // Several looks at the disk later, still nothing claimed and still one warning.
      const seen = probes;
      await waitFor(() => probes >= seen + 3, 'the gate to be checked again');
      expect((await store.getRun(1))!.processing).toBeUndefined();
      const host = (await store.getHost('gated'))!;
      expect(host.disk).toEqual(figures);
      const warnings = (await store.listLog({ minPriority: 2 })).filter((e) => e.message.startsWith('disk full'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({ priority: 2, host: 'gated' });
      expect(warnings[0]!.message).toContain('97.5% used');
      expect(warnings[0]!.message).toContain('disk.max_used_percent 90');

      // The free-bytes limit shuts the gate as well.
      figures = { path: config.disk.path, used_percent: 10, free_bytes: 999 };
      const probesBefore = probes;
      await waitFor(() => probes > probesBefore, 'another look at the disk');
      expect((await store.getRun(1))!.processing).toBeUndefined();

      figures = { path: config.disk.path, used_percent: 50, free_bytes: 10_000_000 };
      await waitFor(async () => (await store.getRun(1))?.processing?.state === 'done', 'run 1 to be done');
      await waitFor(async () => (await store.getHost('gated'))?.state === 'idle', 'the host to be idle again');
    } finally {
      daemon.stop();
      expect(await daemon.done).toBe(0);
    }
  });

  it('the real statfs figures shut the gate when the limit is beyond the disk (CLI, status)', async () => {
    writeConfig(
      dir,
      `store: sqlite:./runs.db
host: full
process:
  command: ["true"]
  output_root: ./out
timeouts: {idle_poll: 0.2s, check_interval: 0.2s}
disk: {path: ${JSON.stringify(dir)}, min_free_bytes: 1000TiB}
`,
    );
    expect((await runCli(['submit', '5'], { cwd: dir })).exitCode).toBe(0);
    const daemon = startCli(['daemon'], { cwd: dir });
    try {
      await waitFor(async () => (await store.getHost('full'))?.state === 'disk_full', 'the host to say disk_full');
      const status = await runCli(['status'], { cwd: dir });
      expect(status.stdout).toMatch(/^full\s+disk_full\s+\d+\s+\d+s ago\s+0\/1\s+-\s+\d+% used, [\d.]+\wiB free\s/m);
      expect((await store.getRun(5))!.processing).toBeUndefined();
      const real = diskFigures(dir);
      expect((await store.getHost('full'))!.disk!.free_bytes).toBeGreaterThan(0);
      expect(real.free_bytes).toBeLessThan(1000 * 2 ** 40);
    } finally {
      daemon.kill('SIGTERM');
      expect((await daemon).exitCode).toBe(0);
    }
  });
});
