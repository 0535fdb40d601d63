// The summary behind `runwarden status --history`, table-driven: samples and a window in, per-host figures
// out; then the text, which must say the same within 80 columns.

import { describe, expect, it } from 'vitest';

import { formatHistory, summariseHistory, type HostHistory, type HistoryWindow } from '../../src/cli/history.js';
import type { HostState, MonitorSample } from '../../src/store/types.js';

const MINUTE = 60_000;
/** A minute boundary: 2026-01-05 10:00Z. */
const T = Date.UTC(2026, 0, 5, 10, 0, 0);
const WINDOW: HistoryWindow = { sinceMs: T, nowMs: T + 60 * MINUTE + 30_000 }; // now: 11:00:30Z

/** A sample of `host` in minute `k` after T (a few seconds in, as the daemon takes them). */
function at(k: number, state: HostState, running: number[] = [], extra: Partial<MonitorSample> = {}): MonitorSample {
  return { host: 'alpha', time: T + k * MINUTE + 700, state, slots: 2, running, ...extra };
}

/** Samples in every minute from `from` to `to` inclusive. */
function every(from: number, to: number, make: (k: number) => MonitorSample): MonitorSample[] {
  return Array.from({ length: to - from + 1 }, (_, i) => make(from + i));
}

const disk = (used: number, free: number) => ({ path: '/data', used_percent: used, free_bytes: free });

interface Case {
  name: string;
  samples: MonitorSample[];
  known?: string[];
  expected: Partial<HostHistory>[];
}

const CASES: Case[] = [
  {
    name: 'a host sampled every minute up to now: no silence, shares and slots from the samples',
    samples: [...every(0, 44, (k) => at(k, 'busy', [k < 20 ? 1 : 2, 3])), ...every(45, 59, (k) => at(k, 'idle'))],
    expected: [
      {
        host: 'alpha',
        samples: 60,
        latest: 'idle',
        minutesByState: { busy: 45, idle: 15 },
        shareByState: { busy: 0.75, idle: 0.25 },
        busySlots: { average: 1.5, max: 2, slots: 2 },
        runsSeen: 3,
        disk: null,
        silences: [],
        silentMinutes: 0,
        stops: [],
      },
    ],
  },
  {
    name: 'minutes missing between two samples are silence after the state the host was last seen in',
    samples: [...every(0, 9, (k) => at(k, 'busy', [7])), ...every(23, 59, (k) => at(k, 'idle'))],
    expected: [
      {
        samples: 47,
        silences: [{ from: T + 10 * MINUTE, to: T + 23 * MINUTE, minutes: 13, after: 'busy', ongoing: false }],
        silentMinutes: 13,
        stoppedMinutes: 0,
      },
    ],
  },
  {
    name: 'a host that fell silent is silent until now, the current (unfinished) minute not counted',
    samples: every(0, 49, (k) => at(k, 'busy', [4])),
    expected: [
      {
        latest: 'busy',
        silences: [{ from: T + 50 * MINUTE, to: T + 60 * MINUTE, minutes: 10, after: 'busy', ongoing: true }],
        silentMinutes: 10,
      },
    ],
  },
  {
    name: 'after a stopped sample the gap is a planned stop, not silence',
    samples: [...every(0, 19, (k) => at(k, 'idle')), at(20, 'stopped'), ...every(31, 59, (k) => at(k, 'idle'))],
    expected: [
      {
        silences: [],
        silentMinutes: 0,
        stops: [{ from: T + 21 * MINUTE, to: T + 31 * MINUTE, minutes: 10, after: 'stopped', ongoing: false }],
        stoppedMinutes: 10,
      },
    ],
  },
  {
    name: 'minutes before the first sample are not judged: the host may have started then',
    samples: every(40, 59, (k) => at(k, 'idle')),
    expected: [{ samples: 20, first: T + 40 * MINUTE + 700, silences: [], stops: [] }],
  },
  {
    name: 'disk used% from its lowest to its highest, free bytes of the last sample that measured it',
    samples: [
      at(57, 'idle', [], { disk: disk(91.5, 9e9) }),
      at(58, 'disk_full', []),
      at(59, 'disk_full', [], { disk: disk(96.25, 2e9) }),
      at(56, 'idle', [], { disk: disk(90, 1e10) }),
    ],
    expected: [
      {
        disk: { path: '/data', minUsedPercent: 90, maxUsedPercent: 96.25, latestFreeBytes: 2e9 },
        latest: 'disk_full',
        shareByState: { idle: 0.5, disk_full: 0.5 },
      },
    ],
  },
  {
    name: 'hosts apart, by name; a registered host without samples shows up empty; samples outside the window ignored',
    samples: [at(-5, 'busy'), at(10, 'idle', [], { host: 'beta' }), at(59, 'idle'), at(61, 'busy')],
    known: ['gamma', 'alpha'],
    expected: [
      { host: 'alpha', samples: 1, latest: 'idle', silences: [] },
      {
        host: 'beta',
        samples: 1,
        silences: [{ from: T + 11 * MINUTE, to: T + 60 * MINUTE, minutes: 49, after: 'idle', ongoing: true }],
      },
      { host: 'gamma', samples: 0, first: null, latest: null, busySlots: null, runsSeen: 0, silences: [] },
    ],
  },
];

describe('summariseHistory', () => {
  it.each(CASES)('$name', ({ samples, known, expected }) => {
    const summary = summariseHistory(samples, WINDOW, known);
    expect(summary).toHaveLength(expected.length);
    expected.forEach((want, i) => expect(summary[i]).toMatchObject(want));
  });
});

describe('formatHistory', () => {
  const samples = [
    ...every(0, 9, (k) => at(k, 'busy', [7, 8], { disk: disk(80 + k / 10, 5e11) })),
    ...every(23, 40, (k) => at(k, 'idle', [], { disk: disk(81, 4.5e11) })),
    at(41, 'stopped'),
    ...every(50, 52, (k) => at(k, 'disk_full', [], { host: 'beta-with-a-long-name.example.org', slots: 4 })),
  ];
  const text = formatHistory(summariseHistory(samples, WINDOW, ['gamma']), WINDOW);

  it('says per host what the summary says', () => {
    expect(text).toContain('Monitor history since 10:00Z (1h)');
    expect(text).toContain('alpha: 29 sample(s) 10:00Z–10:41Z, last stopped');
    expect(text).toMatch(/states\s+idle 62%, busy 34%, stopped 3%/);
    expect(text).toMatch(/slots\s+0\.7 busy on average, at most 2 \(of 2 now\)/);
    expect(text).toMatch(/runs\s+2 seen running/);
    expect(text).toMatch(/disk\s+80%→81% used, 419GiB free at last sample/);
    expect(text).toMatch(/silence\s+13m in 1 gap\(s\)\n\s+10:10Z–10:23Z \(13m\) after busy/);
    expect(text).toMatch(/stopped\s+18m in 1 gap\(s\)\n\s+10:42Z–now \(18m\) after stopped/);
    expect(text).toMatch(/beta-with-a-long-name\.example\.org: 3 sample\(s\)[^\n]*\n\s+states\s+disk_full 100%/);
    expect(text).toMatch(/silence\s+7m in 1 gap\(s\)\n\s+10:53Z–now \(7m\) after disk_full/);
    expect(text).toContain('gamma: no samples in this window');
  });

  it('lists states by their share, most of the time first', () => {
    const mostlyBusy = [...every(0, 44, (k) => at(k, 'busy', [1])), ...every(45, 59, (k) => at(k, 'idle'))];
    expect(formatHistory(summariseHistory(mostlyBusy, WINDOW), WINDOW)).toMatch(/states\s+busy 75%, idle 25%\n/);
  });

  it('fits 80 columns, and lists at most five silences with a count of the rest', () => {
    for (const line of text.split('\n')) expect(line.length).toBeLessThanOrEqual(80);
    const choppy = every(0, 59, (k) => at(k, 'idle')).filter((s) => Math.floor((s.time - T) / MINUTE) % 8 !== 3);
    const lines = formatHistory(summariseHistory(choppy, WINDOW), WINDOW);
    expect(lines).toMatch(/silence\s+8m in 8 gap\(s\)/);
    expect(lines.match(/after idle/g)).toHaveLength(5);
    expect(lines).toContain('… and 3 more');
  });

  it('shows dates when the window is longer than a day, and says so when nothing is there', () => {
    const week: HistoryWindow = { sinceMs: T - 7 * 24 * 60 * MINUTE, nowMs: T };
    expect(formatHistory(summariseHistory([at(-1, 'idle')], week), week)).toContain(
      'alpha: 1 sample(s) 2026-01-05 09:59Z–2026-01-05 09:59Z',
    );
    expect(formatHistory([], WINDOW)).toContain('no host has registered or written a monitor sample');
  });
});
