// What a datagram socket needs from the runtime, and the inbox both
// implementations share. Only siblings import this file.

import { type Deferred, messageOf } from "../comm/_util.ts";
import { formatUdpAddress } from "./_address.ts";
import { Queue, waitInLine } from "../comm/_queue.ts";

/** One received datagram: its bytes, owned by the receiver, and its sender's `udp://` address. */
export interface ReceivedDatagram {
  data: Uint8Array;
  from: string;
}

/** The runtime's socket under a `DatagramSocket`. */
export interface Transport {
  readonly implementation: "deno" | "node";
  /** The bound host, as the runtime reports it. */
  readonly hostname: string;
  /** The bound port. */
  readonly port: number;
  /** Datagrams dropped because the inbox was full. */
  readonly dropped: number;
  /** Sends one datagram to an IP literal; rejects with the runtime's error. */
  send(data: Uint8Array, hostname: string, port: number): Promise<void>;
  /** The next datagram; a receive abandoned by `signal` loses nothing. */
  receive(signal?: AbortSignal): Promise<ReceivedDatagram>;
  join(group: string, networkInterface: string): Promise<void>;
  leave(group: string, networkInterface: string): Promise<void>;
  /** Closes the socket; pending and later receives reject with `reason`. */
  close(reason: Error): Promise<void>;
}

/**
 * What a queued datagram costs beyond its payload (its objects), so that a
 * flood of empty datagrams is bounded too.
 */
const DATAGRAM_OVERHEAD_BYTES = 128;

/** Bytes per slab that received datagrams are copied into. */
const SLAB_BYTES = 64 * 1024;
/** Datagrams larger than this get a buffer of their own. */
const SLAB_MAX_COPY = 4 * 1024;

/**
 * Copies received datagrams out of the runtime's buffer. Small ones share
 * 64 KiB slabs (one allocation for many datagrams, as Node's Buffer pool
 * does), so a datagram's `buffer` may hold others' bytes beside its own.
 */
export class Slab {
  #slab = new Uint8Array(SLAB_BYTES);
  #offset = 0;

  copy(bytes: Uint8Array): Uint8Array {
    const size = bytes.byteLength;
    if (size > SLAB_MAX_COPY) {
      // Not bytes.slice(): on Node's Buffer that is a view, and of Buffer's class.
      const copy = new Uint8Array(size);
      copy.set(bytes);
      return copy;
    }
    if (this.#offset + size > SLAB_BYTES) {
      this.#slab = new Uint8Array(SLAB_BYTES);
      this.#offset = 0;
    }
    const copy = this.#slab.subarray(this.#offset, this.#offset + size);
    copy.set(bytes);
    // Keep each copy 8-byte aligned, so that views of other types fit.
    this.#offset += (size + 7) & ~7;
    return copy;
  }
}

/** The options of a socket that it keeps after binding. */
export type SocketSettings = Omit<TransportOptions, "hostname" | "port" | "family">;

/** The error that ends a socket's receiving, other than closing it. */
export function receiveError(
  transport: { hostname: string; port: number },
  error: unknown,
): Error {
  return withContext(
    error,
    `Cannot receive on "${formatUdpAddress(transport.hostname, transport.port)}"`,
  );
}

/** What `bind()` asks of a transport. */
export interface TransportOptions {
  hostname: string;
  port: number;
  family: 4 | 6;
  reuseAddress: boolean;
  broadcast: boolean;
  multicastInterface?: string;
  multicastTTL?: number;
  multicastLoopback?: boolean;
  maxQueuedBytes: number;
}

/**
 * Received datagrams waiting for a `receive()`, and `receive()` calls waiting
 * for a datagram, each served first come first served. Transports deliver
 * whatever arrives; past `maxBytes` waiting, the inbox drops datagrams (and
 * counts them), as a full kernel buffer would.
 */
export class Inbox {
  #ready = new Queue<ReceivedDatagram>();
  #readyBytes = 0;
  #waiters = new Queue<Deferred<ReceivedDatagram>>();
  #failure: Error | undefined;
  #maxBytes: number;
  dropped = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** Hands a datagram to the first waiter, or queues it. */
  deliver(datagram: ReceivedDatagram): void {
    if (this.#failure) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve(datagram);
      return;
    }
    const size = datagram.data.byteLength + DATAGRAM_OVERHEAD_BYTES;
    if (this.#ready.length > 0 && this.#readyBytes + size > this.#maxBytes) {
      this.dropped++;
      return;
    }
    this.#ready.push(datagram);
    this.#readyBytes += size;
  }

  /** The next datagram: a queued one at once, or the next to arrive. */
  take(signal?: AbortSignal): Promise<ReceivedDatagram> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const datagram = this.#ready.shift();
    if (datagram) {
      this.#readyBytes -= datagram.data.byteLength + DATAGRAM_OVERHEAD_BYTES;
      return Promise.resolve(datagram);
    }
    return waitInLine(this.#waiters, signal);
  }

  /** Closes the inbox: queued datagrams are dropped, waiters reject. */
  fail(error: Error): void {
    if (this.#failure) return;
    this.#failure = error;
    this.#ready.drain();
    this.#readyBytes = 0;
    for (const waiter of this.#waiters.drain()) waiter.reject(error);
  }
}

/**
 * The runtime's error with what was attempted in front of its message, as the
 * same class where that is one of `Deno.errors` (so that callers can still
 * test for `Deno.errors.AddrInUse`, say).
 */
export function withContext(error: unknown, context: string): Error {
  const message = `${context}: ${messageOf(error)}`;
  for (const Class of [...Object.values(Deno.errors), TypeError, RangeError]) {
    if (error instanceof Class && error.constructor === Class) {
      return new Class(message, { cause: error });
    }
  }
  return new Error(message, { cause: error });
}
