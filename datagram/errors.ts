/**
 * Error classes of the datagram sockets.
 *
 * A bad address throws `AddressError` and a closed socket `CommClosedError`,
 * as in the rest of the library; the classes here are the two conditions
 * that only datagrams have.
 *
 * @module
 */

/**
 * Raised by `send()` and `sendMessage()` before anything is sent, when the
 * payload is larger than one datagram can carry: 65,507 bytes over IPv4,
 * 65,527 over IPv6 ({@linkcode MAX_DATAGRAM_BYTES}).
 *
 * It is a `RangeError`, since the payload is a bad argument.
 *
 * @example
 * ```ts
 * import { bind, DatagramTooLargeError, MAX_DATAGRAM_BYTES } from "@x/comm/datagram";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * const error = await assertRejects(
 *   () => socket.send(new Uint8Array(MAX_DATAGRAM_BYTES + 1), socket.address),
 *   DatagramTooLargeError,
 * );
 * assertEquals(error.size, 65_508);
 * assertEquals(error.limit, 65_507);
 * ```
 */
export class DatagramTooLargeError extends RangeError {
  /** The payload's size in bytes. */
  readonly size: number;
  /** The most one datagram can carry on this socket, in bytes. */
  readonly limit: number;

  /**
   * Constructs a new {@linkcode DatagramTooLargeError}.
   *
   * @param message What was too large, and what to do instead.
   * @param size The payload's size in bytes.
   * @param limit The largest payload allowed, in bytes.
   */
  constructor(message: string, size: number, limit: number) {
    super(message);
    this.name = "DatagramTooLargeError";
    this.size = size;
    this.limit = limit;
  }
}

/**
 * Raised by `receiveMessage()` (and the `messages()` iteration) for a
 * datagram that is not one msgpack value: garbage, a truncated message, or
 * bytes followed by more bytes. The socket keeps working; the next receive
 * gets the next datagram.
 *
 * `data` holds the datagram's bytes and `from` its sender's address; `cause`
 * is the decoder's error.
 *
 * @example
 * ```ts
 * import { bind, DatagramDecodeError } from "@x/comm/datagram";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * await using socket = await bind("udp://127.0.0.1:0");
 * await socket.send(new Uint8Array([0xc1]), socket.address); // never valid msgpack
 * const error = await assertRejects(() => socket.receiveMessage(), DatagramDecodeError);
 * assertEquals(error.from, socket.address);
 *
 * await socket.sendMessage("still working", socket.address);
 * assertEquals((await socket.receiveMessage()).message, "still working");
 * ```
 */
export class DatagramDecodeError extends Error {
  /** The datagram's bytes. */
  readonly data: Uint8Array;
  /** The sender's address, such as `udp://127.0.0.1:5000`. */
  readonly from: string;

  /**
   * Constructs a new {@linkcode DatagramDecodeError}.
   *
   * @param message What arrived and why it is not a message.
   * @param data The datagram's bytes.
   * @param from The sender's address.
   * @param options The decoder's error as `cause`.
   */
  constructor(message: string, data: Uint8Array, from: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DatagramDecodeError";
    this.data = data;
    this.from = from;
  }
}
