/**
 * The `inproc` backend: comms between tasks of one process, through
 * in-memory queues. Messages are passed by reference, not serialized: the
 * receiver gets the very object that was written.
 *
 * `inproc://` listens on a fresh unique name; {@linkcode pipe} makes a
 * connected pair directly.
 *
 * @module
 */

import { Queue, waitInLine } from "./_queue.ts";
import {
  checkSize,
  type Deferred,
  deferred,
  estimateSize,
  messageOf,
  namedError,
} from "./_util.ts";
import { checkReadInto, copyInto, pollWith } from "./stream_comm.ts";
import { AddressError, CommClosedError } from "./errors.ts";
import { backends } from "./_backends.ts";
import type { Backend, BackendConnectOptions, BackendListener } from "./registry.ts";
import type { Comm, CommOptions, ReadOptions } from "./types.ts";

/** Default of `highWaterMark` for inproc comms: 1024 messages. */
const DEFAULT_INPROC_HIGH_WATER_MARK = 1024;
/**
 * Writes also wait while the messages queued behind the first hold more
 * than this, by {@linkcode estimateSize}: 1,024 messages of 1 MiB would be
 * 1 GiB.
 */
const INPROC_HIGH_WATER_BYTES = 16 * 1024 * 1024;

const RESOLVED: Promise<void> = Promise.resolve();
const listeners = new Map<string, InprocListener>();
let counter = 0;

function freshName(): string {
  const pid = (globalThis as { Deno?: { pid?: number } }).Deno?.pid ?? 0;
  return `localhost/${pid}/${++counter}`;
}

/** One end of an in-process comm. */
class InprocComm implements Comm {
  #peer!: InprocComm;
  #localAddress: string;
  #peerAddress: string;
  #highWaterMark: number;
  #inbox = new Queue<unknown>();
  /**
   * The estimated size of each message in the inbox, and their sum; a lone
   * message is estimated only once a second one joins it, so that a reader
   * that keeps up (the usual case) costs no estimate at all.
   */
  #sizes = new Queue<number>();
  #inboxBytes = 0;
  #readers = new Queue<Deferred<unknown>>();
  /** The peer's writes waiting for this inbox to drain. */
  #blockedWriters = new Queue<Deferred<void>>();
  /** poll() calls waiting for a message to reach the inbox. */
  #arrivals = new Queue<Deferred<boolean>>();
  #closed = false;
  #ended: CommClosedError | undefined;

  constructor(localAddress: string, peerAddress: string, highWaterMark: number) {
    this.#localAddress = localAddress;
    this.#peerAddress = peerAddress;
    this.#highWaterMark = highWaterMark;
  }

  static pair(
    a: string,
    b: string,
    highWaterMark: number,
  ): [InprocComm, InprocComm] {
    const left = new InprocComm(a, b, highWaterMark);
    const right = new InprocComm(b, a, highWaterMark);
    left.#peer = right;
    right.#peer = left;
    return [left, right];
  }

  get localAddress(): string {
    return this.#localAddress;
  }

  get peerAddress(): string {
    return this.#peerAddress;
  }

  get closed(): boolean {
    return this.#closed || this.#ended !== undefined;
  }

  read(options?: ReadOptions): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.#inbox.length > 0) {
      if (this.#sizes.length === this.#inbox.length) this.#inboxBytes -= this.#sizes.shift()!;
      const message = this.#inbox.shift();
      if (
        this.#blockedWriters.length > 0 &&
        this.#inbox.length <= this.#highWaterMark / 2 &&
        this.#inboxBytes <= INPROC_HIGH_WATER_BYTES / 2
      ) {
        for (let w; (w = this.#blockedWriters.shift());) w.resolve();
      }
      return Promise.resolve(message);
    }
    if (this.#ended) return Promise.reject(this.#ended);
    return waitInLine(this.#readers, options?.signal);
  }

  poll(timeout = 0): Promise<boolean> {
    return pollWith(
      this.#arrivals,
      timeout,
      () => this.#inbox.length > 0 || this.#closed || this.#ended !== undefined,
    );
  }

  async readInto(buffer: Uint8Array, offset = 0): Promise<number> {
    checkReadInto(buffer, offset);
    while (this.#inbox.length === 0 || this.#closed) {
      if (this.#closed || this.#ended) await this.read(); // rejects
      await this.poll(Infinity);
    }
    return copyInto(this.#inbox.peek(), () => this.read(), buffer, offset, this.#peerAddress);
  }

  write(message: unknown): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.#ended) return Promise.reject(this.#ended);
    const peer = this.#peer;
    const reader = peer.#readers.shift();
    if (reader) {
      reader.resolve(message);
      return RESOLVED;
    }
    if (peer.#inbox.length > 0) {
      if (peer.#sizes.length === 0) peer.#count(peer.#inbox.peek());
      peer.#count(message);
    }
    peer.#inbox.push(message);
    for (let w; (w = peer.#arrivals.shift());) w.resolve(true);
    if (
      peer.#inbox.length <= this.#highWaterMark && peer.#inboxBytes <= INPROC_HIGH_WATER_BYTES
    ) return RESOLVED;
    const waiter = deferred<void>();
    peer.#blockedWriters.push(waiter);
    return waiter.promise;
  }

  close(): Promise<void> {
    this.#shut(undefined);
    return RESOLVED;
  }

  abort(reason?: unknown): void {
    this.#shut(reason ?? new Error("aborted"));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    while (true) {
      let message: unknown;
      try {
        message = await this.read();
      } catch (error) {
        // An inproc comm only ends in order, by a close on either side.
        if (error instanceof CommClosedError) return;
        throw error;
      }
      yield message;
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #closedError(): CommClosedError {
    return new CommClosedError(`Comm to "${this.#peerAddress}" is closed`);
  }

  #shut(reason: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    const error = reason === undefined ? this.#closedError() : new CommClosedError(
      `Comm to "${this.#peerAddress}" was aborted: ${messageOf(reason)}`,
      { cause: reason },
    );
    for (const reader of this.#readers.drain()) reader.reject(error);
    // Their messages sit in this inbox, which will never be read.
    for (const writer of this.#blockedWriters.drain()) writer.reject(error);
    for (const waiter of this.#arrivals.drain()) waiter.resolve(true);
    this.#clearInbox();
    const peer = this.#peer;
    if (reason === undefined) {
      // Closing: our writes are in the peer's inbox, delivered, so they
      // succeed and the peer reads them before it sees the end.
      for (const writer of peer.#blockedWriters.drain()) writer.resolve();
    } else {
      // Aborting drops what the peer has not read yet; our blocked writes
      // fail like the rest.
      for (const writer of peer.#blockedWriters.drain()) writer.reject(error);
      peer.#clearInbox();
    }
    peer.#onPeerClosed();
  }

  #count(message: unknown): void {
    const size = estimateSize(message);
    this.#sizes.push(size);
    this.#inboxBytes += size;
  }

  #clearInbox(): void {
    this.#inbox.drain();
    this.#sizes.drain();
    this.#inboxBytes = 0;
  }

  #onPeerClosed(): void {
    if (this.#ended) return;
    this.#ended = new CommClosedError(
      `Comm to "${this.#peerAddress}" was closed by the peer`,
    );
    for (const reader of this.#readers.drain()) reader.reject(this.#ended);
    for (const waiter of this.#arrivals.drain()) waiter.resolve(true);
  }
}

class InprocListener implements BackendListener {
  readonly listenAddress: string;
  readonly contactAddress: string;
  #name: string;
  #pending = new Queue<Comm>();
  #accepting = new Queue<Deferred<Comm | null>>();
  #closed = false;

  constructor(name: string) {
    this.#name = name;
    this.listenAddress = this.contactAddress = `inproc://${name}`;
  }

  deliver(comm: Comm): void {
    const waiter = this.#accepting.shift();
    if (waiter) waiter.resolve(comm);
    else this.#pending.push(comm);
  }

  accept(): Promise<Comm | null> {
    const comm = this.#pending.shift();
    if (comm) return Promise.resolve(comm);
    if (this.#closed) return Promise.resolve(null);
    const waiter = deferred<Comm | null>();
    this.#accepting.push(waiter);
    return waiter.promise;
  }

  close(): Promise<void> {
    if (this.#closed) return RESOLVED;
    this.#closed = true;
    if (listeners.get(this.#name) === this) listeners.delete(this.#name);
    for (const waiter of this.#accepting.drain()) waiter.resolve(null);
    for (const comm of this.#pending.drain()) comm.abort();
    return RESOLVED;
  }
}

function highWaterMark(options: CommOptions): number {
  return checkSize("highWaterMark", options.highWaterMark, DEFAULT_INPROC_HIGH_WATER_MARK);
}

/**
 * The `inproc` backend, registered under `inproc`.
 *
 * @example
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertStrictEquals } from "@std/assert";
 *
 * const big = { rows: [1, 2, 3] };
 * await using listener = await listen("inproc://", async (comm) => {
 *   await comm.write(await comm.read());
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write(big);
 * assertStrictEquals(await comm.read(), big); // the same object, not a copy
 * ```
 */
export const inprocBackend: Backend = {
  connect(location: string, options: BackendConnectOptions): Promise<Comm> {
    const listener = listeners.get(location);
    if (!listener) {
      return Promise.reject(
        namedError(
          "ConnectionRefused",
          `no inproc listener is named "${location}" in this process`,
        ),
      );
    }
    const [client, server] = InprocComm.pair(
      `inproc://${freshName()}`,
      listener.listenAddress,
      highWaterMark(options),
    );
    listener.deliver(server);
    return Promise.resolve(client);
  },

  listen(location: string): Promise<BackendListener> {
    const name = location === "" ? freshName() : location;
    if (listeners.has(name)) {
      return Promise.reject(
        namedError("AddrInUse", `inproc name "${name}" is already in use`),
      );
    }
    const listener = new InprocListener(name);
    listeners.set(name, listener);
    return Promise.resolve(listener);
  },

  getAddressHost(): string {
    return "localhost";
  },

  getAddressHostPort(location: string): [string, number] {
    throw new AddressError(
      `Cannot get the host and port of "inproc://${location}": inproc addresses have no port`,
    );
  },

  resolveAddress(location: string): Promise<string> {
    return Promise.resolve(location);
  },

  getLocalAddressFor(): string {
    return "";
  },
};

/**
 * Makes a connected pair of in-process comms: what one writes, the other
 * reads. No listener, no handshake.
 *
 * @example
 * ```ts
 * import { pipe } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const [a, b] = pipe();
 * await a.write("ping");
 * assertEquals(await b.read(), "ping");
 * await a.close();
 * assertEquals([...await Array.fromAsync(b)], []); // b ends once a closes
 * ```
 *
 * @param options `highWaterMark`, in messages (writes also wait while the
 * messages queued hold over 16 MiB of binaries and strings).
 * @returns The two ends.
 * @throws {RangeError} If `highWaterMark` is not a positive whole number.
 */
export function pipe(options: Pick<CommOptions, "highWaterMark"> = {}): [Comm, Comm] {
  return InprocComm.pair(
    `inproc://${freshName()}`,
    `inproc://${freshName()}`,
    highWaterMark(options),
  );
}

backends.set("inproc", inprocBackend);
