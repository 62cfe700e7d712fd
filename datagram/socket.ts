/**
 * The bound UDP socket: {@linkcode DatagramSocket}, what it sends and
 * receives, and its limits.
 *
 * @module
 */

import { AddressError, CommClosedError } from "../comm/errors.ts";
import { type Codec, createCodec } from "../comm/_codec.ts";
import { describe, messageOf } from "../comm/_util.ts";
import {
  checkInterface,
  formatUdpAddress,
  ipv4Of,
  isBroadcast,
  isMulticastV4,
  parseUdpAddress,
  resolveHost,
} from "./_address.ts";
import { socketControl } from "./_socket_control.ts";
import type { Transport } from "./_transport.ts";
import { withContext } from "./_transport.ts";
import { DatagramDecodeError, DatagramTooLargeError } from "./errors.ts";

/**
 * The largest payload of one UDP datagram over IPv4: 65,535 bytes less the
 * 20-byte IP header and the 8-byte UDP header.
 *
 * @example
 * ```ts
 * import { MAX_DATAGRAM_BYTES } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(MAX_DATAGRAM_BYTES, 65_507);
 * ```
 */
export const MAX_DATAGRAM_BYTES = 65_507;

/**
 * The largest payload of one UDP datagram over IPv6 (without jumbograms):
 * 65,535 bytes less the 8-byte UDP header.
 *
 * @example
 * ```ts
 * import { bind, MAX_DATAGRAM_BYTES_IPV6 } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using socket = await bind("udp://[::1]:0");
 * assertEquals(socket.maxDatagramBytes, MAX_DATAGRAM_BYTES_IPV6);
 * ```
 */
export const MAX_DATAGRAM_BYTES_IPV6 = 65_527;

/** Parsed destinations kept per socket, so that a hot send loop parses once. */
const MAX_CACHED_DESTINATIONS = 1024;

/**
 * Which runtime API carries a socket: Deno's `Deno.listenDatagram` (offered
 * with `--unstable-net`) or `node:dgram` (always offered).
 *
 * @example
 * ```ts
 * import { bind, type DatagramImplementation } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * const implementation: DatagramImplementation = "node";
 * await using socket = await bind("udp://127.0.0.1:0", { implementation });
 * assertEquals(socket.implementation, "node");
 * ```
 */
export type DatagramImplementation = "deno" | "node";

/**
 * One received datagram.
 *
 * @example
 * ```ts
 * import { bind, type Datagram } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * await socket.send(new Uint8Array([1, 2, 3]), socket.address);
 * const datagram: Datagram = await socket.receive();
 * assertEquals(datagram, { data: new Uint8Array([1, 2, 3]), from: socket.address });
 * ```
 */
export interface Datagram {
  /**
   * The payload, the receiver's to keep. A small one is a view into a 64 KiB
   * buffer shared with other datagrams (one allocation for many, as Node's
   * Buffer pool does), so use `data.slice()` where its own `buffer` is needed.
   */
  data: Uint8Array;
  /** The sender's address, such as `udp://127.0.0.1:5000`: send there to reply. */
  from: string;
}

/**
 * One received message: a datagram decoded from msgpack.
 *
 * @example
 * ```ts
 * import { bind, type DatagramMessage } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * await socket.sendMessage({ op: "ping" }, socket.address);
 * const received: DatagramMessage<{ op: string }> = await socket.receiveMessage();
 * assertEquals(received.message.op, "ping");
 * ```
 */
export interface DatagramMessage<T = unknown> {
  /** The decoded value. */
  message: T;
  /** The sender's address, such as `udp://127.0.0.1:5000`. */
  from: string;
}

/**
 * Options for {@linkcode DatagramSocket.receive} and
 * {@linkcode DatagramSocket.receiveMessage}.
 *
 * @example Waiting at most 50 ms
 * ```ts
 * import { bind } from "@x/comm/datagram";
 * import { assertRejects } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * const controller = new AbortController();
 * const timer = setTimeout(() => controller.abort(new Error("nothing came")), 50);
 * await assertRejects(() => socket.receive({ signal: controller.signal }), Error, "nothing came");
 * clearTimeout(timer);
 * ```
 */
export interface ReceiveOptions {
  /**
   * Stops waiting: the receive rejects with the signal's reason. A datagram
   * that arrives later waits for the next receive; nothing is lost.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/**
 * Options for {@linkcode DatagramSocket.messages}.
 *
 * @example Skipping garbage
 * ```ts
 * import { bind, type DatagramDecodeError } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * await socket.send(new Uint8Array([0xc1]), socket.address);
 * await socket.sendMessage("hello", socket.address);
 * const skipped: DatagramDecodeError[] = [];
 * for await (const { message } of socket.messages({ onInvalid: (e) => skipped.push(e) })) {
 *   assertEquals(message, "hello");
 *   break;
 * }
 * assertEquals(skipped.length, 1);
 * ```
 */
export interface MessagesOptions extends ReceiveOptions {
  /**
   * Called with each datagram that does not decode, which is then skipped.
   * Without it, such a datagram ends the iteration by throwing a
   * {@linkcode DatagramDecodeError} (the socket stays open).
   *
   * @default {undefined}
   */
  onInvalid?: (error: DatagramDecodeError) => void;
}

/**
 * Options for {@linkcode DatagramSocket.joinMulticast} and
 * {@linkcode DatagramSocket.leaveMulticast}.
 *
 * @example
 * ```ts
 * import { bind, type MulticastOptions } from "@x/comm/datagram";
 *
 * const options: MulticastOptions = { interface: "127.0.0.1" };
 * await using socket = await bind("udp://239.255.42.1:0", { reuseAddress: true });
 * await socket.joinMulticast("239.255.42.1", options);
 * await socket.leaveMulticast("239.255.42.1", options);
 * ```
 */
export interface MulticastOptions {
  /**
   * The IPv4 address of the interface to join on.
   *
   * @default {undefined} the socket's `multicastInterface`, else the address it is bound to, else the system's choice
   */
  interface?: string;
}

function yielded(value: Datagram): IteratorResult<Datagram> {
  return { value, done: false };
}

/** A destination, parsed and resolved. */
interface Destination {
  hostname: string;
  port: number;
  /** The IPv4 address it reaches, if any: what the broadcast check looks at. */
  ipv4: string | undefined;
}

/**
 * A bound UDP socket: sends datagrams to any `udp://` address and receives
 * them from any, each on its own. Create one with {@linkcode bind}.
 *
 * Datagrams may be lost, duplicated or reordered on a real network, and are
 * lost on any host when they arrive faster than they are received. Each
 * `receive()` gets a different datagram, in the order the calls were made.
 *
 * Iterating the socket yields datagrams until it is closed; breaking out of
 * the loop leaves it open. Close it when done (`await using` does): an open
 * socket keeps the process running, as in Node.
 *
 * @example Echoing each datagram back to its sender
 * ```ts
 * import { bind } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = await bind("udp://127.0.0.1:0");
 * const serving = (async () => {
 *   for await (const { data, from } of server) await server.send(data, from);
 * })();
 *
 * await using client = await bind("udp://127.0.0.1:0");
 * await client.send(new TextEncoder().encode("ping"), server.address);
 * const { data } = await client.receive();
 * assertEquals(new TextDecoder().decode(data), "ping");
 *
 * await server.close();
 * await serving; // The loop ends when the socket closes.
 * ```
 */
export class DatagramSocket implements AsyncIterable<Datagram>, AsyncDisposable {
  #transport!: Transport;
  #family!: 4 | 6;
  #broadcast!: boolean;
  #multicastInterface: string | undefined;
  #address!: string;
  #closed = false;
  #closing: Promise<void> | undefined;
  #destinations = new Map<string, Destination>();
  #memberships = new Set<string>();
  #joining = new Map<string, Promise<void>>();
  #codec: Codec | undefined;

  static {
    socketControl.open = (transport, family, settings) => {
      const socket = new DatagramSocket();
      socket.#transport = transport;
      socket.#family = family;
      socket.#broadcast = settings.broadcast;
      socket.#multicastInterface = settings.multicastInterface;
      socket.#address = formatUdpAddress(transport.hostname, transport.port);
      return socket;
    };
  }

  private constructor() {}

  /** The bound address, such as `udp://127.0.0.1:5000` (the real port when bound to port 0). */
  get address(): string {
    return this.#address;
  }

  /** Which runtime API carries this socket; see {@linkcode BindOptions.implementation}. */
  get implementation(): DatagramImplementation {
    return this.#transport.implementation;
  }

  /** Whether {@linkcode DatagramSocket.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The largest payload one datagram can carry: 65,507 bytes over IPv4,
   * 65,527 over IPv6 (but 65,507 to an IPv4-mapped address, `::ffff:a.b.c.d`).
   */
  get maxDatagramBytes(): number {
    return this.#family === 6 ? MAX_DATAGRAM_BYTES_IPV6 : MAX_DATAGRAM_BYTES;
  }

  /**
   * Datagrams this socket dropped because they arrived while its queue was
   * full ({@linkcode BindOptions.maxQueuedBytes}). Datagrams the kernel
   * dropped before they reached the socket are not counted: nothing tells.
   */
  get dropped(): number {
    return this.#transport.dropped;
  }

  /**
   * Sends one datagram. It resolves when the system has taken the bytes,
   * which says nothing of their arrival; `data` may be reused after that.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * await socket.send(new Uint8Array([42]), socket.address);
   * assertEquals((await socket.receive()).data, new Uint8Array([42]));
   * ```
   *
   * @param data The payload, at most {@linkcode DatagramSocket.maxDatagramBytes}.
   * @param to The destination, such as `udp://127.0.0.1:5000`.
   * @throws {TypeError} If `data` is not a Uint8Array.
   * @throws {DatagramTooLargeError} If `data` does not fit in one datagram.
   * @throws {AddressError} If `to` is malformed, of the other IP version,
   * or a broadcast address on a socket bound without `broadcast: true`.
   * @throws {CommClosedError} If the socket is closed.
   */
  async send(data: Uint8Array, to: string): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      throw new TypeError(`Cannot send ${describe(data)}: expected a Uint8Array`);
    }
    await this.#send(data, to, "the payload");
  }

  /**
   * Receives the next datagram, waiting until one arrives.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using a = await bind("udp://127.0.0.1:0");
   * await using b = await bind("udp://127.0.0.1:0");
   * await a.send(new Uint8Array([7]), b.address);
   * const { data, from } = await b.receive();
   * assertEquals([data, from], [new Uint8Array([7]), a.address]);
   * ```
   *
   * @param options A signal to stop waiting.
   * @returns The datagram and its sender's address.
   * @throws {CommClosedError} If the socket is or becomes closed.
   */
  receive(options?: ReceiveOptions): Promise<Datagram> {
    if (this.#closed) return Promise.reject(this.#closedError("receive"));
    return this.#transport.receive(options?.signal ?? undefined);
  }

  /**
   * Sends one value, encoded as msgpack, as one datagram. It takes what
   * `Comm.write()` takes, except binaries too large for one datagram.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * await socket.sendMessage({ op: "heartbeat", load: [0.5, 0.25] }, socket.address);
   * assertEquals((await socket.receiveMessage()).message, { op: "heartbeat", load: [0.5, 0.25] });
   * ```
   *
   * @param message The value to send.
   * @param to The destination, such as `udp://127.0.0.1:5000`.
   * @throws {DatagramTooLargeError} If the encoded message does not fit in
   * one datagram.
   * @throws {AddressError} As {@linkcode DatagramSocket.send}.
   * @throws {CommClosedError} If the socket is closed.
   */
  async sendMessage(message: unknown, to: string): Promise<void> {
    this.#codec ??= createCodec({ binaryFrameThreshold: Infinity });
    const frames = this.#codec.encode(message);
    if (frames.length !== 1) {
      throw new TypeError(
        `Cannot send a message holding Serialized payloads as a datagram: they need frames of their own`,
      );
    }
    const body = frames[0];
    if (body.byteLength > MAX_DATAGRAM_BYTES_IPV6) {
      // Too large for any destination: fail before copying it.
      throw this.#tooLarge(body.byteLength, to, "the encoded message", this.maxDatagramBytes);
    }
    await this.#send(
      this.#codec.firstFrameShared ? body.slice() : body,
      to,
      "the encoded message",
    );
  }

  /**
   * Receives the next datagram and decodes it as one msgpack value.
   *
   * A datagram that does not decode rejects this call with a
   * {@linkcode DatagramDecodeError}; the socket keeps working.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * await socket.sendMessage([1, "two", null], socket.address);
   * assertEquals((await socket.receiveMessage()).message, [1, "two", null]);
   * ```
   *
   * @param options A signal to stop waiting.
   * @returns The message and its sender's address.
   * @throws {DatagramDecodeError} If the datagram is not one msgpack value.
   * @throws {CommClosedError} If the socket is or becomes closed.
   */
  async receiveMessage<T = unknown>(options: ReceiveOptions = {}): Promise<DatagramMessage<T>> {
    return this.#decode<T>(await this.receive(options));
  }

  /**
   * Iterates over received messages until the socket closes. Breaking out of
   * the loop leaves the socket open.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * for (const n of [1, 2, 3]) await socket.sendMessage(n, socket.address);
   * const seen: unknown[] = [];
   * for await (const { message } of socket.messages()) {
   *   seen.push(message);
   *   if (seen.length === 3) break;
   * }
   * assertEquals(seen, [1, 2, 3]);
   * ```
   *
   * @param options A signal to stop waiting, and what to do with datagrams
   * that do not decode.
   * @returns The messages, each with its sender's address.
   * @throws {DatagramDecodeError} For a datagram that does not decode, unless
   * `onInvalid` is given.
   */
  async *messages<T = unknown>(
    options: MessagesOptions = {},
  ): AsyncIterableIterator<DatagramMessage<T>> {
    const { onInvalid } = options;
    for await (const datagram of this.#datagrams(options)) {
      let message: DatagramMessage<T>;
      try {
        message = this.#decode<T>(datagram);
      } catch (error) {
        if (onInvalid === undefined || !(error instanceof DatagramDecodeError)) throw error;
        onInvalid(error);
        continue;
      }
      yield message;
    }
  }

  /**
   * Iterates over received datagrams until the socket closes.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * await socket.send(new Uint8Array([1]), socket.address);
   * for await (const { data } of socket) {
   *   assertEquals(data, new Uint8Array([1]));
   *   break;
   * }
   * ```
   *
   * @returns The datagrams, each with its sender's address.
   */
  [Symbol.asyncIterator](): AsyncIterator<Datagram> {
    return this.#datagrams({});
  }

  /**
   * Joins an IPv4 multicast group: datagrams sent to the group (at this
   * socket's port) arrive here. Bind the group address itself (or
   * `0.0.0.0`) to receive them, with `reuseAddress` if other sockets on this
   * host join too.
   *
   * @example Multicast on loopback
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertEquals } from "@std/assert";
   *
   * await using receiver = await bind("udp://239.255.42.2:0", { reuseAddress: true });
   * await receiver.joinMulticast("239.255.42.2", { interface: "127.0.0.1" });
   * const port = receiver.address.split(":").at(-1);
   *
   * await using sender = await bind("udp://127.0.0.1:0", { multicastInterface: "127.0.0.1" });
   * await sender.sendMessage("to the group", `udp://239.255.42.2:${port}`);
   * assertEquals((await receiver.receiveMessage()).message, "to the group");
   * ```
   *
   * @param group The group's address, in 224.0.0.0/4.
   * @param options The interface to join on.
   * @throws {AddressError} If `group` is not an IPv4 multicast address.
   * @throws {TypeError} If the socket is IPv6, or already joined the group
   * on that interface.
   * @throws {CommClosedError} If the socket is closed.
   */
  async joinMulticast(group: string, options: MulticastOptions = {}): Promise<void> {
    const [key, context] = this.#membership("join", group, options);
    if (this.#memberships.has(key)) {
      throw new TypeError(`${context}: this socket has already joined it`);
    }
    // Taken before the join, so that a second join at the same time is
    // refused alike, and a leave meanwhile waits for it.
    this.#memberships.add(key);
    const joining = this.#transport.join(group, key.slice(key.indexOf("%") + 1));
    this.#joining.set(key, joining);
    try {
      await joining;
    } catch (error) {
      this.#memberships.delete(key);
      throw withContext(error, context);
    } finally {
      this.#joining.delete(key);
    }
  }

  /**
   * Leaves a multicast group joined with {@linkcode DatagramSocket.joinMulticast}.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assertRejects } from "@std/assert";
   *
   * await using socket = await bind("udp://127.0.0.1:0");
   * await socket.joinMulticast("239.255.42.3");
   * await socket.leaveMulticast("239.255.42.3");
   * await assertRejects(() => socket.leaveMulticast("239.255.42.3"), TypeError, "not joined");
   * ```
   *
   * @param group The group's address.
   * @param options The interface it was joined on.
   * @throws {TypeError} If the socket has not joined the group on that interface.
   * @throws {CommClosedError} If the socket is closed.
   */
  async leaveMulticast(group: string, options: MulticastOptions = {}): Promise<void> {
    const [key, context] = this.#membership("leave", group, options);
    await this.#joining.get(key)?.catch(() => {});
    if (!this.#memberships.has(key)) {
      throw new TypeError(`${context}: this socket has not joined it there`);
    }
    this.#memberships.delete(key);
    try {
      await this.#transport.leave(group, key.slice(key.indexOf("%") + 1));
    } catch (error) {
      if (!this.#closed) this.#memberships.add(key);
      throw withContext(error, context);
    }
  }

  /**
   * Closes the socket. Receives waiting for a datagram reject with a
   * {@linkcode CommClosedError} (iterations end), and datagrams not yet
   * received are dropped. Calling it again does nothing.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { CommClosedError } from "@x/comm";
   * import { assert, assertRejects } from "@std/assert";
   *
   * const socket = await bind("udp://127.0.0.1:0");
   * const waiting = assertRejects(() => socket.receive(), CommClosedError);
   * await socket.close();
   * assert(socket.closed);
   * await waiting;
   * ```
   */
  close(): Promise<void> {
    if (!this.#closing) {
      this.#closed = true;
      this.#closing = this.#transport.close(
        new CommClosedError(`Cannot receive: the datagram socket "${this.#address}" was closed`),
      );
    }
    return this.#closing;
  }

  /**
   * Closes the socket, for `await using`.
   *
   * @example
   * ```ts
   * import { bind } from "@x/comm/datagram";
   * import { assert } from "@std/assert";
   *
   * let outer;
   * {
   *   await using socket = await bind("udp://127.0.0.1:0");
   *   outer = socket;
   * }
   * assert(outer.closed);
   * ```
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Datagrams until the socket closes; a plain iterator, as a generator costs a hop per datagram. */
  #datagrams(options: ReceiveOptions): AsyncIterableIterator<Datagram> {
    const done = (error: unknown): IteratorResult<Datagram> => {
      if (this.#closed && error instanceof CommClosedError) return { value: undefined, done: true };
      throw error;
    };
    const iterator: AsyncIterableIterator<Datagram> = {
      next: () => this.receive(options).then(yielded, done),
      return: () => Promise.resolve({ value: undefined, done: true }),
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  async #send(data: Uint8Array, to: string, what: string): Promise<void> {
    if (this.#closed) throw this.#closedError(`send to "${to}"`);
    const destination = this.#destinations.get(to) ?? await this.#destination(to);
    // An IPv4-mapped destination travels over IPv4, with IPv4's limit.
    const limit = destination.ipv4 === undefined ? MAX_DATAGRAM_BYTES_IPV6 : MAX_DATAGRAM_BYTES;
    if (data.byteLength > limit) throw this.#tooLarge(data.byteLength, to, what, limit);
    if (!this.#broadcast && destination.ipv4 !== undefined && isBroadcast(destination.ipv4)) {
      throw new AddressError(
        `Cannot send to "${to}": it is a broadcast address, and this socket was bound without { broadcast: true }`,
      );
    }
    try {
      await this.#transport.send(data, destination.hostname, destination.port);
    } catch (error) {
      if (this.#closed) {
        throw this.#closedError(
          `send to "${to}"`,
          error instanceof CommClosedError ? undefined : error,
        );
      }
      throw this.#sendError(error, to, destination);
    }
  }

  /** Parses and resolves a destination; literal ones are cached. */
  async #destination(to: string): Promise<Destination> {
    const parsed = parseUdpAddress(to, "send");
    const { hostname, family } = parsed.family === 0
      ? await resolveHost(parsed.hostname, this.#family, to)
      : parsed as { hostname: string; family: 4 | 6 };
    if (family !== this.#family) {
      throw new AddressError(
        `Cannot send to "${to}": it is an IPv${family} address and this socket is IPv${this.#family} (bound to "${this.#address}"); bind an IPv${family} address to reach it`,
      );
    }
    const destination = { hostname, port: parsed.port, ipv4: ipv4Of(hostname, family) };
    if (parsed.family !== 0) {
      if (this.#destinations.size >= MAX_CACHED_DESTINATIONS) this.#destinations.clear();
      this.#destinations.set(to, destination);
    }
    return destination;
  }

  #sendError(error: unknown, to: string, destination: Destination): Error {
    const code = (error as { code?: unknown }).code;
    if (
      !this.#broadcast && destination.ipv4 !== undefined &&
      (code === "EACCES" || code === "UNKNOWN") && isBroadcast(destination.ipv4) === undefined
    ) {
      // Without --allow-sys the broadcast addresses are unknown, and node:dgram
      // in Deno reports the kernel's EACCES as "UNKNOWN".
      return new AddressError(
        `Cannot send to "${to}": the system refused it, as it refuses a broadcast address on a socket bound without { broadcast: true }`,
        { cause: error },
      );
    }
    return withContext(error, `Cannot send to "${to}"`);
  }

  #tooLarge(size: number, to: string, what: string, limit: number): DatagramTooLargeError {
    const version = limit === MAX_DATAGRAM_BYTES ? 4 : 6;
    return new DatagramTooLargeError(
      `Cannot send to "${to}": ${what} has ${size} bytes, more than one datagram carries over IPv${version} (${limit}); split it, or use a stream comm`,
      size,
      limit,
    );
  }

  #membership(
    verb: "join" | "leave",
    group: string,
    options: MulticastOptions,
  ): [key: string, context: string] {
    if (this.#closed) throw this.#closedError(`${verb} a multicast group`);
    if (this.#family !== 4) {
      throw new TypeError(
        `Cannot ${verb} multicast group ${
          describe(group)
        }: only IPv4 multicast is supported and this socket is IPv6`,
      );
    }
    if (typeof group !== "string" || !isMulticastV4(group)) {
      throw new AddressError(
        `Cannot ${verb} multicast group ${
          describe(group)
        }: expected an IPv4 multicast address (224.0.0.0 to 239.255.255.255), such as "239.255.0.1"`,
      );
    }
    const bound = this.#transport.hostname;
    const networkInterface = options.interface ?? this.#multicastInterface ??
      (bound === "0.0.0.0" || isMulticastV4(bound) ? "0.0.0.0" : bound);
    checkInterface(`Cannot ${verb} multicast group "${group}"`, networkInterface);
    return [
      `${group}%${networkInterface}`,
      `Cannot ${verb} multicast group "${group}" on interface "${networkInterface}"`,
    ];
  }

  #decode<T>(datagram: Datagram): DatagramMessage<T> {
    try {
      this.#codec ??= createCodec({ binaryFrameThreshold: Infinity });
      return { message: this.#codec.decode([datagram.data]) as T, from: datagram.from };
    } catch (error) {
      throw new DatagramDecodeError(
        `Cannot decode the datagram of ${datagram.data.byteLength} bytes from "${datagram.from}": ${
          messageOf(error)
        }`,
        datagram.data,
        datagram.from,
        { cause: error },
      );
    }
  }

  #closedError(what: string, cause?: unknown): CommClosedError {
    return new CommClosedError(
      `Cannot ${what}: the datagram socket "${this.#address}" is closed`,
      cause === undefined ? undefined : { cause },
    );
  }
}
