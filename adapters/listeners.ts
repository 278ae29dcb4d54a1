import type { MembershipChange } from "./contract.js";
import { diagnostics } from "./diagnostics.js";

type Listener<T = MembershipChange> = (change: T) => void;

/** The listener set behind `watch`, shared by every store (and every history's `subscribe`). */
export class Listeners<T = MembershipChange> {
  readonly #listeners = new Set<Listener<T>>();

  get size(): number {
    return this.#listeners.size;
  }

  /** Adds `listener` (a function added twice is two subscriptions); returns the unsubscribe. */
  add(listener: Listener<T>): () => void {
    const entry: Listener<T> = (change) => listener(change);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  emit(change: T): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(change);
      } catch (error) {
        // One faulty listener must not starve the others, nor abort the write that emitted;
        // rethrown on its own so the bug still surfaces as an uncaught exception.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  clear(): void {
    this.#listeners.clear();
  }
}

/**
 * The subscribers of a change feed: listeners with their error handlers, `start` when the first
 * subscribes and `stop` when the last leaves, and each outage reported once.
 */
export class FeedSubscribers {
  readonly #listeners = new Listeners();
  readonly #errorHandlers = new Set<(error: unknown) => void>();
  readonly #start: () => void;
  readonly #stop: () => void;
  #failing = false;

  constructor(start: () => void, stop: () => void) {
    this.#start = start;
    this.#stop = stop;
  }

  subscribe(listener: Listener, onError: (error: unknown) => void): () => void {
    const unsubscribe = this.#listeners.add(listener);
    this.#errorHandlers.add(onError);
    if (this.#listeners.size === 1) this.#start();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      unsubscribe();
      this.#errorHandlers.delete(onError);
      if (this.#listeners.size === 0) this.#stop();
    };
  }

  emit(change: MembershipChange): void {
    this.#listeners.emit(change);
  }

  /** Tells every subscriber of `error`, once per outage: until {@link recovered}. */
  failed(error: unknown): void {
    if (this.#failing) return;
    this.#failing = true;
    if (diagnostics.feed.hasSubscribers) diagnostics.feed.publish({ state: "down", error });
    for (const report of [...this.#errorHandlers]) report(error);
  }

  recovered(): void {
    if (this.#failing && diagnostics.feed.hasSubscribers) diagnostics.feed.publish({ state: "up" });
    this.#failing = false;
  }

  clear(): void {
    this.#listeners.clear();
    this.#errorHandlers.clear();
    this.#stop();
  }
}
