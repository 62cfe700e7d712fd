/**
 * Error classes of the comm layer.
 *
 * Misuse (a bad argument) throws the built-in `TypeError` or `RangeError`;
 * the classes here are for conditions a caller catches and handles.
 *
 * @module
 */

/**
 * Raised when reading from or writing to a comm that is closed: closed by
 * this side, closed or lost by the peer, or aborted.
 *
 * The `cause` carries the underlying error where there is one (for example
 * `Deno.errors.ConnectionReset`).
 *
 * @example Catching a closed comm
 * ```ts
 * import { CommClosedError, pipe } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * const [a, b] = pipe();
 * await a.close();
 * await assertRejects(() => a.write("late"), CommClosedError);
 * await b.close();
 * ```
 */
export class CommClosedError extends Error {
  /**
   * Constructs a new {@linkcode CommClosedError}.
   *
   * @param message What was attempted and why it failed.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CommClosedError";
  }
}

/**
 * Raised when a peer sends bytes that break the wire protocol: a header that
 * announces more than `maxMessageSize`, a malformed frame table, a message
 * that does not decode, or a bad handshake. The comm is closed when this is
 * raised, so it is also a {@linkcode CommClosedError}.
 *
 * @example Telling a protocol violation from a plain disconnect
 * ```ts
 * import { CommClosedError, ProtocolError } from "@x/comm";
 * import { assert } from "@std/assert";
 *
 * const error = new ProtocolError("Peer sent a bad frame table");
 * assert(error instanceof CommClosedError);
 * ```
 */
export class ProtocolError extends CommClosedError {
  /**
   * Constructs a new {@linkcode ProtocolError}.
   *
   * @param message What the peer sent and why it was refused.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProtocolError";
  }
}

/**
 * Raised for a malformed address: garbage, an unknown scheme, a missing port
 * where one is needed, or a port outside 0–65535. The message quotes the
 * address and says what is wrong.
 *
 * It is a `TypeError`, since a bad address is a bad argument.
 *
 * @example
 * ```ts
 * import { AddressError, parseHostPort } from "@x/comm";
 * import { assertThrows } from "@std/assert";
 *
 * assertThrows(() => parseHostPort("127.0.0.1:99999"), AddressError, "99999");
 * ```
 */
export class AddressError extends TypeError {
  /**
   * Constructs a new {@linkcode AddressError}.
   *
   * @param message The address, quoted, and what is wrong with it.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AddressError";
  }
}

/**
 * Raised by `connect()` when no comm could be opened: the peer refused and
 * the error is not one that retrying can fix (for example a TLS certificate
 * that does not verify), or the handshake failed.
 *
 * @example
 * ```ts
 * import { ConnectError, ConnectTimeoutError } from "@x/comm";
 * import { assert } from "@std/assert";
 *
 * assert(new ConnectTimeoutError("too slow") instanceof ConnectError);
 * ```
 */
export class ConnectError extends Error {
  /**
   * Constructs a new {@linkcode ConnectError}.
   *
   * @param message The address, quoted, and why connecting failed.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectError";
  }
}

/**
 * Raised by `connect()` when its `timeout` runs out before a comm is open
 * and its handshake done. Refused connections are retried with backoff until
 * then; the `cause` is the last error seen.
 *
 * @example
 * ```ts
 * import { connect, ConnectTimeoutError, listen } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * // Reserve a free port, then free it so that nothing listens there.
 * const listener = await listen("tcp://127.0.0.1:0");
 * const address = listener.listenAddress;
 * await listener.close();
 *
 * await assertRejects(
 *   () => connect(address, { timeout: 100 }),
 *   ConnectTimeoutError,
 *   "100 ms",
 * );
 * ```
 */
export class ConnectTimeoutError extends ConnectError {
  /**
   * Constructs a new {@linkcode ConnectTimeoutError}.
   *
   * @param message The address, quoted, the time allowed, and the last error.
   * @param options The `cause`: the last error seen while retrying.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectTimeoutError";
  }
}

/**
 * Raised when a peer fails the `authkey` challenge (it does not know the
 * key, or does not answer as `multiprocessing.connection` does), on both
 * sides: by `connect()`, by `deliverChallenge()` and `answerChallenge()`,
 * and passed to a listener's `onError`. The comm is closed.
 *
 * @example A client with the wrong key
 * ```ts
 * import { AuthenticationError, connect, listen } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * await using listener = await listen("tcp://127.0.0.1:0", () => {}, {
 *   authkey: "right",
 *   onError: () => {},
 * });
 * await assertRejects(
 *   () => connect(listener.contactAddress, { authkey: "wrong" }),
 *   AuthenticationError,
 *   "digest sent was rejected",
 * );
 * ```
 */
export class AuthenticationError extends Error {
  /**
   * Constructs a new {@linkcode AuthenticationError}.
   *
   * @param message What the peer did wrong.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AuthenticationError";
  }
}

/**
 * Raised by `Comm.readInto()` when the message does not fit in the buffer
 * given. The message is not lost: it is the error's `data`.
 *
 * @example
 * ```ts
 * import { BufferTooShortError, pipe } from "@x/comm";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const [a, b] = pipe();
 * await a.write(new Uint8Array([1, 2, 3, 4]));
 * const error = await assertRejects(() => b.readInto(new Uint8Array(2)), BufferTooShortError);
 * assertEquals(error.data, new Uint8Array([1, 2, 3, 4]));
 * await a.close();
 * await b.close();
 * ```
 */
export class BufferTooShortError extends Error {
  /** The whole message that did not fit. */
  readonly data: Uint8Array;

  /**
   * Constructs a new {@linkcode BufferTooShortError}.
   *
   * @param message How large the message and the room in the buffer were.
   * @param data The whole message.
   */
  constructor(message: string, data: Uint8Array) {
    super(message);
    this.name = "BufferTooShortError";
    this.data = data;
  }
}

/** What a {@linkcode RemoteError} is built from.
 * @example
 * ```ts
 * import { RemoteError, type RemoteErrorInit } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const init: RemoteErrorInit = { op: "add", name: "TypeError", message: "x is not a number" };
 * assertEquals(new RemoteError(init).remoteName, "TypeError");
 * ```
 */
export interface RemoteErrorInit {
  /** The operation called. */
  op: string;
  /** The name of the error the remote handler raised, such as `ValueError`. */
  name: string;
  /** Its message. */
  message: string;
  /** Its stack or traceback, as text; empty when the reply had none. */
  stack?: string;
  /** The address called, when known. */
  address?: string;
}

/**
 * Raised by `sendRecv()` and `rpc()` calls when the remote handler threw:
 * the reply was dask's error shape (`{status: "uncaught-error", …}`), from
 * this library's `Server` or from Python dask. The comm stays usable.
 *
 * `remoteName`, `remoteMessage` and `remoteStack` describe the remote error,
 * and `cause` is an `Error` rebuilt from them, so that printing the error
 * shows the remote stack too.
 *
 * @example Catching a remote failure
 * ```ts
 * import { RemoteError, rpc, Server } from "@x/comm";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * await using server = new Server({
 *   divide: ({ a, b }) => {
 *     if (b === 0) throw new RangeError("division by zero");
 *     return a / b;
 *   },
 * });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * assertEquals(await remote.divide({ a: 6, b: 3 }), 2);
 * const error = await assertRejects(() => remote.divide({ a: 1, b: 0 }), RemoteError);
 * assertEquals(error.remoteName, "RangeError");
 * assertEquals(error.remoteMessage, "division by zero");
 * ```
 */
export class RemoteError extends Error {
  /** The operation called. */
  readonly op: string;
  /** The name of the remote error, such as `TypeError` or `KeyError`. */
  readonly remoteName: string;
  /** The message of the remote error. */
  readonly remoteMessage: string;
  /** The remote stack or Python traceback, as text (may be empty). */
  readonly remoteStack: string;

  /**
   * Constructs a new {@linkcode RemoteError}.
   *
   * @param init The operation, and the remote error's name, message and stack.
   */
  constructor(init: RemoteErrorInit) {
    const where = init.address === undefined ? "" : ` on "${init.address}"`;
    const remote = new Error(init.message);
    remote.name = init.name;
    remote.stack = `${init.name}: ${init.message}${init.stack ? `\n${init.stack}` : ""}`;
    super(
      `Remote operation "${init.op}"${where} failed: ${init.name}: ${init.message}`,
      { cause: remote },
    );
    this.name = "RemoteError";
    this.op = init.op;
    this.remoteName = init.name;
    this.remoteMessage = init.message;
    this.remoteStack = init.stack ?? "";
  }
}

/**
 * Raised by a remote call (`sendRecv()`, `rpc()`, a pool's `rpc()`) whose
 * `timeout` ran out before the reply came. The comm it used is aborted, since
 * a late reply would otherwise answer the next call.
 *
 * @example
 * ```ts
 * import { CallTimeoutError, rpc, Server } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * await using server = new Server({
 *   slow: (_args, { signal }) =>
 *     new Promise((resolve) => signal.addEventListener("abort", resolve)),
 * });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * await assertRejects(() => remote.slow({}, { timeout: 50 }), CallTimeoutError);
 * ```
 */
export class CallTimeoutError extends Error {
  /**
   * Constructs a new {@linkcode CallTimeoutError}.
   *
   * @param message The operation, the address and the time allowed.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CallTimeoutError";
  }
}

/**
 * Raised by `ConnectionPool.get()` when no comm to the address became free,
 * and no room to open one, within its `timeout`: every comm the pool may
 * open is in use.
 *
 * @example
 * ```ts
 * import { ConnectionPool, listen, PoolTimeoutError } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * await using listener = await listen("inproc://", async (comm) => {
 *   for await (const _ of comm);
 * });
 * await using pool = new ConnectionPool({ limit: 1 });
 * const comm = await pool.get(listener.contactAddress);
 * await assertRejects(
 *   () => pool.get(listener.contactAddress, { timeout: 20 }),
 *   PoolTimeoutError,
 * );
 * pool.reuse(listener.contactAddress, comm);
 * ```
 */
export class PoolTimeoutError extends Error {
  /**
   * Constructs a new {@linkcode PoolTimeoutError}.
   *
   * @param message The address, the time waited and the pool's limit.
   * @param options The `cause`, when another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PoolTimeoutError";
  }
}
