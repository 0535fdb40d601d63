import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import { abandonRunByOperator, failRunByOperator, type OperatorDeps } from '../../src/daemon/operator-actions.js';
import { applyToRuns, selectRuns } from '../../src/daemon/operator-selection.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir } from '../helpers/cli.js';

// Operator actions on a selection, against a real SQLite file: each run is written fenced on the reading the
// operator confirmed, so a run that changed in between is left alone and reported, never overwritten.

let dir: string;
let cleanup: () => void;
let store: RunStore;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir('runwarden-selection-'));
  store = await openStore(`sqlite:${join(dir, 'runs.db')}`);
});

afterEach(async () => {
  await store.close();
  cleanup();
});

function deps(): OperatorDeps {
  return { store, config: defaultConfig(dir, 'ops'), host: 'ops', user: 'tester', random: () => 0.5, clock: Date.now };
}

describe('applyToRuns', () => {
  it('skips a run that changed after it was selected (another operator abandoned it) and writes the others', async () => {
    for (const number of [1, 2, 3]) await store.insertRun({ number, start: Date.now(), tags: [] });
    const owner = { host: 'daq', pid: 1, order: 'newest' as const };
    for (const number of [1, 2, 3]) await store.claimRun(number, owner, { state: null, token: null });
    const selected = await selectRuns(store, { state: 'considering' });
    expect(selected.runs.map((r) => r.number)).toEqual([1, 2, 3]);

    // Between the selection (and the operator's yes) and the writes, run 2 is abandoned by someone else.
    await abandonRunByOperator(deps(), 2, 'someone else');
    const outcomes = await applyToRuns(selected, (run) => failRunByOperator(deps(), run.number, 'bulk', { selected: run }));

    expect(outcomes.map((o) => [o.number, o.outcome])).toEqual([
      [1, 'changed'],
      [2, 'skipped'],
      [3, 'changed'],
    ]);
    expect(outcomes[1]).toMatchObject({ why: expect.stringMatching(/run 2 changed since it was selected \(it was considering on host daq .*it is now abandoned\); left alone/) });
    expect((await store.getRun(2))!.processing).toMatchObject({ state: 'abandoned', reason: 'abandoned by tester@ops: someone else' });
    expect((await store.getRun(1))!.processing).toMatchObject({ state: 'failed', reason: 'failed by tester@ops: bulk' });
  });

  it('selects named numbers that match the state and tag, and names the missing ones', async () => {
    await store.insertRun({ number: 1, start: Date.now(), tags: ['calib'] });
    await store.insertRun({ number: 2, start: Date.now(), tags: [] });
    const selected = await selectRuns(store, { numbers: [2, 1, 9, 1], tag: 'calib' });
    expect(selected.runs.map((r) => r.number)).toEqual([1]);
    expect(selected.missing).toEqual([9]);
  });
});
