// Opening a MongoDB store that cannot be reached: a clear error naming host and port, never the password,
// from the store and from the real CLI (exit 1). Needs no server: the port is one nobody listens on.

import net from 'node:net';

import { describe, expect, it } from 'vitest';

import { StoreUnavailableError, UsageError } from '../../src/errors.js';
import { describeOpenFailure, openMongoStore } from '../../src/store/mongo/mongo-store.js';
import { parseMongoUrl } from '../../src/store/mongo/url.js';
import { openStore } from '../../src/store/open-store.js';
import { runCli, startCli, tempDir, waitFor } from '../helpers/cli.js';

/** A loopback port that was free a moment ago and is closed now. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('opening an unreachable MongoDB store', () => {
  it('throws StoreUnavailableError naming host:port and the database, not the password', async () => {
    const port = await closedPort();
    const url = `mongodb://daq:secret@127.0.0.1:${port}/runs?serverSelectionTimeoutMS=500`;
    for (const open of [() => openMongoStore(url), () => openStore(url)]) {
      const error = await open().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StoreUnavailableError);
      const message = (error as Error).message;
      expect(message).toContain(`127.0.0.1:${port}`);
      expect(message).toContain('database runs');
      expect(message).toMatch(/cannot reach MongoDB/);
      expect(message).not.toContain('secret');
    }
  });

  it('refuses a URL the driver cannot use as a usage error, without the password', async () => {
    const error = await openMongoStore('mongodb://u:secret@h/runs?notAnOption=1&tls=maybe').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).field).toBe('store');
    expect((error as Error).message).not.toContain('secret');
  });

  it('describes a refusal by the server (authentication) apart from an unreachable one', () => {
    const url = parseMongoUrl('mongodb://daq:s3cr3t@db1,db2:27018/runs');
    const refused = Object.assign(new Error('Authentication failed for s3cr3t.'), {
      name: 'MongoServerError',
      code: 18,
    });
    const text = describeOpenFailure(refused, url);
    expect(text).toBe(
      'MongoDB at db1:27017,db2:27018 refused runwarden (database runs): Authentication failed for ***.; ' +
        'check the user, the password and authSource in the store URL',
    );
  });

  it('makes `runwarden list` exit 1 with that message', async () => {
    const port = await closedPort();
    const { dir, cleanup } = tempDir();
    try {
      const result = await runCli(
        ['list', '--store', `mongodb://daq:secret@127.0.0.1:${port}/runs?serverSelectionTimeoutMS=500`],
        { cwd: dir },
      );
      expect(result.exitCode).toBe(1);
      expect(result.stderr).toContain(`cannot reach MongoDB at 127.0.0.1:${port} (database runs)`);
      expect(`${result.stdout}${result.stderr}`).not.toContain('secret');
    } finally {
      cleanup();
    }
  });

  it('`daemon --undying` keeps retrying an unreachable server with a pause, and stops on SIGTERM', async () => {
    const port = await closedPort();
    const { dir, cleanup } = tempDir();
    const daemon = startCli(
      [
        'daemon',
        '--undying',
        '--store',
        `mongodb://daq:secret@127.0.0.1:${port}/runs?serverSelectionTimeoutMS=300`,
        '--set',
        'process.command=["true"]',
        '--set',
        'timeouts.restart_pause=200ms',
      ],
      { cwd: dir },
    );
    let output = '';
    daemon.all?.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    try {
      await waitFor(() => (output.match(/crashed \(exit code 1; crash \d+ since start\)/g) ?? []).length >= 2,
        'two crashes and restarts');
      expect(output).toContain(`cannot reach MongoDB at 127.0.0.1:${port}`);
      expect(output).toContain('restarting in 200ms (--undying)');
      daemon.kill('SIGTERM');
      const result = await daemon;
      expect(result.exitCode).toBe(0);
      expect(output).not.toContain('secret');
    } finally {
      daemon.kill('SIGKILL');
      await daemon;
      cleanup();
    }
  });
});
