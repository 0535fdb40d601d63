import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log/logger.js';
import { openStore } from '../../src/store/open-store.js';
import type { RunStore } from '../../src/store/run-store.js';
import { tempDir } from '../helpers/cli.js';

let dir: string;
let cleanup: () => void;
let store: RunStore;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir());
  store = await openStore(`sqlite:${join(dir, 'log.db')}`);
});
afterEach(async () => {
  await store.close();
  cleanup();
});

function capture() {
  const stream = new PassThrough();
  const chunks: string[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk.toString('utf8')));
  return { stream, text: () => chunks.join('') };
}

describe('logger', () => {
  it('writes JSON lines off a terminal; warnings and worse, and info for operators, go to the store', async () => {
    const out = capture();
    const logger = createLogger({ level: 'info', host: 'daq01', store, stream: out.stream });
    logger.debug('too detailed');
    logger.info('run 5 started', { number: 5 });
    logger.warn('run 5 failed (attempt 1): exit code 3', { number: 5 });
    logger.info('run 5 failed (attempt 2): exit code 3', { number: 5, operator: true });
    logger.error('run 6 abandoned', { number: 6 });
    logger.fatal('could not kill process group 123');
    await logger.flush();
    const lines = out.text().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l.level)).toEqual(['info', 'warn', 'info', 'error', 'fatal']);
    expect(lines[0]).toMatchObject({ message: 'run 5 started', number: 5, host: 'daq01' });

    const entries = await store.listLog({});
    expect(entries.map((e) => [e.priority, e.message, e.number ?? null]).reverse()).toEqual([
      [2, 'run 5 failed (attempt 1): exit code 3', 5],
      [1, 'run 5 failed (attempt 2): exit code 3', 5],
      [3, 'run 6 abandoned', 6],
      [4, 'could not kill process group 123', null],
    ]);
    expect(entries.every((e) => e.host === 'daq01' && e.user === 'runwarden@daq01')).toBe(true);
  });

  it('writes readable lines when asked for text', async () => {
    const out = capture();
    const logger = createLogger({ level: 'debug', host: 'daq01', json: false, stream: out.stream });
    logger.debug('claiming', { slots: 2 });
    await logger.flush();
    expect(out.text()).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z DEBUG claiming slots=2\n$/);
  });
});
