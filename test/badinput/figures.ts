import { afterAll } from 'vitest';

// The bad-input tests print what they tried and how each try ended, so the figures reported are the run's own.

/** A counter of outcomes by group; the totals are printed after the file's tests. */
export function outcomeCounter(title: string): (group: string, outcome: string) => void {
  const figures: Record<string, Record<string, number>> = {};
  afterAll(() => {
    console.log(`bad-input figures (${title}):\n${JSON.stringify(figures, null, 1)}`);
  });
  return (group, outcome) => {
    figures[group] ??= {};
    figures[group][outcome] = (figures[group][outcome] ?? 0) + 1;
  };
}
