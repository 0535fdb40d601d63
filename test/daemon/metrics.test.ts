import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import type { Config } from '../../src/config/schema.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { serveDaemonMetrics } from '../../src/daemon/metrics-server.js';
import { createDaemonMetrics, DURATION_BUCKETS_SECONDS, RUN_STATE_LABELS } from '../../src/daemon/metrics.js';
import { createLogger, type Logger } from '../../src/log/logger.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { HOST_STATES, type DiskFigures } from '../../src/store/types.js';
import { waitFor } from '../helpers/cli.js';
import { countersFromMetrics, countersFromStore } from '../helpers/metrics-from-store.js';
import { parsePrometheusText, samplesOf, valueOf } from '../helpers/prometheus-text.js';
import { useSandbox } from '../helpers/sandbox.js';

// The daemon's metrics, driven by a real daemon in this process over a real SQLite store and real commands:
// what the counters say must be what run_events recorded, and a failing store must not stop a scrape.

const sandbox = useSandbox('runwarden-metrics-');
let store: RunStore;
let logger: Logger;

beforeEach(async () => {
  store = await sandbox.openStore();
  const sink = new Writable({ write: (_chunk, _encoding, next) => next() });
  logger = createLogger({ level: 'debug', host: 'metered', json: true, stream: sink });
});

function configFor(command: string[], extra: string[] = []): Config {
  return loadConfig({
    cwd: sandbox.dir,
    env: {},
    flags: {
      store: `sqlite:${join(sandbox.dir, 'runs.db')}`,
      host: 'metered',
      set: [
        `process.command=${JSON.stringify(command)}`,
        'slots=3',
        'timeouts.check_interval=0.2s',
        'timeouts.idle_poll=1h',
        'timeouts.max_considering_time=1h',
        'timeouts.max_busy_time=1h',
        'timeouts.signal_escalate=0.5s',
        'retry.base=1h',
        ...extra,
      ],
    },
  });
}

const DISK: DiskFigures = { path: '/data/out', used_percent: 42.5, free_bytes: 123_456_789 };

describe('daemon metrics', () => {
  it('count what the daemon did as run_events record it, and read runs, hosts, disk and slots at scrape time', async () => {
    const work = sandbox.script(
      'work.sh',
      `out=$2
case $3 in
  ok) echo working; echo result > "$out/result" ;;
  fail) echo working; exit 5 ;;
  giveup) echo working; exit 7 ;;
  nooutput) echo working ;;
  stall) sleep 30 ;;
  slow) while :; do echo tick; sleep 0.2; done ;;
esac`,
    );
    const config = configFor(
      ['{params.shell}', work, '{number}', '{output}', '{params.mode}'],
      ['timeouts.max_no_output_time=2s', 'timeouts.max_processing_time=4s', 'process.no_retry_exit_codes=[7]'],
    );
    const runs: Array<[number, string, Record<string, string>?]> = [
      [1, 'ok'],
      [2, 'ok'],
      [3, 'fail'],
      [4, 'giveup'],
      [5, 'nooutput'],
      [6, 'stall'],
      [7, 'slow'],
      [8, 'ok', { input: join(sandbox.dir, 'no-such-input') }],
      [9, 'ok', { shell: join(sandbox.dir, 'no-such-shell') }],
    ];
    for (const [number, mode, extra] of runs) {
      await store.insertRun({
        number,
        start: number,
        params: { shell: extra?.shell ?? 'sh', mode },
        ...(extra?.input ? { input: extra.input } : {}),
      });
    }
    // A host that stopped writing two hours ago: every daemon's metrics show it.
    const longAgo = Date.now() - 2 * 3600_000;
    await store.registerHost({
      host: 'silent',
      pid: 1,
      token: 't',
      state: 'busy',
      time: longAgo,
      started: longAgo,
      version: '0',
      slots: 2,
      running: [],
    });

    const metrics = createDaemonMetrics({ config, store, logger, diskProbe: () => DISK });
    const scrape = async () => parsePrometheusText(await metrics.render());
    const daemon = startDaemon({ config, store, logger, inspectors: [metrics.inspector] });
    try {
      await waitFor(async () => ((valueOf(await scrape(), 'runwarden_slots_busy') ?? 0) > 0 ? true : null), 'a busy slot');
      await waitFor(async () => {
        const counts = await store.countRunsByState();
        const host = await store.getHost('metered');
        return counts.done === 2 && counts.failed === 6 && counts.abandoned === 1 && host?.running.length === 0;
      }, 'every run to settle');

      const exposition = await scrape();
      const fromStore = await countersFromStore(store, 'metered');
      expect(countersFromMetrics(exposition)).toEqual(fromStore);
      // The scenario really made each kind once (twice for exit: one retried, one given up on).
      expect(fromStore).toEqual({
        claims: 9,
        failures: { exit: 2, output: 1, stalled: 1, timed_out: 1, preflight: 1, spawn: 1 },
        abandoned: { exit: 1 },
        attempts: { success: 3, exit: 2, stalled: 1, timed_out: 1, spawn: 1 },
      });

      // Every histogram series is whole: cumulative buckets ending at +Inf = _count.
      for (const sample of samplesOf(exposition, 'runwarden_attempt_duration_seconds_count')) {
        const { outcome, stage } = sample.labels as { outcome: string; stage: string };
        expect(stage).toBe('process');
        const buckets = samplesOf(exposition, 'runwarden_attempt_duration_seconds_bucket', { stage, outcome });
        expect(buckets.map((b) => b.labels.le)).toEqual([...DURATION_BUCKETS_SECONDS.map(String), '+Inf']);
        for (let i = 1; i < buckets.length; i += 1) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
        expect(buckets.at(-1)!.value).toBe(sample.value);
      }

      const counts = await store.countRunsByState();
      for (const state of RUN_STATE_LABELS) expect(valueOf(exposition, 'runwarden_runs', { state })).toBe(counts[state]);
      expect(valueOf(exposition, 'runwarden_store_up')).toBe(1);
      expect(valueOf(exposition, 'runwarden_slots')).toBe(3);
      expect(valueOf(exposition, 'runwarden_slots_busy')).toBe(0);
      expect(valueOf(exposition, 'runwarden_disk_used_ratio', { path: '/data/out' })).toBe(0.425);
      expect(valueOf(exposition, 'runwarden_disk_free_bytes', { path: '/data/out' })).toBe(123_456_789);
      expect(valueOf(exposition, 'runwarden_host_heartbeat_age_seconds', { host: 'silent' })).toBeGreaterThanOrEqual(7200);
      expect(valueOf(exposition, 'runwarden_host_heartbeat_age_seconds', { host: 'metered' })).toBeGreaterThanOrEqual(0);
      // The daemon's own cleanup has presumed the silent host dead by now; the gauge says what the document says.
      expect((await store.getHost('silent'))?.state).toBe('dead');
      for (const state of HOST_STATES) {
        expect(valueOf(exposition, 'runwarden_host_state', { host: 'silent', state })).toBe(state === 'dead' ? 1 : 0);
        expect(valueOf(exposition, 'runwarden_host_state', { host: 'metered', state })).toBe(state === 'idle' ? 1 : 0);
      }
      expect(valueOf(exposition, 'process_resident_memory_bytes')).toBeGreaterThan(0);
      expect(exposition.types.get('runwarden_claims_total')).toBe('counter');
      expect(exposition.types.get('runwarden_attempt_duration_seconds')).toBe('histogram');
      expect(exposition.types.get('runwarden_runs')).toBe('gauge');
    } finally {
      daemon.stop();
      expect(await daemon.done).toBe(0);
    }
  }, 60_000);

  it('a scrape whose store query fails still answers, with runwarden_store_up 0 and no store figures', async () => {
    const config = configFor(['true']);
    let hang = false;
    // The real store, except that a query can be made to hang like an unreachable MongoDB.
    const hanging: RunStore = Object.create(store, {
      listHosts: { value: () => (hang ? new Promise(() => undefined) : store.listHosts()) },
    });
    const metrics = createDaemonMetrics({ config, store: hanging, logger, diskProbe: () => DISK, storeDeadlineMs: 100 });
    const scrape = async () => parsePrometheusText(await metrics.render());

    await store.insertRun({ number: 1, start: 1 });
    expect(valueOf(await scrape(), 'runwarden_runs', { state: 'pending' })).toBe(1);
    hang = true;
    const stuck = await scrape();
    expect(valueOf(stuck, 'runwarden_store_up')).toBe(0);
    expect(samplesOf(stuck, 'runwarden_runs')).toEqual([]);
    expect(samplesOf(stuck, 'runwarden_host_heartbeat_age_seconds')).toEqual([]);
    expect(valueOf(stuck, 'runwarden_claims_total', { stage: 'process' })).toBe(0);
    expect(valueOf(stuck, 'runwarden_disk_free_bytes', { path: '/data/out' })).toBe(123_456_789);
    hang = false;
    expect(valueOf(await scrape(), 'runwarden_store_up')).toBe(1);

    // A store that is gone altogether (closed: every query throws).
    const other = await openStore(`sqlite:${join(sandbox.dir, 'runs.db')}`);
    await other.close();
    const closed = createDaemonMetrics({ config, store: other, logger, diskProbe: () => DISK });
    const down = parsePrometheusText(await closed.render());
    expect(valueOf(down, 'runwarden_store_up')).toBe(0);
    expect(samplesOf(down, 'runwarden_runs')).toEqual([]);
    expect(valueOf(down, 'runwarden_slots')).toBe(3);
    expect(valueOf(down, 'process_resident_memory_bytes')).toBeGreaterThan(0);
  });

  it('a disk that cannot be measured leaves the disk figures out instead of failing the scrape', async () => {
    const metrics = createDaemonMetrics({
      config: configFor(['true']),
      store,
      logger,
      diskProbe: () => {
        throw new Error('EIO');
      },
    });
    const exposition = parsePrometheusText(await metrics.render());
    expect(samplesOf(exposition, 'runwarden_disk_used_ratio')).toEqual([]);
    expect(samplesOf(exposition, 'runwarden_disk_free_bytes')).toEqual([]);
    expect(valueOf(exposition, 'runwarden_store_up')).toBe(1);
  });
});

describe('the /metrics endpoint', () => {
  it('serves GET /metrics on 127.0.0.1 only; 404 elsewhere, 405 for other methods; a taken port is a usage error', async () => {
    const config = configFor(['true'], ['observe.metrics_port=0']);
    const served = await serveDaemonMetrics({ config, store, logger, port: config.observe.metrics_port });
    try {
      expect(served.url).toBe(`http://127.0.0.1:${served.port}/metrics`);
      const response = await fetch(served.url);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(valueOf(parsePrometheusText(await response.text()), 'runwarden_store_up')).toBe(1);
      expect((await fetch(`http://127.0.0.1:${served.port}/`)).status).toBe(404);
      expect((await fetch(`http://127.0.0.1:${served.port}/metrics/x`)).status).toBe(404);
      const post = await fetch(served.url, { method: 'POST' });
      expect(post.status).toBe(405);
      expect(post.headers.get('allow')).toBe('GET');
      // Bound to 127.0.0.1 itself, not to every address: another loopback address is refused.
      await expect(fetch(`http://127.0.0.2:${served.port}/metrics`)).rejects.toThrow();

      const taken = serveDaemonMetrics({ config, store, logger, port: served.port });
      await expect(taken).rejects.toMatchObject({
        exitCode: 2,
        message: expect.stringContaining(`--metrics: port ${served.port} on 127.0.0.1 is already in use`),
      });
    } finally {
      await served.close();
    }
    await expect(fetch(served.url)).rejects.toThrow();
  });
});

describe('daemon metrics of a pipeline', () => {
  it("label each run and attempt metric with the task's stage, count a check's failure, not its duration, and show tasks per stage", async () => {
    const work = sandbox.script('work.sh', 'echo working; echo result > "$1/result"');
    const check = sandbox.script('check.sh', '[ "$1" != 2 ] || { echo "bad sum" >&2; exit 1; }');
    const file = join(sandbox.dir, 'pipeline.yaml');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      file,
      `store: sqlite:${join(sandbox.dir, 'runs.db')}
host: metered
slots: 2
process: {output_root: ./out, log_dir: ./logs}
timeouts: {check_interval: 0.2s, idle_poll: 1h, signal_escalate: 0.5s}
retry: {base: 1h}
stages:
  process: {command: [sh, ${JSON.stringify(work)}, "{output}"]}
  compress: {needs: [process], command: [sh, ${JSON.stringify(work)}, "{output}"], check: [sh, ${JSON.stringify(check)}, "{number}"]}
`,
    );
    const config = loadConfig({ file, cwd: sandbox.dir, env: {}, flags: {} });
    const tasks = [
      { stage: 'process', needs: [] },
      { stage: 'compress', needs: ['process'] },
    ];
    for (const number of [1, 2]) await store.insertRun({ number, start: number }, tasks);
    const metrics = createDaemonMetrics({ config, store, logger, diskProbe: () => DISK });
    const daemon = startDaemon({ config, store, logger, inspectors: [metrics.inspector] });
    try {
      await waitFor(async () => {
        const counts = await store.countTasksByStage();
        return counts.compress?.done === 1 && counts.compress?.failed === 1 && (await store.getHost('metered'))?.running.length === 0;
      }, 'both runs through both stages');
      const exposition = parsePrometheusText(await metrics.render());
      for (const stage of ['process', 'compress']) {
        expect(valueOf(exposition, 'runwarden_claims_total', { stage }), stage).toBe(2);
        expect(valueOf(exposition, 'runwarden_attempt_duration_seconds_count', { stage, outcome: 'success' }), stage).toBe(2);
      }
      expect(valueOf(exposition, 'runwarden_failures_total', { stage: 'compress', kind: 'check' })).toBe(1);
      expect(valueOf(exposition, 'runwarden_failures_total', { stage: 'process', kind: 'check' })).toBe(0);
      expect(valueOf(exposition, 'runwarden_tasks', { stage: 'process', state: 'done' })).toBe(2);
      expect(valueOf(exposition, 'runwarden_tasks', { stage: 'compress', state: 'done' })).toBe(1);
      expect(valueOf(exposition, 'runwarden_tasks', { stage: 'compress', state: 'failed' })).toBe(1);
    } finally {
      daemon.stop();
      expect(await daemon.done).toBe(0);
    }
  });
});
