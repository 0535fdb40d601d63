// The one place a merged raw configuration becomes a Config. Every refusal is a ConfigError naming the dotted
// field, what was wrong, the bad value and what would be accepted.

import { isAbsolute, resolve } from 'node:path';
import { ConfigError, throwConfigProblems } from '../errors.js';
import { leaseGuardTtl, minimumLeaseGuardTtl } from '../policy/lease-guard-ttl.js';
import {
  BUILTIN_PLACEHOLDERS,
  RESERVED_RESOURCE_NAMES,
  placeholdersIn,
} from '../policy/placeholders.js';
import { formatDuration, parseByteSize, parseDuration, showValue } from './duration.js';
import {
  CONFIG_KEYS,
  LOG_LEVELS,
  RESOURCE_RULE_KEYS,
  SELECTION_ORDERS,
  defaultConfig,
  defaultHostName,
  knownKeyPaths,
  type Config,
  type ResourceRule,
} from './schema.js';

export interface ValidateOptions {
  /** Base for relative paths still relative here, and for the defaults' paths. */
  cwd: string;
  /** Default for `host`; `os.hostname()` when absent. */
  hostName?: () => string;
  /** Where a field's value came from ("/etc/runwarden.yaml", "RUNWARDEN_SLOTS", "--set ..."), for messages. */
  sourceOf?: (field: string) => string | undefined;
}

type Raw = Record<string, unknown>;

export function isPlainObject(value: unknown): value is Raw {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Edit distance between two strings (insertions, deletions, substitutions). */
export function levenshtein(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * The known key closest to an unknown one, or undefined when nothing is close. Compares the last segment, so
 * a key put in the wrong section (`check_interval` at the top) still finds `timeouts.check_interval`; on a tie
 * a key in the same section wins.
 */
export function nearestKey(unknownPath: string, candidates: readonly string[]): string | undefined {
  const parts = unknownPath.split('.');
  const key = parts[parts.length - 1].toLowerCase();
  const parent = parts.slice(0, -1).join('.');
  const limit = Math.max(2, Math.floor(key.length / 3));
  let best: { path: string; score: number } | undefined;
  for (const path of candidates) {
    const candidateParts = path.split('.');
    const candidate = candidateParts[candidateParts.length - 1];
    // The distance is at least the difference in length: skip the quadratic work for a key that is far off.
    if (Math.abs(key.length - candidate.length) > limit) continue;
    const distance = levenshtein(key, candidate);
    if (distance > limit) continue;
    const sameParent = candidateParts.slice(0, -1).join('.') === parent;
    const score = distance * 2 + (sameParent ? 0 : 1);
    if (!best || score < best.score) best = { path, score };
  }
  return best?.path;
}

class Checker {
  /** Problems found so far: validation goes on past one, so every problem is reported at once. */
  readonly problems: ConfigError[] = [];

  constructor(readonly sourceOf: (field: string) => string | undefined) {}

  /** `read()`, or `fallback` when it finds a problem (kept for the report at the end). */
  keep<T>(fallback: T, read: () => T): T {
    try {
      return read();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      this.problems.push(error);
      return fallback;
    }
  }

  where(field: string): string {
    const source = this.sourceOf(field);
    return source ? ` (set by ${source})` : '';
  }

  fail(field: string, message: string): never {
    throw new ConfigError(field, `${message}${this.where(field)}`);
  }

  expected(field: string, what: string, value: unknown): never {
    this.fail(field, `expected ${what}, got ${showValue(value)}`);
  }

  unknownKey(field: string, candidates: readonly string[], siblings: readonly string[]): never {
    const near = nearestKey(field, candidates);
    this.fail(
      field,
      near ? `unknown key; did you mean ${near}?` : `unknown key; known keys here: ${siblings.join(', ')}`,
    );
  }

  string(field: string, value: unknown, fallback: string): string {
    if (value === undefined) return fallback;
    if (typeof value !== 'string' || value === '') this.expected(field, 'a non-empty string', value);
    return value;
  }

  path(field: string, value: unknown, fallback: string, cwd: string): string {
    return resolve(cwd, this.string(field, value, fallback));
  }

  oneOf<T extends string>(field: string, value: unknown, allowed: readonly T[], fallback: T): T {
    if (value === undefined) return fallback;
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
      this.expected(field, `one of ${allowed.join(', ')}`, value);
    }
    return value as T;
  }

  integer(field: string, value: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
      this.expected(field, `an integer ${range}`, value);
    }
    return value;
  }

  number(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) this.expected(field, 'a number', value);
    return value;
  }

  boolean(field: string, value: unknown, fallback: boolean): boolean {
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') this.expected(field, 'true or false', value);
    return value;
  }

  duration(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    try {
      return parseDuration(value, field);
    } catch (error) {
      if (error instanceof ConfigError) this.fail(field, error.message.slice(`config: ${field}: `.length));
      throw error;
    }
  }

  bytes(field: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    try {
      return parseByteSize(value, field);
    } catch (error) {
      if (error instanceof ConfigError) this.fail(field, error.message.slice(`config: ${field}: `.length));
      throw error;
    }
  }

  array(field: string, value: unknown, what: string, example: string): unknown[] {
    if (!Array.isArray(value)) this.expected(field, `${what}, e.g. ${example}`, value);
    return value;
  }

  mapping(field: string, value: unknown, what: string): Raw {
    if (!isPlainObject(value)) this.expected(field, what, value);
    return value;
  }
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESOURCE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const STORE_FORMS = '"sqlite:PATH" (e.g. "sqlite:./runwarden.db"), or a "mongodb://…" or "mongodb+srv://…" URL';

function checkUnknownKeys(check: Checker, raw: Raw): void {
  const candidates = knownKeyPaths();
  const topKeys = Object.keys(CONFIG_KEYS);
  for (const key of Object.keys(raw)) {
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

/** The smallest log bound: the supervisor's own lines must fit in an attempt log. */
const MIN_LOG_BYTES = 4096;

function maxLogBytes(check: Checker, value: unknown, fallback: number): number {
  const bytes = check.bytes('process.max_log_bytes', value, fallback);
  if (bytes < MIN_LOG_BYTES) {
    check.fail('process.max_log_bytes', `an attempt log must keep at least ${MIN_LOG_BYTES} bytes ("4KiB"), got ${showValue(value)}`);
  }
  return bytes;
}

function readStringList(check: Checker, field: string, value: unknown, example: string, noCommas: boolean): string[] {
  if (value === undefined) return [];
  const list = check.array(field, value, 'a list of strings', example);
  return list.map((item, index) => {
    const itemField = `${field}[${index}]`;
    if (typeof item !== 'string') check.expected(itemField, 'a string', item);
    if (noCommas && (item === '' || item.includes(','))) {
      check.fail(itemField, `expected a non-empty name without commas (targets reach the command comma-joined), got ${showValue(item)}`);
    }
    return item;
  });
}

function readResources(check: Checker, value: unknown): Record<string, ResourceRule> {
  const field = 'process.resources';
  if (value === undefined) return {};
  const example = '{cores: {start: 8, min: 4, shrink: 1.1}}';
  const map = check.mapping(field, value, `a mapping of resource names to {start, min, shrink}, e.g. ${example}`);
  const resources: Record<string, ResourceRule> = {};
  const seenUpper = new Map<string, string>();
  for (const [name, ruleRaw] of Object.entries(map)) {
    const ruleField = `${field}.${name}`;
    if (!RESOURCE_NAME.test(name)) {
      check.fail(ruleField, 'a resource name must be letters, digits and _ (it becomes the {name} placeholder and RUNWARDEN_NAME)');
    }
    const upper = name.toUpperCase();
    if (RESERVED_RESOURCE_NAMES.some((reserved) => reserved.toUpperCase() === upper)) {
      check.fail(ruleField, `"${name}" is reserved (built-in placeholders and RUNWARDEN_* variables: ${RESERVED_RESOURCE_NAMES.join(', ')}); pick another name`);
    }
    const clash = seenUpper.get(upper);
    if (clash !== undefined) check.fail(ruleField, `clashes with process.resources.${clash}: both become RUNWARDEN_${upper}`);
    seenUpper.set(upper, name);
    const rule = check.mapping(ruleField, ruleRaw, `{start, min, shrink}, e.g. {start: 8, min: 4, shrink: 1.1}`);
    for (const key of Object.keys(rule)) {
      if (!(RESOURCE_RULE_KEYS as readonly string[]).includes(key)) {
        check.unknownKey(`${ruleField}.${key}`, RESOURCE_RULE_KEYS.map((k) => `${ruleField}.${k}`), RESOURCE_RULE_KEYS.map((k) => `${ruleField}.${k}`));
      }
    }
    for (const key of RESOURCE_RULE_KEYS) {
      if (rule[key] === undefined) check.fail(`${ruleField}.${key}`, `missing; a resource needs start, min and shrink, e.g. {start: 8, min: 4, shrink: 1.1}`);
    }
    const min = check.integer(`${ruleField}.min`, rule.min, 0, 1);
    const start = check.integer(`${ruleField}.start`, rule.start, 0, 1);
    if (start < min) check.fail(`${ruleField}.start`, `must be ≥ ${ruleField}.min (${min}), got ${start}`);
    const shrink = check.number(`${ruleField}.shrink`, rule.shrink, 1);
    if (shrink < 1) check.expected(`${ruleField}.shrink`, 'a number ≥ 1 (the divisor applied per failure; 1 never shrinks)', shrink);
    resources[name] = { start, min, shrink };
  }
  return resources;
}

function checkCommandPlaceholders(check: Checker, command: string[], resources: Record<string, ResourceRule>): void {
  const known = new Set<string>([...BUILTIN_PLACEHOLDERS, ...Object.keys(resources)]);
  const listing = [...known, 'params.KEY'].map((name) => `{${name}}`).join(' ');
  command.forEach((element, index) => {
    for (const name of placeholdersIn(element)) {
      if (name.startsWith('params.') || known.has(name)) continue;
      const field = `process.command[${index}]`;
      if (name === 'cores') {
        check.fail(field, `{cores} needs a "cores" resource: add process.resources: {cores: {start: 8, min: 1, shrink: 2}} (values are yours)`);
      }
      const near = nearestKey(name, [...known]);
      check.fail(
        field,
        `unknown placeholder {${name}} in ${JSON.stringify(element)}${near ? `; did you mean {${near}}?` : ''}; known: ${listing}`,
      );
    }
  });
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

  // Each independent value is read with check.keep: a problem is recorded and the default stands in, so one run
  // reports every problem of the configuration, each naming its field.
  const keep = <T>(fallback: T, read: () => T): T => check.keep(fallback, read);
  const host = keep('', () => {
    const name = rawRoot.host === undefined ? (options.hostName ?? defaultHostName)() : check.string('host', rawRoot.host, '');
    if (/\s/.test(name)) check.fail('host', `a host name cannot contain white space, got ${showValue(name)}`);
    return name;
  });

  const resources = keep({}, () => readResources(check, p.resources));
  const command = keep([] as string[], () => {
    const list = readStringList(check, 'process.command', p.command, '["my-processor", "--run", "{number}", "--out", "{output}"]', false);
    checkCommandPlaceholders(check, list, resources);
    return list;
  });

  const env: Record<string, string> = {};
  if (p.env !== undefined) {
    const map = keep({}, () => check.mapping('process.env', p.env, 'a mapping of variable names to values, e.g. {OMP_NUM_THREADS: "4"}'));
    for (const [name, value] of Object.entries(map)) {
      keep(undefined, () => {
        const field = `process.env.${name}`;
        if (!ENV_NAME.test(name)) check.fail(field, 'an environment variable name must be letters, digits and _ and not start with a digit');
        if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
          check.expected(field, 'a string (numbers and booleans are turned into strings)', value);
        }
        if (typeof value === 'number' && !Number.isFinite(value)) check.expected(field, 'a string or a finite number', value);
        const text = String(value);
        if (text.includes('\0')) check.fail(field, 'an environment value cannot contain a NUL byte');
        env[name] = text;
      });
    }
  }

  const noRetry = p.no_retry_exit_codes === undefined
    ? []
    : keep([] as number[], () =>
        check.array('process.no_retry_exit_codes', p.no_retry_exit_codes, 'a list of exit codes', '[2, 78]').map((code, index) =>
          check.integer(`process.no_retry_exit_codes[${index}]`, code, 0, 0, 255),
        ),
      );

  const dropTargetsAfter: Record<string, number> = {};
  if (p.drop_targets_after !== undefined) {
    const map = keep({}, () => check.mapping('process.drop_targets_after', p.drop_targets_after, 'a mapping of target globs to failure counts, e.g. {"event*": 2, "*": 7}'));
    for (const [glob, count] of Object.entries(map)) {
      keep(undefined, () => {
        if (glob === '') check.fail('process.drop_targets_after', 'a glob cannot be empty; use "*" to match every target');
        dropTargetsAfter[glob] = check.integer(`process.drop_targets_after.${glob}`, count, 0, 0);
      });
    }
  }

  const outputRoot = keep(defaults.process.output_root, () => check.path('process.output_root', p.output_root, defaults.process.output_root, cwd));
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

  const retryBase = keep(defaults.retry.base, () => check.duration('retry.base', r.base, defaults.retry.base));
  const factor = keep(defaults.retry.factor, () => {
    const value = check.number('retry.factor', r.factor, defaults.retry.factor);
    if (value < 1) check.expected('retry.factor', 'a number ≥ 1 (the delay grows by it per failure)', value);
    return value;
  });
  const jitter: [number, number] = r.jitter === undefined
    ? defaults.retry.jitter
    : keep(defaults.retry.jitter, () => {
        const pair = check.array('retry.jitter', r.jitter, 'two numbers [lo, hi] with 0 < lo ≤ hi', '[0.5, 1.5]');
        if (pair.length !== 2) check.expected('retry.jitter', 'two numbers [lo, hi] with 0 < lo ≤ hi, e.g. [0.5, 1.5]', pair);
        const lo = check.number('retry.jitter[0]', pair[0], 0);
        const hi = check.number('retry.jitter[1]', pair[1], 0);
        if (!(lo > 0 && lo <= hi)) check.expected('retry.jitter', 'two numbers [lo, hi] with 0 < lo ≤ hi, e.g. [0.5, 1.5]', pair);
        return [lo, hi];
      });

  const maxUsed = keep(defaults.disk.max_used_percent, () => {
    const value = check.number('disk.max_used_percent', d.max_used_percent, defaults.disk.max_used_percent);
    if (!(value > 0 && value <= 100)) check.expected('disk.max_used_percent', 'a percentage in (0, 100]', value);
    return value;
  });

  const config: Config = {
    store: keep(defaults.store, () => readStore(check, rawRoot.store, defaults.store, cwd)),
    host,
    slots: keep(defaults.slots, () => check.integer('slots', rawRoot.slots, defaults.slots, 1)),
    order: keep(defaults.order, () => check.oneOf('order', rawRoot.order, SELECTION_ORDERS, defaults.order)),
    log_level: keep(defaults.log_level, () => check.oneOf('log_level', rawRoot.log_level, LOG_LEVELS, defaults.log_level)),
    process: {
      command,
      cwd: keep(defaults.process.cwd, () => check.path('process.cwd', p.cwd, defaults.process.cwd, cwd)),
      env,
      output_root: outputRoot,
      log_dir: keep(defaults.process.log_dir, () => check.path('process.log_dir', p.log_dir, defaults.process.log_dir, cwd)),
      require_output: keep(defaults.process.require_output, () => check.boolean('process.require_output', p.require_output, defaults.process.require_output)),
      clean_output: keep(defaults.process.clean_output, () => check.boolean('process.clean_output', p.clean_output, defaults.process.clean_output)),
      max_log_bytes: keep(defaults.process.max_log_bytes, () => maxLogBytes(check, p.max_log_bytes, defaults.process.max_log_bytes)),
      no_retry_exit_codes: noRetry,
      targets: keep([] as string[], () => readStringList(check, 'process.targets', p.targets, '["peaks", "events"]', true)),
      drop_targets_after: dropTargetsAfter,
      minimal_targets: keep([] as string[], () => readStringList(check, 'process.minimal_targets', p.minimal_targets, '["raw_records"]', true)),
      resources,
      host_fault_threshold: keep(defaults.process.host_fault_threshold, () =>
        check.integer('process.host_fault_threshold', p.host_fault_threshold, defaults.process.host_fault_threshold, 1),
      ),
    },
    timeouts,
    select: {},
    retry: {
      base: retryBase,
      factor,
      max_exponent: keep(defaults.retry.max_exponent, () => check.integer('retry.max_exponent', r.max_exponent, defaults.retry.max_exponent, 0)),
      jitter,
      max_failures: keep(defaults.retry.max_failures, () => check.integer('retry.max_failures', r.max_failures, defaults.retry.max_failures, 1)),
      max_interruptions: keep(defaults.retry.max_interruptions, () =>
        check.integer('retry.max_interruptions', r.max_interruptions, defaults.retry.max_interruptions, 1),
      ),
    },
    disk: {
      path: keep(outputRoot, () => check.path('disk.path', d.path, outputRoot, cwd)),
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

/** Refuses to start a daemon without a command; the message says how to give one. */
export function requireCommand(config: Config): void {
  if (config.process.command.length > 0) return;
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
 * A copy of the config that is safe to log: the password of a mongodb:// store URL and the values of
 * process.env entries whose names look secret (PASSWORD, TOKEN, KEY, ...) become "***".
 */
export function describeConfig(config: Config): Config {
  const copy = structuredClone(config);
  copy.store = maskStoreUrl(copy.store);
  for (const name of Object.keys(copy.process.env)) {
    if (SECRET_ENV.test(name)) copy.process.env[name] = '***';
  }
  return copy;
}
