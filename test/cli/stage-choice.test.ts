import { describe, expect, it } from 'vitest';
import { renderRun } from '../../src/cli/show.js';
import { taskOfRun, taskOfView } from '../../src/cli/stage-choice.js';
import { UsageError } from '../../src/errors.js';
import type { RunDoc, RunEvent } from '../../src/store/types.js';

// Which task a command acts on (--stage, issue 14 point 8), and how `show` prints a run task by task.

const T = Date.UTC(2026, 11, 6, 3, 0, 0);
const base: RunDoc = { number: 7, start: T, tags: [], priority: 0, params: {}, outputs: [] };
const p = (state: 'done' | 'failed' | 'abandoned' | 'busy', extra = {}) => ({
  state,
  host: 'daq',
  pid: 40,
  token: 'secret-token',
  attempt: 1,
  time: T,
  n_failures: state === 'failed' ? 1 : 0,
  ...extra,
});
const pipeline: RunDoc = {
  ...base,
  stage: 'process',
  tags: ['hold:upload'],
  processing: p('abandoned', { reason: 'abandoned by ana@ops: bad calibration' }),
  tasks: [
    { stage: 'process', needs: [], processing: p('abandoned', { reason: 'abandoned by ana@ops: bad calibration' }) },
    {
      stage: 'compress',
      needs: ['process'],
      blocked: { stage: 'process', reason: 'abandoned by ana@ops: bad calibration', time: T + 1000 },
    },
    { stage: 'upload', needs: ['compress'] },
  ],
};

describe('taskOfRun', () => {
  it('names a first-wave run (one process task, or a store without task lists) by its number alone', () => {
    expect(taskOfRun(base, undefined, 'fail')).toBe(7);
    expect(taskOfRun(base, 'process', 'fail')).toBe(7);
    expect(taskOfRun({ ...base, tasks: [{ stage: 'process', needs: [] }] }, undefined, 'fail')).toBe(7);
    expect(taskOfView(base)).toBe(7);
  });

  it('takes the only task of a one-stage run of another stage, with its stage', () => {
    const fetchOnly: RunDoc = { ...base, stage: 'fetch', tasks: [{ stage: 'fetch', needs: [] }] };
    expect(taskOfRun(fetchOnly, undefined, 'fail')).toEqual({ number: 7, stage: 'fetch' });
  });

  it('needs --stage for a run of several tasks, naming them (exit 2)', () => {
    const refused = () => taskOfRun(pipeline, undefined, 'retry');
    expect(refused).toThrow(UsageError);
    expect(refused).toThrow('--stage: run 7 has 3 stages (process, compress, upload); name the one to retry with --stage');
    expect(taskOfRun(pipeline, 'compress', 'retry')).toEqual({ number: 7, stage: 'compress' });
    expect(taskOfRun(pipeline, 'process', 'retry')).toEqual({ number: 7, stage: 'process' });
  });

  it('refuses a stage the run has no task of, naming it and the ones it has (exit 2)', () => {
    const refused = () => taskOfRun(pipeline, 'compres', 'fail');
    expect(refused).toThrow(UsageError);
    expect(refused).toThrow('--stage: run 7 has no stage "compres"; its stages: process, compress, upload');
    expect(() => taskOfRun(base, 'upload', 'fail')).toThrow('--stage: run 7 has no stage "upload"; its stages: process');
    expect(() => taskOfRun(base, '\x1b[31mred', 'fail')).toThrow('has no stage "red"');
  });
});

describe('renderRun of a pipeline run', () => {
  const events: RunEvent[] = [
    { number: 7, stage: 'process', time: T, host: 'daq', attempt: 1, from: null, to: 'considering' },
    { number: 7, stage: 'process', time: T + 1000, host: 'ops', attempt: 1, from: 'considering', to: 'abandoned', reason: 'abandoned by ana@ops: bad calibration' },
  ];

  it('prints every task: needs, blocked-by with the way out, held stage, processing; history with a STAGE column', () => {
    const text = renderRun(pipeline, events);
    expect(text).toContain('task process\n  processing\n    state        abandoned');
    expect(text).toContain(
      'task compress (needs process)\n' +
        '  blocked      stage process was abandoned (2026-12-06 03:00:01Z): abandoned by ana@ops: bad calibration; ' +
        'runwarden retry 7 --stage process unblocks it\n' +
        '  processing    never claimed (pending)',
    );
    expect(text).toContain('task upload (needs compress)\n  held         tag hold:upload: runwarden release 7 --stage upload');
    expect(text).not.toContain('secret-token');
    expect(text).toMatch(/TIME +HOST +STAGE +ATTEMPT/);
    expect(text).toMatch(/ops +process +1 +considering +abandoned/);
  });

  it('--stage prints that task alone', () => {
    const text = renderRun(pipeline, events, { stage: 'upload' });
    expect(text).toContain('task upload');
    expect(text).not.toContain('task process');
    expect(text).not.toContain('task compress');
  });

  it('keeps the first-wave layout for a run of one process task', () => {
    const first = renderRun({ ...base, processing: p('done'), tasks: [{ stage: 'process', needs: [], processing: p('done') }] }, []);
    expect(first).toContain('\nprocessing\n  state        done');
    expect(first).not.toContain('task ');
    expect(first).not.toContain('STAGE');
  });
});
