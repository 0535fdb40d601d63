import Database from 'better-sqlite3';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { HostHistory } from '../../src/cli/history.js';
import { MONITOR_RETENTION_MS, monitorMinute } from '../../src/store/run-store.js';
import type { MonitorSample } from '../../src/store/types.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Monitor history end to end: a real daemon writes its own samples into a real SQLite file; the minutes before
// it (a busy spell, a crash, a restart, a clean stop) are written through the store interface, since the CLI
// takes no injected clock; then `runwarden status --history` summarises them, as text and as JSON.

const sandbox = useSandbox();
const MINUTE = 60_000;
const HOST = 'histhost';

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** The JSON with every ISO 8601 time string turned back into epoch ms. */
function withEpochTimes(value: unknown): unknown {
  if (typeof value === 'string' && ISO.test(value)) return Date.parse(value);
  if (Array.isArray(value)) return value.map(withEpochTimes);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withEpochTimes(v)]));
  }
  return value;
}

interface HistoryJson {
  since: number;
  now: number;
  hosts: HostHistory[];
  samples: MonitorSample[];
}

function config(): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
host: ${HOST}
slots: 2
process:
  command: ["true"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  idle_poll: 1h
`,
  );
}

function sample(host: string, minute: number, state: MonitorSample['state'], running: number[] = []): MonitorSample {
  const disk = { path: '/data', used_percent: 50 + (minute % 7), free_bytes: 4e11 };
  return { host, time: minute + 1_500, state, slots: 2, running, disk };
}

describe('runwarden status --history', () => {
  it('summarises what a real daemon and its predecessors recorded: states, runs, silences, a stop', async () => {
    config();
    const started = Date.now();
    const daemon = sandbox.start(['daemon']);
    const store = await sandbox.openStore();

    // The daemon's own first sample, at start, with its slots and the measured output disk.
    const own = await waitFor(async () => (await store.listMonitor({ host: HOST, sinceMs: started }))[0], 'a sample');
    expect(own).toMatchObject({ host: HOST, state: 'idle', slots: 2, running: [] });
    expect(own.disk?.path).toBe(join(sandbox.dir, 'out'));
    expect(own.disk?.free_bytes).toBeGreaterThan(0);

    // Before it, relative to its minute M0: an old sample beyond 7 days, then busy from M0-50 to M0-31, silence
    // (a crash) for 10 minutes, idle from M0-20 to M0-11, a clean stop at M0-10, 9 minutes down.
    const m0 = monitorMinute(own.time);
    const at = (k: number) => m0 + k * MINUTE;
    await store.recordMonitor(sample(HOST, monitorMinute(Date.now() - MONITOR_RETENTION_MS) - 5 * MINUTE, 'busy', [9]));
    for (let k = -50; k <= -31; k += 1) {
      await store.recordMonitor(sample(HOST, at(k), 'busy', k < -40 ? [101, 102] : [102]));
    }
    for (let k = -20; k <= -11; k += 1) await store.recordMonitor(sample(HOST, at(k), 'idle'));
    await store.recordMonitor(sample(HOST, at(-10), 'stopped'));
    // Another host that fell silent four minutes before M0 and never came back.
    for (let k = -15; k <= -5; k += 1) await store.recordMonitor(sample('crashed', at(k), 'busy', [200]));

    // SQLite deletes what is older than 7 days from the file (at the next insert), not only from listings.
    const raw = new Database(join(sandbox.dir, 'runs.db'), { readonly: true });
    try {
      const oldest = raw.prepare('SELECT min(time) AS t, count(*) AS n FROM monitor').get() as { t: number; n: number };
      expect(oldest.t).toBe(at(-50) + 1_500);
      expect(oldest.n).toBeGreaterThanOrEqual(20 + 10 + 1 + 11 + 1);
    } finally {
      raw.close();
    }

    const text = await sandbox.run(['status', '--history']);
    expect(text.exitCode, text.stderr).toBe(0);
    for (const line of text.stdout.split('\n')) expect(line.length).toBeLessThanOrEqual(80);
    expect(text.stdout).toMatch(/^Monitor history since \d\d:\d\dZ \(1h\), one sample per minute$/m);
    const hostBlock = text.stdout.slice(text.stdout.indexOf(`${HOST}: `));
    expect(hostBlock).toMatch(/^histhost: \d+ sample\(s\) \d\d:\d\dZ–\d\d:\d\dZ, last idle$/m);
    expect(hostBlock).toMatch(/runs\s+2 seen running/);
    expect(hostBlock).toMatch(/slots\s+[\d.]+ busy on average, at most 2 \(of 2 now\)/);
    expect(hostBlock).toMatch(/silence\s+10m in 1 gap\(s\)\n\s+\d\d:\d\dZ–\d\d:\d\dZ \(10m\) after busy/);
    expect(hostBlock).toMatch(/stopped\s+9m in 1 gap\(s\)\n\s+\d\d:\d\dZ–\d\d:\d\dZ \(9m\) after stopped/);
    expect(text.stdout).toMatch(/^crashed: 11 sample\(s\)[^\n]*last busy\n\s+states\s+busy 100%/m);
    expect(text.stdout).toMatch(/silence\s+\d+m in 1 gap\(s\)\n\s+\d\d:\d\dZ–now \(\d+m\) after busy/);

    const json = await sandbox.run(['status', '--history', '--json']);
    expect(json.exitCode, json.stderr).toBe(0);
    // --json gives times as ISO 8601 strings; the checks below compare them as epoch ms.
    expect(JSON.parse(json.stdout)).toMatchObject({ since: expect.stringMatching(ISO), now: expect.stringMatching(ISO) });
    const report = withEpochTimes(JSON.parse(json.stdout)) as HistoryJson;
    expect(report.now - report.since).toBe(3_600_000);
    expect(report.hosts.map((h) => h.host)).toEqual(['crashed', HOST]);
    // The daemon keeps sampling while this test runs: its samples are those of minute M0 and later.
    const daemonSamples = report.samples.filter((s) => s.host === HOST && s.time >= m0);
    expect(daemonSamples.length).toBeGreaterThanOrEqual(1);
    expect(daemonSamples.every((s) => s.state === 'idle')).toBe(true);
    const mine = report.hosts.find((h) => h.host === HOST)!;
    expect(mine).toMatchObject({
      samples: 31 + daemonSamples.length,
      latest: 'idle',
      minutesByState: { busy: 20, idle: 10 + daemonSamples.length, stopped: 1 },
      runsSeen: 2,
      busySlots: { max: 2, slots: 2 },
      silentMinutes: 10,
      silences: [{ from: at(-30), to: at(-20), minutes: 10, after: 'busy', ongoing: false }],
      stoppedMinutes: 9,
      stops: [{ from: at(-9), to: at(0), minutes: 9, after: 'stopped', ongoing: false }],
    });
    expect(mine.busySlots!.average).toBeCloseTo((10 * 2 + 10 * 1) / mine.samples, 10);
    expect(mine.disk).toMatchObject({ latestFreeBytes: daemonSamples.at(-1)!.disk!.free_bytes });
    const crashed = report.hosts.find((h) => h.host === 'crashed')!;
    const nowMinute = monitorMinute(report.now);
    expect(crashed.silences).toEqual([
      { from: at(-4), to: nowMinute, minutes: (nowMinute - at(-4)) / MINUTE, after: 'busy', ongoing: true },
    ]);
    // Nothing older than 7 days, not even with the longest window.
    const weekRun = await sandbox.run(['status', '--history', '--since', '7d', '--json']);
    const week = withEpochTimes(JSON.parse(weekRun.stdout)) as HistoryJson;
    expect(week.samples.filter((s) => s.running.includes(9))).toEqual([]);
    expect(Math.min(...week.samples.map((s) => s.time))).toBe(at(-50) + 1_500);

    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
    // A clean stop leaves a stopped sample as the daemon's last word.
    const last = (await store.listMonitor({ host: HOST, sinceMs: m0 })).at(-1);
    expect(last).toMatchObject({ state: 'stopped', running: [] });
  });

  it('refuses a bad --since, and --since without --history, with exit 2 naming the flag', async () => {
    config();
    const bad = await sandbox.run(['status', '--history', '--since', 'soon']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('--since: not a duration');
    const short = await sandbox.run(['status', '--history', '--since', '10s']);
    expect(short.exitCode).toBe(2);
    expect(short.stderr).toContain('--since: at least 1m (samples are taken once a minute)');
    const alone = await sandbox.run(['status', '--since', '1h']);
    expect(alone.exitCode).toBe(2);
    expect(alone.stderr).toMatch(/history/);
  });
});
