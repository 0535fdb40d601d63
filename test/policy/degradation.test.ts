import { describe, expect, it } from 'vitest';
import { degradationOf, globToRegExp, resourcesForAttempt, targetsForAttempt } from '../../src/policy/degradation.js';

describe('globToRegExp', () => {
  it.each([
    ['event*', 'event_info', true],
    ['event*', 'event', true],
    ['event*', 'xevent', false],
    ['*', 'anything/at.all', true],
    ['peak?', 'peaks', true],
    ['peak?', 'peak', false],
    ['peak?', 'peaksx', false],
    ['a.b', 'a.b', true],
    ['a.b', 'axb', false],
    ['(x)+[y]{2}|^$\\', '(x)+[y]{2}|^$\\', true],
    ['records', 'raw_records', false],
  ])('%j matches %j: %s', (glob, target, matches) => {
    expect(globToRegExp(glob).test(target)).toBe(matches);
  });
});

describe('targetsForAttempt', () => {
  const targets = ['raw_records', 'peaklets', 'peaks', 'event_info', 'event_basics'];
  const drop = { 'event*': 2, 'peak*': 4, '*': 7 };
  const minimal = ['raw_records'];

  it.each([
    [0, targets],
    [2, targets],
    [3, ['raw_records', 'peaklets', 'peaks']],
    [4, ['raw_records', 'peaklets', 'peaks']],
    [5, ['raw_records']],
    [7, ['raw_records']],
    [8, ['raw_records']], // everything dropped → minimal_targets
    [100, ['raw_records']],
  ])('after %d failures: %j', (n, expected) => {
    expect(targetsForAttempt(targets, drop, minimal, n)).toEqual(expected);
  });

  it.each([
    ['no thresholds keeps all', targets, {}, minimal, 50, targets],
    ['a threshold of 0 drops after the first failure', ['a', 'b'], { a: 0 }, [], 1, ['b']],
    ['a threshold of 0 keeps on the first attempt', ['a', 'b'], { a: 0 }, [], 0, ['a', 'b']],
    ['the lowest matching threshold wins', ['peaks'], { 'peak*': 5, peaks: 1 }, ['m'], 2, ['m']],
    ['everything dropped and no minimal targets', ['a'], { '*': 0 }, [], 1, []],
    ['empty targets stay empty', [], { '*': 0 }, ['m'], 5, []],
  ] as const)('%s', (_case, list, rules, min, n, expected) => {
    expect(targetsForAttempt(list, rules, min, n)).toEqual(expected);
  });

  it('returns a fresh list', () => {
    const result = targetsForAttempt(['a'], { '*': 0 }, minimal, 1);
    result.push('x');
    expect(minimal).toEqual(['raw_records']);
  });
});

describe('resourcesForAttempt', () => {
  it.each([
    // rule, nFailures, expected value
    [{ start: 8, min: 4, shrink: 1.1 }, 0, 8],
    [{ start: 8, min: 4, shrink: 1.1 }, 1, 7], // 7.27 rounds down
    [{ start: 8, min: 4, shrink: 1.1 }, 2, 6], // 6.61
    [{ start: 8, min: 4, shrink: 1.1 }, 3, 6], // 6.01
    [{ start: 8, min: 4, shrink: 1.1 }, 5, 4], // 4.97 → 4
    [{ start: 8, min: 4, shrink: 1.1 }, 50, 4], // bounded by min
    [{ start: 8, min: 1, shrink: 2 }, 2, 2],
    [{ start: 8, min: 1, shrink: 2 }, 3, 1],
    [{ start: 8, min: 1, shrink: 2 }, 10, 1],
    [{ start: 9, min: 1, shrink: 1.5 }, 2, 4], // 9 / 2.25 = 4 exactly
    [{ start: 3, min: 3, shrink: 1 }, 9, 3],
  ])('%j after %d failures → %d', (rule, n, value) => {
    expect(resourcesForAttempt({ cores: rule }, n)).toEqual({ cores: value });
  });

  it('handles several resources at once, and none', () => {
    expect(
      resourcesForAttempt({ cores: { start: 8, min: 2, shrink: 2 }, mem_gb: { start: 32, min: 8, shrink: 2 } }, 2),
    ).toEqual({ cores: 2, mem_gb: 8 });
    expect(resourcesForAttempt({}, 3)).toEqual({});
  });
});

describe('degradationOf', () => {
  const config = {
    process: {
      targets: ['raw_records', 'peaks', 'events'],
      resources: { cores: { start: 8, min: 2, shrink: 2 } },
    },
  };

  it.each([
    ['all targets and resources', { targets: ['raw_records', 'peaks', 'events'], resources: { cores: 8 } }, null],
    ['never busy (nothing recorded)', {}, null],
    [
      'fewer targets',
      { targets: ['raw_records'], resources: { cores: 8 } },
      { droppedTargets: ['peaks', 'events'], summary: 'targets 1 of 3 (without peaks, events)' },
    ],
    [
      'fewer cores',
      { targets: ['raw_records', 'peaks', 'events'], resources: { cores: 4 } },
      { droppedTargets: [], shrunkResources: { cores: { used: 4, configured: 8 } }, summary: 'cores 4 of 8' },
    ],
    [
      'both',
      { targets: ['raw_records', 'peaks'], resources: { cores: 2 } },
      { summary: 'targets 2 of 3 (without events); cores 2 of 8' },
    ],
  ])('%s', (_name, processing, expected) => {
    const found = degradationOf({ processing }, config);
    if (expected === null) expect(found).toBeNull();
    else expect(found).toMatchObject(expected);
  });

  it('is null without a processing document or without configured targets', () => {
    expect(degradationOf({}, config)).toBeNull();
    expect(degradationOf({ processing: { targets: [] } }, { process: { targets: [], resources: {} } })).toBeNull();
  });
});
