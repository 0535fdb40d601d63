import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UsageError } from '../errors.js';

// Listening for one of the daemon's observers (`--inspect`, `--metrics`): a failure to listen is a usage error
// that names the port, the flag and the setting to change, so the daemon exits 2 at start instead of running
// without the endpoint the operator asked for (and `--undying` does not restart into the same conflict).

export interface ListenTarget {
  /** observe.bind */
  bind: string;
  /** 0 asks the system for a free port. */
  port: number;
  /** The daemon flag, e.g. `inspect`. */
  flag: string;
  /** The configuration key of the port, e.g. `observe.inspect_port`. */
  portKey: string;
}

export function listenError(error: NodeJS.ErrnoException, target: ListenTarget): Error {
  const { bind, port, flag, portKey } = target;
  const change = `choose another with --${flag}=PORT or ${portKey} (0 = any free port)`;
  switch (error.code) {
    case 'EADDRINUSE':
      return new UsageError(`--${flag}: port ${port} on ${bind} is already in use; ${change}`, portKey);
    case 'EACCES':
      return new UsageError(
        `--${flag}: not allowed to listen on port ${port} (ports below 1024 need privileges); ${change}`,
        portKey,
      );
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new UsageError(`--${flag}: cannot listen on ${bind}: no such local address (observe.bind)`, 'observe.bind');
    default:
      return new Error(`--${flag}: cannot listen on ${bind}:${port}: ${error.message}`);
  }
}

/** Listens on bind:port; resolves with the address actually bound (the system's port when asked for 0). */
export async function listenOn(server: Server, target: ListenTarget): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => reject(listenError(error, target));
    server.once('error', onError);
    server.listen(target.port, target.bind, () => {
      server.off('error', onError);
      resolve();
    });
  });
  return server.address() as AddressInfo;
}

/** `host:port` for a URL: IPv6 addresses in brackets. */
export function hostPort(address: AddressInfo): string {
  return `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
}
