import { appendFileSync, lutimesSync, mkdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { changedSince, WALK_CHUNK } from '../../src/process/output-activity.js';
import { Sandbox } from './helpers.js';

let box: Sandbox;
beforeEach(() => {
  box = new Sandbox();
});
afterEach(async () => {
  await box.cleanup();
});

/** Sets the mtime of each path to `seconds` after the epoch, so "since" comparisons do not depend on the clock. */
function age(seconds: number, ...paths: string[]): void {
  for (const path of paths) utimesSync(path, seconds, seconds);
}

describe('changedSince', () => {
  it('finds a file appended to deep below the root, among more entries than one chunk', () => {
    const root = box.path('out');
    mkdirSync(box.path('out', 'a', 'b'), { recursive: true });
    const files: string[] = [];
    for (let i = 0; i < WALK_CHUNK * 3; i++) {
      const f = box.path('out', `f${i}`);
      writeFileSync(f, '');
      files.push(f);
    }
    const deep = box.path('out', 'a', 'b', 'data');
    writeFileSync(deep, 'one\n');
    age(1000, root, box.path('out', 'a'), box.path('out', 'a', 'b'), deep, ...files);
    return (async () => {
      expect(await changedSince(root, 2000_000)).toBe(false);
      appendFileSync(deep, 'two\n'); // the directories' mtimes do not change: only the file's
      utimesSync(deep, 3000, 3000);
      expect(await changedSince(root, 2000_000)).toBe(true);
    })();
  });

  it('does not follow a symbolic link out of the tree', async () => {
    const root = box.path('out');
    const outside = box.path('outside');
    mkdirSync(root);
    mkdirSync(outside);
    writeFileSync(box.path('outside', 'new'), '');
    symlinkSync(outside, box.path('out', 'link'));
    age(1000, outside, root);
    lutimesSync(box.path('out', 'link'), 1000, 1000);
    utimesSync(box.path('outside', 'new'), 5000, 5000); // newer than `since`, but outside the tree
    expect(await changedSince(root, 4000_000)).toBe(false);
  });

  it('a missing root is no change, and a cancelled walk stops', async () => {
    expect(await changedSince(box.path('nowhere'), 0)).toBe(false);
    mkdirSync(box.path('out'));
    age(1000, box.path('out'));
    expect(await changedSince(box.path('out'), 2000_000, () => true)).toBe(false);
  });
});
