/**
 * {@linkcode ConnectionPool}: comms to many addresses, reused between calls
 * and bounded in number, as dask.distributed's `ConnectionPool`.
 *
 * @module
 */

import { connect } from "./core.ts";
import {
  CallTimeoutError,
  CommClosedError,
  ConnectTimeoutError,
  PoolTimeoutError,
} from "./errors.ts";
import { callMessage, callOn, callTimer, rpcProxy } from "./_call.ts";
import { Queue } from "./_queue.ts";
import {
  checkDuration,
  CLOSE_GRACE_MS,
  closeWithin,
  type Deferred,
  deferred,
  describe,
  MAX_TIMER_MS,
} from "./_util.ts";
import type { CallOptions, Rpc } from "./rpc.ts";
import type { Comm, ConnectOptions } from "./types.ts";

/** Options for a {@linkcode ConnectionPool}.
 * @example
 * ```ts
 * import { ConnectionPool, type ConnectionPoolOptions } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const options: ConnectionPoolOptions = { limit: 4, timeout: 5_000 };
 * await using pool = new ConnectionPool(options);
 * assertEquals(pool.limit, 4);
 * ```
 */
export interface ConnectionPoolOptions extends Omit<ConnectOptions, "signal"> {
  /**
   * The most comms open at once, over all addresses (`Infinity` for no
   * limit). Callers beyond it wait, first come first served.
   *
   * @default {512}
   */
  limit?: number;
  /**
   * Milliseconds `get()` may take: waiting for room in the pool, then
   * connecting (refused connections are retried within it).
   *
   * @default {10000}
   */
  timeout?: number;
  /**
   * Milliseconds each call through `rpc()` may take, unless the call says
   * otherwise.
   *
   * @default {Infinity}
   */
  callTimeout?: number;
}

/** Options for {@linkcode ConnectionPool.prototype.get}.
 * @example
 * ```ts
 * import { ConnectionPool, type GetOptions, listen } from "@x/comm";
 * import { assert } from "@std/assert";
 *
 * await using listener = await listen("inproc://", async (comm) => {
 *   for await (const _ of comm);
 * });
 * await using pool = new ConnectionPool();
 * const options: GetOptions = { timeout: 1_000 };
 * const comm = await pool.get(listener.contactAddress, options);
 * assert(!comm.closed);
 * pool.reuse(listener.contactAddress, comm);
 * ```
 */
export interface GetOptions {
  /**
   * Milliseconds to wait for room and to connect.
   *
   * @default {the pool's timeout}
   */
  timeout?: number;
  /** Stops waiting; `get()` rejects with the signal's reason. */
  signal?: AbortSignal;
}

interface Waiter {
  address: string;
  deadline: number;
  signal: AbortSignal | undefined;
  result: Deferred<Comm>;
  /** Stops the waiter's timer and signal listener. */
  settle: () => void;
}

const DEFAULT_LIMIT = 512;
const DEFAULT_TIMEOUT = 10_000;

/**
 * A pool of comms to many addresses, reused between calls, as dask's
 * `ConnectionPool`: `get()` hands out an open comm to an address (an idle
 * one if there is one, else a new one), `reuse()` gives it back.
 *
 * Never more than `limit` comms are open at once, counting those being
 * opened. At the limit, an idle comm to another address is closed to make
 * room; when every comm is in use, callers wait, first come first served,
 * up to their `timeout`. Comms that broke or were closed are dropped when
 * given back or found idle, never handed out again.
 *
 * `rpc(address)` gives a proxy whose calls take a comm from the pool for
 * each call and give it back after.
 *
 * @example Many calls over a few comms
 * ```ts
 * import { ConnectionPool, Server } from "@x/comm";
 * import { assert, assertEquals } from "@std/assert";
 *
 * await using server = new Server({ square: ({ n }) => n * n });
 * await server.listen("tcp://127.0.0.1:0");
 *
 * await using pool = new ConnectionPool({ limit: 4 });
 * const remote = pool.rpc(server.address);
 * const squares = await Promise.all(
 *   Array.from({ length: 100 }, (_, n) => remote.square({ n })),
 * );
 * assertEquals(squares[9], 81);
 * assert(pool.open <= 4);
 * ```
 */
export class ConnectionPool implements AsyncDisposable {
  #limit: number;
  #timeout: number;
  #callTimeout: number;
  #connectOptions: Omit<ConnectOptions, "signal" | "timeout">;
  // Idle comms by address (most recently used last), and all idle comms in
  // the order they became idle, for closing the least recently used first.
  #idle = new Map<string, Comm[]>();
  #idleOrder = new Map<Comm, string>();
  #occupied = new Map<Comm, string>();
  #connecting = 0;
  #waiters = new Queue<Waiter>();
  #closing = new AbortController();
  #closePromise: Promise<void> | undefined;
  #pending = new Set<Promise<unknown>>();

  /**
   * Constructs a new {@linkcode ConnectionPool}.
   *
   * @param options The limit, the timeouts, and how to connect (TLS,
   * `authkey`, comm options).
   * @throws {RangeError} If `limit` is not a positive whole number or
   * `Infinity`, or a timeout is negative.
   */
  constructor(options: ConnectionPoolOptions = {}) {
    const { limit, timeout, callTimeout, ...connectOptions } = options;
    if (
      limit !== undefined && limit !== Infinity && (!Number.isSafeInteger(limit) || limit < 1)
    ) {
      throw new RangeError(
        `Invalid limit ${describe(limit)}: expected a positive whole number, or Infinity`,
      );
    }
    this.#limit = limit ?? DEFAULT_LIMIT;
    this.#timeout = checkDuration("timeout", timeout, DEFAULT_TIMEOUT);
    this.#callTimeout = checkDuration("callTimeout", callTimeout, Infinity);
    this.#connectOptions = connectOptions;
  }

  /** The most comms open at once. */
  get limit(): number {
    return this.#limit;
  }

  /** Comms open or being opened: in use, idle, or connecting. */
  get open(): number {
    return this.#idleOrder.size + this.#occupied.size + this.#connecting;
  }

  /** Comms handed out and not yet given back. */
  get active(): number {
    return this.#occupied.size;
  }

  /** Open comms waiting in the pool to be reused. */
  get idle(): number {
    return this.#idleOrder.size;
  }

  /** Callers waiting for room in the pool. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  /**
   * Gets an open comm to `address`: an idle one from the pool, or a new one
   * when there is room (closing an idle comm to another address if that
   * makes room), or the first to become available when callers ahead have
   * been served. Give it back with `reuse()` once done with it.
   *
   * @param address Where to connect.
   * @param options A timeout or signal for this call.
   * @returns An open comm, yours until you give it back.
   * @throws {PoolTimeoutError} If no room came up within the timeout.
   * @throws {ConnectTimeoutError} If connecting took the rest of it.
   * @throws {CommClosedError} If the pool is closed.
   * @throws {AddressError} If `address` is malformed.
   */
  // async, so that bad arguments reject rather than throw.
  // deno-lint-ignore require-await
  async get(address: string, options: GetOptions = {}): Promise<Comm> {
    if (typeof address !== "string") {
      throw new TypeError(`Invalid address ${describe(address)}: expected a string`);
    }
    const timeout = checkDuration("timeout", options.timeout, this.#timeout);
    this.#throwIfClosed(address);
    options.signal?.throwIfAborted();
    if (this.#waiters.length === 0) {
      const comm = this.#takeIdle(address);
      if (comm !== undefined) return comm;
      if (this.#makeRoom()) return this.#connect(address, timeout, options.signal);
    }
    return this.#wait(address, timeout, options.signal);
  }

  /**
   * Gives back a comm from `get()`. An open comm becomes idle, for the next
   * caller; a closed or broken one is dropped, which makes room for a new
   * one.
   *
   * @param address The address it was got for.
   * @param comm The comm.
   * @throws {TypeError} If this pool did not hand the comm out for
   * `address`, or it was given back already.
   */
  reuse(address: string, comm: Comm): void {
    const owner = this.#occupied.get(comm);
    if (owner !== address) {
      throw new TypeError(
        owner === undefined
          ? `Cannot reuse the comm to "${comm?.peerAddress}": this pool did not hand it out, or it was given back already`
          : `Cannot reuse the comm as one to "${address}": it was got for "${owner}"`,
      );
    }
    this.#occupied.delete(comm);
    if (this.closed) {
      this.#track(closeWithin(comm, CLOSE_GRACE_MS));
      return;
    }
    if (!comm.closed) {
      let stack = this.#idle.get(address);
      if (stack === undefined) this.#idle.set(address, stack = []);
      stack.push(comm);
      this.#idleOrder.set(comm, address);
    }
    this.#dispatch();
  }

  /**
   * Closes the idle comms, keeping those in use.
   *
   * @returns Once they are closed.
   */
  async collect(): Promise<void> {
    const comms = [...this.#idleOrder.keys()];
    this.#idle.clear();
    this.#idleOrder.clear();
    this.#dispatch();
    await Promise.all(comms.map((comm) => closeWithin(comm, CLOSE_GRACE_MS)));
  }

  /**
   * A proxy whose calls each take a comm to `address` from the pool and give
   * it back after, as dask's `pool(address)`. Its `close()` does nothing:
   * the pool owns the comms.
   *
   * @param address Where the server listens.
   * @returns The proxy.
   */
  rpc(address: string): Rpc {
    return rpcProxy(
      address,
      (op, args, options) => this.#call(address, op, args, options),
      () => Promise.resolve(),
    );
  }

  /**
   * Closes every comm, idle or in use (calls using them fail with
   * `CommClosedError`), and rejects the callers still waiting. Idempotent.
   */
  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  /** Closes the pool, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #call(
    address: string,
    op: string,
    args: Record<string, unknown> | undefined,
    options: CallOptions | undefined,
  ): Promise<unknown> {
    const message = callMessage(op, args);
    const timeout = checkDuration("timeout", options?.timeout, this.#callTimeout);
    const signal = options?.signal;
    const start = performance.now();
    let comm: Comm;
    try {
      comm = await this.get(address, { timeout: Math.min(timeout, this.#timeout), signal });
    } catch (error) {
      // One error class for a call out of time, saying which step took it.
      if (error instanceof PoolTimeoutError || error instanceof ConnectTimeoutError) {
        throw new CallTimeoutError(
          `Remote operation "${op}" on "${address}" could not start: ${error.message}`,
          { cause: error },
        );
      }
      throw error;
    }
    const timer = callTimer(op, address, timeout, signal, timeout - (performance.now() - start));
    try {
      return await callOn(comm, message, op, timer?.signal);
    } finally {
      timer?.clear();
      this.reuse(address, comm);
    }
  }

  async #close(): Promise<void> {
    this.#closing.abort(new CommClosedError("The connection pool was closed"));
    for (const waiter of this.#waiters.drain()) {
      waiter.settle();
      waiter.result.reject(
        new CommClosedError(
          `The connection pool was closed while waiting for a comm to "${waiter.address}"`,
        ),
      );
    }
    const comms = [...this.#idleOrder.keys(), ...this.#occupied.keys()];
    this.#idle.clear();
    this.#idleOrder.clear();
    await Promise.all(comms.map((comm) => closeWithin(comm, CLOSE_GRACE_MS)));
    while (this.#pending.size > 0) await Promise.all(this.#pending);
  }

  #throwIfClosed(address: string): void {
    if (this.closed) {
      throw new CommClosedError(
        `Cannot get a comm to "${address}": the connection pool is closed`,
      );
    }
  }

  /** Takes an open idle comm to `address`, dropping closed ones found. */
  #takeIdle(address: string): Comm | undefined {
    const stack = this.#idle.get(address);
    if (stack === undefined) return undefined;
    let comm: Comm | undefined;
    while ((comm = stack.pop()) !== undefined) {
      this.#idleOrder.delete(comm);
      if (!comm.closed) break;
    }
    if (stack.length === 0) this.#idle.delete(address);
    if (comm !== undefined) this.#occupied.set(comm, address);
    return comm;
  }

  /**
   * Whether a comm may be opened now: there is room, or closing the least
   * recently used idle comm makes some.
   */
  #makeRoom(): boolean {
    if (this.open < this.#limit) return true;
    for (const [comm, address] of this.#idleOrder) {
      this.#idleOrder.delete(comm);
      const stack = this.#idle.get(address)!;
      stack.splice(stack.indexOf(comm), 1);
      if (stack.length === 0) this.#idle.delete(address);
      if (!comm.closed) this.#track(closeWithin(comm, CLOSE_GRACE_MS));
      return true;
    }
    return false;
  }

  /** Opens a comm to `address`, counted against the limit from now on. */
  async #connect(
    address: string,
    timeout: number,
    signal: AbortSignal | undefined,
  ): Promise<Comm> {
    this.#connecting++;
    let comm: Comm;
    const task = connect(address, {
      ...this.#connectOptions,
      timeout,
      signal: signal === undefined
        ? this.#closing.signal
        : AbortSignal.any([signal, this.#closing.signal]),
    });
    this.#track(task);
    try {
      comm = await task;
    } catch (error) {
      this.#connecting--;
      this.#dispatch();
      throw error;
    }
    this.#connecting--;
    if (this.closed) {
      await closeWithin(comm, CLOSE_GRACE_MS);
      this.#throwIfClosed(address);
    }
    this.#occupied.set(comm, address);
    return comm;
  }

  #wait(address: string, timeout: number, signal: AbortSignal | undefined): Promise<Comm> {
    const result = deferred<Comm>();
    const start = performance.now();
    const waiter: Waiter = {
      address,
      deadline: start + timeout,
      signal,
      result,
      settle: () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      },
    };
    const giveUp = (reason: unknown) => {
      if (this.#waiters.remove(waiter)) {
        waiter.settle();
        result.reject(reason);
      }
    };
    const onAbort = () => giveUp(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = timeout < MAX_TIMER_MS
      ? setTimeout(() =>
        giveUp(
          new PoolTimeoutError(
            `Timed out after ${timeout} ms waiting for a comm to "${address}": all ${this.#limit} comms the pool may open are in use`,
          ),
        ), timeout)
      : undefined;
    this.#waiters.push(waiter);
    return result.promise;
  }

  /** Serves waiting callers, first come first served, while there is room. */
  #dispatch(): void {
    let waiter: Waiter | undefined;
    while ((waiter = this.#waiters.peek()) !== undefined) {
      const comm = this.#takeIdle(waiter.address);
      if (comm !== undefined) {
        this.#waiters.shift();
        waiter.settle();
        waiter.result.resolve(comm);
        continue;
      }
      if (!this.#makeRoom()) return;
      this.#waiters.shift();
      waiter.settle();
      const remaining = Math.max(0, waiter.deadline - performance.now());
      const opened = this.#connect(waiter.address, remaining, waiter.signal);
      opened.then(waiter.result.resolve, waiter.result.reject);
    }
  }

  /** Keeps `task` until it settles, so that `close()` can wait for it. */
  #track(task: Promise<unknown>): void {
    const tracked = task.catch(() => {}).finally(() => this.#pending.delete(tracked));
    this.#pending.add(tracked);
  }
}
