import { fromCallback, type AnyActorRef, type AnyMachineSnapshot } from 'xstate';
import type { ProcessCommand, ProcessEvent } from '../../machines/supervisor.machine.js';
import type { CommandPlan } from '../../machines/types.js';

/** Dotted names of the leaf states of a snapshot value: `{ busy: 'supervising' }` → `busy.supervising`. */
export function stateName(value: AnyMachineSnapshot['value']): string {
  if (typeof value === 'string') return value;
  return Object.entries(value)
    .map(([key, child]) => {
      const inner = stateName(child as AnyMachineSnapshot['value']);
      return inner ? `${key}.${inner}` : key;
    })
    .join(',');
}

/** Records the sequence of distinct states an actor goes through. */
export function recordStates(actor: AnyActorRef): string[] {
  const seen: string[] = [];
  actor.subscribe((snapshot: AnyMachineSnapshot) => {
    const name = stateName(snapshot.value);
    if (seen[seen.length - 1] !== name) seen.push(name);
  });
  return seen;
}

/** A fake process group: the test decides when it spawns, prints and exits; signals are recorded. */
export class FakeProcess {
  signals: ProcessCommand['signal'][] = [];
  private sendBack: ((event: ProcessEvent) => void) | undefined;
  stopped = false;

  readonly logic = fromCallback<ProcessCommand, { plan: CommandPlan }>(({ sendBack, receive }) => {
    this.sendBack = sendBack as (event: ProcessEvent) => void;
    receive((command) => this.signals.push(command.signal));
    return () => {
      this.stopped = true;
    };
  });

  send(event: ProcessEvent): void {
    if (!this.sendBack) throw new Error('the fake process has not been started');
    this.sendBack(event);
  }

  spawn(): void {
    this.send({ type: 'SPAWNED', pid: 4242, pgid: 4242 });
  }

  exit(exitCode: number | null, signal: string | null = null, stderrTail = '', interruption?: string): void {
    this.send({ type: 'EXITED', exitCode, signal, stderrTail, durationMs: 5, ...(interruption !== undefined ? { interruption } : {}) });
  }
}

/** A promise whose resolution the test controls. */
export function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets queued promise callbacks and deferred actor messages run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}
