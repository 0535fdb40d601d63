import { createServer, type Server } from 'node:http';
import type { InspectionEvent } from 'xstate';
import type { Logger } from '../log/logger.js';
import { hostPort, listenOn } from './listen.js';
import { createDaemonMetrics, type DaemonMetricsOptions } from './metrics.js';

// The HTTP side of `daemon --metrics`: GET /metrics answers the Prometheus text, nothing else is served.

export interface MetricsServerOptions {
  /** observe.bind; loopback unless the operator chose otherwise. */
  bind: string;
  /** 0 asks the system for a free port. */
  port: number;
  contentType: string;
  render: () => Promise<string>;
  logger: Logger;
}

export interface MetricsServer {
  /** The port actually listened on (the system's choice when asked for 0). */
  port: number;
  /** http://ADDRESS:PORT/metrics */
  url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { bind, port, logger } = options;
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: try /metrics\n');
      return;
    }
    if (request.method !== 'GET') {
      response.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Allow: 'GET' }).end('only GET\n');
      return;
    }
    options.render().then(
      (text) => response.writeHead(200, { 'Content-Type': options.contentType }).end(text),
      (error: unknown) => {
        logger.error(`metrics: a scrape failed: ${error instanceof Error ? error.message : String(error)}`);
        response.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('scrape failed\n');
      },
    );
  });

  const address = await listenOn(server, { bind, port, flag: 'metrics', portKey: 'observe.metrics_port' });
  // After listening, a socket error must not become an uncaught exception that stops the daemon.
  server.on('error', (error) => logger.error(`metrics: ${error.message}`));

  const url = `http://${hostPort(address)}/metrics`;
  logger.info(`metrics: serving Prometheus text on ${url}`);
  return {
    port: address.port,
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A scraper's keep-alive connection would hold close() open until it times out.
        server.closeAllConnections();
      }),
  };
}

export interface ServedMetrics extends MetricsServer {
  /** Give it to startDaemon's `inspectors`. */
  inspector: (event: InspectionEvent) => void;
}

/** `daemon --metrics`: the daemon's metrics on observe.bind:port. */
export async function serveDaemonMetrics(options: DaemonMetricsOptions & { port: number }): Promise<ServedMetrics> {
  const metrics = createDaemonMetrics(options);
  const server = await startMetricsServer({
    bind: options.config.observe.bind,
    port: options.port,
    contentType: metrics.registry.contentType,
    render: metrics.render,
    logger: options.logger,
  });
  return { ...server, inspector: metrics.inspector };
}
