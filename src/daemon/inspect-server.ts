import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createInspector, type StatelyInspectionEvent } from '@statelyai/inspect';
import { WebSocket, WebSocketServer } from 'ws';
import type { AnyActorRef, InspectionEvent } from 'xstate';
import type { Logger } from '../log/logger.js';
import { currentActorPayload, inspectablePayload, snapshotOf } from './inspection-payload.js';
import { hostPort, listenOn } from './listen.js';

// `daemon --inspect`: the inspection events of the host actor and of every run and supervisor actor it spawns,
// on a WebSocket in @statelyai/inspect's wire format (converted by the package itself), so both
// `runwarden inspect` and the hosted Stately inspector can read the same stream. Why not the package's own
// relay (`@statelyai/inspect/server`): it listens on every interface, opens a browser and has no error handling
// for a port in use. Viewers only listen; what they send is ignored.

export interface InspectServerOptions {
  /** observe.bind; loopback unless the operator chose otherwise. */
  bind: string;
  /** 0 asks the system for a free port. */
  port: number;
  logger: Logger;
}

export interface InspectServer {
  /** The port actually listened on (the system's choice when asked for 0). */
  port: number;
  /** The address actually bound. */
  address: string;
  /** ws://ADDRESS:PORT, for `runwarden inspect --url`. */
  url: string;
  /** Give it to startDaemon's `inspectors`. */
  inspector: (event: InspectionEvent) => void;
  /** Viewers connected now. */
  viewers(): number;
  /** Says goodbye to the viewers and stops listening. */
  close(): Promise<void>;
}

/** A viewer this far behind is disconnected rather than buffered for without end. */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** How long close() lets viewers answer the closing handshake before cutting them off. */
const CLOSE_GRACE_MS = 1000;

/**
 * GET / in a browser with internet: the Stately inspector in a frame, fed from this socket. The same bridge
 * @statelyai/inspect/server serves, but it connects to the host it was loaded from, so an ssh tunnel works.
 */
function bridgePage(inspectorUrl: string): string {
  return `<!DOCTYPE html>
<html><head><title>runwarden: Stately inspector</title>
<style>* { margin: 0; padding: 0; } html, body { height: 100%; } iframe { width: 100%; height: 100%; border: none; }</style>
</head><body>
<iframe id="inspector" src="${inspectorUrl}"></iframe>
<script>
  const iframe = document.getElementById('inspector');
  const buffer = [];
  let connected = false;
  window.addEventListener('message', (e) => {
    if (e.data && e.data.type === '@statelyai.connected') {
      connected = true;
      for (const event of buffer.splice(0)) iframe.contentWindow.postMessage(event, '*');
    }
  });
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/');
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (connected) iframe.contentWindow.postMessage(event, '*');
    else buffer.push(event);
  };
</script>
</body></html>
`;
}

export const STATELY_INSPECTOR_URL = 'https://stately.ai/inspect';

export async function startInspectServer(options: InspectServerOptions): Promise<InspectServer> {
  const { logger } = options;
  const page = (request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? '/').split('?')[0];
    if (path !== '/' || request.method !== 'GET') {
      response.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: connect a WebSocket to /\n');
      return;
    }
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(bridgePage(STATELY_INSPECTOR_URL));
  };
  const http = createServer(page);
  const sockets = new WebSocketServer({ server: http });
  // ws re-emits the HTTP server's errors; without a listener they would be uncaught and stop the daemon.
  sockets.on('error', (error) => logger.error(`inspector: ${error.message}`));

  /** Every socket connected, and those of them that have had their replay (they get the live stream). */
  const connected = new Set<WebSocket>();
  const viewers = new Set<WebSocket>();
  /** The actors alive now, to announce to a viewer that connects later. */
  const live = new Map<string, { ref: AnyActorRef; rootId: string }>();

  const deliver = (targets: Iterable<WebSocket>, event: StatelyInspectionEvent) => {
    let text: string;
    try {
      text = JSON.stringify(event);
    } catch (error) {
      logger.debug(`inspector: an event could not be serialised: ${String(error)}`);
      return;
    }
    for (const socket of targets) {
      if (socket.readyState !== WebSocket.OPEN) continue;
      if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
        logger.warn('inspector: a viewer fell too far behind and was disconnected');
        socket.terminate();
        continue;
      }
      socket.send(text);
    }
  };
  const broadcast = createInspector({ send: (event) => deliver(viewers, event) });

  const forget = (socket: WebSocket) => {
    connected.delete(socket);
    viewers.delete(socket);
  };
  sockets.on('connection', (socket) => {
    connected.add(socket);
    socket.on('close', () => forget(socket));
    socket.on('error', () => forget(socket));
    // Announce the actors alive now, each with its current snapshot; the live stream starts right after the
    // last of them, so a viewer never sees an actor's events before the actor.
    const current = [...live.values()].filter(({ ref }) => snapshotOf(ref)?.status === 'active');
    let pending = current.length;
    const join = () => {
      if (connected.has(socket)) viewers.add(socket);
    };
    if (pending === 0) join();
    const replay = createInspector({
      send: (event) => {
        deliver([socket], event);
        pending -= 1;
        if (pending === 0) join();
      },
    });
    for (const { ref, rootId } of current) replay.inspect.next?.(currentActorPayload(ref, rootId));
  });

  const track = (event: InspectionEvent) => {
    if (event.type === '@xstate.actor') {
      // Actors that ended without a final snapshot event (an error) leave here too.
      for (const [sessionId, { ref }] of live) {
        const status = snapshotOf(ref)?.status;
        if (status !== undefined && status !== 'active') live.delete(sessionId);
      }
      live.set(event.actorRef.sessionId, { ref: event.actorRef as AnyActorRef, rootId: event.rootId });
    } else if (event.type === '@xstate.snapshot' && event.snapshot.status !== 'active') {
      live.delete(event.actorRef.sessionId);
    }
  };
  const inspector = (event: InspectionEvent) => {
    track(event);
    if (connected.size === 0) return; // nobody watching: nothing copied, nothing serialised
    const payload = inspectablePayload(event);
    if (payload) broadcast.inspect.next?.(payload);
  };

  const address = await listenOn(http, {
    bind: options.bind,
    port: options.port,
    flag: 'inspect',
    portKey: 'observe.inspect_port',
  });
  http.on('error', (error) => logger.error(`inspector: ${error.message}`));
  const url = `ws://${hostPort(address)}`;
  logger.info(`inspector: live state machines on ${url} (runwarden inspect --follow --url ${url})`);

  return {
    port: address.port,
    address: address.address,
    url,
    inspector,
    viewers: () => viewers.size,
    close: async () => {
      // The package converts each event in a setTimeout(0); a timer queued now runs after those, so the last
      // transitions (the host reaching `stopped`) reach the viewers before the goodbye.
      await new Promise<void>((resolve) => setTimeout(resolve, 0));
      const closing = [...connected].map(
        (socket) =>
          new Promise<void>((resolve) => {
            if (socket.readyState === WebSocket.CLOSED) return resolve();
            socket.once('close', () => resolve());
            socket.close(1001, 'daemon stopping');
          }),
      );
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(closing),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, CLOSE_GRACE_MS);
        }),
      ]);
      clearTimeout(timer);
      for (const socket of connected) socket.terminate();
      await new Promise<void>((resolve) => sockets.close(() => resolve()));
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    },
  };
}
