import { describe, expect, it } from 'vitest';
import type { RunSelector } from '../../src/config/schema.js';
import { validateConfig } from '../../src/config/validate.js';
import {
  PROCESS_STAGE,
  attemptLogDir,
  firstWaveAttemptLogDir,
  matchesSelector,
  taskOutputDir,
  stageNamed,
  stagesForRun,
  stagesOf,
  upstreamOf,
  upstreamOutputs,
  type SelectableRun,
} from '../../src/policy/pipeline.js';

const options = { cwd: '/srv', hostName: () => 'h' };
const firstWave = () =>
  validateConfig(
    {
      slots: 3,
      process: { command: ['p', '{number}'], env: { A: '1' }, targets: ['peaks'], host_fault_threshold: 5 },
      timeouts: { max_processing_time: '2h', max_no_output_time: '10m' },
      retry: { max_failures: 4 },
    },
    options,
  );

const threeStages = () =>
  validateConfig(
    {
      stages: {
        fetch: { command: ['f'], select: { tags: ['remote'], require_end: true } },
        process: { command: ['p'], needs: ['fetch'], select: { not_tags: ['skip_process'] } },
        compress: { command: ['c'], needs: ['process'] },
        report: { command: ['r'] },
      },
    },
    options,
  );

const run = (fields: Partial<SelectableRun> = {}): SelectableRun => ({ number: 7, tags: [], params: {}, ...fields });

describe('stagesOf', () => {
  it('a first-wave config is exactly one stage, process, made of process:, slots, timeouts and retry', () => {
    const config = firstWave();
    const stages = stagesOf(config);
    expect(stages).toHaveLength(1);
    const [stage] = stages;
    const { host_fault_threshold: _host, ...section } = config.process;
    expect(stage).toEqual({
      ...section,
      name: PROCESS_STAGE,
      needs: [],
      depth: 0,
      slots: 3,
      check: [],
      select: {},
      timeouts: { max_processing_time: 2 * 3_600_000, max_no_output_time: 10 * 60_000 },
      retry: config.retry,
    });
    expect(stage).not.toHaveProperty('host_fault_threshold');
  });

  it('reads the config as it is now (tests change timeouts after loading)', () => {
    const config = firstWave();
    config.timeouts.max_no_output_time = 1_000;
    config.slots = 1;
    expect(stagesOf(config)[0]).toMatchObject({ slots: 1, timeouts: { max_no_output_time: 1_000 } });
  });

  it('gives a pipeline\'s stages upstream first, and stageNamed finds one', () => {
    const config = threeStages();
    // Upstream first; among stages free to go, the one written first (report comes last in the file).
    expect(stagesOf(config).map((stage) => stage.name)).toEqual(['fetch', 'process', 'compress', 'report']);
    expect(stageNamed(config, 'compress')?.needs).toEqual(['process']);
    expect(stageNamed(config, 'upload')).toBeUndefined();
    expect(stageNamed(firstWave(), 'process')?.command).toEqual(['p', '{number}']);
  });
});

describe('matchesSelector', () => {
  const cases: [string, RunSelector, Partial<SelectableRun>, boolean][] = [
    ['empty selector takes every run', {}, {}, true],
    ['all tags present', { tags: ['a', 'b'] }, { tags: ['b', 'a', 'c'] }, true],
    ['one tag missing', { tags: ['a', 'b'] }, { tags: ['a'] }, false],
    ['no excluded tag', { not_tags: ['x'] }, { tags: ['a'] }, true],
    ['an excluded tag', { not_tags: ['x', 'y'] }, { tags: ['y'] }, false],
    ['mode listed', { modes: ['physics', 'calib'] }, { mode: 'calib' }, true],
    ['mode not listed', { modes: ['physics'] }, { mode: 'calib' }, false],
    ['no mode when modes are asked', { modes: ['physics'] }, {}, false],
    ['number at the lower bound', { min_number: 7 }, { number: 7 }, true],
    ['number below', { min_number: 8 }, { number: 7 }, false],
    ['number at the upper bound', { max_number: 7 }, { number: 7 }, true],
    ['number above', { max_number: 6 }, { number: 7 }, false],
    ['min 0 is a bound, not absent', { min_number: 0, max_number: 0 }, { number: 0 }, true],
    ['param equal', { params: { dataset: 'SiR2', energy: 2.5 } }, { params: { dataset: 'SiR2', energy: 2.5, x: 1 } }, true],
    ['param differs in type', { params: { energy: 2.5 } }, { params: { energy: '2.5' } }, false],
    ['param missing', { params: { dataset: 'SiR2' } }, { params: {} }, false],
    ['param on the prototype is not the run\'s', { params: { constructor: 'x' } }, { params: {} }, false],
    ['require_end with an end', { require_end: true }, { end: 5 }, true],
    ['require_end without an end', { require_end: true }, {}, false],
    ['require_end false takes a run still running', { require_end: false }, {}, true],
  ];
  it.each(cases)('%s', (_case, selector, fields, expected) => {
    expect(matchesSelector(run(fields), selector)).toBe(expected);
  });
});

describe('stagesForRun', () => {
  it('a first-wave config gives every run one process task', () => {
    expect(stagesForRun(firstWave(), run())).toEqual([{ stage: 'process', needs: [] }]);
  });

  it('gives every stage whose selection matches, in pipeline order, with its needs', () => {
    expect(stagesForRun(threeStages(), run({ tags: ['remote'] }))).toEqual([
      { stage: 'fetch', needs: [] },
      { stage: 'process', needs: ['fetch'] },
      { stage: 'compress', needs: ['process'] },
      { stage: 'report', needs: [] },
    ]);
  });

  it('a stage whose needed stage was skipped is skipped, and so is everything below it', () => {
    // fetch wants the tag remote: without it, process and compress have nothing to wait for.
    expect(stagesForRun(threeStages(), run()).map((spec) => spec.stage)).toEqual(['report']);
    // process is skipped by its own selection: compress goes with it, fetch stays.
    expect(stagesForRun(threeStages(), run({ tags: ['remote', 'skip_process'] })).map((spec) => spec.stage)).toEqual(['fetch', 'report']);
  });

  it('require_end is no reason to skip a stage: it only holds the task back when claiming', () => {
    expect(stagesForRun(threeStages(), run({ tags: ['remote'] })).map((spec) => spec.stage)).toContain('fetch');
  });
});

describe('upstreamOf and upstreamOutputs', () => {
  it('lists every stage above one, directly or further up, in pipeline order', () => {
    const config = threeStages();
    const stages = stagesOf(config);
    expect(upstreamOf(stages, 'compress')).toEqual(['fetch', 'process']);
    expect(upstreamOf(stages, 'fetch')).toEqual([]);
    expect(upstreamOf(stages, 'report')).toEqual([]);
    // A diamond lists a shared ancestor once.
    const diamond = [
      { name: 'a', needs: [] },
      { name: 'b', needs: ['a'] },
      { name: 'c', needs: ['a'] },
      { name: 'd', needs: ['c', 'b'] },
    ];
    expect(upstreamOf(diamond, 'd')).toEqual(['a', 'b', 'c']);
  });

  it('gives each upstream stage\'s newest output; an output without a stage is process\'s (first wave)', () => {
    const outputs = [
      { location: '/out/fetch/000007-old', stage: 'fetch', at: 100 },
      { location: '/out/fetch/000007', stage: 'fetch', at: 300 },
      { location: '/out/000007', at: 200 },
      { location: '/out/compress/000007', stage: 'compress', at: 400 },
      { location: '/out/report/000007', stage: 'report', at: 500 },
    ];
    expect(upstreamOutputs(threeStages(), 'compress', outputs)).toEqual({
      fetch: { output: '/out/fetch/000007' },
      process: { output: '/out/000007' },
    });
    // A stage above with nothing registered is left out; its placeholder then fails the attempt.
    expect(upstreamOutputs(threeStages(), 'compress', outputs.filter((output) => output.stage !== 'fetch'))).toEqual({
      process: { output: '/out/000007' },
    });
    expect(upstreamOutputs(firstWave(), 'process', outputs)).toEqual({});
  });
});

describe('layout', () => {
  it('without stages: outputs stay at output_root/{number06}; logs go to log_dir/process/{number}', () => {
    const config = validateConfig({ process: { command: ['p'], output_root: '/data/out/', log_dir: '/data/logs' } }, options);
    const [stage] = stagesOf(config);
    expect(taskOutputDir(config, stage, 42)).toBe('/data/out/000042');
    expect(attemptLogDir(stage, 42)).toBe('/data/logs/process/42');
    expect(firstWaveAttemptLogDir(config.process.log_dir, 42)).toBe('/data/logs/42');
  });

  it('with stages: output_root/{stage}/{number06} and log_dir/{stage}/{number}, a stage named process included', () => {
    const config = validateConfig(
      { process: { output_root: '/data/out', log_dir: '/data/logs' }, stages: { process: { command: ['p'] }, compress: { command: ['c'], needs: ['process'], output_root: '/big' } } },
      options,
    );
    const [process, compress] = stagesOf(config);
    expect(taskOutputDir(config, process, 1_234_567)).toBe('/data/out/process/1234567');
    expect(taskOutputDir(config, compress, 7)).toBe('/big/compress/000007');
    expect(attemptLogDir(compress, 7)).toBe('/data/logs/compress/7');
  });
});
