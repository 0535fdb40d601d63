import { createServer } from 'node:net';
import type { Readable } from 'node:stream';
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { RUN_STATE_LABELS } from '../../src/daemon/metrics.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { countersFromMetrics, countersFromStore } from '../helpers/metrics-from-store.js';
import { parsePrometheusText, valueOf } from '../helpers/prometheus-text.js';
import { useSandbox } from '../helpers/sandbox.js';

// `runwarden daemon --metrics`: the real CLI daemon over a real SQLite file, scraped over loopback HTTP. The
// figures are polled until they agree with the store; nothing here depends on how fast anything is.

const sandbox = useSandbox('runwarden-metrics-');

function config(command: string[], extra = ''): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: scraped
slots: 2
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.2s
  idle_poll: 1h
  signal_escalate: 0.5s
  max_no_output_time: 2s
  max_considering_time: 1h
  max_busy_time: 1h
retry: {base: 1h}
${extra}`,
  );
}

/** Starts `daemon ARGS` and resolves with the child and the metrics URL it logged. */
async function startScrapedDaemon(args: string[]) {
  const daemon = sandbox.start(['daemon', ...args]);
  let output = '';
  (daemon as unknown as { all: Readable }).all.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  const url = await waitFor(
    () => /serving Prometheus text on (http:\/\/[^\s"]+\/metrics)/.exec(output)?.[1],
    'the daemon to log its metrics address',
  );
  return { daemon, url, output: () => output };
}

async function scrape(url: string) {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  return parsePrometheusText(await response.text());
}

/** A port nobody listens on right now (the system's pick), for `--metrics` with a configured port. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('runwarden daemon --metrics', () => {
  it('serves figures that match the store: runs by state, claims, failures by kind, attempts ended', async () => {
    const work = sandbox.script(
      'work.sh',
      `case $1 in
  1|2|3) echo working; echo result > "$2/result" ;;
  4|5) echo failing; exit 3 ;;
  6) sleep 30 ;;
esac`,
    );
    config(['sh', work, '{number}', '{output}']);
    for (const number of [1, 2, 3, 4, 5, 6]) expect((await sandbox.run(['submit', String(number)])).exitCode).toBe(0);
    const store = await sandbox.openStore();

    const { daemon, url } = await startScrapedDaemon(['--metrics=0']);
    // Loopback by default, and 127.0.0.1 itself: the address it logged, and not any other local address.
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const port = new URL(url).port;
    await expect(fetch(`http://127.0.0.2:${port}/metrics`)).rejects.toThrow();

    let last: unknown;
    const agreed = await waitFor(async () => {
      const metrics = await scrape(url);
      const counts = await store.countRunsByState();
      const runsAgree = RUN_STATE_LABELS.every((state) => valueOf(metrics, 'runwarden_runs', { state }) === counts[state]);
      const counters = countersFromMetrics(metrics);
      const truth = await countersFromStore(store, 'scraped');
      // Settled: every run ended, and the host document (written within a second of a change) says idle.
      const settled =
        counts.done === 3 &&
        counts.failed === 3 &&
        valueOf(metrics, 'runwarden_host_state', { host: 'scraped', state: 'idle' }) === 1;
      last = { counts, counters, truth };
      return settled && runsAgree && isDeepStrictEqual(counters, truth) ? { metrics, truth } : null;
    }, 'the metrics to agree with the settled store').catch((error: Error) => {
      throw new Error(`${error.message}; last seen: ${JSON.stringify(last)}`);
    });
    // What the command made happen, as the store recorded it: three successes, two exit codes, one stall.
    expect(agreed.truth).toEqual({
      claims: 6,
      failures: { exit: 2, stalled: 1 },
      abandoned: {},
      attempts: { success: 3, exit: 2, stalled: 1 },
    });
    expect(valueOf(agreed.metrics, 'runwarden_store_up')).toBe(1);
    expect(valueOf(agreed.metrics, 'runwarden_slots')).toBe(2);
    expect(valueOf(agreed.metrics, 'runwarden_slots_busy')).toBe(0);
    expect(valueOf(agreed.metrics, 'runwarden_host_heartbeat_age_seconds', { host: 'scraped' })).toBeGreaterThanOrEqual(0);
    const ratio = valueOf(agreed.metrics, 'runwarden_disk_used_ratio', { path: `${sandbox.dir}/out` });
    expect(ratio).toBeGreaterThanOrEqual(0);
    expect(ratio).toBeLessThanOrEqual(1);
    expect(valueOf(agreed.metrics, 'runwarden_disk_free_bytes', { path: `${sandbox.dir}/out` })).toBeGreaterThan(0);
    expect(valueOf(agreed.metrics, 'process_resident_memory_bytes')).toBeGreaterThan(0);

    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
    // The server went with the daemon.
    await expect(fetch(url)).rejects.toThrow();
  }, 60_000);

  it('--metrics alone listens on observe.metrics_port; a port in use and a bad value exit 2 naming --metrics', async () => {
    const port = await freePort();
    config(['true'], `observe: {metrics_port: ${port}}`);
    const { daemon, url } = await startScrapedDaemon(['--metrics']);
    expect(url).toBe(`http://127.0.0.1:${port}/metrics`);
    expect(valueOf(await scrape(url), 'runwarden_claims_total', { stage: 'process' })).toBe(0);

    const taken = await sandbox.run(['daemon', '--host', 'second', '--metrics']);
    expect(taken.exitCode).toBe(2);
    expect(taken.stderr).toContain(`--metrics: port ${port} on 127.0.0.1 is already in use`);
    expect(taken.stderr).toContain('observe.metrics_port');

    for (const args of [['--metrics=abc'], ['--metrics=70000'], ['--undying', '--metrics=x1']]) {
      const bad = await sandbox.run(['daemon', '--host', 'third', ...args]);
      expect(bad.exitCode, args.join(' ')).toBe(2);
      expect(bad.stderr).toMatch(/--metrics: expected a port number 0\.\.65535/);
    }

    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
  }, 60_000);
});
