import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { diskFigures } from '../../src/process/disk.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'runwarden-disk-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** What df says of the filesystem holding `path`: used percentage (df rounds it up) and bytes available. */
function df(path: string): { usedPercent: number; availBytes: number } {
  const [, line] = execFileSync('df', ['--output=pcent,avail', '-B1', path], { encoding: 'utf8' }).trim().split('\n');
  const [pcent, avail] = line!.trim().split(/\s+/);
  return { usedPercent: Number(pcent!.replace('%', '')), availBytes: Number(avail) };
}

describe('diskFigures', () => {
  it('measures an existing directory', () => {
    const d = diskFigures(dir);
    expect(d.path).toBe(dir);
    expect(d.used_percent).toBeGreaterThanOrEqual(0);
    expect(d.used_percent).toBeLessThanOrEqual(100);
    expect(Number.isInteger(d.free_bytes)).toBe(true);
    expect(d.free_bytes).toBeGreaterThanOrEqual(0);
    const s = statfsSync(dir);
    // free_bytes is bavail * bsize of the same filesystem (a few blocks may change between the two calls)
    expect(Math.abs(d.free_bytes - s.bavail * s.bsize)).toBeLessThan(1024 * 1024 * 1024);
  });

  it('walks up to the nearest existing ancestor for a path not created yet', () => {
    const missing = join(dir, 'not', 'yet', 'there');
    const d = diskFigures(missing);
    expect(d.path).toBe(missing);
    const here = diskFigures(dir);
    expect(Math.abs(d.used_percent - here.used_percent)).toBeLessThan(1);
  });

  it('agrees with df on how full the filesystem is', () => {
    const d = diskFigures(dir);
    const fromDf = df(dir);
    // df rounds the percentage up to a whole number; the free bytes may move by a few blocks in between.
    expect(d.used_percent).toBeGreaterThan(fromDf.usedPercent - 1);
    expect(d.used_percent).toBeLessThanOrEqual(fromDf.usedPercent);
    expect(Math.abs(d.free_bytes - fromDf.availBytes)).toBeLessThan(64 * 1024 * 1024);
  });

  it('walks up past a file in the way', () => {
    writeFileSync(join(dir, 'file'), 'x');
    const target = join(dir, 'file', 'sub');
    const d = diskFigures(target);
    const here = diskFigures(dir);
    expect(d.path).toBe(target);
    expect(Math.abs(d.used_percent - here.used_percent)).toBeLessThan(1);
    expect(Math.abs(d.free_bytes - here.free_bytes)).toBeLessThan(64 * 1024 * 1024);
  });
});
