import type { Db, MongoClient } from 'mongodb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { renderRun } from '../../src/cli/show.js';
import { stageCountsTable } from '../../src/cli/status.js';
import { readTopSnapshot } from '../../src/cli/top-snapshot.js';
import { renderTop } from '../../src/cli/top-view.js';
import { defaultConfig } from '../../src/config/schema.js';
import {
  abandonRunByOperator,
  claimForProcessing,
  failRunByOperator,
  retryRunByOperator,
  setHoldByOperator,
  type OperatorDeps,
} from '../../src/daemon/operator-actions.js';
import { RefusedError } from '../../src/errors.js';
import { MongoRunStore } from '../../src/store/mongo/mongo-store.js';
import { parseMongoUrl } from '../../src/store/mongo/url.js';
import { topologyFromHello } from '../../src/store/mongo/wake.js';
import type { RunStore, TaskSpec } from '../../src/store/run-store.js';
import { MingoDb } from '../store/mongo/mingo-db.js';

// What the faces do with a pipeline run (issue 14 point 8), through the operator actions and a real store
// class (MongoRunStore on in-memory mingo collections): an abandon blocks the stages below, a retry of the
// abandoned stage unblocks them, `process` never starts a task before its upstream is done, hold:<stage> holds
// one task, and show/status/top print each task with its stage.

const PIPELINE: TaskSpec[] = [
  { stage: 'process', needs: [] },
  { stage: 'compress', needs: ['process'] },
  { stage: 'upload', needs: ['compress'] },
];

let store: RunStore;

beforeEach(() => {
  const client = { close: async () => undefined } as unknown as MongoClient;
  store = new MongoRunStore(client, new MingoDb() as unknown as Db, parseMongoUrl('mongodb://mingo/runs'), topologyFromHello({}), {
    idlePollMs: 50,
  });
});

afterEach(async () => {
  await store.close();
});

function deps(): OperatorDeps {
  return { store, config: defaultConfig('/tmp', 'ops'), host: 'ops', user: 'ana', random: () => 0.5, clock: Date.now };
}

async function claimAs(number: number, stage: string, host = 'daq') {
  const claimed = await store.claimNextRun({ host, pid: 1, order: 'newest', stages: [{ stage, depth: 0 }] });
  expect(claimed).toMatchObject({ number, stage });
  return claimed!;
}

describe('operator actions on the tasks of a pipeline run', () => {
  it('abandon blocks the stages below; they refuse retry and process, naming the way out; retry upstream unblocks', async () => {
    await store.insertRun({ number: 7, start: Date.now() }, PIPELINE);
    await claimAs(7, 'process');

    const abandoned = await abandonRunByOperator(deps(), { number: 7, stage: 'process' }, 'bad calibration');
    expect(abandoned).toMatchObject({ number: 7, stage: 'process', from: 'considering', to: 'abandoned' });
    const compress = (await store.getRun(7, 'compress'))!;
    expect(compress.blocked).toMatchObject({ stage: 'process' });
    expect((await store.getRun(7, 'upload'))!.blocked).toMatchObject({ stage: 'process' });

    const retryBlocked = retryRunByOperator(deps(), { number: 7, stage: 'compress' });
    await expect(retryBlocked).rejects.toBeInstanceOf(RefusedError);
    await expect(retryRunByOperator(deps(), { number: 7, stage: 'compress' })).rejects.toThrow(
      'runwarden retry 7 --stage process unblocks it',
    );
    await expect(claimForProcessing(deps(), { number: 7, stage: 'compress' }, { force: true })).rejects.toThrow(
      'cannot process run 7 stage compress: it is pending (never processed); it needs process (abandoned) done first',
    );
    expect((await store.getRun(7, 'compress'))!.processing).toBeUndefined();

    const text = renderRun((await store.getRun(7))!, await store.listRunEvents(7));
    expect(text).toMatch(/task compress \(needs process\)\n {2}blocked {6}stage process was abandoned \(.*\): abandoned by ana@ops: bad calibration; runwarden retry 7 --stage process unblocks it/);
    expect(text).toMatch(/STAGE/);

    const retried = await retryRunByOperator(deps(), { number: 7, stage: 'process' });
    expect(retried).toMatchObject({ stage: 'process', from: 'abandoned', to: 'failed' });
    expect((await store.getRun(7, 'compress'))!.blocked).toBeUndefined();
    expect((await store.getRun(7, 'upload'))!.blocked).toBeUndefined();
    // still not before its upstream is done
    await expect(claimForProcessing(deps(), { number: 7, stage: 'compress' })).rejects.toThrow('it needs process (failed) done first');
  });

  it('process takes a downstream task once its upstream is done; fail names the task', async () => {
    await store.insertRun({ number: 8, start: Date.now() }, PIPELINE);
    const p = await claimAs(8, 'process');
    expect(await store.finishRun({ number: 8, stage: 'process' }, p.processing!.token, { location: '/out/8', host: 'daq', attempt: 1, at: Date.now() })).toBe(true);

    const claim = await claimForProcessing(deps(), { number: 8, stage: 'compress' });
    expect(claim.run).toMatchObject({ number: 8, stage: 'compress', processing: { state: 'considering', host: 'ops' } });
    await expect(claimForProcessing(deps(), { number: 8, stage: 'upload' })).rejects.toThrow('it needs compress (considering) done first');

    const failed = await failRunByOperator(deps(), { number: 8, stage: 'compress' }, 'disk full');
    expect(failed).toMatchObject({ stage: 'compress', from: 'considering', to: 'failed' });
    expect((await store.getRun(8, 'process'))!.processing!.state).toBe('done');
    expect((await store.listLog({ number: 8 })).map((e) => e.message).join('\n')).toContain('run 8 stage compress (was considering');
  });

  it('hold with a stage tags hold:<stage> and holds that task only; without, the whole run', async () => {
    await store.insertRun({ number: 9, start: Date.now() }, PIPELINE.slice(0, 2));
    const held = await setHoldByOperator(deps(), { number: 9, stage: 'process' }, true);
    expect(held).toMatchObject({ stage: 'process', action: 'hold' });
    expect(held.run.tags).toEqual(['hold:process']);
    expect(await store.claimNextRun({ host: 'daq', pid: 1, order: 'newest', stages: [{ stage: 'process', depth: 0 }] })).toBeNull();
    const released = await setHoldByOperator(deps(), { number: 9, stage: 'process' }, false);
    expect(released.run.tags).toEqual([]);
    await setHoldByOperator(deps(), 9, true);
    expect((await store.getRun(9))!.tags).toEqual(['hold']);
  });
});

describe('status and top per stage', () => {
  it('count tasks per stage and state, and show each busy task with its stage', async () => {
    await store.insertRun({ number: 10, start: Date.now() }, PIPELINE);
    await store.insertRun({ number: 11, start: Date.now() - 1000 }, PIPELINE);
    const p10 = await claimAs(10, 'process');
    await store.markBusy({ number: 10, stage: 'process' }, p10.processing!.token, { started: Date.now() });
    const p11 = await claimAs(11, 'process');
    await store.finishRun({ number: 11, stage: 'process' }, p11.processing!.token, { location: '/o', host: 'daq', attempt: 1, at: Date.now() });
    const c11 = await claimAs(11, 'compress', 'daq2');
    await store.markBusy({ number: 11, stage: 'compress' }, c11.processing!.token, { started: Date.now() });

    const config = { ...defaultConfig('/tmp', 'ops') };
    config.stages = PIPELINE.map((t, depth) => ({ ...config.process, name: t.stage, needs: t.needs, depth, slots: 1, check: [], select: {}, timeouts: { max_processing_time: 1, max_no_output_time: 1 }, retry: config.retry }));
    const snapshot = await readTopSnapshot(store, '/nonexistent/logs', Date.now, config);
    expect(snapshot.stages!.map((s) => s.stage)).toEqual(['process', 'compress', 'upload']);
    const frame = renderTop({ location: 'mingo', snapshot, intervalMs: 1000, live: false }, { columns: 140, rows: 40 }, Date.now()).join('\n');
    expect(frame).toMatch(/process +pending 0 {2}considering 0 {2}busy 1 {2}done 1 {2}failed 0 {2}abandoned 0 {2}blocked 0/);
    expect(frame).toMatch(/compress +pending 1 {2}considering 0 {2}busy 1/);
    expect(frame).toMatch(/upload +pending 2 /);
    expect(frame).toMatch(/BUSY +STAGE +ATTEMPT/);
    expect(frame).toMatch(/11 +compress +1 +daq2/);
    expect(frame).toMatch(/10 +process +1 +daq /);

    const table = stageCountsTable(await store.countRunsByState(), await store.countTasksByStage(), ['process', 'compress', 'upload']);
    expect(table.split('\n')[0]).toMatch(/^STAGE +PENDING +CONSIDERING +BUSY +DONE +FAILED +ABANDONED +BLOCKED$/);
    expect(table.split('\n').slice(1).map((l) => l.split(/ +/).slice(0, 5).join(' '))).toEqual([
      'process 0 0 1 1',
      'compress 1 0 1 0',
      'upload 2 0 0 0',
    ]);
  });

  it('keep the first wave\'s one line of runs per state for a store of process tasks only', async () => {
    await store.insertRun({ number: 12, start: Date.now() });
    const snapshot = await readTopSnapshot(store, '/nonexistent/logs');
    const frame = renderTop({ location: 'mingo', snapshot, intervalMs: 1000, live: false }, { columns: 120, rows: 30 }, Date.now()).join('\n');
    expect(frame).toContain('runs  pending 1  considering 0');
    expect(frame).not.toContain('STAGE');
    expect(stageCountsTable(await store.countRunsByState(), await store.countTasksByStage())).toMatch(/^STATE +RUNS\npending +1/);
  });
});
