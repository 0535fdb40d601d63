// Loading the configuration: defaults < YAML file < RUNWARDEN_* environment < flags (DESIGN §6).
//
// Relative paths (the sqlite store path, process.cwd, process.output_root, process.log_dir, disk.path, and the
// same three keys of every stage) are
// resolved against the directory of the config file when the file gave them, and against `cwd` (the process
// working directory) when they come from the defaults, the environment or flags. A config file thus means the
// same wherever the daemon is started from, and a path typed on the command line means what the shell means.

import { readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { ConfigError, ConfigProblems, throwConfigProblems } from '../errors.js';
import { showValue } from './duration.js';
import { CONFIG_KEYS, DEFAULT_CONFIG_FILE, SECTIONS, STAGES_KEY, STAGE_KEYS, type Config, type FieldKind, type SectionKeys } from './schema.js';
import { isPlainObject, validateConfig } from './validate.js';

/** Values given as command-line flags; undefined means "not given". */
export interface ConfigFlags {
  store?: string;
  host?: string;
  slots?: number | string;
  order?: string;
  log_level?: string;
  /** `dotted.key=value` overrides, applied in order after the other flags. */
  set?: string[];
}

export interface LoadConfigOptions {
  /** `--config`; relative to `cwd`. Without it, `<cwd>/runwarden.yaml` is read when it exists. */
  file?: string;
  cwd: string;
  env: Record<string, string | undefined>;
  flags: ConfigFlags;
  /** Default host name; `os.hostname()` when absent. */
  hostName?: () => string;
}

type Raw = Record<string, unknown>;

/** The flags that map one-to-one onto top-level keys, and their environment variables. */
const TOP_LEVEL = ['store', 'host', 'slots', 'order', 'log_level'] as const;

/** The config file loadConfig would read, or undefined when there is none. */
export function configFilePath(options: { file?: string; cwd: string }): string | undefined {
  if (options.file !== undefined) return resolve(options.cwd, options.file);
  const implicit = resolve(options.cwd, DEFAULT_CONFIG_FILE);
  try {
    return statSync(implicit).isFile() ? implicit : undefined;
  } catch {
    return undefined;
  }
}

function readYamlFile(file: string, explicit: boolean): Raw {
  let text: string;
  try {
    if (!statSync(file).isFile()) throw new ConfigError('config', `${file} is not a file; give a YAML file`);
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && explicit) {
      throw new ConfigError('config', `file not found: ${file}; give an existing YAML file, or leave out --config to use ./${DEFAULT_CONFIG_FILE} when present`);
    }
    throw new ConfigError('config', `cannot read ${file}: ${(error as Error).message}`);
  }
  const document = parseDocument(text, { merge: true });
  const problem = document.errors[0];
  if (problem) {
    const position = problem.linePos?.[0];
    const where = position ? `${file}:${position.line}:${position.col}` : file;
    const message = problem.message.split(/ at line \d+, column \d+/)[0];
    throw new ConfigError('config', `${where}: YAML syntax error: ${message}`);
  }
  let value: unknown;
  try {
    value = document.toJS();
  } catch (error) {
    throw new ConfigError('config', `${file}: ${(error as Error).message}`);
  }
  if (value === null || value === undefined) return {};
  if (!isPlainObject(value)) {
    throw new ConfigError('config', `${file}: expected a mapping of keys at the top (e.g. "slots: 2"), got ${showValue(value)}`);
  }
  return value;
}

function resolveSqlite(store: string, base: string): string {
  const file = store.slice('sqlite:'.length);
  if (file === '' || isAbsolute(file)) return store;
  return `sqlite:${resolve(base, file)}`;
}

/** Resolves the file's relative paths against the file's directory, leaving wrong types for validation. */
function resolveFilePaths(raw: Raw, base: string): void {
  if (typeof raw.store === 'string' && raw.store.startsWith('sqlite:')) raw.store = resolveSqlite(raw.store, base);
  const paths: [string, string][] = [
    ['process', 'cwd'],
    ['process', 'output_root'],
    ['process', 'log_dir'],
    ['disk', 'path'],
  ];
  const stages = raw[STAGES_KEY];
  const sections = [...paths.map(([section, key]) => [raw[section], key] as const)];
  if (isPlainObject(stages)) {
    for (const stage of Object.values(stages)) {
      for (const key of ['cwd', 'output_root', 'log_dir']) sections.push([stage, key]);
    }
  }
  for (const [inner, key] of sections) {
    if (isPlainObject(inner) && typeof inner[key] === 'string' && inner[key] !== '') {
      inner[key] = resolve(base, inner[key]);
    }
  }
}

class Sources {
  private readonly byPath = new Map<string, string>();

  set(path: string, source: string): void {
    for (const known of [...this.byPath.keys()]) if (known.startsWith(`${path}.`)) this.byPath.delete(known);
    this.byPath.set(path, source);
  }

  /** The source of the longest recorded prefix of a field such as `process.command[2]`. */
  of(field: string): string | undefined {
    let path = field.replace(/\[\d+\]/g, '');
    for (;;) {
      const source = this.byPath.get(path);
      if (source !== undefined) return source;
      const dot = path.lastIndexOf('.');
      if (dot < 0) return undefined;
      path = path.slice(0, dot);
    }
  }
}

const NUMERIC = /^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?$/i;
const JSON_EXAMPLES: Partial<Record<FieldKind, string>> = {
  'string-list': '["a", "b"]',
  'integer-list': '[2, 78]',
  pair: '[0.5, 1.5]',
  'string-map': '{"NAME": "value"}',
  'count-map': '{"event*": 2, "*": 7}',
  'resource-map': '{"cores": {"start": 8, "min": 4, "shrink": 1.1}}',
  'scalar-map': '{"dataset": "SiR2"}',
};

function parseJson(field: string, text: string, source: string, example: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ConfigError(field, `expected JSON such as ${example} (from ${source}), got ${JSON.stringify(text)}: ${(error as Error).message}`);
  }
}

type ValueKind = FieldKind | 'section' | 'json-object' | 'text' | 'numeric' | 'scalar' | undefined;

/**
 * The kind of the value at a path; paths inside maps get the kind of the map's entries. `stages.NAME.…` is
 * read by the keys a stage may hold (stages.compress.slots is an integer, stages.compress.env.X text).
 */
function kindAt(path: string[]): ValueKind {
  if (path[0] === STAGES_KEY) {
    if (path.length <= 2) return 'section';
    return kindIn(STAGE_KEYS, path.slice(2));
  }
  return kindIn(CONFIG_KEYS, path);
}

function kindIn(table: Readonly<Record<string, FieldKind | SectionKeys>>, path: string[]): ValueKind {
  const kind = Object.hasOwn(table, path[0]) ? table[path[0]] : undefined;
  if (kind === undefined) return undefined;
  if (typeof kind === 'object') return path.length === 1 ? 'section' : kindIn(kind, path.slice(1));
  const depth = path.length - 1;
  if (depth === 0) return kind;
  if (kind === 'string-map') return depth === 1 ? 'text' : undefined;
  if (kind === 'count-map') return depth === 1 ? 'numeric' : undefined;
  if (kind === 'scalar-map') return depth === 1 ? 'scalar' : undefined;
  if (kind === 'resource-map') return depth === 1 ? 'json-object' : depth === 2 ? 'numeric' : undefined;
  return undefined;
}

/** Types a string from the environment or `--set` by the key it sets; validation judges the result. */
function typeText(path: string[], text: string, source: string): unknown {
  const field = path.join('.');
  const kind = kindAt(path);
  switch (kind) {
    case 'integer':
    case 'number':
    case 'duration':
    case 'bytes':
    case 'numeric':
      return NUMERIC.test(text.trim()) ? Number(text) : text;
    case 'boolean': {
      const lower = text.trim().toLowerCase();
      if (['true', 'yes', 'on', '1'].includes(lower)) return true;
      if (['false', 'no', 'off', '0'].includes(lower)) return false;
      return text;
    }
    case 'scalar': {
      // A param compared as it is: a number or a boolean when it reads as one, else the text.
      const trimmed = text.trim();
      if (NUMERIC.test(trimmed)) return Number(trimmed);
      if (trimmed === 'true' || trimmed === 'false') return trimmed === 'true';
      return text;
    }
    case 'string-list':
    case 'integer-list':
    case 'pair':
    case 'string-map':
    case 'count-map':
    case 'resource-map':
    case 'scalar-map':
      return parseJson(field, text, source, JSON_EXAMPLES[kind] ?? '[]');
    case 'section':
      return parseJson(field, text, source, '{"key": "value"}');
    case 'json-object':
      return parseJson(field, text, source, '{"start": 8, "min": 4, "shrink": 1.1}');
    default:
      // Strings, paths, enums, and unknown keys (validation names those).
      return text;
  }
}

function assign(raw: Raw, path: string[], value: unknown, source: string): void {
  if (path.includes('__proto__')) throw new ConfigError(path.join('.'), `unknown key (from ${source})`);
  let node = raw;
  for (let i = 0; i < path.length - 1; i++) {
    const next = node[path[i]];
    if (next === undefined || next === null) {
      node[path[i]] = {};
    } else if (!isPlainObject(next)) {
      const field = path.slice(0, i + 1).join('.');
      throw new ConfigError(field, `expected a mapping so that ${source} can set ${path.join('.')} inside it, got ${showValue(next)}`);
    }
    node = node[path[i]] as Raw;
  }
  node[path[path.length - 1]] = value;
}

/**
 * RUNWARDEN_STORE, _HOST, _SLOTS, _ORDER, _LOG_LEVEL, RUNWARDEN_<SECTION>__<KEY>[__<SUBKEY>...] for the
 * sections process, timeouts, retry, disk, observe and select, and RUNWARDEN_STAGES__<NAME>__<KEY>[__...] for a
 * stage. Segments are lower-cased, except variable names under process.env or stages.NAME.env.
 * Every other RUNWARDEN_* variable (RUNWARDEN_RUN_NUMBER, RUNWARDEN_STAGE, RUNWARDEN_UPSTREAM_X, RUNWARDEN_CONFIG,
 * ...) is not configuration. Empty values count as unset.
 */
export function environmentOverrides(env: Record<string, string | undefined>): { path: string[]; value: string; name: string }[] {
  const overrides: { path: string[]; value: string; name: string }[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('RUNWARDEN_') || value === undefined || value === '') continue;
    const rest = name.slice('RUNWARDEN_'.length);
    if (rest.includes('__')) {
      const segments = rest.split('__');
      const section = segments[0].toLowerCase();
      if (!(SECTIONS as readonly string[]).includes(section) && section !== STAGES_KEY) continue;
      // The segment naming the env map: process.env, or stages.NAME.env; the names below it keep their case.
      const envAt = section === STAGES_KEY ? 2 : 1;
      const path = segments.map((segment, i) =>
        i > envAt && segments[envAt]?.toLowerCase() === 'env' ? segment : segment.toLowerCase(),
      );
      overrides.push({ path, value, name });
    } else {
      const key = rest.toLowerCase();
      if ((TOP_LEVEL as readonly string[]).includes(key)) overrides.push({ path: [key], value, name });
    }
  }
  // Sorted so that a whole-section variable is applied before its keys, whatever the environment's order.
  return overrides.sort((a, b) => a.path.length - b.path.length || a.name.localeCompare(b.name));
}

function parseSetOverride(text: string): { path: string[]; value: string } {
  const equals = text.indexOf('=');
  const key = equals < 0 ? '' : text.slice(0, equals).trim();
  const path = key.split('.');
  if (equals < 0 || path.some((segment) => segment === '')) {
    throw new ConfigError('set', `--set ${JSON.stringify(text)}: expected KEY=VALUE with a dotted key, e.g. --set timeouts.check_interval=2s`);
  }
  return { path, value: text.slice(equals + 1) };
}

/** Reads, merges and validates the configuration. Throws ConfigError (exit code 2) on any problem. */
export function loadConfig(options: LoadConfigOptions): Config {
  const sources = new Sources();
  const file = configFilePath(options);
  let raw: Raw = {};
  if (file !== undefined) {
    raw = readYamlFile(file, options.file !== undefined);
    resolveFilePaths(raw, dirname(file));
    for (const [key, value] of Object.entries(raw)) {
      sources.set(key, file);
      if (typeof (CONFIG_KEYS as Record<string, unknown>)[key] === 'object' && isPlainObject(value)) {
        for (const inner of Object.keys(value)) sources.set(`${key}.${inner}`, file);
      }
    }
  }

  // Every override is applied on its own: one that cannot be is kept as a problem and the others still are,
  // so the report at the end names every problem at once.
  const problems: ConfigError[] = [];
  const apply = (change: () => void) => {
    try {
      change();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error);
    }
  };
  for (const { path, value, name } of environmentOverrides(options.env)) {
    apply(() => {
      assign(raw, path, typeText(path, value, name), name);
      sources.set(path.join('.'), name);
    });
  }

  const flags = options.flags;
  for (const key of TOP_LEVEL) {
    const value = flags[key];
    if (value === undefined) continue;
    const flag = `--${key.replace('_', '-')}`;
    apply(() => {
      raw[key] = typeof value === 'string' ? typeText([key], value, flag) : value;
      sources.set(key, flag);
    });
  }
  for (const text of flags.set ?? []) {
    apply(() => {
      const { path, value } = parseSetOverride(text);
      const source = `--set ${path.join('.')}`;
      assign(raw, path, typeText(path, value, source), source);
      sources.set(path.join('.'), source);
    });
  }

  // A field the merged configuration does not hold is a default, whoever set its section: `timeouts:
  // {check_interval: 30}` in a file does not make the file the source of timeouts.max_busy_time.
  const sourceOf = (field: string) => (holds(raw, field) ? sources.of(field) : undefined);
  let config: Config;
  try {
    config = validateConfig(raw, { cwd: options.cwd, hostName: options.hostName, sourceOf });
  } catch (error) {
    if (problems.length === 0 || !(error instanceof ConfigError)) throw error;
    throwConfigProblems([...problems, ...(error instanceof ConfigProblems ? error.problems : [error])]);
    throw error;
  }
  throwConfigProblems(problems);
  return config;
}

/** True when `raw` has a value at a dotted field such as `timeouts.max_busy_time` or `process.command[2]`. */
function holds(raw: Raw, field: string): boolean {
  let node: unknown = raw;
  for (const key of field.replace(/\[\d+\]/g, '').split('.')) {
    if (!isPlainObject(node) || node[key] === undefined) return false;
    node = node[key];
  }
  return true;
}
