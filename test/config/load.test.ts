import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configFilePath, environmentOverrides, loadConfig, type ConfigFlags } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

let root: string;
let cwd: string;
let configDir: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'runwarden-config-'));
  cwd = join(root, 'work');
  configDir = join(root, 'etc');
  mkdirSync(cwd);
  mkdirSync(configDir);
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

function writeConfig(dir: string, text: string, name = 'runwarden.yaml'): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function load(options: { file?: string; env?: Record<string, string | undefined>; flags?: ConfigFlags } = {}) {
  return loadConfig({ cwd, env: options.env ?? {}, flags: options.flags ?? {}, file: options.file, hostName: () => 'test-host' });
}

function refusal(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('no ConfigError');
}

describe('precedence: defaults < file < environment < flags', () => {
  it.each([
    ['default', false, undefined, undefined, 1],
    ['file', true, undefined, undefined, 2],
    ['environment over file', true, '3', undefined, 3],
    ['environment over default', false, '3', undefined, 3],
    ['flag over environment and file', true, '3', 4, 4],
    ['flag given as a string', true, '3', '5', 5],
  ] as const)('%s', (_case, withFile, envSlots, flagSlots, expected) => {
    const file = withFile ? writeConfig(configDir, 'slots: 2\n') : undefined;
    const config = load({ file, env: { RUNWARDEN_SLOTS: envSlots }, flags: { slots: flagSlots } });
    expect(config.slots).toBe(expected);
  });

  it('applies to nested keys and --set beats the environment', () => {
    const file = writeConfig(configDir, 'timeouts:\n  check_interval: 5\n  idle_poll: 7\n');
    const env = { RUNWARDEN_TIMEOUTS__CHECK_INTERVAL: '4s', RUNWARDEN_TIMEOUTS__IDLE_POLL: '6' };
    expect(load({ file, env }).timeouts).toMatchObject({ check_interval: 4_000, idle_poll: 6_000 });
    expect(load({ file, env, flags: { set: ['timeouts.check_interval=2s'] } }).timeouts).toMatchObject({
      check_interval: 2_000,
      idle_poll: 6_000,
    });
  });

  it('top-level flags and their variables cover store, host, order and log_level', () => {
    const env = { RUNWARDEN_HOST: 'env-host', RUNWARDEN_ORDER: 'oldest', RUNWARDEN_LOG_LEVEL: 'warn', RUNWARDEN_STORE: 'sqlite:/var/lib/env.db' };
    expect(load({ env })).toMatchObject({ host: 'env-host', order: 'oldest', log_level: 'warn', store: 'sqlite:/var/lib/env.db' });
    const flags = { host: 'flag-host', order: 'newest', log_level: 'debug', store: 'mongodb://db/runs' };
    expect(load({ env, flags })).toMatchObject(flags);
  });

  it('the host defaults to the given name, else os.hostname()', () => {
    expect(load().host).toBe('test-host');
    expect(loadConfig({ cwd, env: {}, flags: {} }).host).toBe(hostname());
  });
});

describe('environment variables', () => {
  it('types values by the key they set', () => {
    const config = load({
      env: {
        RUNWARDEN_PROCESS__COMMAND: '["sh", "-c", "exit 0", "{number}"]',
        RUNWARDEN_PROCESS__REQUIRE_OUTPUT: 'false',
        RUNWARDEN_PROCESS__CLEAN_OUTPUT: 'no',
        RUNWARDEN_PROCESS__NO_RETRY_EXIT_CODES: '[2, 78]',
        RUNWARDEN_PROCESS__ENV__OMP_NUM_THREADS: '04',
        RUNWARDEN_PROCESS__RESOURCES: '{"cores": {"start": 8, "min": 2, "shrink": 2}}',
        RUNWARDEN_PROCESS__RESOURCES__CORES__MIN: '4',
        RUNWARDEN_RETRY__JITTER: '[1, 1]',
        RUNWARDEN_RETRY__FACTOR: '2.5',
        RUNWARDEN_DISK__MIN_FREE_BYTES: '2GiB',
        RUNWARDEN_DISK__MAX_USED_PERCENT: '80',
      },
    });
    expect(config.process.command).toEqual(['sh', '-c', 'exit 0', '{number}']);
    expect(config.process.require_output).toBe(false);
    expect(config.process.clean_output).toBe(false);
    expect(config.process.no_retry_exit_codes).toEqual([2, 78]);
    expect(config.process.env).toEqual({ OMP_NUM_THREADS: '04' });
    expect(config.process.resources).toEqual({ cores: { start: 8, min: 4, shrink: 2 } });
    expect(config.retry).toMatchObject({ jitter: [1, 1], factor: 2.5 });
    expect(config.disk).toMatchObject({ min_free_bytes: 2 ** 31, max_used_percent: 80 });
  });

  it('ignores RUNWARDEN_* variables that are not configuration, and empty values', () => {
    const env = {
      RUNWARDEN_RUN_NUMBER: '42',
      RUNWARDEN_CONFIG: '/nowhere.yaml',
      RUNWARDEN_TEST_MONGO_URL: 'mongodb://x',
      RUNWARDEN_TEST__ANYTHING: 'x',
      RUNWARDEN_CORES: '8',
      RUNWARDEN_SLOTS: '',
      PATH: '/bin',
    };
    expect(load({ env })).toEqual(load());
    expect(environmentOverrides(env)).toEqual([]);
  });

  it('an unknown key in a known section is refused with a suggestion and the variable name', () => {
    const error = refusal(() => load({ env: { RUNWARDEN_TIMEOUTS__CHEK_INTERVAL: '2s' } }));
    expect(error.message).toBe(
      'config: timeouts.chek_interval: unknown key; did you mean timeouts.check_interval? (set by RUNWARDEN_TIMEOUTS__CHEK_INTERVAL)',
    );
  });

  it('a bad value names the field and the variable', () => {
    const error = refusal(() => load({ env: { RUNWARDEN_SLOTS: 'many' } }));
    expect(error.field).toBe('slots');
    expect(error.message).toBe('config: slots: expected an integer ≥ 1, got "many" (set by RUNWARDEN_SLOTS)');
  });

  it('bad JSON names the field, the variable and an example', () => {
    const error = refusal(() => load({ env: { RUNWARDEN_PROCESS__COMMAND: 'sh -c "exit 0"' } }));
    expect(error.field).toBe('process.command');
    expect(error.message).toContain('RUNWARDEN_PROCESS__COMMAND');
    expect(error.message).toContain('["a", "b"]');
  });
});

describe('--set overrides', () => {
  it.each([
    ['timeouts.check_interval=2s', (c: ReturnType<typeof load>) => c.timeouts.check_interval, 2_000],
    ['process.command=["sh","-c","echo {number} > {output}/x"]', (c: ReturnType<typeof load>) => c.process.command, ['sh', '-c', 'echo {number} > {output}/x']],
    ['process.env.Mixed_Case=a=b', (c: ReturnType<typeof load>) => c.process.env, { Mixed_Case: 'a=b' }],
    ['process.drop_targets_after={"event*": 2}', (c: ReturnType<typeof load>) => c.process.drop_targets_after, { 'event*': 2 }],
    ['process.drop_targets_after.peaks=3', (c: ReturnType<typeof load>) => c.process.drop_targets_after, { peaks: 3 }],
    ['retry={"base": "1s", "max_failures": 2}', (c: ReturnType<typeof load>) => [c.retry.base, c.retry.max_failures, c.retry.factor], [1_000, 2, 5]],
    ['slots=3', (c: ReturnType<typeof load>) => c.slots, 3],
    ['process.require_output=true', (c: ReturnType<typeof load>) => c.process.require_output, true],
  ] as const)('%s', (set, pick, expected) => {
    expect(pick(load({ flags: { set: [set] } }))).toEqual(expected);
  });

  it('later --set wins over earlier', () => {
    expect(load({ flags: { set: ['slots=2', 'slots=3'] } }).slots).toBe(3);
  });

  it.each([
    ['timeouts.chek_interval=2s', 'timeouts.chek_interval', 'did you mean timeouts.check_interval? (set by --set timeouts.chek_interval)'],
    ['slots', 'set', 'expected KEY=VALUE'],
    ['=3', 'set', 'expected KEY=VALUE'],
    ['timeouts..idle_poll=3', 'set', 'expected KEY=VALUE'],
    ['__proto__.polluted=1', '__proto__.polluted', 'unknown key'],
    ['process.targets=peaks,events', 'process.targets', 'expected JSON'],
  ])('refuses %s', (set, field, fragment) => {
    const error = refusal(() => load({ flags: { set: [set] } }));
    expect(error.field).toBe(field);
    expect(error.message).toContain(fragment);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('the config file', () => {
  it('uses <cwd>/runwarden.yaml when present and no file is named', () => {
    expect(configFilePath({ cwd })).toBeUndefined();
    expect(load().slots).toBe(1);
    writeConfig(cwd, 'slots: 6\n');
    expect(configFilePath({ cwd })).toBe(join(cwd, 'runwarden.yaml'));
    expect(load().slots).toBe(6);
  });

  it('a named file wins over <cwd>/runwarden.yaml and is resolved against cwd', () => {
    writeConfig(cwd, 'slots: 6\n');
    writeConfig(cwd, 'slots: 7\n', 'other.yaml');
    expect(load({ file: 'other.yaml' }).slots).toBe(7);
  });

  it('a named file that does not exist is a ConfigError naming config', () => {
    const error = refusal(() => load({ file: 'missing.yaml' }));
    expect(error.field).toBe('config');
    expect(error.message).toContain(`file not found: ${join(cwd, 'missing.yaml')}`);
  });

  it('a directory is refused', () => {
    expect(refusal(() => load({ file: configDir })).message).toContain('is not a file');
  });

  it.each([
    ['slots: 2\nprocess:\n  command: [a, b\n  cwd: x\n', ':4:'],
    ['slots: 2\nslots: 3\n', ':2:'],
    ['process:\n  cwd: a\n   log_dir: b\n', ':2:'],
  ])('a YAML syntax error names the file and the line (%#)', (text, line) => {
    const file = writeConfig(configDir, text);
    const error = refusal(() => load({ file }));
    expect(error.field).toBe('config');
    expect(error.message).toContain(`${file}${line}`);
    expect(error.message).toContain('YAML syntax error');
  });

  it('refuses a file whose top is not a mapping', () => {
    const file = writeConfig(configDir, '- slots: 2\n');
    expect(refusal(() => load({ file })).message).toContain('expected a mapping of keys at the top');
  });

  it('an empty file or empty sections give the defaults', () => {
    const file = writeConfig(configDir, '# nothing yet\nprocess:\n  # command: [a]\n');
    expect(load({ file })).toEqual(load());
  });

  it('a bad value from the file names the file', () => {
    const file = writeConfig(configDir, 'timeouts:\n  check_interval: 10x\n');
    expect(refusal(() => load({ file })).message).toBe(
      `config: timeouts.check_interval: not a duration: expected a duration — seconds as a number (e.g. 90 or 1.5), or a string with a unit ms, s, m, h or d (e.g. "250ms", "90s", "30m", "72h", "1h30m") — got "10x" (set by ${file})`,
    );
  });

  it('honours YAML merge keys', () => {
    const file = writeConfig(configDir, 'timeouts:\n  <<: {check_interval: 2s, idle_poll: 3s}\n  idle_poll: 4s\n  max_busy_time: 1m\n');
    expect(load({ file }).timeouts).toMatchObject({ check_interval: 2_000, idle_poll: 4_000, max_busy_time: 60_000 });
  });
});

describe('relative paths', () => {
  it('from the file resolve against the file directory; from defaults, environment and flags against cwd', () => {
    const file = writeConfig(
      configDir,
      'store: sqlite:state/runs.db\nprocess:\n  cwd: .\n  output_root: out\n  log_dir: ../logs\ndisk:\n  path: data\n',
    );
    const fromFile = load({ file });
    expect(fromFile.store).toBe(`sqlite:${join(configDir, 'state/runs.db')}`);
    expect(fromFile.process.cwd).toBe(configDir);
    expect(fromFile.process.output_root).toBe(join(configDir, 'out'));
    expect(fromFile.process.log_dir).toBe(join(root, 'logs'));
    expect(fromFile.disk.path).toBe(join(configDir, 'data'));

    const overridden = load({
      file,
      env: { RUNWARDEN_PROCESS__OUTPUT_ROOT: 'env-out', RUNWARDEN_STORE: 'sqlite:env.db' },
      flags: { set: ['disk.path=flag-data', 'process.log_dir=/abs/logs'] },
    });
    expect(overridden.process.output_root).toBe(join(cwd, 'env-out'));
    expect(overridden.store).toBe(`sqlite:${join(cwd, 'env.db')}`);
    expect(overridden.disk.path).toBe(join(cwd, 'flag-data'));
    expect(overridden.process.log_dir).toBe('/abs/logs');
    expect(overridden.process.cwd).toBe(configDir);

    const defaults = load();
    expect(defaults.store).toBe(`sqlite:${join(cwd, 'runwarden.db')}`);
    expect(defaults.process).toMatchObject({ cwd, output_root: join(cwd, 'processed'), log_dir: join(cwd, 'logs') });
    expect(defaults.disk.path).toBe(join(cwd, 'processed'));
  });

  it('disk.path follows an output_root from the file', () => {
    const file = writeConfig(configDir, 'process:\n  output_root: out\n');
    expect(load({ file }).disk.path).toBe(join(configDir, 'out'));
  });
});
