// `runwarden status --history`: what each host's monitor samples (one per minute, DESIGN §3) say about a
// window of time. Pure: samples and the window in, a summary and its text out.

import { formatByteSize, formatElapsed } from '../config/duration.js';
import { monitorMinute } from '../store/run-store.js';
import { parseUncleanRestart } from '../policy/host-restart.js';
import { HOST_STATES, type HostState, type LogEntry, type MonitorSample } from '../store/types.js';
import { isDateMs, isoTimeOrInvalid } from '../time-range.js';

const MINUTE_MS = 60_000;
/** Silences listed one by one in the text; the rest are counted. */
const SILENCES_SHOWN = 5;

export interface HistoryWindow {
  sinceMs: number;
  nowMs: number;
}

/**
 * Minutes without a sample between two samples, or after the last one up to the current minute. A gap that
 * follows a `stopped` sample is a planned stop; any other gap is silence: the daemon died, hung or lost
 * its store. Minutes before a host's first sample in the window are not judged (it may not have run yet).
 */
export interface HistoryGap {
  /** Start of the first minute without a sample, epoch ms. */
  from: number;
  /** Start of the minute of the next sample, or of the current minute when none followed. */
  to: number;
  minutes: number;
  /** The host's state in the sample before the gap. */
  after: HostState;
  /** No sample followed: the gap lasts until now. */
  ongoing: boolean;
}

export interface HostHistory {
  host: string;
  samples: number;
  /** Times of the first and last sample in the window; null without samples. */
  first: number | null;
  last: number | null;
  /** The state of the last sample. */
  latest: HostState | null;
  /** Sampled minutes per state, and their share of all samples (0..1). */
  minutesByState: Partial<Record<HostState, number>>;
  shareByState: Partial<Record<HostState, number>>;
  /** Runs being processed per sample (slots busy) and the slots the host had in its last sample. */
  busySlots: { average: number; max: number; slots: number } | null;
  /** Distinct run numbers seen running. */
  runsSeen: number;
  /** Output disk over the window; null when no sample carried disk figures. */
  disk: { path: string; minUsedPercent: number; maxUsedPercent: number; latestFreeBytes: number } | null;
  silences: HistoryGap[];
  silentMinutes: number;
  stops: HistoryGap[];
  stoppedMinutes: number;
  /**
   * Daemons of this host that started where their predecessor ended without stopping (killed, crashed), from the
   * operator log: also the silences too short to leave a minute without a sample.
   */
  restarts: HostRestart[];
}

export interface HostRestart {
  /** When the new daemon started, epoch ms. */
  at: number;
  /** The predecessor's last heartbeat, and the silence until the restart. */
  lastHeard: number;
  silentMs: number;
  previousPid: number;
  previousState: string;
}

function gapsOf(sorted: MonitorSample[], nowMs: number): HistoryGap[] {
  const gaps: HistoryGap[] = [];
  const nowMinute = monitorMinute(nowMs);
  sorted.forEach((sample, i) => {
    const next = sorted[i + 1];
    const from = monitorMinute(sample.time) + MINUTE_MS;
    // The current minute's sample may still be on its way: only minutes that are over count as missing.
    const to = next ? monitorMinute(next.time) : nowMinute;
    if (to > from) {
      gaps.push({ from, to, minutes: (to - from) / MINUTE_MS, after: sample.state, ongoing: next === undefined });
    }
  });
  return gaps;
}

function summariseHost(host: string, samples: MonitorSample[], nowMs: number, restarts: HostRestart[]): HostHistory {
  const sorted = [...samples].sort((a, b) => a.time - b.time);
  const minutesByState: Partial<Record<HostState, number>> = {};
  for (const s of sorted) minutesByState[s.state] = (minutesByState[s.state] ?? 0) + 1;
  const shareByState: Partial<Record<HostState, number>> = {};
  for (const [state, n] of Object.entries(minutesByState)) shareByState[state as HostState] = n / sorted.length;

  const busy = sorted.map((s) => s.running.length);
  const withDisk = sorted.filter((s) => s.disk !== undefined);
  const lastDisk = withDisk.at(-1)?.disk;
  const gaps = gapsOf(sorted, nowMs);
  const silences = gaps.filter((g) => g.after !== 'stopped');
  const stops = gaps.filter((g) => g.after === 'stopped');
  const last = sorted.at(-1);
  return {
    host,
    samples: sorted.length,
    first: sorted[0]?.time ?? null,
    last: last?.time ?? null,
    latest: last?.state ?? null,
    minutesByState,
    shareByState,
    busySlots: last
      ? { average: busy.reduce((a, b) => a + b, 0) / busy.length, max: Math.max(...busy), slots: last.slots }
      : null,
    runsSeen: new Set(sorted.flatMap((s) => s.running)).size,
    disk: lastDisk
      ? {
          path: lastDisk.path,
          minUsedPercent: Math.min(...withDisk.map((s) => s.disk!.used_percent)),
          maxUsedPercent: Math.max(...withDisk.map((s) => s.disk!.used_percent)),
          latestFreeBytes: lastDisk.free_bytes,
        }
      : null,
    silences,
    silentMinutes: silences.reduce((n, g) => n + g.minutes, 0),
    stops,
    stoppedMinutes: stops.reduce((n, g) => n + g.minutes, 0),
    restarts,
  };
}

/**
 * One summary per host, by host name: every host with samples in the window, plus `knownHosts` (the hosts
 * registered in the store) so a host that wrote nothing at all in the window still shows up.
 */
export function summariseHistory(
  samples: MonitorSample[],
  window: HistoryWindow,
  knownHosts: string[] = [],
  log: LogEntry[] = [],
): HostHistory[] {
  const inWindow = samples.filter((s) => s.time >= window.sinceMs && s.time <= window.nowMs);
  const byHost = new Map<string, MonitorSample[]>(knownHosts.map((h) => [h, []]));
  for (const s of inWindow) byHost.set(s.host, [...(byHost.get(s.host) ?? []), s]);
  const restarts = new Map<string, HostRestart[]>();
  for (const entry of log) {
    if (entry.time < window.sinceMs || entry.time > window.nowMs) continue;
    const restart = parseUncleanRestart(entry.message);
    if (!restart) continue;
    if (!byHost.has(restart.host)) byHost.set(restart.host, []);
    const list = restarts.get(restart.host) ?? [];
    list.push({
      at: entry.time,
      lastHeard: restart.lastHeard,
      silentMs: Math.max(0, entry.time - restart.lastHeard),
      previousPid: restart.previousPid,
      previousState: restart.previousState,
    });
    restarts.set(restart.host, list);
  }
  return [...byHost.keys()]
    .sort()
    .map((host) =>
      summariseHost(host, byHost.get(host) ?? [], window.nowMs, (restarts.get(host) ?? []).sort((a, b) => a.at - b.at)),
    );
}

// -------------------------------------------------------------------------------------------------- text

/** `10:07Z`, with the date when the window is longer than a day. */
function clockTime(ms: number, withDate: boolean): string {
  if (!isDateMs(ms)) return isoTimeOrInvalid(ms);
  const iso = new Date(ms).toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}Z` : `${iso.slice(11, 16)}Z`;
}

function percent(share: number): string {
  return `${Math.round(share * 100)}%`;
}

function round1(value: number): string {
  return (Math.round(value * 10) / 10).toFixed(1).replace(/\.0$/, '');
}

function gapLine(gap: HistoryGap, withDate: boolean): string {
  const end = gap.ongoing ? 'now' : clockTime(gap.to, withDate);
  return `${clockTime(gap.from, withDate)}–${end} (${formatElapsed(gap.minutes * MINUTE_MS)}) after ${gap.after}`;
}

function gapLines(label: string, gaps: HistoryGap[], total: number, withDate: boolean): string[] {
  if (gaps.length === 0) return [`  ${label.padEnd(9)} none`];
  const lines = [`  ${label.padEnd(9)} ${formatElapsed(total * MINUTE_MS)} in ${gaps.length} gap(s)`];
  for (const gap of gaps.slice(0, SILENCES_SHOWN)) lines.push(`            ${gapLine(gap, withDate)}`);
  if (gaps.length > SILENCES_SHOWN) lines.push(`            … and ${gaps.length - SILENCES_SHOWN} more`);
  return lines;
}

/** `10:07:42Z`: restarts are seconds apart. */
function secondTime(ms: number, withDate: boolean): string {
  if (!isDateMs(ms)) return isoTimeOrInvalid(ms);
  const iso = new Date(ms).toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 19)}Z` : `${iso.slice(11, 19)}Z`;
}

function restartLines(restarts: HostRestart[], withDate: boolean): string[] {
  if (restarts.length === 0) return [];
  const lines = [`  ${'restarts'.padEnd(9)} ${restarts.length} without a stop (the daemon was killed or crashed)`];
  for (const r of restarts.slice(-SILENCES_SHOWN)) {
    lines.push(
      `            ${secondTime(r.at, withDate)} after ${formatElapsed(r.silentMs)} silent ` +
        `(pid ${r.previousPid} was ${r.previousState})`,
    );
  }
  if (restarts.length > SILENCES_SHOWN) lines.push(`            … and ${restarts.length - SILENCES_SHOWN} earlier`);
  return lines;
}

/** The summary for people: one block per host, lines within 80 columns. */
export function formatHistory(histories: HostHistory[], window: HistoryWindow): string {
  const withDate = window.nowMs - window.sinceMs > 24 * 3_600_000;
  const span = formatElapsed(window.nowMs - window.sinceMs);
  const out = [`Monitor history since ${clockTime(window.sinceMs, withDate)} (${span}), one sample per minute`];
  if (histories.length === 0) {
    out.push('', 'no host has registered or written a monitor sample');
    return out.join('\n');
  }
  for (const h of histories) {
    out.push('');
    if (h.samples === 0 || h.first === null || h.last === null) {
      out.push(`${h.host}: no samples in this window`);
      continue;
    }
    out.push(
      `${h.host}: ${h.samples} sample(s) ${clockTime(h.first, withDate)}–${clockTime(h.last, withDate)}, ` +
        `last ${h.latest}`,
    );
    // most of the time first; equal shares in the order of HOST_STATES
    const states = HOST_STATES.filter((s) => h.shareByState[s] !== undefined)
      .sort((a, b) => h.shareByState[b]! - h.shareByState[a]!)
      .map((s) => `${s} ${percent(h.shareByState[s]!)}`)
      .join(', ');
    out.push(`  ${'states'.padEnd(9)} ${states}`);
    if (h.busySlots) {
      const { average, max, slots } = h.busySlots;
      out.push(`  ${'slots'.padEnd(9)} ${round1(average)} busy on average, at most ${max} (of ${slots} now)`);
    }
    out.push(`  ${'runs'.padEnd(9)} ${h.runsSeen} seen running`);
    out.push(
      `  ${'disk'.padEnd(9)} ` +
        (h.disk
          ? `${round1(h.disk.minUsedPercent)}%→${round1(h.disk.maxUsedPercent)}% used, ` +
            `${formatByteSize(h.disk.latestFreeBytes)} free at last sample`
          : 'not measured'),
    );
    out.push(...gapLines('silence', h.silences, h.silentMinutes, withDate));
    if (h.stops.length > 0) out.push(...gapLines('stopped', h.stops, h.stoppedMinutes, withDate));
    out.push(...restartLines(h.restarts, withDate));
  }
  return out.join('\n');
}
