// `stages:` (DESIGN §9): the pipeline read, checked as a graph (unknown needs, cycles) and resolved to
// Config.stages, upstream first. Every problem is recorded on the Checker, so all of them are reported at once.

import { upstreamOf } from '../policy/pipeline.js';
import { showValue } from './duration.js';
import { Checker, isPlainObject, nearestKey, type Raw } from './checker.js';
import { readArgv, readCommandSection, readRetry, readSelector, sectionOf } from './sections.js';
import {
  CONFIG_KEYS,
  STAGES_KEY,
  STAGE_KEYS,
  STAGE_NAME,
  stageKeyPaths,
  type CommandSection,
  type Config,
  type StageConfig,
} from './schema.js';

/** What a stage inherits, and what bounds it. */
export interface PipelineBase {
  cwd: string;
  /** `process:` resolved: what a stage does not set it takes from here (its command excepted). */
  process: CommandSection;
  /** Whether `process.command` was given: with `stages:` each stage has its own command instead. */
  processCommandGiven: boolean;
  /** The daemon's slots: a stage's default and upper bound. */
  slots: number;
  timeouts: Config['timeouts'];
  retry: Config['retry'];
}

const STAGE_EXAMPLE = 'stages: {process: {command: [my-processor, "{number}", "{output}"]}, compress: {needs: [process], command: [xz-dir, "{upstream.process.output}", "{output}"]}}';

/**
 * Reads `stages:` (undefined when the config has none) into stages in a topological order of `needs`, file
 * order among stages that could go either way, each with its depth.
 */
export function readStages(check: Checker, value: unknown, base: PipelineBase): StageConfig[] | undefined {
  if (value === undefined) return undefined;
  const map = check.keep(undefined, () => {
    // `stages:` with every stage commented out is null: a pipeline without stages, refused like {}.
    const mapping = value === null ? {} : check.mapping(STAGES_KEY, value, `a mapping of stage names to stage settings, e.g. ${STAGE_EXAMPLE}`);
    if (Object.keys(mapping).length === 0) {
      check.fail(STAGES_KEY, `declares no stage; give at least one (e.g. ${STAGE_EXAMPLE}), or leave stages: out to use process: as the one stage`);
    }
    return mapping;
  });
  if (base.processCommandGiven) {
    check.keep(undefined, () =>
      check.fail(
        'process.command',
        'with stages: every stage has its own command; move it into a stage (e.g. stages: {process: {command: [...]}}) and keep only what the stages share (cwd, env, output_root, log_dir, ...) in process:',
      ),
    );
  }
  if (map === undefined) return undefined;

  // The stages with usable names, in file order, with their raw settings and their needs.
  const drafts: Draft[] = [];
  for (const [name, rawStage] of Object.entries(map)) {
    const ok = check.keep(false, () => {
      if (!STAGE_NAME.test(name)) {
        check.fail(
          `${STAGES_KEY}.${name}`,
          'a stage name is a lower-case letter followed by up to 39 lower-case letters, digits or _ (it becomes a directory, {upstream.NAME.output} and RUNWARDEN_UPSTREAM_NAME)',
        );
      }
      if (rawStage !== null && rawStage !== undefined && !isPlainObject(rawStage)) {
        check.expected(`${STAGES_KEY}.${name}`, 'a mapping of the stage\'s settings (command, needs, slots, ...)', rawStage);
      }
      return true;
    });
    if (ok) drafts.push({ name, raw: isPlainObject(rawStage) ? rawStage : {}, needs: [], needsRefused: false });
  }
  const names = drafts.map((draft) => draft.name);
  for (const draft of drafts) {
    checkStageKeys(check, draft.name, draft.raw);
    const before = check.problems.length;
    draft.needs = readNeeds(check, draft.name, draft.raw.needs, names);
    draft.needsRefused = check.problems.length > before;
  }
  // Where a stage's needs, or those of a stage above it, were refused, its upstream is not known: its
  // {upstream.STAGE.output} placeholders are not judged, so the one bad needs value is the one problem reported.
  const graph = drafts.map(({ name, needs }) => ({ name, needs }));
  const refused = new Set(drafts.filter((draft) => draft.needsRefused).map((draft) => draft.name));
  const upstreamKnown = (name: string) => !refused.has(name) && !upstreamOf(graph, name).some((above) => refused.has(above));

  const order = topologicalOrder(check, drafts);
  const byName = new Map(drafts.map((draft) => [draft.name, draft]));
  const stages: StageConfig[] = [];
  const depth = new Map<string, number>();
  for (const name of order) {
    const draft = byName.get(name)!;
    const stageDepth = draft.needs.length === 0 ? 0 : 1 + Math.max(...draft.needs.map((need) => depth.get(need) ?? 0));
    depth.set(name, stageDepth);
    stages.push(readStage(check, draft, stageDepth, upstreamOf(graph, name), upstreamKnown(name), names, base));
  }
  // Stages on or below a cycle (already reported) are still read, so their own problems are reported too.
  for (const draft of drafts) {
    if (!depth.has(draft.name)) readStage(check, draft, 0, upstreamOf(graph, draft.name), upstreamKnown(draft.name), names, base);
  }
  return stages;
}

interface Draft {
  name: string;
  raw: Raw;
  needs: string[];
  /** Whether reading `needs` found a problem (so the graph around this stage is not what the user meant). */
  needsRefused: boolean;
}

function readStage(
  check: Checker,
  draft: Draft,
  depth: number,
  upstream: string[],
  upstreamKnown: boolean,
  stages: string[],
  base: PipelineBase,
): StageConfig {
  const prefix = `${STAGES_KEY}.${draft.name}`;
  const raw = draft.raw;
  const place = { cwd: base.cwd, stage: draft.name, upstream, upstreamKnown, stages };
  const section = readCommandSection(check, prefix, raw, { ...base.process, command: [] }, place);
  if (raw.command === undefined || (Array.isArray(raw.command) && raw.command.length === 0)) {
    check.keep(undefined, () =>
      check.fail(`${prefix}.command`, `missing: every stage needs its own command, an argv list, e.g. [my-step, "{number}", "{output}"]`),
    );
  }
  const slots = check.keep(base.slots, () => {
    const value = check.integer(`${prefix}.slots`, raw.slots, base.slots, 1);
    if (value > base.slots) {
      const source = check.sourceOf('slots');
      check.fail(
        `${prefix}.slots`,
        `${value} is more than the daemon's slots (${base.slots}${source ? `, set by ${source}` : ', the default'}): a stage's share cannot exceed them; raise slots or lower ${prefix}.slots`,
      );
    }
    return value;
  });
  const check_ = raw.check === undefined ? [] : check.keep([] as string[], () => readArgv(check, `${prefix}.check`, raw.check, section.resources, place));
  const timeoutsRaw = sectionOf(raw, 'timeouts');
  const limit = (key: 'max_processing_time' | 'max_no_output_time') =>
    check.keep(base.timeouts[key], () => {
      const field = `${prefix}.timeouts.${key}`;
      const value = check.duration(field, timeoutsRaw[key], base.timeouts[key]);
      if (value <= 0) check.fail(field, `must be more than 0, got ${showValue(timeoutsRaw[key])}`);
      return value;
    });
  return {
    ...section,
    name: draft.name,
    needs: draft.needs,
    depth,
    slots,
    check: check_,
    select: readSelector(check, `${prefix}.select`, sectionOf(raw, 'select')),
    timeouts: { max_processing_time: limit('max_processing_time'), max_no_output_time: limit('max_no_output_time') },
    retry: readRetry(check, `${prefix}.retry`, sectionOf(raw, 'retry'), base.retry),
  };
}

/** Unknown keys of a stage and of its sections, each with the nearest known key or the reason it is not a stage's. */
function checkStageKeys(check: Checker, name: string, raw: Raw): void {
  const prefix = `${STAGES_KEY}.${name}`;
  const candidates = stageKeyPaths(name);
  const table: Record<string, unknown> = STAGE_KEYS;
  for (const [key, value] of Object.entries(raw)) {
    check.keep(undefined, () => {
      if (key === 'host_fault_threshold') {
        check.fail(`${prefix}.${key}`, 'is the host\'s, not a stage\'s: set process.host_fault_threshold');
      }
      if (!Object.hasOwn(table, key)) check.unknownKey(`${prefix}.${key}`, candidates, Object.keys(table).map((k) => `${prefix}.${k}`));
      const inner = table[key];
      if (typeof inner !== 'object' || inner === null || value === undefined || value === null) return;
      const sectionRaw = check.mapping(`${prefix}.${key}`, value, `a mapping of ${prefix}.${key}.* keys`);
      const innerKeys = Object.keys(inner);
      for (const innerKey of Object.keys(sectionRaw)) {
        if (innerKeys.includes(innerKey)) continue;
        const field = `${prefix}.${key}.${innerKey}`;
        check.keep(undefined, () => {
          if (key === 'timeouts' && Object.hasOwn(CONFIG_KEYS.timeouts, innerKey)) {
            check.fail(
              field,
              `a stage sets only max_processing_time and max_no_output_time; timeouts.${innerKey} is the host's (leases, heartbeats and cleanup are judged per host, whatever the stage): set it in timeouts:`,
            );
          }
          check.unknownKey(field, candidates, innerKeys.map((k) => `${prefix}.${key}.${k}`));
        });
      }
    });
  }
}

function readNeeds(check: Checker, name: string, value: unknown, stages: string[]): string[] {
  if (value === undefined || value === null) return [];
  const field = `${STAGES_KEY}.${name}.needs`;
  const list = check.keep([] as unknown[], () => check.array(field, value, 'a list of stage names', '[process]'));
  const needs: string[] = [];
  list.forEach((need, index) => {
    check.keep(undefined, () => {
      const needField = `${field}[${index}]`;
      if (typeof need !== 'string') check.expected(needField, 'a stage name', need);
      if (!stages.includes(need)) {
        const near = nearestKey(need, stages);
        check.fail(needField, `unknown stage "${need}"${near ? `; did you mean ${near}?` : ''} (stages: ${stages.join(', ')})`);
      }
      if (needs.includes(need)) check.fail(needField, `${need} is listed twice`);
      needs.push(need);
    });
  });
  return needs;
}

/**
 * Kahn's algorithm, taking the earliest stage in file order among those whose needs are all placed. Stages on
 * a cycle (or below one) are left out; each cycle is reported once, naming its stages in order.
 */
function topologicalOrder(check: Checker, drafts: { name: string; needs: string[] }[]): string[] {
  const placed = new Set<string>();
  const order: string[] = [];
  for (;;) {
    const next = drafts.find((draft) => !placed.has(draft.name) && draft.needs.every((need) => placed.has(need)));
    if (next === undefined) break;
    placed.add(next.name);
    order.push(next.name);
  }
  const left = new Map(drafts.filter((draft) => !placed.has(draft.name)).map((draft) => [draft.name, draft.needs]));
  const reported = new Set<string>();
  for (const start of left.keys()) {
    if (reported.has(start)) continue;
    // Every stage left waits for another one left: following those needs must come back to a stage on the path.
    const path: string[] = [];
    let at = start;
    while (!path.includes(at)) {
      path.push(at);
      at = left.get(at)!.find((need) => left.has(need))!;
    }
    const cycle = path.slice(path.indexOf(at));
    if (cycle.some((name) => reported.has(name))) continue;
    for (const name of cycle) reported.add(name);
    check.keep(undefined, () =>
      check.fail(
        `${STAGES_KEY}.${cycle[0]}.needs`,
        `a cycle: ${[...cycle, cycle[0]].join(' → ')}; no stage on it could ever start. Remove one of these needs`,
      ),
    );
  }
  return order;
}
