/**
 * {@linkcode Server}: handlers by operation name over comms, as
 * dask.distributed's `Server`.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import { listen } from "./core.ts";
import { CommClosedError, ProtocolError } from "./errors.ts";
import { errorReply } from "./_error_reply.ts";
import {
  checkDuration,
  CLOSE_GRACE_MS,
  closeWithin,
  describe,
  MAX_TIMER_MS,
  messageOf,
  reportError,
} from "./_util.ts";
import { listenerControl } from "./_listener_control.ts";
import type { Comm, Listener, ListenOptions } from "./types.ts";

/**
 * What a handler is told besides its arguments.
 *
 * @example
 * ```ts
 * import { type HandlerContext, rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({
 *   whoami: (_args, context: HandlerContext) => context.comm.peerAddress,
 * });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * assertEquals(typeof await remote.whoami(), "string");
 * ```
 */
export interface HandlerContext {
  /** The operation called. */
  readonly op: string;
  /** The comm the message came on. */
  readonly comm: Comm;
  /** The server. */
  readonly server: Server;
  /** Aborted when the server closes: long handlers should stop then. */
  readonly signal: AbortSignal;
}

/**
 * Handles one operation: called with the message's other fields (without
 * `op`, `reply`, `close` and `serializers`), it returns the reply, or a
 * promise of it. What it throws is sent back as an error reply.
 *
 * @example
 * ```ts
 * import { type Handler, rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const add: Handler = ({ x, y }) => x + y;
 * await using server = new Server({ add });
 * await server.listen("inproc://");
 * await using remote = rpc(server.address);
 * assertEquals(await remote.add({ x: 2, y: 3 }), 5);
 * ```
 */
// deno-lint-ignore no-explicit-any
export type Handler = (args: any, context: HandlerContext) => unknown;

/**
 * Handles one message of a stream (a comm that sends messages with no
 * reply, often in batches): called with the message's fields other than
 * `op`, merged over the stream's `extra`. A promise it returns is not
 * awaited; what it throws or rejects with goes to `onError`.
 *
 * @example
 * ```ts
 * import { BatchedSend, connect, Server, type StreamHandler } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const seen: number[] = [];
 * const record: StreamHandler = ({ n }) => {
 *   seen.push(n);
 * };
 * await using server = new Server({ seen: () => seen }, { streamHandlers: { record } });
 * await server.listen("inproc://");
 *
 * const comm = await connect(server.address);
 * await comm.write({ op: "connection_stream", reply: false });
 * const batched = new BatchedSend(comm);
 * batched.send({ op: "record", n: 1 }, { op: "record", n: 2 });
 * await batched.close();
 * // Closing the server handles what arrived before.
 * await server.close();
 * assertEquals(seen, [1, 2]);
 * ```
 */
// deno-lint-ignore no-explicit-any
export type StreamHandler = (message: any, context: HandlerContext) => unknown;

/** Options for a {@linkcode Server}.
 * @example
 * ```ts
 * import { Server, type ServerOptions } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const options: ServerOptions = { id: "my-server", onError: () => {} };
 * await using server = new Server({}, options);
 * assertEquals(server.id, "my-server");
 * ```
 */
export interface ServerOptions {
  /** Handlers for the messages of streams, by operation name. */
  streamHandlers?: Record<string, StreamHandler>;
  /**
   * The server's id, which the `identity` operation returns.
   *
   * @default {"Server-" + a random UUID}
   */
  id?: string;
  /**
   * Called with errors that have no caller to go to: a stream handler that
   * threw, a handler that threw for a message sent with `reply: false`, a
   * peer that broke the protocol, or a listener's failed handshake. By
   * default they are printed with `console.error`.
   */
  onError?: (error: unknown) => void;
  /**
   * Milliseconds `close()` gives running handlers, replies being written and
   * streams being drained; then it aborts the comms left (which ends stuck
   * writes and reads) and resolves, reporting to `onError` the handlers that
   * still run because they ignore their `signal`.
   *
   * @default {10000}
   */
  closeTimeout?: number;
}

const DEFAULT_CLOSE_TIMEOUT = 10_000;
// When the server closes, each comm is read on until it has been quiet this
// long (or CLOSE_GRACE_MS has passed), so that what its peer sent before is
// handled (and requests answered), not dropped.
const QUIET_MS = 20;
// What #receive() returns when it is time to stop reading a comm.
const STOP = Symbol("stop");
// Operations the server answers itself, which no handler can replace.
const RESERVED_OPS = new Set(["close"]);

// The server task that code runs in (and the task that started it), so that
// close() awaited by a handler does not wait for that handler's own task, nor
// for the tasks waiting for it: they all wait for close().
interface TaskHolder {
  task?: Promise<unknown>;
  parent?: TaskHolder;
}
const currentTask = new AsyncLocalStorage<TaskHolder>();

/**
 * Serves operations by name, as dask's `Server`. A message
 * `{op: "ping", reply: true, ...args}` calls the handler for `"ping"` with
 * `args`, and what it returns is written back. Messages on one comm are
 * handled one at a time, in order; many comms are served at once.
 *
 * - An unknown `op` gets an error reply naming it and the known ones (where
 *   dask's own `Server` replies `None`); a
 *   handler that throws gets an error reply with the error's name, message
 *   and stack. Error replies have dask's shape
 *   (`{status: "uncaught-error", exception, traceback, exception_text,
 *   traceback_text}`), so dask's Python `rpc` raises them, as the builtin
 *   exception of the same name where Python has one (`TypeError`,
 *   `KeyError`, `ValueError` for a `RangeError`…) and as `Exception`
 *   otherwise; `rpc()` here rejects with `RemoteError`.
 * - `reply: false` runs the handler without writing a reply; `close: true`
 *   closes the comm after the reply.
 * - Built in, unless `handlers` replace them: `identity` (`{type: "Server",
 *   id}`), `echo` (returns its `data`), and `connection_stream`, which turns
 *   the comm into a stream: from then on its messages, and lists of
 *   messages such as {@linkcode BatchedSend} writes, go to the stream
 *   handlers, until `{op: "close-stream"}` or the comm closes. The `close`
 *   operation closes the comm (replying `"OK"` unless `reply` is false).
 *
 * @example Serving and calling
 * ```ts
 * import { rpc, Server } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({
 *   add: ({ x, y }) => x + y,
 *   slowDouble: async ({ n }) => {
 *     await new Promise((resolve) => setTimeout(resolve, 1));
 *     return 2 * n;
 *   },
 * });
 * await server.listen("tcp://127.0.0.1:0");
 *
 * await using remote = rpc(server.address);
 * assertEquals(await remote.add({ x: 1, y: 2 }), 3);
 * assertEquals(await remote.slowDouble({ n: 21 }), 42);
 * ```
 */
export class Server implements AsyncDisposable {
  /** The server's id, as `identity` returns it. */
  readonly id: string;
  #handlers = new Map<string, Handler>();
  #streamHandlers = new Map<string, StreamHandler>();
  #onError: ((error: unknown) => void) | undefined;
  #listeners: Listener[] = [];
  #tasks = new Set<Promise<unknown>>();
  #acceptLoops: Promise<void>[] = [];
  #comms = new Set<Comm>();
  #closeTimeout: number;
  #stopping = new AbortController();
  #closePromise: Promise<void> | undefined;

  /**
   * Constructs a new {@linkcode Server}. It serves comms from `listen()`,
   * and those handed to `handleComm()`.
   *
   * @param handlers Handlers by operation name.
   * @param options Stream handlers, the id, and where errors go.
   * @throws {TypeError} If a handler is not a function.
   */
  constructor(handlers: Record<string, Handler> = {}, options: ServerOptions = {}) {
    this.id = options.id ?? `Server-${crypto.randomUUID()}`;
    this.#onError = options.onError;
    this.#closeTimeout = checkDuration("closeTimeout", options.closeTimeout, DEFAULT_CLOSE_TIMEOUT);
    this.#handlers.set("identity", () => ({ type: "Server", id: this.id }));
    this.#handlers.set("echo", ({ data }) => data ?? null);
    this.#handlers.set("connection_stream", (_args, { comm }) => this.handleStream(comm));
    for (const [op, handler] of Object.entries(handlers)) {
      if (RESERVED_OPS.has(op)) {
        throw new TypeError(
          `Invalid handler for "${op}": the server answers "${op}" itself (it closes the comm); give the operation another name`,
        );
      }
      this.#handlers.set(op, checkHandler(op, handler, "handler"));
    }
    for (const [op, handler] of Object.entries(options.streamHandlers ?? {})) {
      this.#streamHandlers.set(op, checkHandler(op, handler, "stream handler"));
    }
  }

  /**
   * The address to reach the server at: the `contactAddress` of its first
   * listener.
   *
   * @throws {TypeError} If the server listens nowhere yet.
   */
  get address(): string {
    const listener = this.#listeners[0];
    if (listener === undefined) {
      throw new TypeError(
        `Server "${this.id}" has no address: it listens nowhere yet (call listen() first)`,
      );
    }
    return listener.contactAddress;
  }

  /** The listeners opened by `listen()`, in order. */
  get listeners(): readonly Listener[] {
    return this.#listeners;
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#stopping.signal.aborted;
  }

  /**
   * Listens on `address` (call it again for more addresses) and serves the
   * comms accepted there.
   *
   * @example Two addresses
   * ```ts
   * import { rpc, Server } from "@x/comm";
   * import { assertEquals } from "@std/assert";
   *
   * await using server = new Server({ ping: () => "pong" });
   * const tcp = await server.listen("tcp://127.0.0.1:0");
   * const local = await server.listen("inproc://");
   * for (const address of [tcp.contactAddress, local.contactAddress]) {
   *   await using remote = rpc(address);
   *   assertEquals(await remote.ping(), "pong");
   * }
   * ```
   *
   * @param address Where to listen, such as `tcp://127.0.0.1:8786`.
   * @param options Listener options (TLS, `authkey`, comm options).
   * @returns The listener; the server closes it when it closes.
   * @throws {CommClosedError} If the server is closed.
   */
  async listen(address: string, options: ListenOptions = {}): Promise<Listener> {
    this.#throwIfClosed();
    // Without a handler, so that closing the listener does not wait for the
    // comms' tasks: close() waits for those itself, minus its caller's.
    const listener = await listen(address, {
      ...options,
      onError: options.onError ?? this.#onError,
    });
    if (this.closed) {
      await listener.close();
      this.#throwIfClosed();
    }
    this.#listeners.push(listener);
    this.#acceptLoops.push((async () => {
      for await (const comm of listener) this.handleComm(comm);
    })());
    return listener;
  }

  /**
   * Serves one comm until it closes: reads a message, calls its handler,
   * writes the reply, and so on. This is what `listen()` does with each
   * comm; call it for comms the server did not accept.
   *
   * @param comm The comm.
   * @returns When the comm is done (closed by either side, or by `close()`).
   */
  handleComm(comm: Comm): Promise<void> {
    if (this.closed) {
      comm.abort(new CommClosedError(`Server "${this.id}" is closed`));
      return Promise.resolve();
    }
    return this.#spawn(() => this.#serve(comm));
  }

  /**
   * Reads a stream of messages from `comm` (single messages, or lists of
   * them as {@linkcode BatchedSend} writes) and calls the stream handler of
   * each by its `op`, with `extra` merged under its fields, until the peer
   * sends `{op: "close-stream"}` or the comm closes. Closes the comm at the
   * end. A handler that took over a comm (as `connection_stream` does) calls
   * this.
   *
   * @param comm The comm.
   * @param extra Fields given to every handler call, such as the client's
   * name.
   * @returns When the stream is over.
   */
  handleStream(comm: Comm, extra: Record<string, unknown> = {}): Promise<void> {
    return this.#spawn(() => this.#stream(comm, extra));
  }

  /**
   * Stops listening and closes every comm, gracefully: requests that arrived
   * before are handled and answered, running handlers finish and write
   * their replies (their `signal` is aborted, to hurry them; close() waits
   * for them, with no time limit), and stream messages that arrived before
   * are handled. Then it waits for stream handlers still running.
   * Idempotent.
   *
   * A handler may await `close()`: it resolves once everything else is
   * closed, without waiting for that handler. Its own comm is closed too,
   * so its reply may not arrive; to answer first, close without awaiting.
   */
  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  /** Closes the server, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    this.#stopping.abort(new CommClosedError(`Server "${this.id}" is closing`));
    // Stop accepting first; the comms being served stay open to finish.
    await Promise.all(this.#listeners.map((listener) => listenerControl.stopAccepting(listener)));
    await Promise.all(this.#acceptLoops);
    // Each comm's loop sees the signal, handles what has arrived (running
    // handlers finish and their replies are written), and closes its comm.
    if (!await this.#settle(this.#closeTimeout)) {
      for (const comm of this.#comms) {
        comm.abort(
          new CommClosedError(
            `Server "${this.id}" closed: the comm was still busy after ${this.#closeTimeout} ms`,
          ),
        );
      }
      if (!await this.#settle(CLOSE_GRACE_MS)) {
        this.#report(
          new Error(
            `Server "${this.id}" closed with handlers still running after ${this.#closeTimeout} ms: they do not stop when their signal aborts`,
          ),
        );
      }
    }
    await Promise.all(this.#listeners.map((listener) => listener.close()));
  }

  async #serve(comm: Comm): Promise<void> {
    const drain = { until: undefined as number | undefined };
    this.#comms.add(comm);
    try {
      while (true) {
        const message = await this.#receive(comm, drain);
        if (message === STOP) return;
        if (!isRecord(message)) {
          this.#report(
            new ProtocolError(
              `Comm from "${comm.peerAddress}" sent ${
                describe(message)
              }: expected a message object with an "op"; closing it`,
            ),
          );
          return;
        }
        const { op, reply = true, close = false, serializers: _, ...args } = message;
        // As dask: any false value (null included) means no reply.
        const replying = Boolean(reply);
        if (op === "close") {
          if (replying) await comm.write("OK");
          return;
        }
        const result = await this.#call(comm, op, args, replying);
        if (replying) {
          try {
            await comm.write(result);
          } catch (error) {
            if (comm.closed || !(error instanceof TypeError)) {
              if (!comm.closed) this.#report(error);
              return;
            }
            // The result cannot be encoded: say so rather than leave the
            // caller waiting.
            await comm.write(errorReply(
              new TypeError(
                `The reply of "${op}" cannot be sent: ${messageOf(error)}`,
              ),
            ));
          }
        }
        // A comm the peer closed may still hold messages it sent before.
        if (close) return;
      }
    } catch (error) {
      if (!(error instanceof CommClosedError)) this.#report(error);
    } finally {
      this.#comms.delete(comm);
      await closeWithin(comm, CLOSE_GRACE_MS);
    }
  }

  /**
   * The next message on `comm`, or STOP when the comm ended, or the server
   * is closing and the comm has been quiet for QUIET_MS.
   */
  async #receive(comm: Comm, drain: { until: number | undefined }): Promise<unknown> {
    if (!this.closed) {
      try {
        return await comm.read({ signal: this.#stopping.signal });
      } catch (error) {
        // Aborted by close(): drain below. Anything else ends the comm.
        if (error !== this.#stopping.signal.reason) {
          if (error instanceof ProtocolError) this.#report(error);
          return STOP;
        }
      }
    }
    drain.until ??= performance.now() + CLOSE_GRACE_MS;
    const left = drain.until - performance.now();
    if (left <= 0 || !await comm.poll(Math.min(QUIET_MS, left))) return STOP;
    try {
      return await comm.read();
    } catch (error) {
      if (error instanceof ProtocolError) this.#report(error);
      return STOP;
    }
  }

  /** Calls the handler of `op`; returns the reply, or the error reply. */
  async #call(
    comm: Comm,
    op: unknown,
    args: Record<string, unknown>,
    replying: boolean,
  ): Promise<unknown> {
    if (typeof op !== "string") {
      const error = new TypeError(
        `Message from "${comm.peerAddress}" has no "op" naming an operation (its "op" is ${
          describe(op)
        }; its fields are ${Object.keys(args).join(", ") || "none"})`,
      );
      if (!replying) this.#report(error);
      return errorReply(error);
    }
    const handler = this.#handlers.get(op);
    if (handler === undefined) {
      const error = new Error(
        `Unknown operation "${op}": server "${this.id}" knows ${
          [...this.#handlers.keys(), ...RESERVED_OPS].sort().join(", ")
        }`,
      );
      error.name = "UnknownOperationError";
      if (!replying) this.#report(error);
      return errorReply(error);
    }
    try {
      const result = await handler(args, {
        op,
        comm,
        server: this,
        signal: this.#stopping.signal,
      });
      return result === undefined ? null : result;
    } catch (error) {
      if (!replying) this.#report(error);
      return errorReply(error);
    }
  }

  async #stream(comm: Comm, extra: Record<string, unknown>): Promise<void> {
    const drain = { until: undefined as number | undefined };
    this.#comms.add(comm);
    try {
      while (true) {
        const messages = await this.#receive(comm, drain);
        if (messages === STOP) return;
        for (const message of Array.isArray(messages) ? messages : [messages]) {
          if (message === "OK") continue;
          if (!isRecord(message) || typeof message.op !== "string") {
            this.#report(
              new TypeError(
                `Stream from "${comm.peerAddress}" sent ${
                  isRecord(message)
                    ? `a message whose "op" is ${describe(message.op)}`
                    : describe(message)
                }: expected a message object with an "op"`,
              ),
            );
            continue;
          }
          const { op, ...fields } = message;
          if (op === "close-stream") return;
          this.#dispatch(comm, op, { ...extra, ...fields });
        }
      }
    } finally {
      this.#comms.delete(comm);
      await closeWithin(comm, CLOSE_GRACE_MS);
    }
  }

  #dispatch(comm: Comm, op: string, message: Record<string, unknown>): void {
    const handler = this.#streamHandlers.get(op);
    if (handler === undefined) {
      this.#report(
        new TypeError(
          `Unknown stream operation "${op}" from "${comm.peerAddress}": server "${this.id}" has stream handlers for ${
            [...this.#streamHandlers.keys()].sort().join(", ") || "nothing"
          }`,
        ),
      );
      return;
    }
    // Its own task, so that it may await close() (close() does not wait for
    // it, nor for the stream it came on).
    const holder: TaskHolder = { parent: currentTask.getStore() };
    try {
      const result = currentTask.run(
        holder,
        () => handler(message, { op, comm, server: this, signal: this.#stopping.signal }),
      );
      if (result instanceof Promise) {
        const tracked = result.catch((error) => this.#report(error))
          .finally(() => this.#tasks.delete(tracked));
        holder.task = tracked;
        this.#tasks.add(tracked);
      }
    } catch (error) {
      this.#report(error);
    }
  }

  /** Runs `start` as a task of the server, which `close()` waits for. */
  #spawn<T>(start: () => Promise<T>): Promise<T> {
    const holder: TaskHolder = { parent: currentTask.getStore() };
    const task = currentTask.run(holder, start);
    const tracked = task.finally(() => this.#tasks.delete(tracked));
    holder.task = tracked;
    this.#tasks.add(tracked);
    return tracked;
  }

  /**
   * Waits up to `ms` for the server's tasks, except the one running this
   * code and those that started it; returns whether they all ended.
   */
  async #settle(ms: number): Promise<boolean> {
    const excluded = new Set<unknown>();
    for (let holder = currentTask.getStore(); holder; holder = holder.parent) {
      excluded.add(holder.task);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<false>((resolve) => {
      if (ms < MAX_TIMER_MS) timer = setTimeout(() => resolve(false), ms);
    });
    try {
      while (true) {
        const others = [...this.#tasks].filter((task) => !excluded.has(task));
        if (others.length === 0) return true;
        const settled = Promise.allSettled(others).then(() => true);
        if (!await Promise.race([settled, expired])) return false;
      }
    } finally {
      clearTimeout(timer);
    }
  }

  #throwIfClosed(): void {
    if (this.closed) throw new CommClosedError(`Server "${this.id}" is closed`);
  }

  #report(error: unknown): void {
    reportError(this.#onError, `Server "${this.id}"`, error);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Uint8Array);
}

function checkHandler<T>(op: string, handler: T, kind: string): T {
  if (typeof handler !== "function") {
    throw new TypeError(
      `Invalid ${kind} for "${op}": expected a function, got ${describe(handler)}`,
    );
  }
  return handler;
}
