// One remote call over one comm, and the proxy that turns property names
// into calls. Shared by sendRecv(), rpc() and ConnectionPool.rpc(); not part
// of the public API.

import { CallTimeoutError, CommClosedError, RemoteError } from "./errors.ts";
import { isErrorReply, parseErrorReply } from "./_error_reply.ts";
import { describe, timeoutSignal } from "./_util.ts";
import type { Comm } from "./types.ts";
import type { CallOptions, Rpc } from "./rpc.ts";

// Comms waiting for a reply: a second call on one of them would read the
// first call's reply.
const busy = new WeakSet<Comm>();

/** A call's timer, when it has a timeout or a signal. */
export type CallTimer = { signal: AbortSignal; clear: () => void } | undefined;

/**
 * Starts the timer of a call to `op` that may take `timeout` ms in all, of
 * which `remaining` are left: undefined when there is neither a time limit
 * nor a signal, so that the common call costs nothing.
 */
export function callTimer(
  op: string,
  address: string,
  timeout: number,
  signal: AbortSignal | undefined,
  remaining = timeout,
): CallTimer {
  if (timeout === Infinity && signal === undefined) return undefined;
  return timeoutSignal(
    remaining,
    signal,
    () =>
      new CallTimeoutError(
        `Remote operation "${op}" on "${address}" got no reply within ${timeout} ms`,
      ),
  );
}

/** Checks a message for `sendRecv()`; returns its `op`. */
export function checkMessage(message: unknown): string {
  if (typeof message !== "object" || message === null || Array.isArray(message)) {
    throw new TypeError(
      `Invalid message ${
        describe(message)
      }: expected an object with an "op", such as { op: "identity" }`,
    );
  }
  const op = (message as Record<string, unknown>).op;
  if (typeof op !== "string") {
    throw new TypeError(
      `Invalid message: its "op" is ${describe(op)}, expected the name of an operation`,
    );
  }
  return op;
}

/**
 * Writes `message` on `comm` and reads the reply (unless `reply` is false).
 *
 * When `signal` aborts, or the comm breaks, the comm is aborted: a late
 * reply must not answer the next call. An error reply rejects with
 * `RemoteError` and leaves the comm usable.
 */
export async function callOn(
  comm: Comm,
  message: Record<string, unknown>,
  op: string,
  signal: AbortSignal | undefined,
): Promise<unknown> {
  if (busy.has(comm)) {
    throw new TypeError(
      `Cannot call "${op}" on the comm to "${comm.peerAddress}": it is waiting for the reply to another call (use a comm for one call at a time, or a ConnectionPool)`,
    );
  }
  signal?.throwIfAborted();
  busy.add(comm);
  const onAbort = () => comm.abort(signal!.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  let reply: unknown;
  try {
    await comm.write(message);
    // As dask: any false value (null included) means no reply.
    if (!message.reply) {
      if (message.close === true) await comm.close();
      return undefined;
    }
    reply = await comm.read();
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    // An encoding error leaves the comm open and nothing sent; anything else
    // leaves it in an unknown state.
    if (error instanceof CommClosedError || !(error instanceof TypeError)) {
      comm.abort(error);
    }
    throw error;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    busy.delete(comm);
  }
  if (message.close === true) await comm.close();
  if (isErrorReply(reply)) {
    throw new RemoteError({ op, address: comm.peerAddress, ...parseErrorReply(reply) });
  }
  return reply;
}

// Property names that must not turn into calls: `then` (or awaiting the proxy
// would call it), `toJSON` (or JSON.stringify would), and what every object
// has (toString, valueOf, constructor…).
const NOT_OPS = new Set(["then", "toJSON"]);

/**
 * A proxy whose properties are remote operations: `proxy.add({x: 1})`
 * calls `call("add", {x: 1})`.
 */
export function rpcProxy(
  address: string,
  call: (op: string, args?: Record<string, unknown>, options?: CallOptions) => Promise<unknown>,
  close: () => Promise<void>,
): Rpc {
  const target = {
    address,
    call,
    close,
    [Symbol.asyncDispose]: close,
  };
  const methods = new Map<string, unknown>();
  return new Proxy(target, {
    get(target, key, receiver) {
      if (typeof key === "symbol" || key in target || NOT_OPS.has(key)) {
        return Reflect.get(target, key, receiver);
      }
      let method = methods.get(key);
      if (method === undefined) {
        method = (args?: Record<string, unknown>, options?: CallOptions) =>
          call(key, args, options);
        methods.set(key, method);
      }
      return method;
    },
  }) as unknown as Rpc;
}

/** The message for a call to `op` with `args`. */
export function callMessage(op: string, args: unknown): Record<string, unknown> {
  if (args === undefined) return { op, reply: true };
  if (typeof args !== "object" || args === null || Array.isArray(args)) {
    throw new TypeError(
      `Invalid arguments ${describe(args)} for "${op}": expected an object of named arguments`,
    );
  }
  // As dask's rpc: `reply: false` passes through, and the call resolves
  // once the message is written.
  const reply = (args as Record<string, unknown>).reply === false ? false : true;
  return { ...args, op, reply };
}
