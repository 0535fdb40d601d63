// The one place a merged raw configuration becomes a Config. Every refusal is a ConfigError naming the dotted
// field, what was wrong, the bad value and what would be accepted.

import { isAbsolute, resolve } from 'node:path';
import { ConfigError, throwConfigProblems } from '../errors.js';
import { leaseGuardTtl, minimumLeaseGuardTtl } from '../policy/lease-guard-ttl.js';
import { Checker, type Raw, isPlainObject } from './checker.js';
import { formatDuration, showValue } from './duration.js';
import { readCommandSection, readRetry, readSelector } from './sections.js';
import { readStages } from './stages.js';
import {
  CONFIG_KEYS,
  LOG_LEVELS,
  SELECTION_ORDERS,
  STAGES_KEY,
  defaultConfig,
  defaultHostName,
  knownKeyPaths,
  type Config,
} from './schema.js';

export { isPlainObject, levenshtein, nearestKey } from './checker.js';

export interface ValidateOptions {
  /** Base for relative paths still relative here, and for the defaults' paths. */
  cwd: string;
  /** Default for `host`; `os.hostname()` when absent. */
  hostName?: () => string;
  /** Where a field's value came from ("/etc/runwarden.yaml", "RUNWARDEN_SLOTS", "--set ..."), for messages. */
  sourceOf?: (field: string) => string | undefined;
}

const STORE_FORMS = '"sqlite:PATH" (e.g. "sqlite:./runwarden.db"), or a "mongodb://…" or "mongodb+srv://…" URL';

function checkUnknownKeys(check: Checker, raw: Raw): void {
  const candidates = knownKeyPaths();
  const topKeys = [...Object.keys(CONFIG_KEYS), STAGES_KEY];
  for (const key of Object.keys(raw)) {
    if (key === STAGES_KEY) continue; // readStages checks a stage's keys
    if (!Object.hasOwn(CONFIG_KEYS, key)) {
      check.keep(undefined, () => check.unknownKey(key, candidates, topKeys));
      continue;
    }
    const kind = (CONFIG_KEYS as Record<string, unknown>)[key];
    // An empty section in YAML (`process:` with every key commented out) is null: treat it as absent.
    if (typeof kind !== 'object' || kind === null || raw[key] === undefined || raw[key] === null) continue;
    const section = check.keep({}, () => check.mapping(key, raw[key], `a mapping of ${key}.* keys`));
    const inner = Object.keys(kind);
    for (const innerKey of Object.keys(section)) {
      if (!inner.includes(innerKey)) {
        check.keep(undefined, () => check.unknownKey(`${key}.${innerKey}`, candidates, inner.map((k) => `${key}.${k}`)));
      }
    }
  }
}

function readStore(check: Checker, value: unknown, fallback: string, cwd: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string') check.expected('store', STORE_FORMS, value);
  if (value.startsWith('sqlite:')) {
    const file = value.slice('sqlite:'.length);
    if (file === '') check.fail('store', `"sqlite:" needs a file path; expected ${STORE_FORMS}`);
    // The daemon and every CLI command must see the same database: an in-memory one is seen by nobody else.
    if (file === ':memory:') check.fail('store', `"sqlite::memory:" cannot be shared with other commands; give a file, e.g. "sqlite:./runwarden.db"`);
    if (isAbsolute(file)) return value;
    return `sqlite:${resolve(cwd, file)}`;
  }
  if (/^mongodb(\+srv)?:\/\/[^/]/.test(value)) return value;
  check.fail('store', `expected ${STORE_FORMS}, got ${JSON.stringify(maskStoreUrl(value))}`);
}

/** Hides the password of a URL's user info: mongodb://user:secret@h → mongodb://user:***@h. */
export function maskStoreUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/]*):[^@/]*@/i, '$1:***@');
}

/**
 * Validates a merged raw configuration (durations as written, defaults not yet applied) and returns the
 * Config: durations in ms, relative paths resolved against `options.cwd`, defaults filled in.
 */
export function validateConfig(raw: unknown, options: ValidateOptions): Config {
  const check = new Checker(options.sourceOf ?? (() => undefined));
  const cwd = options.cwd;
  const rawRoot: Raw = raw === undefined || raw === null ? {} : check.mapping('config', raw, 'a mapping of configuration keys');
  checkUnknownKeys(check, rawRoot);
  const section = (name: string): Raw => (isPlainObject(rawRoot[name]) ? rawRoot[name] : {});
  const p = section('process');
  const t = section('timeouts');
  const r = section('retry');
  const d = section('disk');
  const o = section('observe');
  const defaults = defaultConfig(cwd, '');
  const { host_fault_threshold: _hostLevel, ...defaultCommandSection } = defaults.process;

  // Each independent value is read with check.keep: a problem is recorded and the default stands in, so one run
  // reports every problem of the configuration, each naming its field.
  const keep = <T>(fallback: T, read: () => T): T => check.keep(fallback, read);
  const host = keep('', () => {
    const name = rawRoot.host === undefined ? (options.hostName ?? defaultHostName)() : check.string('host', rawRoot.host, '');
    if (/\s/.test(name)) check.fail('host', `a host name cannot contain white space, got ${showValue(name)}`);
    return name;
  });

  const commandSection = readCommandSection(check, 'process', p, defaultCommandSection, {
    cwd,
    stage: undefined,
    upstream: [],
    upstreamKnown: true,
    stages: [],
  });
  const timeouts = {} as Config['timeouts'];
  const badTimeouts = new Set<string>();
  for (const key of Object.keys(defaults.timeouts) as (keyof Config['timeouts'])[]) {
    const field = `timeouts.${key}`;
    timeouts[key] = keep(defaults.timeouts[key], () => {
      const value = check.duration(field, t[key], defaults.timeouts[key]);
      if (value <= 0) check.fail(field, `must be more than 0, got ${showValue(t[key])}`);
      return value;
    });
    if (check.problems.some((problem) => problem.field === field)) badTimeouts.add(field);
  }
  // Owners refresh their lease every check_interval; a limit within three heartbeats would reap live work.
  // Judged only between values that are themselves valid; each side names where it came from, or the default.
  for (const key of ['max_considering_time', 'max_busy_time', 'presumed_dead'] as const) {
    const field = `timeouts.${key}`;
    if (badTimeouts.has(field) || badTimeouts.has('timeouts.check_interval')) continue;
    const check3 = 3 * timeouts.check_interval;
    if (timeouts[key] <= check3) {
      const origins = [field, 'timeouts.check_interval'].map((name) => {
        const source = check.sourceOf(name);
        return source !== undefined ? `${name} set by ${source}` : `${name} is the default`;
      });
      check.problems.push(
        new ConfigError(
          field,
          `${formatDuration(timeouts[key])} must be more than 3 × timeouts.check_interval ` +
            `(3 × ${formatDuration(timeouts.check_interval)} = ${formatDuration(check3)}): ` +
            `a live owner refreshes its lease every check_interval, so a shorter limit would take its work away; ` +
            `raise timeouts.${key} or lower timeouts.check_interval (${origins.join('; ')})`,
        ),
      );
    }
  }

  requireLeaseGuardTime(check, timeouts, badTimeouts);

  const retry = readRetry(check, 'retry', r, defaults.retry);
  const slots = keep(defaults.slots, () => check.integer('slots', rawRoot.slots, defaults.slots, 1));
  const stages = readStages(check, rawRoot[STAGES_KEY], {
    cwd,
    process: commandSection,
    processCommandGiven: p.command !== undefined,
    slots,
    timeouts,
    retry,
  });

  const maxUsed = keep(defaults.disk.max_used_percent, () => {
    const value = check.number('disk.max_used_percent', d.max_used_percent, defaults.disk.max_used_percent);
    if (!(value > 0 && value <= 100)) check.expected('disk.max_used_percent', 'a percentage in (0, 100]', value);
    return value;
  });

  const config: Config = {
    store: keep(defaults.store, () => readStore(check, rawRoot.store, defaults.store, cwd)),
    host,
    slots,
    order: keep(defaults.order, () => check.oneOf('order', rawRoot.order, SELECTION_ORDERS, defaults.order)),
    log_level: keep(defaults.log_level, () => check.oneOf('log_level', rawRoot.log_level, LOG_LEVELS, defaults.log_level)),
    process: {
      ...commandSection,
      host_fault_threshold: keep(defaults.process.host_fault_threshold, () =>
        check.integer('process.host_fault_threshold', p.host_fault_threshold, defaults.process.host_fault_threshold, 1),
      ),
    },
    timeouts,
    retry,
    ...(stages === undefined ? {} : { stages }),
    select: readSelector(check, 'select', section('select')),
    disk: {
      path: keep(commandSection.output_root, () => check.path('disk.path', d.path, commandSection.output_root, cwd)),
      max_used_percent: maxUsed,
      min_free_bytes: keep(defaults.disk.min_free_bytes, () => check.bytes('disk.min_free_bytes', d.min_free_bytes, defaults.disk.min_free_bytes)),
    },
    observe: {
      bind: keep(defaults.observe.bind, () => readBindAddress(check, o.bind, defaults.observe.bind)),
      // 0 asks the system for a free port; the daemon logs the one it got.
      inspect_port: keep(defaults.observe.inspect_port, () => check.integer('observe.inspect_port', o.inspect_port, defaults.observe.inspect_port, 0, 65535)),
      metrics_port: keep(defaults.observe.metrics_port, () => check.integer('observe.metrics_port', o.metrics_port, defaults.observe.metrics_port, 0, 65535)),
    },
  };
  throwConfigProblems(check.problems);
  return config;
}

/**
 * The lease guard kills a command whose lease was not renewed for max_busy_time − 2 × signal_escalate −
 * check_interval, so that it is gone before another host may take its run over; that time must hold two
 * heartbeats, or one slow write would kill a live owner's command. Judged only between valid values, and not
 * on top of the 3 × check_interval rule for max_busy_time.
 */
function requireLeaseGuardTime(check: Checker, timeouts: Config['timeouts'], badTimeouts: Set<string>): void {
  const fields = ['timeouts.max_busy_time', 'timeouts.signal_escalate', 'timeouts.check_interval'];
  if (fields.some((field) => badTimeouts.has(field))) return;
  if (check.problems.some((problem) => problem.field === 'timeouts.max_busy_time')) return;
  const ttl = leaseGuardTtl(timeouts);
  const minimum = minimumLeaseGuardTtl(timeouts);
  if (ttl >= minimum) return;
  const origins = fields.map((name) => {
    const source = check.sourceOf(name);
    return source !== undefined ? `${name} set by ${source}` : `${name} is the default`;
  });
  const t = (ms: number) => formatDuration(ms);
  check.problems.push(
    new ConfigError(
      'timeouts.max_busy_time',
      `${t(timeouts.max_busy_time)} is too short for timeouts.signal_escalate (${t(timeouts.signal_escalate)}) and ` +
        `timeouts.check_interval (${t(timeouts.check_interval)}): a command whose daemon stops renewing its lease is ` +
        `killed after max_busy_time − 2 × signal_escalate − check_interval (${t(Math.max(0, ttl))}), which must be at ` +
        `least 2 × check_interval (${t(minimum)}) so that one late heartbeat does not kill it; raise ` +
        `timeouts.max_busy_time to at least ${t(3 * timeouts.check_interval + 2 * timeouts.signal_escalate)}, or lower ` +
        `timeouts.signal_escalate or timeouts.check_interval (${origins.join('; ')})`,
    ),
  );
}

/** An IP address or a host name without white space; listening anywhere but loopback is the user's choice. */
function readBindAddress(check: Checker, value: unknown, fallback: string): string {
  const bind = check.string('observe.bind', value, fallback);
  if (bind === '' || /\s/.test(bind)) check.expected('observe.bind', 'an address to listen on, e.g. 127.0.0.1 or ::1', bind);
  return bind;
}

/**
 * Refuses to start a daemon without a command; the message says how to give one. With `stages:` every stage has
 * a command (validation saw to it).
 */
export function requireCommand(config: Config): void {
  if (config.process.command.length > 0 || (config.stages?.length ?? 0) > 0) return;
  throw new ConfigError(
    'process.command',
    'the daemon needs a processing command and none is configured. Set it in runwarden.yaml, e.g. ' +
      'process: {command: ["my-processor", "--run", "{number}", "--out", "{output}"]}, or in the environment, ' +
      `e.g. RUNWARDEN_PROCESS__COMMAND='["sh", "-c", "my-processor {number}"]', or with ` +
      `--set 'process.command=["my-processor", "{number}"]'`,
  );
}

const SECRET_ENV = /pass|secret|token|key|credential|auth/i;

/**
 * A copy of the config that is safe to log, stages included: the password of a mongodb:// store URL and the
 * values of process.env and stages.*.env entries whose names look secret (PASSWORD, TOKEN, KEY, ...) become "***".
 */
export function describeConfig(config: Config): Config {
  const copy = structuredClone(config);
  copy.store = maskStoreUrl(copy.store);
  for (const env of [copy.process.env, ...(copy.stages ?? []).map((stage) => stage.env)]) {
    for (const name of Object.keys(env)) {
      if (SECRET_ENV.test(name)) env[name] = '***';
    }
  }
  return copy;
}
