// `stages:` and `select:` (DESIGN §9): how a pipeline is read, inherited, ordered and refused.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { describeConfig, requireCommand, validateConfig } from '../../src/config/validate.js';
import { ConfigError, ConfigProblems } from '../../src/errors.js';
import { stagesOf } from '../../src/policy/pipeline.js';

const cwd = '/srv/runwarden';
const options = { cwd, hostName: () => 'daq01' };

function problems(raw: unknown): ConfigError[] {
  try {
    validateConfig(raw, options);
  } catch (error) {
    if (error instanceof ConfigProblems) return error.problems;
    if (error instanceof ConfigError) return [error];
    throw error;
  }
  throw new Error(`accepted ${JSON.stringify(raw)}`);
}

const pipeline = {
  slots: 6,
  process: { cwd: 'work', env: { STRAX: '/opt/strax.ini' }, output_root: '/data/out', log_dir: '/data/logs', targets: ['peaks'] },
  timeouts: { max_processing_time: '10h' },
  retry: { base: '2m', max_failures: 4 },
  // File order is not pipeline order: compress comes first here but needs process.
  stages: {
    compress: {
      needs: ['process'],
      command: ['xz-dir', '{upstream.process.output}', '{output}'],
      check: ['verify', '{output}', '{upstream.fetch.output}'],
      slots: 2,
      env: { LEVEL: '9' },
      timeouts: { max_no_output_time: '5m' },
      retry: { max_failures: 2 },
    },
    fetch: { command: ['fetch', '{number}', '{output}'], slots: 5, select: { tags: ['remote'], require_end: true } },
    process: { needs: ['fetch'], command: ['strax', '{number06}', '{upstream.fetch.output}', '{output}', '{stage}'], cwd: '/scratch' },
  },
};

describe('stages: resolved', () => {
  it('orders stages upstream first, with their depth, and each inherits from process:, timeouts and retry what it does not set', () => {
    const config = validateConfig(pipeline, options);
    const stages = config.stages!;
    expect(stages.map((stage) => [stage.name, stage.depth, stage.needs])).toEqual([
      ['fetch', 0, []],
      ['process', 1, ['fetch']],
      ['compress', 2, ['process']],
    ]);
    const [fetch, process, compress] = stages;
    // Inherited from process: (paths resolved once, where process: was read).
    expect(fetch.cwd).toBe('/srv/runwarden/work');
    expect(fetch.env).toEqual({ STRAX: '/opt/strax.ini' });
    expect(fetch.output_root).toBe('/data/out');
    expect(fetch.log_dir).toBe('/data/logs');
    expect(fetch.targets).toEqual(['peaks']);
    // Set by the stage: replaces what process: says, key by key.
    expect(process.cwd).toBe('/scratch');
    expect(compress.env).toEqual({ LEVEL: '9' });
    // Slots: the stage's share, the daemon's slots when not given.
    expect(stages.map((stage) => stage.slots)).toEqual([5, 6, 2]);
    // Timeouts and retry: the stage's own keys over the daemon's.
    expect(compress.timeouts).toEqual({ max_processing_time: 10 * 3_600_000, max_no_output_time: 5 * 60_000 });
    expect(fetch.timeouts).toEqual({ max_processing_time: 10 * 3_600_000, max_no_output_time: 30 * 60_000 });
    expect(compress.retry).toEqual({ ...config.retry, max_failures: 2 });
    expect(fetch.retry).toEqual(config.retry);
    expect(config.retry).toMatchObject({ base: 120_000, max_failures: 4 });
    expect(fetch.select).toEqual({ tags: ['remote'], require_end: true });
    expect(process.select).toEqual({});
    expect(compress.check).toEqual(['verify', '{output}', '{upstream.fetch.output}']);
    expect(fetch.check).toEqual([]);
    // process: holds no command with stages:, and stagesOf reads the stages.
    expect(config.process.command).toEqual([]);
    expect(stagesOf(config)).toBe(stages);
    expect(() => requireCommand(config)).not.toThrow();
  });

  it('keeps file order among stages that could go either way', () => {
    const config = validateConfig(
      {
        stages: {
          b: { command: ['b'] },
          z: { command: ['z'], needs: ['b', 'a'] },
          a: { command: ['a'] },
          y: { command: ['y'], needs: ['a'] },
        },
      },
      options,
    );
    expect(config.stages!.map((stage) => `${stage.name}:${stage.depth}`)).toEqual(['b:0', 'a:0', 'z:1', 'y:1']);
  });

  it('a config without stages: has no Config.stages, and stagesOf gives it the one stage process', () => {
    const config = validateConfig({ slots: 3, process: { command: ['p', '{number}', '{stage}'] } }, options);
    expect(config.stages).toBeUndefined();
    expect(config.select).toEqual({});
    expect(stagesOf(config).map((stage) => [stage.name, stage.slots, stage.command])).toEqual([['process', 3, ['p', '{number}', '{stage}']]]);
  });

  it('select: at the top and per stage keeps only what it sets, typed', () => {
    const select = { tags: ['SiR2'], not_tags: ['test'], modes: ['physics'], min_number: 0, max_number: 0, params: { energy: 2.5, dataset: 'x', blind: false }, require_end: false };
    const config = validateConfig({ select, stages: { s: { command: ['s'], select: { min_number: 5 } } } }, options);
    expect(config.select).toEqual(select);
    expect(config.stages![0].select).toEqual({ min_number: 5 });
  });

  it('describeConfig masks secret-looking env values of every stage', () => {
    const config = validateConfig({ stages: { up: { command: ['up'], env: { API_TOKEN: 't0p', BUCKET: 'b' } } } }, options);
    const shown = describeConfig(config);
    expect(shown.stages![0].env).toEqual({ API_TOKEN: '***', BUCKET: 'b' });
    expect(config.stages![0].env.API_TOKEN).toBe('t0p');
  });
});

// Each row breaks one rule; the problem names the field and says what is wrong.
const REFUSALS: [string, unknown, string, string][] = [
  ['stages not a mapping', { stages: ['a'] }, 'stages', 'expected a mapping of stage names'],
  ['empty stages:', { stages: {} }, 'stages', 'declares no stage'],
  ['stages: with nothing under it', { stages: null }, 'stages', 'declares no stage'],
  ['bad stage name', { stages: { Fetch: { command: ['f'] } } }, 'stages.Fetch', 'lower-case letter'],
  ['stage name too long', { stages: { ['a'.repeat(41)]: { command: ['f'] } } }, `stages.${'a'.repeat(41)}`, 'up to 39'],
  ['stage not a mapping', { stages: { a: ['f'] } }, 'stages.a', 'expected a mapping'],
  ['process.command with stages:', { process: { command: ['p'] }, stages: { a: { command: ['a'] } } }, 'process.command', 'every stage has its own command'],
  ['stage without a command', { stages: { a: { slots: 1 } } }, 'stages.a.command', 'every stage needs its own command'],
  ['stage with an empty command', { stages: { a: { command: [] } } }, 'stages.a.command', 'every stage needs its own command'],
  ['stage command not a list', { stages: { a: { command: 'a {number}' } } }, 'stages.a.command', 'expected a list of strings'],
  ['unknown stage in needs', { stages: { a: { command: ['a'] }, b: { command: ['b'], needs: ['aa'] } } }, 'stages.b.needs[0]', 'unknown stage "aa"; did you mean a?'],
  ['needs not a list', { stages: { a: { command: ['a'], needs: 'b' } } }, 'stages.a.needs', 'expected a list of stage names'],
  ['need listed twice', { stages: { a: { command: ['a'] }, b: { command: ['b'], needs: ['a', 'a'] } } }, 'stages.b.needs[1]', 'listed twice'],
  ['a stage needing itself', { stages: { a: { command: ['a'], needs: ['a'] } } }, 'stages.a.needs', 'a cycle: a → a'],
  ['a cycle of three', { stages: { a: { command: ['a'], needs: ['c'] }, b: { command: ['b'], needs: ['a'] }, c: { command: ['c'], needs: ['b'] } } }, 'stages.a.needs', 'a cycle: a → c → b → a'],
  ['slots above the daemon\'s', { slots: 2, stages: { a: { command: ['a'], slots: 3 } } }, 'stages.a.slots', "3 is more than the daemon's slots (2"],
  ['slots zero', { stages: { a: { command: ['a'], slots: 0 } } }, 'stages.a.slots', 'expected an integer ≥ 1, got 0'],
  ['a host timeout in a stage', { stages: { a: { command: ['a'], timeouts: { max_busy_time: 60 } } } }, 'stages.a.timeouts.max_busy_time', "is the host's"],
  ['an unknown stage timeout', { stages: { a: { command: ['a'], timeouts: { max_processing_tme: 60 } } } }, 'stages.a.timeouts.max_processing_tme', 'did you mean stages.a.timeouts.max_processing_time?'],
  ['a stage timeout not a duration', { stages: { a: { command: ['a'], timeouts: { max_processing_time: 'soon' } } } }, 'stages.a.timeouts.max_processing_time', 'not a duration'],
  ['a stage timeout of 0', { stages: { a: { command: ['a'], timeouts: { max_no_output_time: 0 } } } }, 'stages.a.timeouts.max_no_output_time', 'must be more than 0'],
  ['a bad stage retry', { stages: { a: { command: ['a'], retry: { factor: 0.5 } } } }, 'stages.a.retry.factor', 'a number ≥ 1'],
  ['an unknown stage retry key', { stages: { a: { command: ['a'], retry: { max_failure: 2 } } } }, 'stages.a.retry.max_failure', 'did you mean stages.a.retry.max_failures?'],
  ['an unknown stage key', { stages: { a: { command: ['a'], neds: ['b'] } } }, 'stages.a.neds', 'did you mean stages.a.needs?'],
  ['host_fault_threshold in a stage', { stages: { a: { command: ['a'], host_fault_threshold: 2 } } }, 'stages.a.host_fault_threshold', 'set process.host_fault_threshold'],
  ['stage env name', { stages: { a: { command: ['a'], env: { '1X': 'y' } } } }, 'stages.a.env.1X', 'environment variable name'],
  ['stage resources', { stages: { a: { command: ['a'], resources: { cores: { start: 1, min: 2, shrink: 1 } } } } }, 'stages.a.resources.cores.start', 'must be ≥'],
  ['{cores} without a resource in a stage', { stages: { a: { command: ['a', '{cores}'] } } }, 'stages.a.command[1]', 'add stages.a.resources (or process.resources)'],
  ['upstream of a stage not needed', { stages: { a: { command: ['a'] }, b: { command: ['b', '{upstream.a.output}'] } } }, 'stages.b.command[1]', 'stage a is not upstream of b (the stages it needs, directly or further up: none); add a to stages.b.needs'],
  ['upstream of a stage below', { stages: { a: { command: ['a', '{upstream.b.output}'] }, b: { command: ['b'], needs: ['a'] } } }, 'stages.a.command[1]', 'stage b is not upstream of a'],
  ['upstream of no stage', { stages: { a: { command: ['a'] }, b: { needs: ['a'], command: ['b', '{upstream.aa.output}'] } } }, 'stages.b.command[1]', 'there is no stage "aa"; did you mean a?'],
  ['upstream value other than output', { stages: { a: { command: ['a'] }, b: { needs: ['a'], command: ['b', '{upstream.a.input}'] } } }, 'stages.b.command[1]', 'the only upstream placeholder is {upstream.STAGE.output}'],
  ['upstream in a check', { stages: { a: { command: ['a'], check: ['c', '{upstream.a.output}'] } } }, 'stages.a.check[1]', 'stage a is not upstream of a'],
  ['unknown placeholder in a check', { stages: { a: { command: ['a'], check: ['c', '{outptu}'] } } }, 'stages.a.check[1]', 'did you mean {output}?'],
  ['check not a list', { stages: { a: { command: ['a'], check: 'c' } } }, 'stages.a.check', 'expected a list of strings'],
  ['upstream in the first wave\'s process:', { process: { command: ['p', '{upstream.fetch.output}'] } }, 'process.command[1]', 'has no upstream'],
  ['resource named like an upstream variable', { process: { resources: { upstream_fetch: { start: 1, min: 1, shrink: 1 } } } }, 'process.resources.upstream_fetch', 'reserved'],
  ['resource named stage', { process: { resources: { stage: { start: 1, min: 1, shrink: 1 } } } }, 'process.resources.stage', 'reserved'],
  ['select not a mapping', { select: 'SiR2' }, 'select', 'expected a mapping of select.* keys'],
  ['unknown select key', { select: { tag: ['a'] } }, 'select.tag', 'did you mean select.tags?'],
  ['select tags not a list', { select: { tags: 'a' } }, 'select.tags', 'expected a list of strings'],
  ['select tag empty', { select: { not_tags: [''] } }, 'select.not_tags[0]', 'a non-empty string'],
  ['select modes empty', { select: { modes: [] } }, 'select.modes', 'selects no run at all'],
  ['select number not an integer', { select: { min_number: 1.5 } }, 'select.min_number', 'expected an integer ≥ 0, got 1.5'],
  ['select number negative', { select: { max_number: -1 } }, 'select.max_number', 'got -1'],
  ['select range empty', { select: { min_number: 10, max_number: 9 } }, 'select.min_number', '10 is more than select.max_number (9)'],
  ['select params not a mapping', { select: { params: ['a'] } }, 'select.params', 'expected a mapping of param names'],
  ['select param not a scalar', { select: { params: { a: { b: 1 } } } }, 'select.params.a', 'a string, a finite number or a boolean'],
  ['select param null', { select: { params: { a: null } } }, 'select.params.a', 'got null'],
  ['select require_end', { select: { require_end: 'yes' } }, 'select.require_end', 'expected true or false'],
  ['stage select', { stages: { a: { command: ['a'], select: { modes: [1] } } } }, 'stages.a.select.modes[0]', 'a non-empty string'],
  ['unknown stage select key', { stages: { a: { command: ['a'], select: { not_tag: ['x'] } } } }, 'stages.a.select.not_tag', 'did you mean stages.a.select.not_tags?'],
];

describe('stages: and select: refusals', () => {
  it.each(REFUSALS)('%s', (_case, raw, field, message) => {
    const found = problems(raw);
    expect(found.map((problem) => problem.field), found.map((p) => p.message).join('\n')).toEqual([field]);
    expect(found[0].message).toContain(`config: ${field}: `);
    expect(found[0].message).toContain(message);
  });

  it('reports every problem of a pipeline at once', () => {
    const found = problems({
      process: { command: ['p'] },
      stages: {
        a: { command: ['a'], needs: ['c'] },
        b: { needs: ['zz'] },
        c: { command: ['c'], needs: ['a'] },
        d: { command: ['d', '{upstream.b.output}'] },
      },
    });
    expect(found.map((problem) => problem.field).sort()).toEqual(
      ['process.command', 'stages.a.needs', 'stages.b.command', 'stages.b.needs[0]', 'stages.d.command[1]'].sort(),
    );
    expect(found.find((problem) => problem.field === 'stages.a.needs')!.message).toContain('a → c → a');
  });

  it('a stage may name any stage above it, however far up', () => {
    const config = validateConfig(
      { stages: { a: { command: ['a'] }, b: { command: ['b'], needs: ['a'] }, c: { command: ['c', '{upstream.a.output}', '{upstream.b.output}'], needs: ['b'] } } },
      options,
    );
    expect(config.stages!.map((stage) => stage.name)).toEqual(['a', 'b', 'c']);
  });
});

describe('stages: through the loader', () => {
  let root: string;
  let work: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'runwarden-stages-'));
    work = join(root, 'work');
    mkdirSync(work);
    mkdirSync(join(root, 'etc'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const file = (text: string) => {
    const path = join(root, 'etc', 'runwarden.yaml');
    writeFileSync(path, text);
    return path;
  };
  const load = (config: string, env: Record<string, string> = {}, set: string[] = []) =>
    loadConfig({ file: config, cwd: work, env, flags: { set }, hostName: () => 'h' });

  const yaml = [
    'slots: 4',
    'process: {output_root: out, log_dir: logs}',
    'stages:',
    '  fetch: {command: [fetch, "{number}", "{output}"], slots: 2, cwd: fetch-work}',
    '  compress:',
    '    needs: [fetch]',
    '    command: [xz, "{upstream.fetch.output}", "{output}"]',
    '    log_dir: compress-logs',
    '',
  ].join('\n');

  it('resolves a stage\'s relative paths against the file\'s directory, like process:', () => {
    const config = load(file(yaml));
    const [fetch, compress] = config.stages!;
    expect(fetch.cwd).toBe(join(root, 'etc', 'fetch-work'));
    expect(fetch.output_root).toBe(join(root, 'etc', 'out'));
    expect(compress.log_dir).toBe(join(root, 'etc', 'compress-logs'));
    expect(fetch.log_dir).toBe(join(root, 'etc', 'logs'));
  });

  it('RUNWARDEN_STAGES__NAME__KEY and --set stages.NAME.KEY override one stage key, typed by the key', () => {
    const config = load(
      file(yaml),
      { RUNWARDEN_STAGES__FETCH__SLOTS: '3', RUNWARDEN_STAGES__COMPRESS__ENV__Xz_Opt: '-9', RUNWARDEN_SELECT__TAGS: '["SiR2"]' },
      ['stages.compress.timeouts.max_no_output_time=90s', 'stages.fetch.select.params.energy=2.5', 'select.params.dataset=SiR2', 'stages.compress.cwd=rel'],
    );
    const [fetch, compress] = config.stages!;
    expect(fetch.slots).toBe(3);
    expect(compress.env).toEqual({ Xz_Opt: '-9' });
    expect(compress.timeouts.max_no_output_time).toBe(90_000);
    expect(fetch.select).toEqual({ params: { energy: 2.5 } });
    expect(config.select).toEqual({ tags: ['SiR2'], params: { dataset: 'SiR2' } });
    // A path from a flag means what the shell means: relative to the working directory.
    expect(compress.cwd).toBe(join(work, 'rel'));
  });

  it('an override naming a bad stage value is refused naming the key and where it came from', () => {
    let error: unknown;
    try {
      load(file(yaml), { RUNWARDEN_STAGES__FETCH__SLOTS: '9' }, ['stages.fetch.needs=["compress"]']);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigProblems);
    const messages = (error as ConfigProblems).problems.map((problem) => problem.message);
    expect(messages).toEqual([
      expect.stringContaining("stages.fetch.needs: a cycle: fetch → compress → fetch"),
      expect.stringMatching(/^config: stages\.fetch\.slots: 9 is more than the daemon's slots \(4, set by .*runwarden\.yaml\).* \(set by RUNWARDEN_STAGES__FETCH__SLOTS\)$/),
    ]);
  });
});

describe('one fault, one problem', () => {
  it('a refused needs does not also blame the upstream placeholders of that stage and those below it', () => {
    const found = problems({
      stages: {
        top: { command: ['top'] },
        mid: { needs: 'top', command: ['mid', '{upstream.top.output}'] },
        low: { needs: ['mid'], command: ['low', '{upstream.top.output}', '{upstream.nope.output}'] },
      },
    });
    // The bad needs, and the placeholder naming no stage at all; not the two naming top.
    expect(found.map((problem) => problem.field)).toEqual(['stages.mid.needs', 'stages.low.command[2]']);
  });
});
