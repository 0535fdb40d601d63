import { fromCallback, fromPromise, type EventObject } from 'xstate';
import { deferred } from '../machines/helpers.js';

// Fake effects whose outcome a replayed path decides: each invocation of a promise effect waits on a deferred
// the driver resolves or rejects when the path says that effect finished; each callback effect hands its
// sendBack to the driver. The driver also sees which effects were started and in what order.

type Deferred = ReturnType<typeof deferred<unknown>>;

export class ControlledEffects {
  private readonly pending = new Map<string, Deferred>();
  private readonly senders = new Map<string, Array<(event: EventObject) => void>>();
  /** Every effect started, in order, with the step index it started at. */
  readonly started: Array<{ src: string; step: number }> = [];
  /** Events callback effects received (e.g. STOP sent to a run actor). */
  readonly received: Array<{ src: string; event: EventObject; step: number }> = [];
  step = 0;

  promise<TOutput, TInput>(src: string) {
    return fromPromise<TOutput, TInput>(() => {
      if (this.pending.has(src)) throw new Error(`${src} started twice at once`);
      const d = deferred<unknown>();
      this.pending.set(src, d);
      this.started.push({ src, step: this.step });
      return d.promise.finally(() => this.pending.delete(src)) as Promise<TOutput>;
    });
  }

  /** A callback effect; with `keyOf`, it is also reachable as `src#key` (e.g. `run#12`). */
  callback<TInput>(src: string, keyOf?: (input: TInput) => string | number) {
    return fromCallback<EventObject, TInput>(({ sendBack, receive, input }) => {
      const names = keyOf ? [src, `${src}#${keyOf(input)}`] : [src];
      const send = (event: EventObject) => sendBack(event);
      for (const name of names) {
        const list = this.senders.get(name) ?? [];
        list.push(send);
        this.senders.set(name, list);
      }
      this.started.push({ src: names[names.length - 1]!, step: this.step });
      receive((event) => this.received.push({ src: names[names.length - 1]!, event, step: this.step }));
      return () => {
        for (const name of names) {
          const list = this.senders.get(name)!;
          list.splice(list.indexOf(send), 1);
        }
      };
    });
  }

  resolve(src: string, output: unknown): void {
    const d = this.pending.get(src);
    if (!d) throw new Error(`the path finishes ${src}, but the real actor is not running it`);
    d.resolve(output);
  }

  reject(src: string, error: unknown): void {
    const d = this.pending.get(src);
    if (!d) throw new Error(`the path fails ${src}, but the real actor is not running it`);
    d.reject(error);
  }

  /** Sends an event from the live callback effect `src` (the newest when several are alive). */
  sendFrom(src: string, event: EventObject): void {
    const list = this.senders.get(src) ?? [];
    const send = list[list.length - 1];
    if (!send) throw new Error(`the path has ${src} send ${event.type}, but no ${src} is alive`);
    send(event);
  }

  alive(src: string): number {
    return this.senders.get(src)?.length ?? 0;
  }
}
