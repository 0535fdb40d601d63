// The configuration's shape and defaults (DESIGN §6). Durations are milliseconds here, whatever the user wrote.

import { hostname } from 'node:os';
import { resolve } from 'node:path';

export interface ResourceRule {
  start: number;
  min: number;
  shrink: number;
}

export type SelectionOrder = 'newest' | 'oldest';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * Which runs a daemon or a stage takes (DESIGN §9 selection). Every given condition must hold; an empty
 * selector takes every run.
 */
export interface RunSelector {
  /** Tags that must all be present (AlCap's datasets). */
  tags?: string[];
  /** Tags none of which may be present. */
  not_tags?: string[];
  /** The run's `mode` must be one of these. */
  modes?: string[];
  /** Inclusive bounds on the run number. */
  min_number?: number;
  max_number?: number;
  /** `params.KEY` must equal the value (compared as JSON scalars). */
  params?: Record<string, string | number | boolean>;
  /** Keep a run back until its `end` is set (data taking finished). */
  require_end?: boolean;
}

/** What one stage's command needs: the first wave's `process:` block. */
export interface CommandSection {
  command: string[];
  cwd: string;
  env: Record<string, string>;
  output_root: string;
  log_dir: string;
  require_output: boolean;
  clean_output: boolean;
  /** Bytes of command output an attempt log keeps; later output is discarded after one marker line. */
  max_log_bytes: number;
  no_retry_exit_codes: number[];
  targets: string[];
  drop_targets_after: Record<string, number>;
  minimal_targets: string[];
  resources: Record<string, ResourceRule>;
}

/**
 * One stage of the pipeline (DESIGN §9), resolved: every key of `process:` (a stage inherits what it does not
 * set from there), plus its place in the pipeline, its share of slots, its overrides and its check.
 */
export interface StageConfig extends CommandSection {
  name: string;
  /** Stages of the same run that must be done first. */
  needs: string[];
  /** Longest chain of `needs` above this stage (0 for a stage that needs nothing); claims prefer deeper stages. */
  depth: number;
  /** At most this many of this stage's tasks run at once on this host (never more than the daemon's slots). */
  slots: number;
  /** Run after the command exits 0, before the task is done; empty: no check. */
  check: string[];
  /** This stage's selection; a run gets this stage's task only when it matches (and the daemon's `select`). */
  select: RunSelector;
  /** The stage's own limits (the daemon's `timeouts` where it sets none). */
  timeouts: { max_processing_time: number; max_no_output_time: number };
  /** The stage's own retry policy (the daemon's `retry` where it sets none). */
  retry: Config['retry'];
}

export interface Config {
  /** `sqlite:/absolute/path.db` or a `mongodb://` / `mongodb+srv://` URL. */
  store: string;
  host: string;
  slots: number;
  order: SelectionOrder;
  log_level: LogLevel;
  /** The first wave's one command, and with `stages:` what every stage inherits. */
  process: CommandSection & {
    /**
     * Runs in a row that fail before their command could start, for a reason of the host (the executable
     * missing, the output or log directory not writable): at this many the host pauses claiming.
     */
    host_fault_threshold: number;
  };
  /** All in milliseconds. */
  timeouts: {
    signal_escalate: number;
    check_interval: number;
    max_considering_time: number;
    max_busy_time: number;
    cleanup_interval: number;
    idle_poll: number;
    presumed_dead: number;
    /** A host dead and silent for this long is removed from the hosts list by cleanup. */
    forget_dead_hosts: number;
    max_processing_time: number;
    max_no_output_time: number;
    /** `daemon --undying`: pause before restarting a crashed daemon. */
    restart_pause: number;
  };
  retry: {
    /** Milliseconds. */
    base: number;
    factor: number;
    max_exponent: number;
    jitter: [number, number];
    max_failures: number;
    /** Attempts ended by their host (restart, stop, presumed dead, host fault) before the run is abandoned. */
    max_interruptions: number;
  };
  disk: { path: string; max_used_percent: number; min_free_bytes: number };
  /**
   * The pipeline from a `stages:` key, upstream first (a topological order); absent without one. Read it
   * through policy/pipeline's stagesOf, which gives a config without `stages:` its one stage named `process`
   * made of the `process:` block (outputs and logs then stay where the first wave put them).
   */
  stages?: StageConfig[];
  /** This daemon's selection: what it claims, whatever the stage. */
  select: RunSelector;
  /** `daemon --inspect` / `--metrics`: where they listen (loopback unless configured otherwise). */
  observe: { bind: string; inspect_port: number; metrics_port: number };
}

export const SELECTION_ORDERS: readonly SelectionOrder[] = ['newest', 'oldest'];
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/** Looked for in the working directory when no config file is named. */
export const DEFAULT_CONFIG_FILE = 'runwarden.yaml';

/**
 * The host's name in the database. DESIGN asks for the FQDN; `os.hostname()` is what Node offers without a DNS
 * lookup (on most clusters it is the FQDN or the short name the operators use). Override with `host`.
 */
export function defaultHostName(): string {
  return hostname();
}

/**
 * The defaults of DESIGN §6, with relative paths resolved against `cwd`. `disk.path` follows
 * `process.output_root`.
 */
export function defaultConfig(cwd: string, host: string = defaultHostName()): Config {
  const outputRoot = resolve(cwd, 'processed');
  return {
    store: `sqlite:${resolve(cwd, 'runwarden.db')}`,
    host,
    slots: 1,
    order: 'newest',
    log_level: 'info',
    process: {
      command: [],
      cwd: resolve(cwd),
      env: {},
      output_root: outputRoot,
      log_dir: resolve(cwd, 'logs'),
      require_output: true,
      clean_output: true,
      max_log_bytes: 100 * 1024 * 1024,
      no_retry_exit_codes: [],
      targets: [],
      drop_targets_after: {},
      minimal_targets: [],
      resources: {},
      host_fault_threshold: 3,
    },
    timeouts: {
      signal_escalate: 3_000,
      check_interval: 10_000,
      max_considering_time: 60_000,
      max_busy_time: 120_000,
      cleanup_interval: 60_000,
      idle_poll: 10_000,
      presumed_dead: 300_000,
      forget_dead_hosts: 7 * 24 * 3_600_000,
      max_processing_time: 72 * 3_600_000,
      max_no_output_time: 30 * 60_000,
      restart_pause: 10_000,
    },
    retry: { base: 60_000, factor: 5, max_exponent: 3, jitter: [0.5, 1.5], max_failures: 10, max_interruptions: 20 },
    disk: { path: outputRoot, max_used_percent: 95, min_free_bytes: 1_073_741_824 },
    select: {},
    observe: { bind: '127.0.0.1', inspect_port: 9390, metrics_port: 9391 },
  };
}

/**
 * How a key's value is written. Drives unknown-key detection, the typing of environment and `--set` strings,
 * and which values are paths.
 */
export type FieldKind =
  | 'store'
  | 'string'
  | 'path'
  | 'enum'
  | 'integer'
  | 'number'
  | 'boolean'
  | 'duration'
  | 'bytes'
  | 'string-list'
  | 'integer-list'
  | 'pair'
  | 'string-map'
  | 'count-map'
  | 'resource-map'
  /** A mapping of names to JSON scalars (string, number, boolean): `select.params`. */
  | 'scalar-map';

export type SectionKeys = Readonly<Record<string, FieldKind>>;

/** The keys of a run selector (`select:` and `stages.NAME.select`). */
export const SELECT_KEYS = {
  tags: 'string-list',
  not_tags: 'string-list',
  modes: 'string-list',
  min_number: 'integer',
  max_number: 'integer',
  params: 'scalar-map',
  require_end: 'boolean',
} as const satisfies SectionKeys;

export const CONFIG_KEYS = {
  store: 'store',
  host: 'string',
  slots: 'integer',
  order: 'enum',
  log_level: 'enum',
  process: {
    command: 'string-list',
    cwd: 'path',
    env: 'string-map',
    output_root: 'path',
    log_dir: 'path',
    require_output: 'boolean',
    clean_output: 'boolean',
    max_log_bytes: 'bytes',
    no_retry_exit_codes: 'integer-list',
    targets: 'string-list',
    drop_targets_after: 'count-map',
    minimal_targets: 'string-list',
    resources: 'resource-map',
    host_fault_threshold: 'integer',
  },
  timeouts: {
    signal_escalate: 'duration',
    check_interval: 'duration',
    max_considering_time: 'duration',
    max_busy_time: 'duration',
    cleanup_interval: 'duration',
    idle_poll: 'duration',
    presumed_dead: 'duration',
    forget_dead_hosts: 'duration',
    max_processing_time: 'duration',
    max_no_output_time: 'duration',
    restart_pause: 'duration',
  },
  retry: { base: 'duration', factor: 'number', max_exponent: 'integer', jitter: 'pair', max_failures: 'integer', max_interruptions: 'integer' },
  disk: { path: 'path', max_used_percent: 'number', min_free_bytes: 'bytes' },
  observe: { bind: 'string', inspect_port: 'integer', metrics_port: 'integer' },
  select: SELECT_KEYS,
} as const satisfies Readonly<Record<string, FieldKind | SectionKeys>>;

/** The top-level key holding the pipeline: a mapping of stage names to STAGE_KEYS sections. */
export const STAGES_KEY = 'stages';

/** A stage's name: it becomes a directory, a `--stage` value, `{upstream.NAME.output}` and RUNWARDEN_UPSTREAM_NAME. */
export const STAGE_NAME = /^[a-z][a-z0-9_]{0,39}$/;

/** The keys of `process:` a stage may set (everything but the host-level `host_fault_threshold`). */
export const STAGE_COMMAND_KEYS = (() => {
  const { host_fault_threshold: _hostLevel, ...keys } = CONFIG_KEYS.process;
  return keys;
})();

/** The timeouts a stage may set; the others are the host's (leases, heartbeats, cleanup). */
export const STAGE_TIMEOUT_KEYS = { max_processing_time: 'duration', max_no_output_time: 'duration' } as const satisfies SectionKeys;

/** What `stages.NAME` may hold. */
export const STAGE_KEYS = {
  ...STAGE_COMMAND_KEYS,
  needs: 'string-list',
  slots: 'integer',
  check: 'string-list',
  select: SELECT_KEYS,
  timeouts: STAGE_TIMEOUT_KEYS,
  retry: CONFIG_KEYS.retry,
} as const satisfies Readonly<Record<string, FieldKind | SectionKeys>>;

export const SECTIONS = ['process', 'timeouts', 'retry', 'disk', 'observe', 'select'] as const;
export type SectionName = (typeof SECTIONS)[number];

export const RESOURCE_RULE_KEYS = ['start', 'min', 'shrink'] as const;

/** The kind of a dotted key such as `timeouts.check_interval`, or undefined when it is not a known key. */
export function kindOf(section: string | undefined, key: string): FieldKind | SectionKeys | undefined {
  const keys: Record<string, FieldKind | SectionKeys> = CONFIG_KEYS;
  if (section === undefined) return Object.hasOwn(keys, key) ? keys[key] : undefined;
  const inner = Object.hasOwn(keys, section) ? keys[section] : undefined;
  if (typeof inner !== 'object') return undefined;
  return Object.hasOwn(inner, key) ? inner[key] : undefined;
}

/** Every known key as a dotted path, sections included ("process", "process.command", ...), and `stages` (see stageKeyPaths). */
export function knownKeyPaths(): string[] {
  const paths: string[] = [];
  for (const [key, kind] of Object.entries(CONFIG_KEYS)) {
    paths.push(key);
    if (typeof kind === 'object') for (const inner of Object.keys(kind)) paths.push(`${key}.${inner}`);
  }
  paths.push(STAGES_KEY);
  return paths;
}

/** Every key of one stage as a dotted path (`stages.NAME.command`, `stages.NAME.timeouts.max_processing_time`). */
export function stageKeyPaths(name: string): string[] {
  const paths: string[] = [];
  for (const [key, kind] of Object.entries(STAGE_KEYS)) {
    paths.push(`${STAGES_KEY}.${name}.${key}`);
    if (typeof kind === 'object') for (const inner of Object.keys(kind)) paths.push(`${STAGES_KEY}.${name}.${key}.${inner}`);
  }
  return paths;
}
