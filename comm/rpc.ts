/**
 * Remote calls: {@linkcode sendRecv} over a comm you hold, and
 * {@linkcode rpc}, a proxy whose methods call operations at an address, as
 * dask.distributed's `send_recv` and `rpc`.
 *
 * @module
 */

import { callOn, callTimer, checkMessage, rpcProxy } from "./_call.ts";
import { CommClosedError } from "./errors.ts";
import { ConnectionPool } from "./pool.ts";
import { checkDuration } from "./_util.ts";
import type { Comm, ConnectOptions } from "./types.ts";

/** Options of one remote call.
 * @example
 * ```ts
 * import { type CallOptions, rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ ping: () => "pong" });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * const options: CallOptions = { timeout: 5_000 };
 * assertEquals(await remote.ping({}, options), "pong");
 * ```
 */
export interface CallOptions {
  /**
   * Milliseconds the call may take in all, getting a comm included (with
   * `rpc()` or a pool). When it runs out, the call rejects with
   * `CallTimeoutError`, whose message says which step took the time (waiting
   * for room in the pool, connecting, or the reply) and whose `cause` is that
   * step's error, if any; a comm waiting for a late reply is aborted.
   * Defaults to the `callTimeout` of the `rpc()` or pool (whose own
   * `timeout` bounds getting a comm too), and to no limit for `sendRecv()`.
   */
  timeout?: number;
  /**
   * Aborts the call: it rejects with the signal's reason, and the comm is
   * aborted if the message was sent already.
   */
  signal?: AbortSignal;
}

/**
 * A remote operation: called with its named arguments, it resolves with
 * the reply.
 *
 * @example
 * ```ts
 * import { type RemoteMethod, rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ add: ({ x, y }) => x + y });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * const add: RemoteMethod = remote.add;
 * assertEquals(await add({ x: 1, y: 2 }), 3);
 * ```
 */
// deno-lint-ignore no-explicit-any
export type RemoteMethod = (args?: Record<string, unknown>, options?: CallOptions) => Promise<any>;

/**
 * The fixed members of an {@linkcode Rpc} proxy.
 *
 * @example
 * ```ts
 * import { rpc, type RpcHandle, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ call: ({ n }) => `called ${n}` });
 * await server.listen("inproc://");
 * const remote: RpcHandle = rpc(server.address);
 * // "call" is a member, so the operation named "call" goes through call().
 * assertEquals(await remote.call("call", { n: 1 }), "called 1");
 * await remote.close();
 * ```
 */
export interface RpcHandle extends AsyncDisposable {
  /** The address called. */
  readonly address: string;
  /**
   * Calls any operation by name, including those whose names are members
   * of this object (`close`, `call`, `address`, `then`, `toString`…).
   *
   * @param op The operation.
   * @param args Its named arguments.
   * @param options A timeout or signal for this call.
   * @returns The reply.
   * @throws {RemoteError} If the remote handler threw.
   * @throws {CallTimeoutError} If the timeout ran out.
   * @throws {CommClosedError} If the comm broke.
   */
  call(op: string, args?: Record<string, unknown>, options?: CallOptions): Promise<unknown>;
  /**
   * Closes the comms this proxy opened (for a pool's proxy, nothing: the
   * pool owns them). Idempotent.
   */
  close(): Promise<void>;
}

/**
 * A proxy for the operations at one address: `remote.identity()` sends
 * `{op: "identity", reply: true}` and resolves with the reply;
 * `remote.add({x: 1, y: 2})` sends `{x: 1, y: 2, op: "add", reply: true}`.
 * With `reply: false` among the arguments, as with dask's `rpc`, the call
 * resolves once the message is written, with `undefined`.
 *
 * @example
 * ```ts
 * import { type Rpc, rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ add: ({ x, y }) => x + y });
 * await server.listen("inproc://");
 * await using remote: Rpc = rpc(server.address);
 * assertEquals(await remote.add({ x: 1, y: 2 }), 3);
 * ```
 */
export type Rpc = RpcHandle & { readonly [op: string]: RemoteMethod };

/** Options for {@linkcode rpc}: how to connect, and a default call timeout.
 * @example
 * ```ts
 * import { rpc, type RpcOptions, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ ping: () => "pong" });
 * await server.listen("inproc://");
 * const options: RpcOptions = { callTimeout: 10_000, timeout: 5_000 };
 * await using remote = rpc(server.address, options);
 * assertEquals(await remote.ping(), "pong");
 * ```
 */
export interface RpcOptions extends Omit<ConnectOptions, "signal"> {
  /**
   * Milliseconds each call may take, unless the call says otherwise.
   *
   * @default {Infinity}
   */
  callTimeout?: number;
}

/**
 * Sends `message` on `comm` and resolves with the reply, as dask's
 * `send_recv`. `reply: true` is added unless the message says `reply`;
 * with `reply: false` it resolves once the message is queued. With
 * `close: true`, the comm is closed after the reply, and the server closes
 * its end.
 *
 * One call at a time per comm: a second call while the first waits for its
 * reply throws `TypeError`. When the call fails other than by an error
 * reply (timeout, abort, broken comm), the comm is aborted, so that a late
 * reply cannot answer the next call.
 *
 * @example
 * ```ts
 * import { connect, sendRecv, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ add: ({ x, y }) => x + y });
 * await server.listen("inproc://");
 * await using comm = await connect(server.address);
 * assertEquals(await sendRecv(comm, { op: "add", x: 1, y: 2 }), 3);
 * ```
 *
 * @param comm The comm, to a server that answers by `op`.
 * @param message The message: an object with an `op`.
 * @param options A timeout or signal for this call.
 * @returns The reply.
 * @throws {TypeError} If `message` has no `op`, cannot be encoded, or the
 * comm is already waiting for a reply.
 * @throws {RemoteError} If the reply is an error reply.
 * @throws {CallTimeoutError} If `timeout` ran out.
 * @throws {CommClosedError} If the comm is closed or broke.
 */
export async function sendRecv(
  comm: Comm,
  message: Record<string, unknown>,
  options?: CallOptions,
): Promise<unknown> {
  const op = checkMessage(message);
  const timeout = checkDuration("timeout", options?.timeout, Infinity);
  const timer = callTimer(op, comm.peerAddress, timeout, options?.signal);
  try {
    return await callOn(
      comm,
      "reply" in message ? message : { ...message, reply: true },
      op,
      timer?.signal,
    );
  } finally {
    timer?.clear();
  }
}

/**
 * A proxy for calling operations at `address`, as dask's `rpc`. Comms are
 * opened as calls need them and kept for the next calls; concurrent calls
 * use separate comms. A comm that breaks is dropped, never reused. Close
 * the proxy (or `await using` it) to close its comms.
 *
 * To bound the number of comms, or share them between addresses' proxies,
 * use a {@linkcode ConnectionPool} and its `rpc()`.
 *
 * @example Calling a server's operations
 * ```ts
 * import { rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ greet: ({ name }) => `hello, ${name}` });
 * await server.listen("tcp://127.0.0.1:0");
 *
 * await using remote = rpc(server.address);
 * assertEquals(await remote.greet({ name: "dask" }), "hello, dask");
 * assertEquals((await remote.identity()).type, "Server");
 * ```
 *
 * @param address Where the server listens.
 * @param options How to connect, and the default call timeout.
 * @returns The proxy.
 * @throws {AddressError} If `address` is malformed (when a call connects).
 */
export function rpc(address: string, options: RpcOptions = {}): Rpc {
  const { callTimeout, ...connectOptions } = options;
  const pool = new ConnectionPool({ ...connectOptions, limit: Infinity, callTimeout });
  const proxy = pool.rpc(address);
  const call: typeof proxy.call = (op, args, options) =>
    pool.closed
      ? Promise.reject(
        new CommClosedError(`Cannot call "${op}" on "${address}": this rpc() proxy is closed`),
      )
      : proxy.call(op, args, options);
  return rpcProxy(address, call, () => pool.close());
}
