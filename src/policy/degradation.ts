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
