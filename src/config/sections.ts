// Readers for the sections a config may hold more than once: a command section (`process:` and every stage),
// a retry policy (`retry:` and `stages.NAME.retry`) and a run selector (`select:` and `stages.NAME.select`).
// Each names its fields under the prefix it is given, so a stage's problem says `stages.compress.env.X`.

import { isReservedResourceName, RESERVED_RESOURCE_NAMES, BUILTIN_PLACEHOLDERS, placeholdersIn, upstreamStageOf } from '../policy/placeholders.js';
import { showValue } from './duration.js';
import { Checker, isPlainObject, nearestKey, readStringList, type Raw } from './checker.js';
import { RESOURCE_RULE_KEYS, type CommandSection, type Config, type ResourceRule, type RunSelector } from './schema.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESOURCE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const COMMAND_EXAMPLE = '["my-processor", "--run", "{number}", "--out", "{output}"]';

/** Where a command section sits in the pipeline, for its placeholders. */
export interface CommandPlace {
  /** Base for relative paths. */
  cwd: string;
  /** The stage's name, or undefined for `process:` read as the first wave's block. */
  stage: string | undefined;
  /** Stages above this one (directly or further up): the only ones `{upstream.STAGE.output}` may name. */
  upstream: readonly string[];
  /** False when the stage's needs (or those of a stage above) were refused: `upstream` may then be incomplete. */
  upstreamKnown: boolean;
  /** Every stage of the pipeline, to tell "not upstream" from "no such stage". */
  stages: readonly string[];
}

/**
 * Reads a command section under `prefix` (`process` or `stages.NAME`). A key the section does not set is
 * `base`'s (the defaults for `process:`, the resolved `process:` block for a stage).
 */
export function readCommandSection(check: Checker, prefix: string, raw: Raw, base: CommandSection, place: CommandPlace): CommandSection {
  const keep = <T>(fallback: T, read: () => T): T => check.keep(fallback, read);
  const given = (key: string) => raw[key] !== undefined;

  const resources = given('resources') ? keep({}, () => readResources(check, `${prefix}.resources`, raw.resources)) : base.resources;
  const command = given('command')
    ? keep([] as string[], () => readArgv(check, `${prefix}.command`, raw.command, resources, place))
    : base.command;

  let env = base.env;
  if (given('env')) {
    env = {};
    const map = keep({}, () => check.mapping(`${prefix}.env`, raw.env, 'a mapping of variable names to values, e.g. {OMP_NUM_THREADS: "4"}'));
    for (const [name, value] of Object.entries(map)) {
      keep(undefined, () => {
        const field = `${prefix}.env.${name}`;
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

  const noRetry = !given('no_retry_exit_codes')
    ? base.no_retry_exit_codes
    : keep([] as number[], () =>
        check.array(`${prefix}.no_retry_exit_codes`, raw.no_retry_exit_codes, 'a list of exit codes', '[2, 78]').map((code, index) =>
          check.integer(`${prefix}.no_retry_exit_codes[${index}]`, code, 0, 0, 255),
        ),
      );

  let dropTargetsAfter = base.drop_targets_after;
  if (given('drop_targets_after')) {
    dropTargetsAfter = {};
    const field = `${prefix}.drop_targets_after`;
    const map = keep({}, () => check.mapping(field, raw.drop_targets_after, 'a mapping of target globs to failure counts, e.g. {"event*": 2, "*": 7}'));
    for (const [glob, count] of Object.entries(map)) {
      keep(undefined, () => {
        if (glob === '') check.fail(field, 'a glob cannot be empty; use "*" to match every target');
        dropTargetsAfter[glob] = check.integer(`${field}.${glob}`, count, 0, 0);
      });
    }
  }

  const path = (key: 'cwd' | 'output_root' | 'log_dir') => keep(base[key], () => check.path(`${prefix}.${key}`, raw[key], base[key], place.cwd));
  const flag = (key: 'require_output' | 'clean_output') => keep(base[key], () => check.boolean(`${prefix}.${key}`, raw[key], base[key]));
  const names = (key: 'targets' | 'minimal_targets', example: string) =>
    given(key) ? keep([] as string[], () => readStringList(check, `${prefix}.${key}`, raw[key], example, true)) : base[key];
  return {
    command,
    cwd: path('cwd'),
    env,
    output_root: path('output_root'),
    log_dir: path('log_dir'),
    require_output: flag('require_output'),
    clean_output: flag('clean_output'),
    max_log_bytes: keep(base.max_log_bytes, () => maxLogBytes(check, `${prefix}.max_log_bytes`, raw.max_log_bytes, base.max_log_bytes)),
    no_retry_exit_codes: noRetry,
    targets: names('targets', '["peaks", "events"]'),
    drop_targets_after: dropTargetsAfter,
    minimal_targets: names('minimal_targets', '["raw_records"]'),
    resources,
  };
}

/** The smallest log bound: the supervisor's own lines must fit in an attempt log. */
const MIN_LOG_BYTES = 4096;

function maxLogBytes(check: Checker, field: string, value: unknown, fallback: number): number {
  const bytes = check.bytes(field, value, fallback);
  if (bytes < MIN_LOG_BYTES) {
    check.fail(field, `an attempt log must keep at least ${MIN_LOG_BYTES} bytes ("4KiB"), got ${showValue(value)}`);
  }
  return bytes;
}

function readResources(check: Checker, field: string, value: unknown): Record<string, ResourceRule> {
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
    if (isReservedResourceName(name)) {
      check.fail(
        ruleField,
        `"${name}" is reserved (built-in placeholders and RUNWARDEN_* variables: ${RESERVED_RESOURCE_NAMES.join(', ')}, and upstream_*); pick another name`,
      );
    }
    const clash = seenUpper.get(upper);
    if (clash !== undefined) check.fail(ruleField, `clashes with ${field}.${clash}: both become RUNWARDEN_${upper}`);
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

/**
 * An argv list (a command or a check) whose placeholders are all known here: the built-ins, the section's
 * resources, `{params.KEY}`, and `{upstream.STAGE.output}` for a stage above this one.
 */
export function readArgv(check: Checker, field: string, value: unknown, resources: Record<string, ResourceRule>, place: CommandPlace): string[] {
  const argv = readStringList(check, field, value, COMMAND_EXAMPLE, false);
  const known = new Set<string>([...BUILTIN_PLACEHOLDERS, ...Object.keys(resources)]);
  const listing = [...known, 'params.KEY', 'upstream.STAGE.output'].map((name) => `{${name}}`).join(' ');
  const resourcesKey = place.stage === undefined ? 'process.resources' : `stages.${place.stage}.resources (or process.resources)`;
  argv.forEach((element, index) => {
    for (const name of placeholdersIn(element)) {
      if (name.startsWith('params.') || known.has(name)) continue;
      const elementField = `${field}[${index}]`;
      if (name.startsWith('upstream.')) checkUpstream(check, elementField, name, place);
      else if (name === 'cores') {
        check.fail(elementField, `{cores} needs a "cores" resource: add ${resourcesKey}: {cores: {start: 8, min: 1, shrink: 2}} (values are yours)`);
      } else {
        const near = nearestKey(name, [...known]);
        check.fail(
          elementField,
          `unknown placeholder {${name}} in ${JSON.stringify(element)}${near ? `; did you mean {${near}}?` : ''}; known: ${listing}`,
        );
      }
    }
  });
  return argv;
}

function checkUpstream(check: Checker, field: string, name: string, place: CommandPlace): void {
  const stage = upstreamStageOf(name);
  if (stage === undefined) {
    check.fail(field, `{${name}}: the only upstream placeholder is {upstream.STAGE.output}, STAGE being a stage this one needs`);
  }
  if (place.upstream.includes(stage)) return;
  if (!place.upstreamKnown && place.stages.includes(stage)) return; // its needs are reported instead
  if (place.stage === undefined) {
    check.fail(field, `{${name}}: process: is a pipeline of one stage, which has no upstream; declare stages: with needs to use upstream outputs`);
  }
  const above = place.upstream.length > 0 ? place.upstream.join(', ') : 'none';
  if (!place.stages.includes(stage)) {
    const near = nearestKey(stage, place.stages);
    check.fail(field, `{${name}}: there is no stage "${stage}"${near ? `; did you mean ${near}?` : ''} (stages: ${place.stages.join(', ')})`);
  }
  check.fail(
    field,
    `{${name}}: stage ${stage} is not upstream of ${place.stage} (the stages it needs, directly or further up: ${above}); add ${stage} to stages.${place.stage}.needs`,
  );
}

/** Reads a retry policy under `prefix` (`retry` or `stages.NAME.retry`); a key it does not set is `base`'s. */
export function readRetry(check: Checker, prefix: string, raw: Raw, base: Config['retry']): Config['retry'] {
  const keep = <T>(fallback: T, read: () => T): T => check.keep(fallback, read);
  const baseDelay = keep(base.base, () => check.duration(`${prefix}.base`, raw.base, base.base));
  const factor = keep(base.factor, () => {
    const value = check.number(`${prefix}.factor`, raw.factor, base.factor);
    if (value < 1) check.expected(`${prefix}.factor`, 'a number ≥ 1 (the delay grows by it per failure)', value);
    return value;
  });
  const jitterField = `${prefix}.jitter`;
  const jitter: [number, number] = raw.jitter === undefined
    ? base.jitter
    : keep(base.jitter, () => {
        const pair = check.array(jitterField, raw.jitter, 'two numbers [lo, hi] with 0 < lo ≤ hi', '[0.5, 1.5]');
        if (pair.length !== 2) check.expected(jitterField, 'two numbers [lo, hi] with 0 < lo ≤ hi, e.g. [0.5, 1.5]', pair);
        const lo = check.number(`${jitterField}[0]`, pair[0], 0);
        const hi = check.number(`${jitterField}[1]`, pair[1], 0);
        if (!(lo > 0 && lo <= hi)) check.expected(jitterField, 'two numbers [lo, hi] with 0 < lo ≤ hi, e.g. [0.5, 1.5]', pair);
        return [lo, hi];
      });
  return {
    base: baseDelay,
    factor,
    max_exponent: keep(base.max_exponent, () => check.integer(`${prefix}.max_exponent`, raw.max_exponent, base.max_exponent, 0)),
    jitter,
    max_failures: keep(base.max_failures, () => check.integer(`${prefix}.max_failures`, raw.max_failures, base.max_failures, 1)),
    max_interruptions: keep(base.max_interruptions, () =>
      check.integer(`${prefix}.max_interruptions`, raw.max_interruptions, base.max_interruptions, 1),
    ),
  };
}

/**
 * Reads a run selector under `prefix` (`select` or `stages.NAME.select`). Only the conditions it sets are in
 * the result, so an empty section selects every run.
 */
export function readSelector(check: Checker, prefix: string, raw: Raw): RunSelector {
  const keep = <T>(fallback: T, read: () => T): T => check.keep(fallback, read);
  const selector: RunSelector = {};
  const names = (key: 'tags' | 'not_tags' | 'modes', example: string): string[] | undefined => {
    if (raw[key] === undefined) return undefined;
    return keep(undefined, () => {
      const list = check.array(`${prefix}.${key}`, raw[key], 'a list of strings', example).map((item, index) => {
        if (typeof item !== 'string' || item === '') check.expected(`${prefix}.${key}[${index}]`, 'a non-empty string', item);
        return item;
      });
      // Every run has a mode or none: an empty list of allowed modes would select nothing, ever.
      if (key === 'modes' && list.length === 0) {
        check.fail(`${prefix}.modes`, 'an empty list selects no run at all; leave modes out to take every mode');
      }
      return list;
    });
  };
  const tags = names('tags', '["SiR2"]');
  const notTags = names('not_tags', '["test"]');
  const modes = names('modes', '["physics", "calibration"]');
  if (tags !== undefined) selector.tags = tags;
  if (notTags !== undefined) selector.not_tags = notTags;
  if (modes !== undefined) selector.modes = modes;
  const bound = (key: 'min_number' | 'max_number') =>
    raw[key] === undefined ? undefined : keep(undefined, () => check.integer(`${prefix}.${key}`, raw[key], 0, 0));
  const min = bound('min_number');
  const max = bound('max_number');
  if (min !== undefined && max !== undefined && min > max) {
    keep(undefined, () => check.fail(`${prefix}.min_number`, `${min} is more than ${prefix}.max_number (${max}): no run number lies between them`));
  } else {
    if (min !== undefined) selector.min_number = min;
    if (max !== undefined) selector.max_number = max;
  }
  if (raw.params !== undefined) {
    const field = `${prefix}.params`;
    const map = keep(undefined, () => check.mapping(field, raw.params, 'a mapping of param names to values, e.g. {dataset: "SiR2", energy: 2.5}'));
    if (map !== undefined) {
      const params: Record<string, string | number | boolean> = {};
      let good = true;
      for (const [key, value] of Object.entries(map)) {
        const ok = keep(false, () => {
          if (typeof value === 'string' || typeof value === 'boolean' || (typeof value === 'number' && Number.isFinite(value))) return true;
          check.expected(`${field}.${key}`, 'a string, a finite number or a boolean (compared with the run\'s param as it is)', value);
        });
        if (ok) params[key] = value as string | number | boolean;
        else good = false;
      }
      if (good) selector.params = params;
    }
  }
  if (raw.require_end !== undefined) {
    const value = keep(undefined, () => check.boolean(`${prefix}.require_end`, raw.require_end, false));
    if (value !== undefined) selector.require_end = value;
  }
  return selector;
}

/** `raw[key]` as a mapping, or {} when absent, null (an empty YAML section) or not a mapping (reported elsewhere). */
export function sectionOf(raw: Raw, key: string): Raw {
  const value = raw[key];
  return isPlainObject(value) ? value : {};
}
