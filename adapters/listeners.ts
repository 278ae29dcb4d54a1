import type { MembershipChange } from "./contract.js";

type Listener = (change: MembershipChange) => void;

/** The listener set behind `watch`, shared by every store. */
export class Listeners {
  readonly #listeners = new Set<Listener>();

  get size(): number {
    return this.#listeners.size;
  }

  /** Adds `listener` (a function added twice is two subscriptions); returns the unsubscribe. */
  add(listener: Listener): () => void {
    const entry: Listener = (change) => listener(change);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  emit(change: MembershipChange): void {
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
