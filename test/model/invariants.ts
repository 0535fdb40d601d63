import type { RunStore } from '../../src/store/run-store.js';
import { taskKeyOf, type RunDoc, type RunEvent, type RunState, type TaskRef } from '../../src/store/types.js';

// The guarantees a run's stored history must keep whatever crashed in between, as checks that return the
// violations they find (empty: all held). Shared by the model-based crash tests and the many-host chaos tests.

type From = RunState | null;

/**
 * Every state change anyone may write (DESIGN §4): the owner's fenced writes (claim → considering → busy →
 * done/failed/abandoned, released → failed), and the compare-and-set repairs of cleanup and operators (fail,
 * abandon, retry of any run; `process N --force` claims a run whatever its state).
 */
const LEGAL: Record<string, RunState[]> = {
  null: ['considering', 'failed', 'abandoned'],
  considering: ['considering', 'busy', 'failed', 'abandoned'],
  busy: ['considering', 'done', 'failed', 'abandoned'],
  done: ['considering', 'failed', 'abandoned'],
  failed: ['considering', 'failed', 'abandoned'],
  abandoned: ['considering', 'failed', 'abandoned'],
};

/**
 * One task's events (oldest first; listRunEvents(number, stage)) against each other and against the run viewed
 * from that task (getRun(number, stage)); violations as text.
 */
export function checkRunHistory(events: RunEvent[], doc: RunDoc | null): string[] {
  const problems: string[] = [];
  let previous: RunEvent | undefined;
  for (const [i, event] of events.entries()) {
    const at = `event ${i + 1} (${event.from ?? 'pending'} → ${event.to}, attempt ${event.attempt})`;
    const expectedFrom: From = previous ? previous.to : null;
    if (event.from !== expectedFrom) {
      problems.push(`${at}: from ${event.from} but the run was ${expectedFrom ?? 'pending'}`);
    }
    if (!(LEGAL[String(event.from)] ?? []).includes(event.to)) problems.push(`${at}: not a legal transition`);
    const attemptBefore = previous?.attempt ?? 0;
    if (event.to === 'considering' && event.attempt !== attemptBefore + 1) {
      problems.push(`${at}: a claim must start attempt ${attemptBefore + 1}`);
    }
    if (event.to !== 'considering' && event.attempt !== attemptBefore) {
      problems.push(`${at}: attempt changed from ${attemptBefore} without a claim`);
    }
    previous = event;
  }
  if (!doc) {
    if (events.length > 0) problems.push('events exist for a run that does not');
    return problems;
  }
  const p = doc.processing;
  if (!p) {
    if (events.length > 0) problems.push(`the run has ${events.length} events but no processing document`);
    return problems;
  }
  if (!previous) return [...problems, `the run is ${p.state} but has no events`];
  if (previous.to !== p.state) problems.push(`the last event says ${previous.to}, the run says ${p.state}`);
  if (previous.attempt !== p.attempt) problems.push(`the last event is attempt ${previous.attempt}, the run ${p.attempt}`);
  if (p.state === 'failed' && typeof p.next_retry !== 'number') problems.push('failed without next_retry');
  // The view's task registered it: an output of another stage's task with the same attempt number is not it.
  const stage = doc.stage ?? 'process';
  if (p.state === 'done' && !doc.outputs.some((o) => o.attempt === p.attempt && (o.stage ?? 'process') === stage)) {
    problems.push(`${stage} done without an output registered by attempt ${p.attempt}`);
  }
  const failures = events.filter((e) => e.to === 'failed' || e.to === 'abandoned').length;
  if (p.n_failures > failures) problems.push(`n_failures ${p.n_failures} but only ${failures} failures recorded`);
  return problems;
}

/** Where a run may rest once nobody works on it: done, abandoned, or failed and due again later. */
export function checkRunSettled(doc: RunDoc | null): string[] {
  const p = doc?.processing;
  if (!p) return ['the run was never processed'];
  if (p.state === 'done' || p.state === 'abandoned') return [];
  if (p.state === 'failed' && typeof p.next_retry === 'number') return [];
  return [`the run rests in ${p.state}${p.state === 'failed' ? ' without next_retry' : ''}`];
}

/**
 * A writer that lost its lease (a crashed or displaced daemon, a zombie owner) tries every fenced write with
 * its old token; each must be refused and change nothing, neither the run nor its events.
 */
export async function checkStaleTokenRefused(store: RunStore, task: TaskRef, staleToken: string): Promise<string[]> {
  const { number, stage } = taskKeyOf(task);
  // Every task of the run and every event, so a stale write that touched another task is caught too.
  const snapshot = async () => JSON.stringify([await store.getRun(number, stage), await store.listRunEvents(number)]);
  const before = await snapshot();
  const now = Date.now();
  const attempts: Array<[string, () => Promise<boolean>]> = [
    ['heartbeatRun', () => store.heartbeatRun(task, staleToken)],
    ['markBusy', () => store.markBusy(task, staleToken, { started: now })],
    ['recordProcessGroup', () => store.recordProcessGroup(task, staleToken, { pgid: 999_999 })],
    ['finishRun', () => store.finishRun(task, staleToken, { location: '/stale', host: 'stale', attempt: 0, at: now, stage })],
    ['failRun', () => store.failRun(task, staleToken, { reason: 'stale owner', n_failures: 0, next_retry: now })],
    ['abandonRun', () => store.abandonRun(task, staleToken, { reason: 'stale owner', n_failures: 0 })],
    ['releaseRun', () => store.releaseRun(task, staleToken, 'stale owner')],
  ];
  const problems: string[] = [];
  for (const [name, write] of attempts) {
    if (await write()) problems.push(`${name} with the stale token ${staleToken} was accepted`);
  }
  const after = await snapshot();
  if (after !== before) problems.push(`fenced writes with the stale token ${staleToken} changed the run or its events`);
  return problems;
}

/** The attempt numbers seen over time (documents read one after another) never go down. */
export function checkAttemptsGrow(seen: number[]): string[] {
  for (let i = 1; i < seen.length; i += 1) {
    if (seen[i]! < seen[i - 1]!) return [`the attempt went down from ${seen[i - 1]} to ${seen[i]}`];
  }
  return [];
}
