import { formatByteSize, formatElapsed } from '../config/duration.js';
import type { StateCounts, TaskCounts } from '../store/run-store.js';
import { DEFAULT_STAGE, RUN_STATES, type HostDoc, type RunDoc } from '../store/types.js';
import { causeFirst } from '../policy/failure-decision.js';
import { printable } from '../policy/terminal-text.js';
import { formatRelative, formatTime, table } from './common.js';

// What `runwarden top` shows, as a pure function: a snapshot of the store, the terminal's size and the time
// → the lines of one frame. Every line fits the width (cut, never wrapped) and the frame never has more lines
// than the terminal has rows: lower sections shrink, then go, and say how much they left out.

/** A busy run with the last line its command wrote; null when its log is not on this host. */
export interface BusyRunView {
  run: RunDoc;
  lastOutput: string | null;
  /** What the attempt runs without (fewer targets or resources than configured), e.g. `targets 1 of 3 (…)`. */
  degraded?: string;
}

/** What one refresh read from the store (and the attempt logs). */
export interface TopSnapshot {
  hosts: HostDoc[];
  counts: StateCounts;
  /**
   * Tasks per stage and state (store.countTasksByStage), in pipeline order; absent or only `process`: the
   * first wave's one line of runs per state.
   */
  stages?: Array<{ stage: string; counts: TaskCounts }>;
  /** Busy runs, in the store's order (newest number first). */
  busy: BusyRunView[];
  /** Failed and abandoned runs, most recently written first. */
  failures: RunDoc[];
  /** When this data was read (epoch ms). */
  readAt: number;
}

export interface TopView {
  /** Where the store is, for the title; never contains a password. */
  location: string;
  /** The latest data; null until the first refresh succeeded. */
  snapshot: TopSnapshot | null;
  /** Why the latest refresh failed, when it did; the view keeps showing the older data. */
  error?: string;
  intervalMs: number;
  /** The live view names its keys on the status line; a single printed frame does not. */
  live: boolean;
}

export interface ScreenSize {
  columns: number;
  rows: number;
}

const NO_LOG_HERE = '-';
const NO_OUTPUT_YET = '(no output yet)';

/**
 * The frame for `view` on a terminal of `size` at `now`: at most `size.rows` lines, none wider than
 * `size.columns`. In the live view (or after a failed refresh) the last line is the status line, which the
 * live view puts on the bottom row.
 */
export function renderTop(view: TopView, size: ScreenSize, now: number): string[] {
  const columns = Math.max(1, Math.floor(size.columns));
  const rows = Math.max(0, Math.floor(size.rows));
  const fitted = (line: string) => fitWidth(line, columns);
  const status = statusLine(view, now);
  const footer = status === null ? [] : [fitted(status)];
  if (rows <= footer.length) return footer.slice(0, rows);
  const title = titleLine(view.location, now, columns);
  const room = rows - footer.length - 1;
  if (room === 0) return [title, ...footer];

  const snapshot = view.snapshot;
  if (!snapshot) return [title, fitted('waiting for the first reading of the store…'), ...footer];
  const body = countsLines(snapshot).map(fitted);
  const sections = [hostSection(snapshot, now), busySection(snapshot, now), failureSection(snapshot, now)];
  const allotted = allotRows(sections.map(wantedRows), room - 1);
  sections.forEach((section, i) => {
    for (const line of sectionLines(section, allotted[i] ?? 0)) body.push(fitted(line));
  });
  return [title, ...body, ...footer];
}

interface Section {
  headers: string[];
  /** Table rows, cells already printable. */
  items: string[][];
  /** Shown instead of the table when there is nothing to list. */
  empty: string;
  /** Names what did not fit: `… 12 more busy runs`. */
  more: (count: number) => string;
  /** How many there are in all (the store may hold more than the snapshot read). */
  total: number;
}

// A section starts with a blank line and its header; an empty one is a blank line and one line of text.
const SECTION_HEAD = 2;

function hiddenBeyondSnapshot(section: Section): number {
  return Math.max(0, section.total - section.items.length);
}

function wantedRows(section: Section): number {
  if (section.items.length === 0 && section.total === 0) return 2;
  return SECTION_HEAD + section.items.length + (hiddenBeyondSnapshot(section) > 0 ? 1 : 0);
}

/**
 * Rows per section, in order, within `available`: each section in turn first gets its head and one row
 * (a section that cannot get that much is left out, and so is every section below it), then the rows left
 * go round the sections one at a time, so one long list cannot crowd out the next.
 */
export function allotRows(wanted: number[], available: number): number[] {
  const given = wanted.map(() => 0);
  let left = available;
  for (let i = 0; i < wanted.length; i++) {
    const first = Math.min(wanted[i], SECTION_HEAD + 1);
    if (left < first) break;
    given[i] = first;
    left -= first;
  }
  let grew = true;
  while (left > 0 && grew) {
    grew = false;
    for (let i = 0; i < wanted.length && left > 0; i++) {
      if (given[i] > 0 && given[i] < wanted[i]) {
        given[i] += 1;
        left -= 1;
        grew = true;
      }
    }
  }
  return given;
}

function sectionLines(section: Section, allotted: number): string[] {
  if (allotted === 0) return [];
  if (section.items.length === 0 && section.total === 0) return ['', section.empty];
  const room = allotted - SECTION_HEAD;
  const all = section.items.length + hiddenBeyondSnapshot(section);
  // When everything fits, every row is an item; otherwise the last row says how many were left out.
  const shown = all === section.items.length && all <= room ? all : Math.min(section.items.length, room - 1);
  const lines = ['', ...table(section.headers, section.items.slice(0, shown)).split('\n')];
  if (all > shown) lines.push(section.more(all - shown));
  return lines;
}

function hostSection(snapshot: TopSnapshot, now: number): Section {
  return {
    headers: ['HOST', 'STATE', 'HEARTBEAT', 'SLOTS', 'DISK'],
    items: snapshot.hosts.map((h) => [
      cell(h.host, 20),
      // a host paused for a host fault says why (an unwritable directory, a missing executable)
      h.state === 'paused' && h.paused_reason ? cell(`paused: ${h.paused_reason}`, 40) : cell(h.state),
      formatRelative(h.time, now),
      // A stopped or dead host runs nothing, whatever an older document still lists.
      `${h.state === 'stopped' || h.state === 'dead' ? 0 : h.running.length}/${h.slots}`,
      h.disk ? `${Math.round(h.disk.used_percent)}% used, ${formatByteSize(h.disk.free_bytes)} free` : '-',
    ]),
    empty: 'no hosts have registered yet',
    more: (n) => `… ${n} more ${n === 1 ? 'host' : 'hosts'} (runwarden status lists all)`,
    total: snapshot.hosts.length,
  };
}

/** True when the store holds a stage other than the first wave's `process`: views name each task's stage. */
function isStaged(snapshot: TopSnapshot): boolean {
  return (snapshot.stages ?? []).some(({ stage }) => stage !== DEFAULT_STAGE);
}

function stageCell(run: RunDoc): string {
  return cell(run.stage ?? DEFAULT_STAGE, 12);
}

function busySection(snapshot: TopSnapshot, now: number): Section {
  const staged = isStaged(snapshot);
  return {
    headers: ['BUSY', ...(staged ? ['STAGE'] : []), 'ATTEMPT', 'HOST', 'ELAPSED', 'LAST OUTPUT'],
    items: snapshot.busy.map(({ run, lastOutput, degraded }) => {
      const p = run.processing;
      return [
        String(run.number),
        ...(staged ? [stageCell(run)] : []),
        p ? `${p.attempt}${degraded ? ' (degraded)' : ''}` : '-',
        cell(p?.host, 16),
        p?.started !== undefined ? formatElapsed(now - p.started) : '-',
        lastOutput === null ? NO_LOG_HERE : printable(lastOutput) || NO_OUTPUT_YET,
      ];
    }),
    empty: 'no run is busy',
    more: (n) => `… ${n} more busy ${staged ? (n === 1 ? 'task' : 'tasks') : n === 1 ? 'run' : 'runs'} (runwarden list --state busy)`,
    total: snapshot.counts.busy ?? 0,
  };
}

function failureSection(snapshot: TopSnapshot, now: number): Section {
  const staged = isStaged(snapshot);
  return {
    headers: ['FAILED', ...(staged ? ['STAGE'] : []), 'STATE', 'FAILS', 'HOST', 'WHEN', 'REASON'],
    items: snapshot.failures.map((run) => {
      const p = run.processing;
      return [
        String(run.number),
        ...(staged ? [stageCell(run)] : []),
        failureState(run, now),
        p ? String(p.n_failures) : '-',
        cell(p?.host, 12),
        p ? formatRelative(p.time, now) : '-',
        // The failure that tipped a run given up on, not only "gave up: 10 failures reached …".
        cell(p?.reason === undefined ? undefined : causeFirst(p.reason)) || '-',
      ];
    }),
    empty: 'no failed or abandoned runs',
    more: (n) => `… ${n} more failed or abandoned (runwarden list --state failed|abandoned)`,
    total: (snapshot.counts.failed ?? 0) + (snapshot.counts.abandoned ?? 0),
  };
}

/** A failed run's state says when it is retried (one column, so the reason keeps the width). */
function failureState(run: RunDoc, now: number): string {
  const p = run.processing;
  if (p?.state !== 'failed') return p?.state ?? '-';
  if (p.next_retry === undefined) return 'failed';
  return p.next_retry > now ? `retry in ${formatElapsed(p.next_retry - now)}` : 'retry due';
}

function countsLine(counts: StateCounts): string {
  return `runs  ${['pending' as const, ...RUN_STATES].map((state) => `${state} ${counts[state] ?? 0}`).join('  ')}`;
}

/** One line of runs per state; with stages, one line of tasks per stage and state (blocked too). */
function countsLines(snapshot: TopSnapshot): string[] {
  if (!isStaged(snapshot)) return [countsLine(snapshot.counts)];
  const width = Math.max(...snapshot.stages!.map(({ stage }) => printable(stage).length));
  return snapshot.stages!.map(({ stage, counts }) => {
    const states = (['pending', ...RUN_STATES, 'blocked'] as const).map((state) => `${state} ${counts[state] ?? 0}`);
    return `${printable(stage).padEnd(width)}  ${states.join('  ')}`;
  });
}

function titleLine(location: string, now: number, columns: number): string {
  const clock = formatTime(now);
  const name = 'runwarden top  ';
  const room = columns - name.length - clock.length - 2;
  if (room < 8) return fitWidth(`${name}${clock}`, columns);
  // The end of a location (the database file, the replica set) says more than its start.
  const where = printable(location);
  const shown = displayWidth(where) > room ? `…${cutFromStart(where, room - 1)}` : where;
  return `${name}${shown}${' '.repeat(columns - name.length - displayWidth(shown) - clock.length)}${clock}`;
}

function statusLine(view: TopView, now: number): string | null {
  const every = formatElapsed(view.intervalMs).replace(/^0s$/, `${view.intervalMs}ms`);
  if (view.error !== undefined) {
    const age = view.snapshot ? ` (data from ${formatRelative(view.snapshot.readAt, now)})` : '';
    return `store error, trying again every ${every}${age}: ${printable(view.error)}`;
  }
  return view.live ? `q or ^C quits · refreshed every ${every}` : null;
}

/** A table cell: printable, on one line, at most `max` columns wide. */
function cell(text: string | undefined, max = Infinity): string {
  const single = printable(text ?? '');
  return Number.isFinite(max) ? fitWidth(single, max) : single;
}

/**
 * The last line the command wrote, in the tail of an attempt log: what a terminal would show of it (the text
 * after its last carriage return, for progress bars), skipping the supervisor's own `=== runwarden` lines.
 * Empty when the command has written nothing yet.
 */
export function lastOutputLine(logTail: string): string {
  const lines = logTail.split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i];
    if (line.startsWith('=== runwarden ')) continue;
    const segments = line.split('\r').map(printable).filter(Boolean);
    const last = segments.at(-1);
    if (last) return last;
  }
  return '';
}

/** Columns a character takes on a terminal: 0 for combining marks, 2 for East Asian wide ones, else 1. */
function charWidth(char: string): number {
  const code = char.codePointAt(0) ?? 0;
  if (/\p{M}/u.test(char) || (code >= 0x200b && code <= 0x200f)) return 0;
  const wide =
    (code >= 0x1100 && code <= 0x115f) ||
    (code >= 0x2e80 && code <= 0xa4cf) ||
    (code >= 0xac00 && code <= 0xd7a3) ||
    (code >= 0xf900 && code <= 0xfaff) ||
    (code >= 0xfe30 && code <= 0xfe4f) ||
    (code >= 0xff00 && code <= 0xff60) ||
    (code >= 0xffe0 && code <= 0xffe6) ||
    (code >= 0x1f300 && code <= 0x1f64f) ||
    (code >= 0x1f900 && code <= 0x1f9ff) ||
    (code >= 0x20000 && code <= 0x3fffd);
  return wide ? 2 : 1;
}

export function displayWidth(text: string): number {
  let width = 0;
  for (const char of text) width += charWidth(char);
  return width;
}

/** `text` cut to at most `columns` columns, ending in `…` when something was cut. */
export function fitWidth(text: string, columns: number): string {
  if (displayWidth(text) <= columns) return text;
  if (columns <= 0) return '';
  let out = '';
  let width = 0;
  for (const char of text) {
    const w = charWidth(char);
    if (width + w > columns - 1) break;
    out += char;
    width += w;
  }
  return `${out.trimEnd()}…`;
}

/** The end of `text` that fits in `columns` columns. */
function cutFromStart(text: string, columns: number): string {
  const chars = [...text];
  let width = 0;
  let start = chars.length;
  while (start > 0 && width + charWidth(chars[start - 1]) <= columns) {
    start -= 1;
    width += charWidth(chars[start]);
  }
  return chars.slice(start).join('');
}
