import { randomInt } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isSameProcess } from '../../src/process/proc.js';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunDoc, RunEvent } from '../../src/store/types.js';
import { checkRunHistory } from '../model/invariants.js';

// What the chaos tests share: the seed and its PRNG, the attempt plans the command reads, and the evidence
// the command leaves outside the output root (violations, journal, process records), read back as figures.

/** The processing command; see the comments in the script for how it proves exclusion. */
export const attemptCommand = join(dirname(fileURLToPath(import.meta.url)), 'attempt-command.sh');

/** RUNWARDEN_CHAOS_SEED when set (a replay), else a fresh one. */
export function chaosSeed(): number {
  const given = process.env.RUNWARDEN_CHAOS_SEED;
  if (given === undefined || given === '') return randomInt(1, 2 ** 31);
  const seed = Number(given);
  if (!Number.isSafeInteger(seed)) throw new Error(`RUNWARDEN_CHAOS_SEED: expected an integer, got "${given}"`);
  return seed;
}

export function replayHint(seed: number, file: string): string {
  return `replay with RUNWARDEN_CHAOS_SEED=${seed} npx vitest run ${file}`;
}

/** mulberry32: a small seeded PRNG; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** An integer in [lo, hi]. */
export function between(random: () => number, lo: number, hi: number): number {
  return lo + Math.floor(random() * (hi - lo + 1));
}

/**
 * One attempt of a run: how many steps of the command's step time it works, and its exit code. With a gate, it
 * then goes on working (a step at a time) until the gate file exists: its end depends on the test, not on speed.
 */
export interface AttemptPlan {
  steps: number;
  exitCode: number;
  gate?: string;
}

export interface Evidence {
  root: string;
  plans: string;
}

export function prepareEvidence(dir: string): Evidence {
  const root = join(dir, 'evidence');
  for (const sub of ['journal', 'violations', 'procs', 'stale']) mkdirSync(join(root, sub), { recursive: true });
  const plans = join(dir, 'plans');
  mkdirSync(plans, { recursive: true });
  return { root, plans };
}

/** Writes run `number`'s plan: line k is attempt k; the last line serves every later attempt. */
export function writePlan(evidence: Evidence, number: number, attempts: AttemptPlan[]): void {
  writeFileSync(join(evidence.plans, String(number)), attempts.map((a) => `${a.steps} ${a.exitCode}${a.gate ? ` ${a.gate}` : ''}\n`).join(''));
}

/**
 * process.command for the config, as YAML flow (JSON). With `orphansLinger`, a command whose daemon died keeps
 * running until it is killed (a restart must kill it), instead of finishing its plan.
 */
export function commandYaml(evidence: Evidence, stepSeconds: number, options: { orphansLinger?: boolean } = {}): string {
  return JSON.stringify([
    'sh',
    attemptCommand,
    '{number}',
    '{output}',
    '{attempt}',
    '{host}',
    evidence.root,
    evidence.plans,
    String(stepSeconds),
    ...(options.orphansLinger ? ['linger'] : []),
  ]);
}

function listDir(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

/** Every exclusion violation an attempt recorded, as "file: text". */
export function violations(evidence: Evidence): string[] {
  const dir = join(evidence.root, 'violations');
  return listDir(dir).map((f) => `${f}: ${readFileSync(join(dir, f), 'utf8').trim()}`);
}

/** Stale locks taken over (a killed attempt's leftover that clean_output did not remove). */
export function staleTakeovers(evidence: Evidence): number {
  const dir = join(evidence.root, 'stale');
  return listDir(dir).reduce((n, f) => n + readFileSync(join(dir, f), 'utf8').trim().split('\n').length, 0);
}

/** An attempt's command as it recorded itself: leader and grandchild, each with its /proc start time. */
export interface AttemptProcess {
  record: string;
  pid: number;
  start: number;
  grandchild: number;
  grandchildStart: number;
}

export function attemptProcesses(evidence: Evidence): AttemptProcess[] {
  const dir = join(evidence.root, 'procs');
  return listDir(dir).map((record) => {
    const [pid, start, grandchild, grandchildStart] = readFileSync(join(dir, record), 'utf8').trim().split(' ').map(Number);
    return { record, pid: pid!, start: start!, grandchild: grandchild!, grandchildStart: grandchildStart! };
  });
}

/** The attempts whose command or grandchild is still alive (the pid and its start time both match). */
export function aliveAttempts(processes: AttemptProcess[]): AttemptProcess[] {
  return processes.filter((p) => isSameProcess(p.pid, p.start) || isSameProcess(p.grandchild, p.grandchildStart));
}

/** One attempt's command as the journal saw it: the first and last times it wrote (centiseconds of uptime). */
interface JournalSpan {
  attempt: string;
  first: number;
  last: number;
}

function journalSpans(evidence: Evidence): Map<number, JournalSpan[]> {
  const dir = join(evidence.root, 'journal');
  const result = new Map<number, JournalSpan[]>();
  for (const file of listDir(dir)) {
    const spans = new Map<string, JournalSpan>();
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      if (line === '') continue;
      const [, attempt, time] = line.split(' ');
      const t = Number(time);
      const span = spans.get(attempt!);
      if (!span) spans.set(attempt!, { attempt: attempt!, first: t, last: t });
      else {
        span.first = Math.min(span.first, t);
        span.last = Math.max(span.last, t);
      }
    }
    result.set(Number(file), [...spans.values()]);
  }
  return result;
}

/** Per run: attempt number → how many commands the journal saw start for it (from "start HOST:ATTEMPT:PID"). */
function journalStarts(evidence: Evidence): Map<number, Map<number, number>> {
  const dir = join(evidence.root, 'journal');
  const result = new Map<number, Map<number, number>>();
  for (const file of listDir(dir)) {
    const starts = new Map<number, number>();
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      const [kind, who] = line.split(' ');
      if (kind !== 'start' || who === undefined) continue;
      const attempt = Number(who.split(':').at(-2));
      starts.set(attempt, (starts.get(attempt) ?? 0) + 1);
    }
    result.set(Number(file), starts);
  }
  return result;
}

/** What the evidence check counted over all runs, for the figures. */
export interface CommandTally {
  busyTransitions: number;
  commandsStarted: number;
  /** Busy transitions whose command never started: the daemon died between marking busy and spawning. */
  busyWithoutCommand: number;
}

/**
 * The evidence is there: every run has a non-empty journal, every command that started belongs to an attempt
 * with exactly one busy transition (and only one command per attempt), and every busy transition started a
 * command, except an attempt whose daemon died between writing busy and spawning (then a restart or cleanup
 * ended that attempt and killed nothing). Without this the exclusion checks would pass on missing files.
 */
export function commandEvidenceProblems(
  evidence: Evidence,
  histories: Map<number, RunEvent[]>,
  tally: CommandTally,
): string[] {
  const problems: string[] = [];
  const starts = journalStarts(evidence);
  for (const [number, events] of histories) {
    const started = starts.get(number) ?? new Map<number, number>();
    const journal = join(evidence.root, 'journal', String(number));
    if (!existsSync(journal) || readFileSync(journal, 'utf8').trim() === '') problems.push(`run ${number}: no journal`);
    const busy = new Map<number, number>();
    for (const e of events) if (e.to === 'busy') busy.set(e.attempt, (busy.get(e.attempt) ?? 0) + 1);
    for (const [attempt, n] of busy) {
      tally.busyTransitions += n;
      if (n !== 1) problems.push(`run ${number} attempt ${attempt}: ${n} busy transitions`);
      if (started.has(attempt)) continue;
      const end = events.find((e) => e.attempt === attempt && e.from === 'busy');
      const byRecovery = end?.detail?.kind === 'restart' || end?.detail?.by === 'cleanup';
      if (byRecovery && end?.detail?.killed_pgid === undefined) tally.busyWithoutCommand++;
      else {
        problems.push(
          `run ${number} attempt ${attempt}: busy, but its command never wrote to the journal ` +
            `(ended ${end ? `${end.to}: ${end.reason ?? ''}` : 'never'})`,
        );
      }
    }
    for (const [attempt, n] of started) {
      tally.commandsStarted += n;
      if (!busy.has(attempt)) problems.push(`run ${number} attempt ${attempt}: a command started without a busy transition`);
      if (n !== 1) problems.push(`run ${number} attempt ${attempt}: ${n} commands started`);
    }
  }
  for (const number of starts.keys()) {
    if (!histories.has(number)) problems.push(`journal of run ${number}, a run the test never submitted`);
  }
  if (tally.commandsStarted + tally.busyWithoutCommand !== tally.busyTransitions) {
    problems.push(
      `${tally.commandsStarted} commands started + ${tally.busyWithoutCommand} killed before spawning ≠ ` +
        `${tally.busyTransitions} busy transitions`,
    );
  }
  return problems;
}

/**
 * Pairs of attempts of one run that were alive at the same time: one wrote to the journal strictly after the
 * other had started, and vice versa. Each time is a real observation of the same clock, so a pair is proof.
 */
export function journalOverlaps(evidence: Evidence): string[] {
  const found: string[] = [];
  for (const [number, spans] of journalSpans(evidence)) {
    for (let i = 0; i < spans.length; i++) {
      for (let j = i + 1; j < spans.length; j++) {
        const x = spans[i]!;
        const y = spans[j]!;
        if (x.first < y.last && y.first < x.last) {
          found.push(
            `run ${number}: ${x.attempt} [${x.first}..${x.last}] overlaps ${y.attempt} [${y.first}..${y.last}] (cs of uptime)`,
          );
        }
      }
    }
  }
  return found;
}

/**
 * The shared history invariants (test/model/invariants.ts), plus what holds in these scenarios, where only the
 * daemons write (no operator): the first event claims attempt 1, nothing follows a terminal state, time never
 * goes back, every failure and interruption is counted exactly, and a done run was done exactly once with one output.
 */
export function runHistoryProblems(run: RunDoc, events: RunEvent[]): string[] {
  const problems = checkRunHistory(events, run).map((problem) => `run ${run.number}: ${problem}`);
  for (let i = 1; i < events.length; i++) {
    const previous = events[i - 1]!;
    if (previous.to === 'done' || previous.to === 'abandoned') problems.push(`run ${run.number} event ${i + 1}: after a terminal state`);
    if (events[i]!.time < previous.time) problems.push(`run ${run.number} event ${i + 1}: time goes back`);
  }
  const p = run.processing;
  if (p) {
    // An attempt ended by its host (restart, stop, presumed dead, host fault) is an interruption, named in the
    // event's detail; every other failed or abandoned attempt is a failure.
    const endings = events.filter((e) => e.to === 'failed' || e.to === 'abandoned');
    const interruptions = endings.filter((e) => e.detail?.interruption !== undefined).length;
    const failures = endings.length - interruptions;
    if (p.n_failures !== failures) problems.push(`run ${run.number}: n_failures ${p.n_failures}, events say ${failures}`);
    if ((p.n_interruptions ?? 0) !== interruptions) {
      problems.push(`run ${run.number}: n_interruptions ${p.n_interruptions ?? 0}, events say ${interruptions}`);
    }
    const dones = events.filter((e) => e.to === 'done').length;
    if (p.state === 'done' && (dones !== 1 || run.outputs.length !== 1)) {
      problems.push(`run ${run.number}: done ${dones} times with ${run.outputs.length} registered outputs`);
    }
  }
  return problems;
}

/**
 * Runs a chaos scenario; when it fails (an assertion or a wait that timed out), the error also tells what the
 * commands recorded by then, since a broken guarantee often shows first as runs that never finish.
 */
export async function reportingEvidence(evidence: Evidence, hint: string, scenario: () => Promise<void>): Promise<void> {
  try {
    await scenario();
  } catch (error) {
    const found = [...violations(evidence), ...journalOverlaps(evidence)];
    if (error instanceof Error && found.length > 0) {
      error.message +=
        `\n${found.length} exclusion violation(s) recorded by the commands (${hint}):\n  ` + found.slice(0, 10).join('\n  ');
    }
    throw error;
  }
}

/** For a failure message: each surviving orphan with what the store knew of its run (was its group recorded?). */
export async function describeOrphans(store: RunStore, orphans: AttemptProcess[]): Promise<string[]> {
  return Promise.all(
    orphans.map(async (o) => {
      const number = Number(o.record.split('-')[0]);
      const p = (await store.getRun(number))?.processing;
      const last = (await store.listRunEvents(number)).at(-1);
      return (
        `${o.record} (pid ${o.pid}, grandchild ${o.grandchild}): run ${number} is ${p?.state} on ${p?.host} ` +
        `attempt ${p?.attempt}, recorded pgid ${p?.pgid ?? 'none'}; last event ${last?.from}>${last?.to}: ${last?.reason ?? ''}`
      );
    }),
  );
}
