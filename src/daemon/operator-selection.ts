import { RefusedError, RunNotFoundError } from '../errors.js';
import type { RunStore } from '../store/run-store.js';
import type { RunDoc } from '../store/types.js';
import { stateLabel, type OperatorResult, type RunStateLabel } from './operator-actions.js';

// Operator actions on several runs at once (`retry --state abandoned`, `hold 7 8 9`, `fail 10-20 --tag calib`):
// which runs a selection names, and each one's action applied on its own, fenced on the reading the operator
// confirmed. Never one blind bulk update: a run that changed in between is reported and left alone.

export interface RunSelection {
  /** Runs named by number; with state or tag, only those of them that also match. */
  numbers?: number[];
  state?: RunStateLabel;
  tag?: string;
  /** Only this stage's tasks: each run read as viewed from that stage. */
  stage?: string;
}

export interface SelectedRuns {
  /** Ascending by number, as read once. */
  runs: RunDoc[];
  /** Numbers named that do not exist. */
  missing: number[];
}

function matches(run: RunDoc, selection: RunSelection): boolean {
  if (selection.state !== undefined && stateLabel(run) !== selection.state) return false;
  if (selection.tag !== undefined && !run.tags.includes(selection.tag)) return false;
  return true;
}

/**
 * Reads the runs a selection names (each once); the store filters by state, tag and stage when no number is named
 * (one view per matching task).
 */
export async function selectRuns(store: RunStore, selection: RunSelection): Promise<SelectedRuns> {
  if (selection.numbers === undefined) {
    const runs = await store.listRuns({
      ...(selection.state !== undefined ? { state: selection.state } : {}),
      ...(selection.tag !== undefined ? { tag: selection.tag } : {}),
      ...(selection.stage !== undefined ? { stage: selection.stage } : {}),
    });
    return { runs: runs.filter((run) => matches(run, selection)).sort((a, b) => a.number - b.number), missing: [] };
  }
  const runs: RunDoc[] = [];
  const missing: number[] = [];
  for (const number of [...new Set(selection.numbers)].sort((a, b) => a - b)) {
    const run = selection.stage !== undefined ? await store.getRun(number, selection.stage) : await store.getRun(number);
    if (!run) missing.push(number);
    else if (matches(run, selection)) runs.push(run);
  }
  return { runs, missing };
}

export type RunActionOutcome =
  | { number: number; outcome: 'changed'; result: OperatorResult }
  /** Not allowed in the run's state, or it changed since it was selected: nothing written. */
  | { number: number; outcome: 'skipped'; why: string; state: RunStateLabel }
  | { number: number; outcome: 'not found' };

/**
 * Applies `act` to each selected run in turn (each its own compare-and-set on the run as selected). A refusal or
 * a run changed meanwhile is that run's outcome, and the next run is done; any other error (the store) stops.
 */
export async function applyToRuns(
  selected: SelectedRuns,
  act: (run: RunDoc) => Promise<OperatorResult>,
): Promise<RunActionOutcome[]> {
  const outcomes: RunActionOutcome[] = selected.missing.map((number) => ({ number, outcome: 'not found' as const }));
  for (const run of selected.runs) {
    try {
      outcomes.push({ number: run.number, outcome: 'changed', result: await act(run) });
    } catch (error) {
      if (error instanceof RunNotFoundError) outcomes.push({ number: run.number, outcome: 'not found' });
      else if (error instanceof RefusedError) {
        outcomes.push({ number: run.number, outcome: 'skipped', why: error.message, state: stateLabel(run) });
      } else throw error;
    }
  }
  return outcomes.sort((a, b) => a.number - b.number);
}
