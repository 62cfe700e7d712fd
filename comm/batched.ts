/**
 * {@linkcode BatchedSend}: many small messages sent as few list messages,
 * as dask.distributed's `BatchedSend`.
 *
 * @module
 */

import { CommClosedError } from "./errors.ts";
import {
  checkDuration,
  checkSize,
  CLOSE_GRACE_MS,
  closeWithin,
  describe,
  estimateSize,
  MAX_TIMER_MS,
  messageOf,
  reportError,
} from "./_util.ts";
import type { Comm } from "./types.ts";

/** Options for a {@linkcode BatchedSend}.
 * @example
 * ```ts
 * import { BatchedSend, type BatchedSendOptions, pipe } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const [a, b] = pipe();
 * const options: BatchedSendOptions = { interval: 10 };
 * const batched = new BatchedSend(a, options);
 * batched.send("x", "y");
 * assertEquals(await b.read(), ["x", "y"]);
 * await batched.close();
 * await b.close();
 * ```
 */
export interface BatchedSendOptions {
  /**
   * Milliseconds between two writes: messages sent meanwhile wait and go
   * together. The first message after a quiet spell goes at once. Beyond
   * about 24.8 days (`Infinity` included), later messages wait for
   * `close()`.
   *
   * @default {2}
   */
  interval?: number;
  /**
   * Called with a message that could not be encoded (it is dropped; the
   * others of its batch are sent). By default it is printed with
   * `console.error`.
   */
  onError?: (error: unknown) => void;
  /**
   * Milliseconds `close()` may take to write what is queued (when the peer
   * does not read, writes wait); then it aborts the comm and rejects,
   * saying how many messages were not written.
   *
   * @default {10000}
   */
  closeTimeout?: number;
  /**
   * Bytes that may be queued and in flight, estimated from the messages'
   * binaries and strings, before the promise `send()` returns waits for the
   * comm to catch up. `send()` itself never blocks: awaiting it is how a
   * producer faster than the peer is slowed down.
   *
   * @default {16777216}
   */
  highWaterMark?: number;
}

const DEFAULT_INTERVAL = 2;
const DEFAULT_CLOSE_TIMEOUT = 10_000;
const DEFAULT_HIGH_WATER_MARK = 16 * 1024 * 1024;
const RESOLVED: Promise<void> = Promise.resolve();

/**
 * Batches messages onto a comm, as dask's `BatchedSend`: `send()` queues
 * them at once, without waiting, and a background task writes the queue as
 * one list message at most every `interval` milliseconds. The receiver gets
 * lists of messages, which a {@linkcode Server}'s stream handlers (and
 * dask's) accept. Beyond `highWaterMark` bytes queued, the promise
 * `send()` returns waits for the comm: a producer that awaits it is held
 * to the peer's pace, one that does not queues without bound, as in dask.
 *
 * `close()` writes what is queued, then closes the comm; `abort()` drops
 * it. If the comm breaks, the messages not yet written are lost: `send()`
 * then throws `CommClosedError`, and so does `close()`, saying how many
 * were lost.
 *
 * @example
 * ```ts
 * import { BatchedSend, pipe } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const [a, b] = pipe();
 * const batched = new BatchedSend(a, { interval: 5 });
 * for (let i = 0; i < 100; i++) batched.send({ op: "tick", i });
 * await batched.close();
 *
 * const received: unknown[] = [];
 * for await (const batch of b) received.push(...(batch as unknown[]));
 * assertEquals(received.length, 100);
 * ```
 */
export class BatchedSend implements AsyncDisposable {
  #comm: Comm;
  #interval: number;
  #closeTimeout: number;
  #onError: ((error: unknown) => void) | undefined;
  #buffer: unknown[] = [];
  #highWaterMark: number;
  /** Estimated bytes of the messages in `#buffer`, and of the batch being written. */
  #bufferBytes = 0;
  #writingBytes = 0;
  /** Producers waiting for the queue to drain to `highWaterMark`. */
  #drainWaiters: (() => void)[] = [];
  #scheduled = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #writing: Promise<void> | undefined;
  #nextWrite = 0;
  #closed = false;
  #aborted = false;
  #closePromise: Promise<void> | undefined;
  #failure: unknown;
  #lost = 0;
  #messages = 0;
  #batches = 0;

  /**
   * Constructs a new {@linkcode BatchedSend} on `comm`; it owns the comm's
   * writing side from now on.
   *
   * @param comm The comm to write to.
   * @param options The interval, and where encoding errors go.
   * @throws {RangeError} If `interval` or `closeTimeout` is negative, or
   * `highWaterMark` not a positive whole number.
   */
  constructor(comm: Comm, options: BatchedSendOptions = {}) {
    this.#highWaterMark = checkSize(
      "highWaterMark",
      options.highWaterMark,
      DEFAULT_HIGH_WATER_MARK,
    );
    this.#comm = comm;
    this.#interval = checkDuration("interval", options.interval, DEFAULT_INTERVAL);
    this.#closeTimeout = checkDuration(
      "closeTimeout",
      options.closeTimeout,
      DEFAULT_CLOSE_TIMEOUT,
    );
    this.#onError = options.onError;
  }

  /** The comm written to. */
  get comm(): Comm {
    return this.#comm;
  }

  /** Messages queued and not yet written. */
  get pending(): number {
    return this.#buffer.length;
  }

  /** Messages given to `send()` so far. */
  get messageCount(): number {
    return this.#messages;
  }

  /** List messages written so far. */
  get batchCount(): number {
    return this.#batches;
  }

  /** Whether `close()` or `abort()` was called, or the comm closed. */
  get closed(): boolean {
    return this.#closed || this.#comm.closed;
  }

  /**
   * Queues messages, to be written with the others of their interval.
   * Queues at once, as dask's `send()` does; the promise it returns settles
   * at once too while under `highWaterMark`, and otherwise once the comm
   * has caught up. Awaiting it keeps a fast producer from queueing without
   * bound; it never rejects (a later `send()` or `close()` reports
   * failures).
   *
   * @example Slowed down to the comm's pace
   * ```ts
   * import { BatchedSend, pipe } from "@x/comm";
   * import { assertEquals } from "@std/assert";
   *
   * const [a, b] = pipe();
   * const batched = new BatchedSend(a, { highWaterMark: 64 * 1024 });
   * const reading = Array.fromAsync(b);
   * for (let i = 0; i < 100; i++) await batched.send(new Uint8Array(16 * 1024));
   * await batched.close();
   * const batches = await reading;
   * assertEquals(batches.flat().length, 100);
   * ```
   *
   * @param messages The messages.
   * @returns A promise that settles once the queue is under `highWaterMark`.
   * @throws {CommClosedError} If the batched stream or its comm is closed,
   * or an earlier write failed (the error says how many messages were
   * lost).
   */
  send(...messages: unknown[]): Promise<void> {
    if (this.#failure !== undefined) {
      throw new CommClosedError(
        `Cannot send on the batched stream to "${this.#comm.peerAddress}": its comm failed and ${this.#lost} messages were lost: ${
          messageOf(this.#failure)
        }`,
        { cause: this.#failure },
      );
    }
    if (this.#closed) {
      throw new CommClosedError(
        `Cannot send on the batched stream to "${this.#comm.peerAddress}": it was ${
          this.#aborted ? "aborted" : "closed"
        }`,
      );
    }
    if (this.#comm.closed) {
      throw new CommClosedError(
        `Cannot send on the batched stream to "${this.#comm.peerAddress}": its comm is closed (by the peer, or by an error)`,
      );
    }
    for (const message of messages) {
      this.#buffer.push(message);
      this.#bufferBytes += estimateSize(message);
    }
    this.#messages += messages.length;
    this.#schedule();
    if (this.#bufferBytes + this.#writingBytes <= this.#highWaterMark) return RESOLVED;
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Lets waiting producers go once the queue is under `highWaterMark`, or for good once closed. */
  #drained(): void {
    if (
      this.#closed || this.#failure !== undefined ||
      this.#bufferBytes + this.#writingBytes <= this.#highWaterMark
    ) {
      for (const resolve of this.#drainWaiters.splice(0)) resolve();
    }
  }

  /**
   * Writes what is queued, then closes the comm, within `closeTimeout`.
   * Idempotent.
   *
   * @throws {CommClosedError} If messages given to `send()` were not
   * written because the comm broke.
   */
  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  /**
   * Drops what is queued and aborts the comm.
   *
   * @param reason Why; the comm's pending operations reject with it as the
   * cause.
   */
  abort(reason?: unknown): void {
    this.#closed = true;
    this.#aborted = true;
    this.#buffer = [];
    this.#bufferBytes = 0;
    clearTimeout(this.#timer);
    this.#comm.abort(reason);
    this.#drained();
  }

  /** Closes, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #schedule(): void {
    if (this.#scheduled || this.#writing !== undefined || this.#buffer.length === 0) return;
    this.#scheduled = true;
    const wait = this.#nextWrite - performance.now();
    if (wait <= 0) queueMicrotask(() => this.#flush());
    else if (wait < MAX_TIMER_MS) this.#timer = setTimeout(() => this.#flush(), wait);
    // An interval beyond setTimeout's range holds messages until close().
    else this.#scheduled = false;
  }

  #flush(): void {
    this.#scheduled = false;
    this.#timer = undefined;
    if (this.#closed || this.#buffer.length === 0) return;
    const batch = this.#buffer;
    this.#buffer = [];
    this.#writingBytes = this.#bufferBytes;
    this.#bufferBytes = 0;
    this.#nextWrite = performance.now() + this.#interval;
    this.#writing = this.#write(batch).then(() => {
      this.#writing = undefined;
      this.#writingBytes = 0;
      this.#drained();
      if (!this.#closed) this.#schedule();
    });
  }

  /** Writes `batch`; never rejects (failures are recorded). */
  async #write(batch: unknown[]): Promise<void> {
    if (this.#failure !== undefined) {
      this.#lost += batch.length;
      return;
    }
    try {
      await this.#comm.write(batch);
      this.#batches++;
      return;
    } catch (error) {
      if (this.#comm.closed || !(error instanceof TypeError)) {
        this.#fail(error, batch.length);
        return;
      }
    }
    // A message did not encode, and nothing was written: send the batch
    // one message at a time, dropping the ones that do not encode.
    for (let i = 0; i < batch.length; i++) {
      try {
        await this.#comm.write([batch[i]]);
        this.#batches++;
      } catch (error) {
        if (this.#comm.closed || !(error instanceof TypeError)) {
          this.#fail(error, batch.length - i);
          return;
        }
        this.#report(
          new TypeError(
            `Dropped a message of the batched stream to "${this.#comm.peerAddress}" (${
              describe(batch[i])
            }): ${messageOf(error)}`,
            { cause: error },
          ),
        );
      }
    }
  }

  #fail(error: unknown, lost: number): void {
    // What abort() interrupts is dropped on purpose, not lost.
    if (this.#aborted) return;
    this.#failure = error;
    this.#lost += lost + this.#buffer.length;
    this.#buffer = [];
    this.#bufferBytes = 0;
    this.#comm.abort(error);
    this.#drained();
  }

  async #close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#scheduled = false;
    this.#drained();
    const ms = this.#closeTimeout;
    const timer = ms < MAX_TIMER_MS
      ? setTimeout(() =>
        this.#comm.abort(
          new CommClosedError(`Closing took over ${ms} ms: the peer does not read`),
        ), ms)
      : undefined;
    try {
      await this.#writing;
      if (this.#buffer.length > 0) {
        const batch = this.#buffer;
        this.#buffer = [];
        if (this.#comm.closed) {
          this.#lost += batch.length;
          this.#failure ??= new CommClosedError(
            `The comm to "${this.#comm.peerAddress}" closed`,
          );
        } else await this.#write(batch);
      }
      await closeWithin(this.#comm, CLOSE_GRACE_MS);
    } finally {
      clearTimeout(timer);
    }
    if (this.#lost > 0) {
      throw new CommClosedError(
        `${this.#lost} messages of the batched stream to "${this.#comm.peerAddress}" were not written: ${
          messageOf(this.#failure)
        }`,
        { cause: this.#failure },
      );
    }
  }

  #report(error: unknown): void {
    reportError(this.#onError, "BatchedSend", error);
  }
}
