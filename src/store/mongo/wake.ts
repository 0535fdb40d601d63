// Wake-ups for idle daemons (DESIGN §6): a change stream on `runs` where the deployment has one (replica set
// or sharded cluster), polling where it has not, and at once for inserts made through this very store.
// Nothing here throws or logs: a failed change stream falls back to polling and says so in `method`.

import type { ChangeStream, Collection, Document } from 'mongodb';

import { WAKE_FIELD } from './queries.js';

/** Bursts of wake-ups within this many ms become one call. */
const COALESCE_MS = 20;

export const DEFAULT_POLL_MS = 10_000;

/** What the server's `hello` says about change streams. */
export interface Topology {
  changeStreams: boolean;
  /** Why (not), for the start-up line: "replica set rs0", "a sharded cluster", "not a replica set". */
  describe: string;
}

export function topologyFromHello(hello: Document): Topology {
  if (typeof hello.setName === 'string') return { changeStreams: true, describe: `replica set ${hello.setName}` };
  if (hello.msg === 'isdbgrid') return { changeStreams: true, describe: 'a sharded cluster' };
  return { changeStreams: false, describe: 'not a replica set' };
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`;
}

/**
 * Inserts wake idle daemons, and updates that stamp the wake-up field (a run failed or released by hand);
 * lease heartbeats and other writes do not. The projection keeps change events small (the resume token stays).
 */
export const CHANGE_STREAM_PIPELINE: Document[] = [
  {
    $match: {
      $or: [
        { operationType: 'insert' },
        { operationType: 'update', [`updateDescription.updatedFields.${WAKE_FIELD}`]: { $exists: true } },
      ],
    },
  },
  { $project: { operationType: 1 } },
];

/**
 * Calls every registered watcher (coalesced) when runs are inserted. One change stream or one poller per
 * store, started with the first watcher and stopped with the last.
 */
export class RunWakeUps {
  private readonly watchers = new Set<() => void>();
  private mode: 'change stream' | 'polling';
  private why: string;
  private stream: ChangeStream | undefined;
  private poller: NodeJS.Timeout | undefined;
  private fingerprint: string | undefined;
  private polling = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly runs: Collection,
    topology: Topology,
    private readonly pollMs: number = DEFAULT_POLL_MS,
  ) {
    this.mode = topology.changeStreams ? 'change stream' : 'polling';
    this.why = topology.describe;
  }

  /** For the start-up log: how new runs are noticed right now. */
  get method(): string {
    if (this.mode === 'change stream') return `a change stream on runs (${this.why})`;
    return `polling every ${seconds(this.pollMs)} (no change stream: ${this.why})`;
  }

  watch(onNewRun: () => void): () => void {
    let active = true;
    const watcher = (): void => {
      if (!active) return;
      try {
        onNewRun();
      } catch {
        // a throwing callback must not stop the others or the stream
      }
    };
    this.watchers.add(watcher);
    this.start();
    return () => {
      if (!active) return;
      active = false;
      this.watchers.delete(watcher);
      if (this.watchers.size === 0) this.stop();
    };
  }

  /** An insert made through this store: no need to wait for the stream or the next poll. */
  notify(): void {
    if (this.closed || this.watchers.size === 0 || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      for (const watcher of [...this.watchers]) watcher();
    }, COALESCE_MS);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.watchers.clear();
    await this.stopAsync();
  }

  private start(): void {
    if (this.closed || this.stream || this.poller) return;
    if (this.mode === 'change stream') this.startStream();
    else this.startPolling();
  }

  private stop(): void {
    void this.stopAsync();
  }

  private async stopAsync(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.poller) clearInterval(this.poller);
    this.poller = undefined;
    this.fingerprint = undefined;
    const stream = this.stream;
    this.stream = undefined;
    if (stream) await stream.close().catch(() => undefined);
  }

  private startStream(): void {
    try {
      const stream = this.runs.watch(CHANGE_STREAM_PIPELINE);
      this.stream = stream;
      stream.on('change', () => this.notify());
      // The driver resumes by itself after resumable errors; anything that reaches us is final.
      stream.on('error', (error: unknown) => this.fallBack(stream, error));
    } catch (error) {
      this.fallBack(undefined, error);
    }
  }

  private fallBack(stream: ChangeStream | undefined, error: unknown): void {
    if (stream && stream !== this.stream) return;
    const reason = error instanceof Error ? error.message : String(error);
    this.mode = 'polling';
    this.why = `the change stream failed: ${reason.split('\n')[0]}`;
    this.stream = undefined;
    if (stream) void stream.close().catch(() => undefined);
    if (!this.closed && this.watchers.size > 0) this.startPolling();
  }

  private startPolling(): void {
    this.poller = setInterval(() => void this.poll(), this.pollMs);
    this.poller.unref();
    void this.poll();
  }

  /**
   * Compares the number of runs, the newest _id and the latest wake-up stamp with the previous poll: an
   * insert or a change by hand in any process changes one of them. The first poll only takes the baseline.
   */
  private async poll(): Promise<void> {
    if (this.polling || this.closed) return;
    this.polling = true;
    try {
      const [count, newest, woken] = await Promise.all([
        this.runs.estimatedDocumentCount(),
        this.runs.find({}, { projection: { _id: 1 } }).sort({ _id: -1 }).limit(1).next(),
        this.runs
          .find({ [WAKE_FIELD]: { $exists: true } }, { projection: { [WAKE_FIELD]: 1 } })
          .sort({ [WAKE_FIELD]: -1 })
          .limit(1)
          .next(),
      ]);
      const stamp = woken?.[WAKE_FIELD] instanceof Date ? woken[WAKE_FIELD].getTime() : '';
      const fingerprint = `${count}/${String(newest?._id ?? '')}/${stamp}`;
      const changed = this.fingerprint !== undefined && fingerprint !== this.fingerprint;
      if (this.poller) this.fingerprint = fingerprint;
      if (changed) this.notify();
    } catch {
      // the server is unreachable for now; the next poll tries again
    } finally {
      this.polling = false;
    }
  }
}
