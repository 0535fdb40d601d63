import { describe, expect, it } from 'vitest';
import {
  commandEnvironment,
  outputDirName,
  placeholdersIn,
  substituteArgv,
  type PlaceholderValues,
} from '../../src/policy/placeholders.js';

const values: PlaceholderValues = {
  number: 42,
  name: 'calibration run',
  input: '/data/raw/000042',
  output: '/data/processed/000042',
  attempt: 3,
  host: 'eb2.example.org',
  targets: ['peaks', 'event_info'],
  resources: { cores: 6, mem_gb: 16 },
  params: { mode: 'tpc', energy: 2.5, flags: { fast: true }, 'a.b': 'dotted', nested: { deep: 'x' }, empty: '', nothing: null },
};

describe('substituteArgv', () => {
  it.each([
    ['{number}', '42'],
    ['{number06}', '000042'],
    ['{name}', 'calibration run'],
    ['{input}', '/data/raw/000042'],
    ['{output}', '/data/processed/000042'],
    ['{attempt}', '3'],
    ['{host}', 'eb2.example.org'],
    ['{targets}', 'peaks,event_info'],
    ['{cores}', '6'],
    ['{mem_gb}', '16'],
    ['{params.mode}', 'tpc'],
    ['{params.energy}', '2.5'],
    ['{params.flags}', '{"fast":true}'],
    ['{params.a.b}', 'dotted'],
    ['{params.nested.deep}', 'x'],
    ['{params.empty}', ''],
    ['{params.nothing}', 'null'],
    ['--run={number}:{attempt}', '--run=42:3'],
    ['{number}{number}', '4242'],
    ['no placeholders', 'no placeholders'],
    ['{print $1}', '{print $1}'],
    ['awk {if (x) { y }}', 'awk {if (x) { y }}'],
    ['{', '{'],
    ['{}', '{}'],
  ])('%j → %j', (element, result) => {
    expect(substituteArgv([element], values)).toEqual([result]);
  });

  it('substitutes each element on its own and keeps the argv length', () => {
    expect(substituteArgv(['strax', '{number06}', '--out', '{output}', '-j', '{cores}'], values)).toEqual([
      'strax',
      '000042',
      '--out',
      '/data/processed/000042',
      '-j',
      '6',
    ]);
  });

  it.each([
    ['x; rm -rf /'],
    ['$(id)'],
    ['`id`'],
    ['a b\tc\nd'],
    ["'quoted' \"double\""],
    ['{number}'],
    ['*'],
    ['--flag=1 --other'],
  ])('a value %j stays one literal element', (name) => {
    const argv = ['echo', '{name}', '--name={name}', '{params.mode}'];
    const result = substituteArgv(argv, { ...values, name, params: { mode: name } });
    expect(result).toEqual(['echo', name, `--name=${name}`, name]);
  });

  it('missing optional values become empty strings', () => {
    const { name: _name, input: _input, ...required } = values;
    expect(substituteArgv(['{name}', 'in={input}'], required)).toEqual(['', 'in=']);
  });

  it.each([
    [['prog', '{nmber}'], 'command element 1 ("{nmber}"): unknown placeholder {nmber}; known placeholders: {number} {number06}'],
    [['{cores}'], 'command element 0 ("{cores}"): unknown placeholder {cores}'],
    [['{params.missing}'], 'command element 0 ("{params.missing}"): placeholder {params.missing}: the run has no param "missing"'],
    [['{params.constructor}'], 'the run has no param "constructor"'],
    [['{params.nested.deep.deeper}'], 'no param "nested.deep.deeper"'],
    [['{params.bad}'], 'placeholder {params.bad} holds a NUL byte'],
    [['{name}'], 'placeholder {name} holds a NUL byte'],
  ])('%j is refused, naming the placeholder', (argv, message) => {
    const broken = { ...values, resources: {}, name: 'a\0b', params: { ...values.params, bad: 'x\0y' } };
    expect(() => substituteArgv(argv, broken)).toThrow(message);
  });

  it('lists the placeholders in an element', () => {
    expect(placeholdersIn('--x={number}/{params.a.b}-{cores} {print $1}')).toEqual(['number', 'params.a.b', 'cores']);
    expect(placeholdersIn('{upstream.fetch.output}/{stage}')).toEqual(['upstream.fetch.output', 'stage']);
  });

  it('{stage} is the task\'s stage, process when none is given', () => {
    expect(substituteArgv(['{stage}'], { ...values, stage: 'compress' })).toEqual(['compress']);
    expect(substituteArgv(['{stage}'], values)).toEqual(['process']);
  });

  it('{upstream.STAGE.output} is that stage\'s output, one argument whatever it holds', () => {
    const upstream = { fetch: { output: '/d/fetch dir; rm -rf /' } };
    expect(substituteArgv(['xz', '--in={upstream.fetch.output}', '{output}'], { ...values, stage: 'compress', upstream })).toEqual([
      'xz',
      '--in=/d/fetch dir; rm -rf /',
      '/data/processed/000042',
    ]);
  });

  it('an upstream stage without a registered output fails the attempt, naming the stage and the element', () => {
    expect(() => substituteArgv(['xz', '{upstream.fetch.output}'], { ...values, upstream: {} })).toThrow(
      'command element 1 ("{upstream.fetch.output}"): placeholder {upstream.fetch.output}: the run has no output of stage "fetch" registered',
    );
    expect(() => substituteArgv(['{upstream.fetch.input}'], values)).toThrow('the only upstream value is {upstream.STAGE.output}');
    // An inherited key of a plain object is not a stage.
    expect(() => substituteArgv(['{upstream.constructor.output}'], { ...values, upstream: {} })).toThrow('no output of stage "constructor"');
  });
});

describe('commandEnvironment', () => {
  it('sets the RUNWARDEN_* variables, one per resource', () => {
    expect(commandEnvironment(values, '/logs/42/attempt-3.error')).toEqual({
      RUNWARDEN_RUN_NUMBER: '42',
      RUNWARDEN_NAME: 'calibration run',
      RUNWARDEN_INPUT: '/data/raw/000042',
      RUNWARDEN_OUTPUT: '/data/processed/000042',
      RUNWARDEN_ATTEMPT: '3',
      RUNWARDEN_HOST: 'eb2.example.org',
      RUNWARDEN_TARGETS: 'peaks,event_info',
      RUNWARDEN_ERROR_FILE: '/logs/42/attempt-3.error',
      RUNWARDEN_PARAMS: JSON.stringify(values.params),
      RUNWARDEN_CORES: '6',
      RUNWARDEN_MEM_GB: '16',
      RUNWARDEN_STAGE: 'process',
    });
  });

  it('names the stage and gives every upstream output as RUNWARDEN_UPSTREAM_<STAGE>', () => {
    const env = commandEnvironment(
      { ...values, stage: 'compress', upstream: { fetch: { output: '/d/fetch/000042' }, raw_proc: { output: '/d/raw_proc/000042' } } },
      '/e',
    );
    expect(env.RUNWARDEN_STAGE).toBe('compress');
    expect(env.RUNWARDEN_UPSTREAM_FETCH).toBe('/d/fetch/000042');
    expect(env.RUNWARDEN_UPSTREAM_RAW_PROC).toBe('/d/raw_proc/000042');
    expect(Object.keys(env).filter((name) => name.startsWith('RUNWARDEN_UPSTREAM_'))).toHaveLength(2);
  });

  it('missing optional values are empty', () => {
    const env = commandEnvironment({ number: 1, output: '/o', attempt: 1, host: 'h', targets: [], resources: {}, params: {} }, '/e');
    expect(env).toMatchObject({ RUNWARDEN_NAME: '', RUNWARDEN_INPUT: '', RUNWARDEN_TARGETS: '', RUNWARDEN_PARAMS: '{}' });
  });
});

describe('outputDirName', () => {
  it.each([
    [0, '000000'],
    [42, '000042'],
    [999_999, '999999'],
    [1_000_000, '1000000'],
    [12_345_678, '12345678'],
  ])('%d → %s', (number, name) => {
    expect(outputDirName(number)).toBe(name);
  });

  it.each([[-1], [1.5], [Number.NaN]])('refuses %d', (number) => {
    expect(() => outputDirName(number)).toThrow('non-negative integer');
  });
});
