// Each retry asks for less (DESIGN §4): fewer targets, smaller resources.

import type { ResourceRule } from '../config/schema.js';

/** `*` matches any run of characters (slashes included), `?` one character; everything else is literal. */
export function globToRegExp(glob: string): RegExp {
  let source = '';
  for (const char of glob) {
    if (char === '*') source += '.*';
    else if (char === '?') source += '.';
    else source += char.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${source}$`, 'su');
}

/**
 * The targets of an attempt made after `nFailures` failures. A target is dropped once `nFailures` exceeds the
 * threshold of any glob in `dropTargetsAfter` that matches it. When every target has been dropped, the
 * attempt gets `minimalTargets`. An empty `targets` list stays empty (the command then chooses for itself).
 */
export function targetsForAttempt(
  targets: readonly string[],
  dropTargetsAfter: Readonly<Record<string, number>>,
  minimalTargets: readonly string[],
  nFailures: number,
): string[] {
  if (targets.length === 0) return [];
  const rules = Object.entries(dropTargetsAfter).map(([glob, threshold]) => ({ pattern: globToRegExp(glob), threshold }));
  const kept = targets.filter((target) => !rules.some((rule) => nFailures > rule.threshold && rule.pattern.test(target)));
  return kept.length > 0 ? kept : [...minimalTargets];
}

/**
 * Resource values for an attempt made after `nFailures` failures: `max(min, floor(start / shrink^nFailures))`.
 * Rounded down, so the attempt never asks for more than the rule allows; a tiny epsilon keeps 8 / 2 / 2 at 2
 * despite floating point.
 */
export function resourcesForAttempt(
  resources: Readonly<Record<string, ResourceRule>>,
  nFailures: number,
): Record<string, number> {
  const values: Record<string, number> = {};
  for (const [name, rule] of Object.entries(resources)) {
    const shrunk = Math.floor(rule.start / rule.shrink ** Math.max(0, nFailures) + 1e-9);
    values[name] = Math.max(rule.min, shrunk);
  }
  return values;
}

/** What an attempt did without, compared with the configuration: the basis of "degraded" in show/list/top. */
export interface Degradation {
  /** Configured targets the attempt did not get, in configured order. */
  droppedTargets: string[];
  /** Targets the attempt got, as stored with it. */
  usedTargets: string[];
  /** Resources the attempt got below their configured start: name → used and configured values. */
  shrunkResources: Record<string, { used: number; configured: number }>;
  /** One line for people, e.g. `targets 1 of 3 (without events, peaks); cores 4 of 8`. */
  summary: string;
}

/** The fields of a run degradationOf reads: its processing document's targets and resources. */
export interface AttemptRecord {
  processing?: { targets?: readonly string[]; resources?: Readonly<Record<string, number>> } | undefined;
}

/**
 * How the attempt recorded in `run.processing` (for a done run: the one that produced its output) fell short
 * of the configured targets and resources; null when it did not, or when the run holds no record of them (never
 * busy, or claimed again since). Compared with the configuration given, i.e. the one in force now.
 */
export function degradationOf(
  run: AttemptRecord,
  config: { process: { targets: readonly string[]; resources: Readonly<Record<string, ResourceRule>> } },
): Degradation | null {
  const p = run.processing;
  if (!p) return null;
  const parts: string[] = [];
  const usedTargets = p.targets ? [...p.targets] : [];
  const droppedTargets =
    p.targets && config.process.targets.length > 0
      ? config.process.targets.filter((target) => !usedTargets.includes(target))
      : [];
  if (droppedTargets.length > 0) {
    const kept = config.process.targets.length - droppedTargets.length;
    parts.push(`targets ${kept} of ${config.process.targets.length} (without ${droppedTargets.join(', ')})`);
  }
  const shrunkResources: Record<string, { used: number; configured: number }> = {};
  for (const [name, rule] of Object.entries(config.process.resources)) {
    const used = p.resources?.[name];
    if (used === undefined || !(used < rule.start)) continue;
    shrunkResources[name] = { used, configured: rule.start };
    parts.push(`${name} ${used} of ${rule.start}`);
  }
  if (parts.length === 0) return null;
  return { droppedTargets, usedTargets, shrunkResources, summary: parts.join('; ') };
}
