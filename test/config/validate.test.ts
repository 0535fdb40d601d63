import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import {
  describeConfig,
  levenshtein,
  nearestKey,
  requireCommand,
  validateConfig,
} from '../../src/config/validate.js';
import { ConfigError } from '../../src/errors.js';

const cwd = '/srv/runwarden';
const options = { cwd, hostName: () => 'daq01.example.org' };

function refusal(raw: unknown): ConfigError {
  try {
    validateConfig(raw, options);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error(`accepted ${JSON.stringify(raw)}`);
}

describe('validateConfig: defaults', () => {
  it('an empty config gives DESIGN §6 defaults in milliseconds with paths resolved against cwd', () => {
    const config = validateConfig({}, options);
    expect(config).toEqual(defaultConfig(cwd, 'daq01.example.org'));
    expect(config.store).toBe('sqlite:/srv/runwarden/runwarden.db');
    expect(config.timeouts.max_processing_time).toBe(72 * 3_600_000);
    expect(config.timeouts.max_no_output_time).toBe(30 * 60_000);
    expect(config.retry).toEqual({ base: 60_000, factor: 5, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 10, max_interruptions: 20 });
    expect(config.disk).toEqual({ path: '/srv/runwarden/processed', max_used_percent: 95, min_free_bytes: 1_073_741_824 });
    expect(validateConfig(null, options)).toEqual(config);
  });

  it('converts, resolves and keeps what it is given', () => {
    const config = validateConfig(
      {
        store: 'mongodb://u:p@db1,db2/runs?replicaSet=rs0',
        host: 'eb2',
        slots: 4,
        order: 'oldest',
        log_level: 'debug',
        process: {
          command: ['strax', '{number06}', '--targets', '{targets}', '-j{cores}', '{params.mode}', '{gpus}'],
          cwd: 'work',
          env: { OMP_NUM_THREADS: 4, DEBUG: true, NAME: 'x' },
          output_root: '/data/processed',
          log_dir: 'logs2',
          require_output: false,
          clean_output: false,
          no_retry_exit_codes: [0, 2, 255],
          targets: ['peaks', 'event_info'],
          drop_targets_after: { 'event*': 2, '*': 0 },
          minimal_targets: ['raw_records'],
          resources: { cores: { start: 8, min: 4, shrink: 1.1 }, gpus: { start: 1, min: 1, shrink: 1 } },
        },
        timeouts: { check_interval: '2s', max_busy_time: '7s', max_considering_time: 6.5, presumed_dead: '1m', signal_escalate: '250ms' },
        retry: { base: '1s', factor: 1, max_exponent: 0, jitter: [1, 1], max_failures: 1 },
        disk: { path: '/data', max_used_percent: 100, min_free_bytes: '500MB' },
      },
      options,
    );
    expect(config.store).toBe('mongodb://u:p@db1,db2/runs?replicaSet=rs0');
    expect(config.process.cwd).toBe('/srv/runwarden/work');
    expect(config.process.log_dir).toBe('/srv/runwarden/logs2');
    expect(config.process.env).toEqual({ OMP_NUM_THREADS: '4', DEBUG: 'true', NAME: 'x' });
    expect(config.timeouts.check_interval).toBe(2_000);
    expect(config.timeouts.max_considering_time).toBe(6_500);
    expect(config.timeouts.signal_escalate).toBe(250);
    expect(config.retry.base).toBe(1_000);
    expect(config.disk).toEqual({ path: '/data', max_used_percent: 100, min_free_bytes: 500_000_000 });
    expect(config.process.resources.cores).toEqual({ start: 8, min: 4, shrink: 1.1 });
  });

  it('treats an empty YAML section (null) as absent', () => {
    expect(validateConfig({ process: null, timeouts: null }, options)).toEqual(validateConfig({}, options));
  });

  it('lets disk.path follow process.output_root', () => {
    expect(validateConfig({ process: { output_root: 'out' } }, options).disk.path).toBe('/srv/runwarden/out');
  });

  it('keeps absolute sqlite paths, resolves relative ones, and refuses an in-memory store nobody else can see', () => {
    expect(() => validateConfig({ store: 'sqlite::memory:' }, options)).toThrow(/store: .*cannot be shared/);
    expect(validateConfig({ store: 'sqlite:/var/x.db' }, options).store).toBe('sqlite:/var/x.db');
    expect(validateConfig({ store: 'sqlite:x.db' }, options).store).toBe('sqlite:/srv/runwarden/x.db');
  });
});

// Each row breaks exactly one rule: without that rule the config would be accepted and the row would fail.
const REFUSALS: [string, unknown, string, string][] = [
  ['root not a mapping', ['slots', 2], 'config', 'expected a mapping'],
  ['unknown top-level key, near', { slot: 2 }, 'slot', 'unknown key; did you mean slots?'],
  ['key in the wrong section', { check_interval: 5 }, 'check_interval', 'did you mean timeouts.check_interval?'],
  ['unknown nested key, near', { timeouts: { chek_interval: 5 } }, 'timeouts.chek_interval', 'unknown key; did you mean timeouts.check_interval?'],
  ['unknown nested key, far', { retry: { zzzzzzzz: 1 } }, 'retry.zzzzzzzz', 'known keys here: retry.base, retry.factor'],
  ['section not a mapping', { process: 5 }, 'process', 'expected a mapping of process.* keys, got 5'],
  ['store type', { store: 5 }, 'store', 'got 5'],
  ['store scheme', { store: 'postgres://db/runs' }, 'store', 'got "postgres://db/runs"'],
  ['store without sqlite path', { store: 'sqlite:' }, 'store', 'needs a file path'],
  ['store password hidden in the message', { store: 'mongo://u:secret@h/x' }, 'store', 'mongo://u:***@h/x'],
  ['host empty', { host: '' }, 'host', 'expected a non-empty string, got ""'],
  ['host white space', { host: 'a b' }, 'host', 'white space'],
  ['host type', { host: 7 }, 'host', 'got 7'],
  ['slots zero', { slots: 0 }, 'slots', 'expected an integer ≥ 1, got 0'],
  ['slots fraction', { slots: 1.5 }, 'slots', 'got 1.5'],
  ['slots string', { slots: '2' }, 'slots', 'got "2"'],
  ['order', { order: 'random' }, 'order', 'expected one of newest, oldest, got "random"'],
  ['log_level', { log_level: 'verbose' }, 'log_level', 'expected one of debug, info, warn, error'],
  ['command not a list', { process: { command: 'prog {number}' } }, 'process.command', 'expected a list of strings'],
  ['command element type', { process: { command: ['prog', 5] } }, 'process.command[1]', 'expected a string, got 5'],
  ['unknown placeholder', { process: { command: ['prog', '--run={nmber}'] } }, 'process.command[1]', 'unknown placeholder {nmber} in "--run={nmber}"; did you mean {number}?'],
  ['{cores} without a cores resource', { process: { command: ['prog', '{cores}'] } }, 'process.command[1]', 'add process.resources'],
  ['cwd empty', { process: { cwd: '' } }, 'process.cwd', 'expected a non-empty string'],
  ['output_root type', { process: { output_root: 5 } }, 'process.output_root', 'got 5'],
  ['log_dir type', { process: { log_dir: ['x'] } }, 'process.log_dir', 'got ["x"]'],
  ['env not a mapping', { process: { env: ['A=1'] } }, 'process.env', 'expected a mapping'],
  ['env name', { process: { env: { '1A': 'x' } } }, 'process.env.1A', 'environment variable name'],
  ['env value', { process: { env: { A: { b: 1 } } } }, 'process.env.A', 'got {"b":1}'],
  ['require_output type', { process: { require_output: 'yes' } }, 'process.require_output', 'expected true or false, got "yes"'],
  ['clean_output type', { process: { clean_output: 1 } }, 'process.clean_output', 'expected true or false, got 1'],
  ['no_retry_exit_codes not a list', { process: { no_retry_exit_codes: 2 } }, 'process.no_retry_exit_codes', 'expected a list of exit codes'],
  ['no_retry_exit_codes above 255', { process: { no_retry_exit_codes: [1, 256] } }, 'process.no_retry_exit_codes[1]', 'expected an integer from 0 to 255, got 256'],
  ['no_retry_exit_codes negative', { process: { no_retry_exit_codes: [-1] } }, 'process.no_retry_exit_codes[0]', 'got -1'],
  ['no_retry_exit_codes fraction', { process: { no_retry_exit_codes: [1.5] } }, 'process.no_retry_exit_codes[0]', 'got 1.5'],
  ['targets not a list', { process: { targets: 'peaks' } }, 'process.targets', 'expected a list of strings'],
  ['target with a comma', { process: { targets: ['a,b'] } }, 'process.targets[0]', 'without commas'],
  ['target empty', { process: { targets: [''] } }, 'process.targets[0]', 'non-empty'],
  ['minimal target type', { process: { minimal_targets: [1] } }, 'process.minimal_targets[0]', 'expected a string, got 1'],
  ['drop_targets_after not a mapping', { process: { drop_targets_after: [2] } }, 'process.drop_targets_after', 'expected a mapping'],
  ['drop_targets_after negative', { process: { drop_targets_after: { 'event*': -1 } } }, 'process.drop_targets_after.event*', 'got -1'],
  ['drop_targets_after fraction', { process: { drop_targets_after: { '*': 1.5 } } }, 'process.drop_targets_after.*', 'got 1.5'],
  ['drop_targets_after empty glob', { process: { drop_targets_after: { '': 1 } } }, 'process.drop_targets_after', 'cannot be empty'],
  ['resources not a mapping', { process: { resources: [8] } }, 'process.resources', 'expected a mapping'],
  ['resource name', { process: { resources: { 'c-ores': { start: 2, min: 1, shrink: 1 } } } }, 'process.resources.c-ores', 'letters, digits and _'],
  ['resource name reserved', { process: { resources: { number: { start: 2, min: 1, shrink: 1 } } } }, 'process.resources.number', 'reserved'],
  ['resource names clash in the environment', { process: { resources: { cores: { start: 2, min: 1, shrink: 1 }, CORES: { start: 2, min: 1, shrink: 1 } } } }, 'process.resources.CORES', 'RUNWARDEN_CORES'],
  ['resource rule not a mapping', { process: { resources: { cores: 8 } } }, 'process.resources.cores', 'expected {start, min, shrink}'],
  ['resource rule unknown key', { process: { resources: { cores: { strat: 8, min: 1, shrink: 1 } } } }, 'process.resources.cores.strat', 'did you mean process.resources.cores.start?'],
  ['resource rule missing key', { process: { resources: { cores: { start: 8, min: 1 } } } }, 'process.resources.cores.shrink', 'missing'],
  ['resource min zero', { process: { resources: { cores: { start: 8, min: 0, shrink: 1 } } } }, 'process.resources.cores.min', 'got 0'],
  ['resource start below min', { process: { resources: { cores: { start: 2, min: 4, shrink: 1 } } } }, 'process.resources.cores.start', 'must be ≥ process.resources.cores.min (4), got 2'],
  ['resource start fraction', { process: { resources: { cores: { start: 2.5, min: 1, shrink: 1 } } } }, 'process.resources.cores.start', 'got 2.5'],
  ['resource shrink below 1', { process: { resources: { cores: { start: 8, min: 1, shrink: 0.5 } } } }, 'process.resources.cores.shrink', 'got 0.5'],
  ['duration syntax', { timeouts: { check_interval: '10x' } }, 'timeouts.check_interval', 'got "10x"'],
  ['duration zero', { timeouts: { idle_poll: 0 } }, 'timeouts.idle_poll', 'must be more than 0, got 0'],
  ['signal_escalate zero', { timeouts: { signal_escalate: '0s' } }, 'timeouts.signal_escalate', 'must be more than 0'],
  ['duration negative', { timeouts: { max_no_output_time: -1 } }, 'timeouts.max_no_output_time', 'cannot be negative'],
  ['max_busy_time within 3 × check_interval', { timeouts: { check_interval: 60, max_considering_time: 181 } }, 'timeouts.max_busy_time', '2m must be more than 3 × timeouts.check_interval (3 × 1m = 3m)'],
  ['max_considering_time within 3 × check_interval', { timeouts: { check_interval: 20, max_busy_time: 600 } }, 'timeouts.max_considering_time', 'raise timeouts.max_considering_time or lower timeouts.check_interval'],
  ['presumed_dead within 3 × check_interval', { timeouts: { check_interval: 20, max_busy_time: 70, max_considering_time: 61, presumed_dead: 60 } }, 'timeouts.presumed_dead', '3 × timeouts.check_interval'],
  // Issue 12 fault 7: the lease guard kills an unrenewed command after max_busy_time − 2 × signal_escalate − check_interval.
  ['max_busy_time too short for the lease guard', { timeouts: { check_interval: 1, signal_escalate: 3, max_busy_time: 8 } }, 'timeouts.max_busy_time', 'killed after max_busy_time − 2 × signal_escalate − check_interval (1s), which must be at least 2 × check_interval (2s) so that one late heartbeat does not kill it; raise timeouts.max_busy_time to at least 9s'],
  ['retry.base syntax', { retry: { base: 'soon' } }, 'retry.base', 'got "soon"'],
  ['retry.factor below 1', { retry: { factor: 0.5 } }, 'retry.factor', 'got 0.5'],
  ['retry.factor type', { retry: { factor: '5' } }, 'retry.factor', 'expected a number, got "5"'],
  ['retry.max_exponent negative', { retry: { max_exponent: -1 } }, 'retry.max_exponent', 'got -1'],
  ['retry.jitter not a list', { retry: { jitter: 0.5 } }, 'retry.jitter', 'got 0.5'],
  ['retry.jitter length', { retry: { jitter: [1] } }, 'retry.jitter', 'got [1]'],
  ['retry.jitter zero', { retry: { jitter: [0, 1] } }, 'retry.jitter', '0 < lo ≤ hi'],
  ['retry.jitter reversed', { retry: { jitter: [1.5, 0.5] } }, 'retry.jitter', 'got [1.5,0.5]'],
  ['retry.jitter element type', { retry: { jitter: ['a', 1] } }, 'retry.jitter[0]', 'got "a"'],
  ['retry.max_failures zero', { retry: { max_failures: 0 } }, 'retry.max_failures', 'expected an integer ≥ 1, got 0'],
  ['disk.path empty', { disk: { path: '' } }, 'disk.path', 'non-empty'],
  ['disk.max_used_percent zero', { disk: { max_used_percent: 0 } }, 'disk.max_used_percent', 'expected a percentage in (0, 100], got 0'],
  ['disk.max_used_percent above 100', { disk: { max_used_percent: 101 } }, 'disk.max_used_percent', 'got 101'],
  ['disk.min_free_bytes unit', { disk: { min_free_bytes: '1XB' } }, 'disk.min_free_bytes', 'got "1XB"'],
  ['disk.min_free_bytes negative', { disk: { min_free_bytes: -1 } }, 'disk.min_free_bytes', 'cannot be negative'],
];

describe('validateConfig: refusals', () => {
  it.each(REFUSALS)('%s', (_rule, raw, field, fragment) => {
    const error = refusal(raw);
    expect(error.field).toBe(field);
    // The configuration as a whole is named once ("config: expected …"), never "config: config: …".
    expect(error.message.startsWith(field === 'config' ? 'config: ' : `config: ${field}: `)).toBe(true);
    expect(error.message.startsWith('config: config:')).toBe(false);
    expect(error.message).toContain(fragment);
    expect(error.exitCode).toBe(2);
  });

  it('names the source of a bad value when told it', () => {
    expect(() =>
      validateConfig({ slots: 0 }, { ...options, sourceOf: (field) => (field === 'slots' ? 'RUNWARDEN_SLOTS' : undefined) }),
    ).toThrow('config: slots: expected an integer ≥ 1, got 0 (set by RUNWARDEN_SLOTS)');
  });

  it('accepts max_busy_time exactly 3 × check_interval + 2 × signal_escalate (the lease guard gets two heartbeats)', () => {
    const config = validateConfig({ timeouts: { check_interval: 1, signal_escalate: 3, max_busy_time: 9 } }, { cwd: '/srv', hostName: () => 'h' });
    expect(config.timeouts.max_busy_time).toBe(9_000);
  });

  it('a contradiction names both fields and where each came from', () => {
    const sources: Record<string, string> = { 'timeouts.check_interval': '--set timeouts.check_interval', 'timeouts.max_busy_time': '/etc/rw.yaml' };
    expect(() =>
      validateConfig(
        { timeouts: { check_interval: 50, max_considering_time: 151, max_busy_time: 150 } },
        { ...options, sourceOf: (f) => sources[f] },
      ),
    ).toThrow(
      'config: timeouts.max_busy_time: 150s must be more than 3 × timeouts.check_interval (3 × 50s = 150s): ' +
        'a live owner refreshes its lease every check_interval, so a shorter limit would take its work away; ' +
        'raise timeouts.max_busy_time or lower timeouts.check_interval ' +
        '(timeouts.max_busy_time set by /etc/rw.yaml; timeouts.check_interval set by --set timeouts.check_interval)',
    );
  });
});

describe('nearestKey and levenshtein', () => {
  it.each([
    ['', '', 0],
    ['abc', 'abc', 0],
    ['chek', 'check', 1],
    ['kitten', 'sitting', 3],
  ])('levenshtein(%j, %j) = %d', (a, b, d) => {
    expect(levenshtein(a, b)).toBe(d);
  });

  it.each([
    ['timeouts.chek_interval', 'timeouts.check_interval'],
    ['process.comand', 'process.command'],
    ['process.path', 'disk.path'],
    ['disk.paht', 'disk.path'],
    ['timeouts.zzzzzzzz', undefined],
  ])('%s → %s', (unknown, near) => {
    const candidates = ['timeouts.check_interval', 'timeouts.idle_poll', 'process.command', 'process.cwd', 'disk.path'];
    expect(nearestKey(unknown, candidates)).toBe(near);
  });
});

describe('requireCommand', () => {
  it('refuses an empty command, saying how to set one', () => {
    const config = validateConfig({}, options);
    expect(() => requireCommand(config)).toThrow(ConfigError);
    expect(() => requireCommand(config)).toThrow(/config: process\.command: .*RUNWARDEN_PROCESS__COMMAND.*--set/);
  });

  it('accepts a command', () => {
    expect(() => requireCommand(validateConfig({ process: { command: ['true'] } }, options))).not.toThrow();
  });
});

describe('describeConfig', () => {
  it('masks a mongodb password and secret-looking env values, without touching the config', () => {
    const config = validateConfig(
      { store: 'mongodb://daq:hunter2@db1:27017,db2/runs?replicaSet=rs0', process: { env: { API_TOKEN: 't0k', DB_PASSWORD: 'p', PATH: '/bin' } } },
      options,
    );
    const shown = describeConfig(config);
    expect(shown.store).toBe('mongodb://daq:***@db1:27017,db2/runs?replicaSet=rs0');
    expect(shown.process.env).toEqual({ API_TOKEN: '***', DB_PASSWORD: '***', PATH: '/bin' });
    expect(JSON.stringify(shown)).not.toContain('hunter2');
    expect(config.store).toContain('hunter2');
  });

  it.each([
    ['sqlite:/x.db', 'sqlite:/x.db'],
    ['mongodb://db1/runs', 'mongodb://db1/runs'],
    ['mongodb+srv://u:p@cluster/runs', 'mongodb+srv://u:***@cluster/runs'],
    ['mongodb://user@db1/runs', 'mongodb://user@db1/runs'],
  ])('store %s is shown as %s', (store, shown) => {
    expect(describeConfig(validateConfig({ store }, options)).store).toBe(shown);
  });
});

describe('validateConfig: process.max_log_bytes', () => {
  it('takes a size with a unit, defaults to 100 MiB, and refuses one too small or not a size, naming the field', () => {
    expect(validateConfig({}, options).process.max_log_bytes).toBe(100 * 2 ** 20);
    expect(validateConfig({ process: { max_log_bytes: '1GiB' } }, options).process.max_log_bytes).toBe(2 ** 30);
    expect(refusal({ process: { max_log_bytes: 100 } }).message).toMatch(/^config: process\.max_log_bytes: .*at least 4096 bytes/);
    expect(refusal({ process: { max_log_bytes: 'lots' } }).message).toMatch(/^config: process\.max_log_bytes: not a size/);
  });
});
