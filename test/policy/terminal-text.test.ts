import { describe, expect, it } from 'vitest';
import { printable, printableLines } from '../../src/policy/terminal-text.js';

describe('printable', () => {
  it.each([
    ['\x1b[31mred\x1b[0m text', 'red text'],
    ['\x1b]52;c;SGVsbG8=\x07copied', 'copied'],
    ['line one\nline two', 'line one line two'],
  ])('printable(%j) = %j', (input, expected) => {
    expect(printable(input)).toBe(expected);
  });
});

describe('printableLines', () => {
  it.each([
    ['\x1b[31mred\x1b[0m text', 'red text'],
    ['\x1b]52;c;SGVsbG8=\x07clipboard', 'clipboard'],
    ['\x1b]0;title\x1b\\after', 'after'],
    ['Traceback:\n  File "x.py"\r\nValueError: bad\n', 'Traceback:\n  File "x.py"\nValueError: bad'],
    ['tab\there', 'tab here'],
    ['bell\x07 and\x9b31m c1 \x00nul', 'bell and c1 nul'],
    ['right-to-left \u202eevil', 'right-to-left evil'],
    ['trailing   \nspaces', 'trailing\nspaces'],
    ['naïve 日本語 ok', 'naïve 日本語 ok'],
  ])('printableLines(%j) = %j', (input, expected) => {
    expect(printableLines(input)).toBe(expected);
  });
});
