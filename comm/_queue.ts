// A FIFO queue with O(1) push and shift, for inboxes and waiter lists.

import { type Deferred, deferred } from "./_util.ts";

/** A first-in first-out queue. */
export class Queue<T> {
  #items: (T | undefined)[] = [];
  #head = 0;

  /** Number of items queued. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Adds an item at the back. */
  push(item: T): void {
    this.#items.push(item);
  }

  /** The front item, left in place (`undefined` when empty). */
  peek(): T | undefined {
    return this.#head < this.#items.length ? this.#items[this.#head] : undefined;
  }

  /** Removes and returns the front item (`undefined` when empty). */
  shift(): T | undefined {
    if (this.#head === this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head === this.#items.length) {
      this.#items.length = 0;
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Removes one given item wherever it is; returns whether it was there. */
  remove(item: T): boolean {
    const at = this.#items.indexOf(item, this.#head);
    if (at === -1) return false;
    this.#items.splice(at, 1);
    return true;
  }

  /** Removes and returns every item, front first. */
  drain(): T[] {
    const items = this.#items.slice(this.#head) as T[];
    this.#items = [];
    this.#head = 0;
    return items;
  }
}

/**
 * Adds a waiter to `waiters` and returns its promise. If `signal` aborts
 * first, the waiter leaves the queue (so it takes nothing) and the promise
 * rejects with the signal's reason.
 */
export function waitInLine<T>(waiters: Queue<Deferred<T>>, signal?: AbortSignal): Promise<T> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  const waiter = deferred<T>();
  waiters.push(waiter);
  if (!signal) return waiter.promise;
  const onAbort = () => {
    if (waiters.remove(waiter)) waiter.reject(signal.reason);
  };
  signal.addEventListener("abort", onAbort, { once: true });
  return waiter.promise.finally(() => signal.removeEventListener("abort", onAbort));
}
