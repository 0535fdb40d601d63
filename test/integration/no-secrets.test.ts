import { describe, expect, it } from 'vitest';
import { useSandbox } from '../helpers/sandbox.js';

// Lease and host tokens fence every write of their owner: whoever reads one could write as the owner. No face
// prints them, in text or --json, whatever state the run is in.

const sandbox = useSandbox('runwarden-secrets-');

describe('lease and host tokens', () => {
  it('never reach show, list, status or top, in text or --json', async () => {
    const store = ['--store', 'sqlite:./runs.db'];
    expect((await sandbox.run(['submit', '1', ...store])).exitCode).toBe(0);
    const db = await sandbox.openStore();
    const claimed = await db.claimNextRun({ host: 'h1', pid: process.pid, order: 'newest' });
    expect(claimed?.processing?.token).toMatch(/\S{8,}/);
    const token = claimed!.processing!.token;
    await db.registerHost({
      host: 'h1',
      pid: process.pid,
      proc_start: 1,
      token: 'host-token-0123456789',
      state: 'busy',
      time: Date.now(),
      started: Date.now(),
      version: 'test',
      slots: 1,
      running: [1],
    });
    const faces = [
      ['show', '1'],
      ['show', '1', '--json'],
      ['list'],
      ['list', '--json'],
      ['status'],
      ['status', '--json'],
      ['top', '--once'],
      ['top', '--once', '--json'],
    ];
    for (const face of faces) {
      const result = await sandbox.run([...face, ...store]);
      expect(result.exitCode, `${face.join(' ')}: ${result.stderr}`).toBe(0);
      expect(result.stdout, face.join(' ')).toContain(face[0] === 'status' ? 'h1' : '1');
      for (const secret of [token, 'host-token-0123456789']) {
        expect(result.stdout.includes(secret) || result.stderr.includes(secret), `${face.join(' ')} prints a token`).toBe(false);
      }
    }
  });
});
