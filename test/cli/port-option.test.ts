import { describe, expect, it } from 'vitest';
import { portFromOption } from '../../src/cli/port-option.js';
import { UsageError } from '../../src/errors.js';

// `--metrics` / `--metrics=PORT`: absent is off, alone is the configured port, a value must be a port.

describe('portFromOption', () => {
  it.each([
    [undefined, undefined],
    [false, undefined],
    ['', 9391],
    ['0', 0],
    ['9400', 9400],
    [' 65535 ', 65535],
  ])('%j → %j (configured 9391)', (value, port) => {
    expect(portFromOption('metrics', value, 9391)).toBe(port);
  });

  it.each(['abc', '-1', '65536', '1.5', '9400x', '0x10'])('%j is a usage error naming --metrics', (value) => {
    const attempt = () => portFromOption('metrics', value, 9391);
    expect(attempt).toThrow(UsageError);
    expect(attempt).toThrow(`--metrics: expected a port number 0..65535 (0 = any free port), got ${JSON.stringify(value.trim())}`);
  });

  it('refuses the flag given twice', () => {
    expect(() => portFromOption('inspect', ['1', '2'], 9390)).toThrow('--inspect given 2 times; give it once');
  });
});
