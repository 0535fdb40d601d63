import type { Config } from '../config/schema.js';
import { degradationOf } from '../policy/degradation.js';
import { causeFirst } from '../policy/failure-decision.js';
import { printable } from '../policy/terminal-text.js';
import { DEFAULT_STAGE, type RunDoc } from '../store/types.js';

// How list, show and top describe a run on one line: its state with what else a person must know (held, done
// with fewer targets or resources than configured, a document another tool wrote badly), and the cause of its
// failure. Every text that came from a command or another tool goes through printable.

/**
 * The targets and resources configured for a task of `stage`: the stage's own under `stages:`, else `process:`
 * (what degradationOf compares an attempt against).
 */
export function stageConfigOf(
  config: Pick<Config, 'process'> & Partial<Pick<Config, 'stages'>>,
  stage: string | undefined,
): Pick<Config, 'process'> {
  const named = config.stages?.find((s) => s.name === (stage ?? DEFAULT_STAGE));
  return named ? { process: { ...config.process, targets: named.targets, resources: named.resources } } : config;
}

/**
 * What the STATE column adds to the state: `pending (held)`, `done (degraded)`, `failed (held, invalid)`; a
 * task blocked by an abandoned upstream stage is `blocked`.
 */
export function runStateLabel(run: RunDoc, config: Pick<Config, 'process'> & Partial<Pick<Config, 'stages'>>): string {
  const state = run.blocked ? 'blocked' : printable(String(run.processing?.state ?? 'pending'));
  const marks: string[] = [];
  if (run.tags.includes('hold') || run.tags.includes(`hold:${run.stage ?? DEFAULT_STAGE}`)) marks.push('held');
  if (run.processing?.state === 'done' && degradationOf(run, stageConfigOf(config, run.stage))) marks.push('degraded');
  if ((run.invalid?.length ?? 0) > 0 || (run.processing?.problems?.length ?? 0) > 0) marks.push('invalid');
  return marks.length > 0 ? `${state} (${marks.join(', ')})` : state;
}

/** A reason on one line, printable, the cause first (a "gave up" reason leads with the failure that tipped it). */
export function reasonLine(reason: string | undefined): string {
  return reason ? printable(causeFirst(reason)) : '';
}

/** `text` on one printable line of at most `max` characters, ending in … when cut. */
export function cellText(text: string | undefined, max = Infinity): string {
  const single = printable(text ?? '');
  return single.length > max ? `${single.slice(0, max - 1)}…` : single;
}
