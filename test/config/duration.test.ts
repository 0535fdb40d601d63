import { describe, expect, it } from 'vitest';
import { formatDuration, parseByteSize, parseDuration } from '../../src/config/duration.js';
import { ConfigError } from '../../src/errors.js';

describe('parseDuration', () => {
  it.each([
    [10, 10_000],
    [0, 0],
    [1.5, 1_500],
    [0.25, 250],
    ['90s', 90_000],
    ['1.5s', 1_500],
    ['250ms', 250],
    ['30m', 1_800_000],
    ['72h', 259_200_000],
    ['2d', 172_800_000],
    ['1h30m', 5_400_000],
    [' 10 s ', 10_000],
    ['.5s', 500],
    ['1.1s', 1_100],
  ])('%j → %d ms', (input, ms) => {
    expect(parseDuration(input, 'timeouts.check_interval')).toBe(ms);
  });

  it.each([
    ['10x', 'not a duration'],
    ['10', 'needs a unit'],
    ['', 'empty'],
    ['s', 'not a duration'],
    ['-5s', 'not a duration'],
    [-5, 'cannot be negative'],
    [Number.NaN, 'not a finite number'],
    [Number.POSITIVE_INFINITY, 'not a finite number'],
    [true, 'wrong type (boolean)'],
    [null, 'wrong type (null)'],
    [[10], 'wrong type (array)'],
  ])('refuses %j (%s), naming the field, the value and an example', (input, why) => {
    let caught: unknown;
    try {
      parseDuration(input, 'timeouts.check_interval');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const error = caught as ConfigError;
    expect(error.field).toBe('timeouts.check_interval');
    expect(error.message).toContain('config: timeouts.check_interval:');
    expect(error.message).toContain(why);
    expect(error.message).toContain('"90s"');
    expect(error.message).toContain(`got ${typeof input === 'number' ? String(input) : JSON.stringify(input)}`);
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0s'],
    [250, '250ms'],
    [1_500, '1.5s'],
    [10_000, '10s'],
    [120_000, '2m'],
    [259_200_000, '3d'],
    [3_600_000, '1h'],
  ])('%d ms → %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });
});

describe('parseByteSize', () => {
  it.each([
    [1_073_741_824, 1_073_741_824],
    [0, 0],
    ['1GiB', 1_073_741_824],
    ['1 gib', 1_073_741_824],
    ['500MB', 500_000_000],
    ['1.5KiB', 1_536],
    ['2TB', 2e12],
    ['42', 42],
    ['42B', 42],
    [10.7, 10],
  ])('%j → %d bytes', (input, bytes) => {
    expect(parseByteSize(input, 'disk.min_free_bytes')).toBe(bytes);
  });

  it.each([['1XB'], ['GiB'], [-1], [false], ['1 G B']])('refuses %j naming the field', (input) => {
    expect(() => parseByteSize(input, 'disk.min_free_bytes')).toThrow(/config: disk\.min_free_bytes: .*"1GiB"/);
  });
});
