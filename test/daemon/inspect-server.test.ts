import { createServer } from 'node:net';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { assign, createActor, setup, type AnyActorRef, type InspectionEvent } from 'xstate';
import { defaultConfig } from '../../src/config/schema.js';
import { startInspectServer, type InspectServer } from '../../src/daemon/inspect-server.js';
import { plainCopy, REDACTED } from '../../src/daemon/inspection-payload.js';
import { createLogger } from '../../src/log/logger.js';
import { repoRoot, waitFor } from '../helpers/cli.js';

// `daemon --inspect` without the daemon: the server on a real loopback socket, real WebSocket viewers and real
// XState actors feeding it, as startDaemon's `inspectors` do.

const logger = createLogger({ level: 'error', host: 'test', json: true, stream: new PassThrough() });
const servers: InspectServer[] = [];
const viewers: WebSocket[] = [];

afterEach(async () => {
  for (const viewer of viewers.splice(0)) viewer.terminate();
  for (const server of servers.splice(0)) await server.close();
});

async function serve(port = 0, bind = defaultConfig('/tmp').observe.bind) {
  const server = await startInspectServer({ bind, port, logger });
  servers.push(server);
  return server;
}

interface Viewer {
  socket: WebSocket;
  messages: Array<Record<string, any>>;
}

/** A viewer that records every message; its listener is attached before the socket opens. */
async function view(server: InspectServer): Promise<Viewer> {
  const socket = new WebSocket(server.url);
  viewers.push(socket);
  const messages: Array<Record<string, any>> = [];
  socket.on('message', (data) => messages.push(JSON.parse(data.toString())));
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  return { socket, messages };
}

function refused(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = new WebSocket(`ws://${host.includes(':') ? `[${host}]` : host}:${port}`);
    socket.once('open', () => {
      socket.terminate();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** A parent machine that spawns a child with a system id, and carries awkward values in its context. */
function awkwardSystem() {
  const child = setup({ types: { events: {} as { type: 'GO' } } }).createMachine({
    id: 'child',
    initial: 'waiting',
    states: { waiting: { on: { GO: 'going' } }, going: {} },
  });
  const circular: Record<string, unknown> = { name: 'loop' };
  circular.self = circular;
  const hostile = Object.defineProperty({}, 'boom', {
    enumerable: true,
    get() {
      throw new Error('getter exploded');
    },
  });
  const parent = setup({
    types: { events: {} as { type: 'SPAWN' } | { type: 'GO' }, context: {} as Record<string, unknown> },
    actors: { child },
  }).createMachine({
    id: 'parent',
    context: {
      circular,
      hostile,
      big: 12345678901234567890n,
      callback: function namedCallback() {},
      run: { number: 42, token: 'lease-token-secret', doc: { processing: { token: 'lease-token-secret' } } },
      plan: { argv: ['./process.sh', '42'], env: { MONGO_PASSWORD: 'hunter2', PATH: '/usr/bin' } },
    },
    initial: 'idle',
    states: {
      idle: {
        on: {
          SPAWN: {
            target: 'watching',
            actions: assign({ childRef: ({ spawn }) => spawn('child', { id: 'slot-0', systemId: 'kid-42' }) }),
          },
        },
      },
      watching: {},
    },
  });
  return parent;
}

describe('daemon --inspect: the server', () => {
  it('listens on 127.0.0.1 by default (observe.bind)', async () => {
    const server = await serve();
    expect(server.address).toBe('127.0.0.1');
    expect(server.url).toBe(`ws://127.0.0.1:${server.port}`);
    expect(await refused('127.0.0.1', server.port)).toBe('connected');
  });

  it('is reachable on the loopback it binds (127.0.0.1 or ::1) and on no other local address, IPv4 or IPv6', () => {
    // The other addresses must exist for the check to mean anything. As root, a private network namespace gets
    // 10.77.0.1 and fd77::1 (on its own lo: non-loopback addresses, not 127/8 or ::1) whatever the machine has;
    // otherwise the machine's own interfaces serve. The wildcard binds are the control: there the same probe must
    // connect on every other address, so a probe that cannot see an exposure fails the test.
    const binds = ['127.0.0.1', '::1', '0.0.0.0', '::'];
    const fixture = fileURLToPath(new URL('./fixtures/inspect-exposure.ts', import.meta.url));
    const node = [process.execPath, '--import', 'tsx', fixture, JSON.stringify(binds)];
    const setUp = 'ip link set lo up && ip addr add 10.77.0.1/32 dev lo && ip -6 addr add fd77::1/128 dev lo nodad';
    const inNamespace = (): string | undefined => {
      if (process.getuid?.() !== 0) return undefined;
      try {
        return execFileSync('unshare', ['-n', 'sh', '-c', `${setUp} && exec "$@"`, 'sh', ...node], {
          cwd: repoRoot,
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'pipe'],
        });
      } catch {
        return undefined; // no unshare or no CAP_NET_ADMIN here: the machine's own addresses then
      }
    };
    const out =
      inNamespace() ?? execFileSync(node[0]!, node.slice(1), { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const { others, results } = JSON.parse(out) as { others: string[]; results: Record<string, Record<string, string>> };
    const v4 = others.filter((a) => !a.includes(':'));
    const v6 = others.filter((a) => a.includes(':'));
    expect(v4.length, `a non-loopback IPv4 address to try (found ${others.join(', ') || 'none'})`).toBeGreaterThan(0);
    expect(v6.length, `a non-loopback IPv6 address to try (found ${others.join(', ') || 'none'})`).toBeGreaterThan(0);
    const reachable = (bind: string) =>
      Object.entries(results[bind]!)
        .filter(([, outcome]) => outcome === 'connected')
        .map(([address]) => address)
        .sort();
    expect(reachable('127.0.0.1')).toEqual(['127.0.0.1']);
    expect(reachable('::1')).toEqual(['::1']);
    // Controls: bound to every address, the server is found on every other address of its family.
    for (const address of v4) expect(results['0.0.0.0']![address], `0.0.0.0 seen on ${address}`).toBe('connected');
    for (const address of v6) expect(results['::']![address], `:: seen on ${address}`).toBe('connected');
  });

  it('a port in use is a usage error (exit 2) naming the port, the flag and the setting', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', () => resolve()));
    const port = (taken.address() as { port: number }).port;
    try {
      const error = await startInspectServer({ bind: '127.0.0.1', port, logger }).catch((e: unknown) => e);
      expect(error).toMatchObject({ exitCode: 2, field: 'observe.inspect_port' });
      expect((error as Error).message).toBe(
        `--inspect: port ${port} on 127.0.0.1 is already in use; ` +
          'choose another with --inspect=PORT or observe.inspect_port (0 = any free port)',
      );
    } finally {
      await new Promise<void>((resolve) => taken.close(() => resolve()));
    }
  });

  it('sends the actors\' events in @statelyai/inspect\'s wire format: readable names, plain snapshots, no secrets', async () => {
    const server = await serve();
    const viewer = await view(server);
    const observerErrors: unknown[] = [];
    const actor = createActor(awkwardSystem(), {
      inspect: (event) => {
        try {
          server.inspector(event);
        } catch (error) {
          observerErrors.push(error);
        }
      },
    });
    actor.start();
    actor.send({ type: 'SPAWN' });
    const kid = actor.system.get('kid-42') as AnyActorRef;
    kid.send({ type: 'GO' });
    const childSession = kid.sessionId;
    await waitFor(
      () => viewer.messages.find((m) => m.type === '@xstate.snapshot' && m.sessionId === childSession && m.snapshot.value === 'going'),
      'the child reaching going',
    );
    actor.stop();
    await waitFor(
      () => viewer.messages.find((m) => m.sessionId === actor.sessionId && m.snapshot?.status === 'stopped'),
      'the parent stopped',
    );
    expect(observerErrors).toEqual([]);

    const announced = viewer.messages.filter((m) => m.type === '@xstate.actor');
    expect(announced.map((m) => m.name)).toEqual(['parent', 'kid-42']);
    for (const message of viewer.messages) {
      expect(message).toMatchObject({ _version: expect.any(String), sessionId: expect.any(String), createdAt: expect.any(String) });
    }
    expect(JSON.parse(announced[1]!.definition as string)).toMatchObject({ id: 'child', initial: 'waiting' });
    expect(announced[1]!.parentId).toBe(actor.sessionId);

    const parentSnapshots = viewer.messages.filter((m) => m.type === '@xstate.snapshot' && m.sessionId === actor.sessionId);
    expect(parentSnapshots.map((m) => [m.event.type, m.snapshot.value])).toEqual([
      ['xstate.init', 'idle'],
      ['SPAWN', 'watching'],
      ['xstate.stop', 'watching'],
    ]);
    const context = parentSnapshots[1]!.snapshot.context;
    expect(context.circular).toEqual({ name: 'loop', self: '[Circular]' });
    expect(context.hostile).toEqual({ boom: '[unreadable]' });
    expect(context.big).toBe('12345678901234567890');
    expect(context.callback).toEqual({ type: 'namedCallback' });
    expect(context.childRef).toEqual({ xstate$$type: 1, id: 'slot-0' });
    expect(context.run).toEqual({ number: 42, token: REDACTED, doc: { processing: { token: REDACTED } } });
    expect(context.plan).toEqual({ argv: ['./process.sh', '42'], env: REDACTED });
    const everything = JSON.stringify(viewer.messages);
    expect(everything).not.toContain('hunter2');
    expect(everything).not.toContain('lease-token-secret');
    expect(everything).not.toContain('/usr/bin');
  });

  it('copies nothing while nobody is connected', async () => {
    const server = await serve();
    let reads = 0;
    const snapshot = {
      status: 'active',
      value: 'idle',
      get context() {
        reads += 1;
        return { n: 1 };
      },
    };
    const event = {
      type: '@xstate.snapshot',
      rootId: 'x:0',
      actorRef: { sessionId: 'x:0' },
      event: { type: 'TICK' },
      snapshot,
    } as unknown as InspectionEvent;
    server.inspector(event);
    expect(reads).toBe(0);
    const viewer = await view(server);
    server.inspector(event);
    await waitFor(() => viewer.messages.find((m) => m.event?.type === 'TICK'), 'the TICK snapshot');
    expect(reads).toBeGreaterThan(0);
  });

  it('announces the actors alive now to a viewer that connects later, in their current state, before their live events', async () => {
    const server = await serve();
    const actor = createActor(awkwardSystem(), { inspect: server.inspector });
    actor.start();
    actor.send({ type: 'SPAWN' });
    const kid = actor.system.get('kid-42') as AnyActorRef;
    const viewer = await view(server);
    await waitFor(() => viewer.messages.length >= 2, 'the announcements');
    kid.send({ type: 'GO' });
    await waitFor(() => viewer.messages.find((m) => m.snapshot?.value === 'going' && m.type === '@xstate.snapshot'), 'GO');
    expect(viewer.messages.map((m) => [m.type, m.name ?? m.event?.type, m.snapshot?.value])).toEqual([
      ['@xstate.actor', 'parent', 'watching'],
      ['@xstate.actor', 'kid-42', 'waiting'],
      ['@xstate.event', 'GO', undefined],
      ['@xstate.snapshot', 'GO', 'going'],
    ]);
    actor.stop();
  });

  it('forgets actors that finished: a later viewer hears only of those alive', async () => {
    const server = await serve();
    const quick = setup({}).createMachine({ id: 'quick', initial: 'a', states: { a: { always: 'b' }, b: { type: 'final' } } });
    const parent = setup({ actors: { quick } }).createMachine({
      id: 'parent',
      initial: 'working',
      states: { working: { invoke: { src: 'quick', onDone: 'finished' } }, finished: {} },
    });
    const actor = createActor(parent, { inspect: server.inspector });
    actor.start();
    await waitFor(() => actor.getSnapshot().value === 'finished', 'the parent to see its child finish');
    const viewer = await view(server);
    await waitFor(() => viewer.messages.length >= 1, 'the announcement');
    // Settle: a second viewer's announcement arrives only after everything queued for the first.
    const second = await view(server);
    await waitFor(() => second.messages.length >= 1, 'the second announcement');
    expect(viewer.messages.map((m) => [m.type, m.name, m.snapshot?.value])).toEqual([['@xstate.actor', 'parent', 'finished']]);
    actor.stop();
  });

  it('GET / is the bridge page for the hosted Stately inspector: it embeds it and feeds it from this socket', async () => {
    const server = await serve();
    const page = await fetch(`http://127.0.0.1:${server.port}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const html = await page.text();
    expect(html).toContain('<iframe id="inspector" src="https://stately.ai/inspect"></iframe>');
    // It connects back to whatever address it was loaded from (a tunnel's local port, say).
    expect(html).toContain("new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/')");
    expect(html).toContain("e.data.type === '@statelyai.connected'");
    expect((await fetch(`http://127.0.0.1:${server.port}/other`)).status).toBe(404);
  });

  it('close() tells the viewers the daemon is stopping (1001) and stops listening', async () => {
    const server = await serve();
    const viewer = await view(server);
    const closed = new Promise<[number, string]>((resolve) =>
      viewer.socket.once('close', (code, reason) => resolve([code, reason.toString()])),
    );
    await server.close();
    servers.splice(servers.indexOf(server), 1);
    expect(await closed).toEqual([1001, 'daemon stopping']);
    expect(await refused('127.0.0.1', server.port)).toBe('ECONNREFUSED');
  });
});

describe('plainCopy', () => {
  it('keeps plain data and bounds the rest: depth, long strings, long arrays, maps, sets, errors, dates', () => {
    let deep: Record<string, unknown> = { leaf: true };
    for (let i = 0; i < 12; i += 1) deep = { deeper: deep };
    const copy = plainCopy({
      deep,
      long: 'x'.repeat(5000),
      many: Array.from({ length: 250 }, (_, i) => i),
      map: new Map([['a', 1]]),
      set: new Set([1, 2]),
      error: new TypeError('bad'),
      date: new Date(Date.UTC(2026, 0, 1)),
      nan: Number.NaN,
      skipped: undefined,
    }) as Record<string, any>;
    expect(JSON.stringify(copy)).toContain('"[…]"');
    expect(copy.long).toHaveLength(4097);
    expect(copy.many).toHaveLength(201);
    expect(copy.many.at(-1)).toBe('… 50 more');
    expect(copy.map).toEqual({ a: 1 });
    expect(copy.set).toEqual([1, 2]);
    expect(copy.error).toEqual({ name: 'TypeError', message: 'bad' });
    expect(copy.date).toBe('2026-01-01T00:00:00.000Z');
    expect(copy.nan).toBe('NaN');
    expect('skipped' in copy).toBe(false);
  });

  it('never throws: a toJSON that throws, a Proxy that refuses to be read', () => {
    const throwingJson = { toJSON: () => { throw new Error('no'); } };
    const proxy = new Proxy({}, { ownKeys: () => { throw new Error('no keys'); } });
    expect(plainCopy({ a: throwingJson })).toEqual({ a: '[unreadable]' });
    expect(plainCopy(proxy)).toBe('[unreadable]');
  });

  it('redacts secrets by key at any depth: tokens, passwords, secrets, api keys, environments', () => {
    expect(
      plainCopy({ token: 't', leaseToken: 't', password: 'p', apiKey: 'k', api_key: 'k', env: { A: '1' }, envelope: 'ok' }),
    ).toEqual({
      token: REDACTED,
      leaseToken: REDACTED,
      password: REDACTED,
      apiKey: REDACTED,
      api_key: REDACTED,
      env: REDACTED,
      envelope: 'ok',
    });
  });
});
