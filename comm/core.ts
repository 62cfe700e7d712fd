/**
 * `connect()` and `listen()`: open comms to an address and accept them, with
 * retries and dask's connection handshake on every backend.
 *
 * @module
 */

import { delay } from "@std/async/delay";
import { parseAddress, unparseAddress } from "./addressing.ts";
import { Queue } from "./_queue.ts";
import {
  abortable,
  checkAllocate,
  checkDuration,
  checkFraming,
  checkSize,
  CLOSE_GRACE_MS,
  closeWithin,
  type Deferred,
  deferred,
  describe,
  messageOf,
  reportError,
  timeoutSignal,
} from "./_util.ts";
import { authenticate, authkeyBytes, checkDigests } from "../auth/challenge.ts";
import { startReading } from "./stream_comm.ts";
import {
  AddressError,
  AuthenticationError,
  CommClosedError,
  ConnectError,
  ConnectTimeoutError,
  ProtocolError,
} from "./errors.ts";
import { lookupAddress } from "./_backends.ts";
import { explainTlsError } from "./_net.ts";
import { listenerControl } from "./_listener_control.ts";
import type { BackendListener } from "./registry.ts";
import type {
  AuthDigest,
  Comm,
  CommHandler,
  CommOptions,
  ConnectOptions,
  Listener,
  ListenOptions,
} from "./types.ts";

/** Default of `connect()`'s `timeout`: 10 seconds. */
const DEFAULT_CONNECT_TIMEOUT = 10_000;
/** Default of `listen()`'s `handshakeTimeout`: 10 seconds. */
const DEFAULT_HANDSHAKE_TIMEOUT = 10_000;

/**
 * What each side says in dask's connection handshake. We compress nothing,
 * so a dask peer sees differing compression and sends frames uncompressed;
 * dask reads "pickle-protocol" and ignores "python".
 */
const HANDSHAKE_INFO = Object.freeze({
  compression: null,
  python: [3, 11, 0],
  "pickle-protocol": 5,
});
const RETRYABLE = new Set([
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "NotFound",
  "TimedOut",
]);
const BACKOFF_BASE_MS = 10;
/** The longest pause between two attempts. */
const MAX_BACKOFF_MS = 5_000;
/** Comms accepted but not yet taken by an iterating caller. */
const MAX_READY = 128;
/** Pause after an accept error (such as running out of descriptors). */
const ACCEPT_RETRY_MS = 100;
/** How long closing a listener lets each comm flush before aborting it. */

/**
 * Opens a comm to `address` and does dask's handshake.
 *
 * Refused connections, and connections the peer closes or resets before
 * its handshake, are dialled again with jittered exponential backoff until
 * `timeout` runs out; the handshake must finish within it too.
 *
 * @example
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   const { n } = await comm.read() as { n: number };
 *   await comm.write({ n: n + 1 });
 * });
 * await using comm = await connect(listener.contactAddress, { timeout: 5_000 });
 * await comm.write({ n: 41 });
 * assertEquals(await comm.read(), { n: 42 });
 * ```
 *
 * @param address Where to connect, such as `tcp://127.0.0.1:8786`.
 * @param options Timeout, signal, TLS and comm options.
 * @returns The comm, ready for messages.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 * @throws {ConnectTimeoutError} If `timeout` ran out.
 * @throws {ConnectError} If connecting failed in a way retrying cannot fix,
 * or the peer's handshake was not dask's.
 * @throws {RangeError} If an option is out of range.
 */
export async function connect(
  address: string,
  options: ConnectOptions = {},
): Promise<Comm> {
  const [backend, location] = lookupAddress(address, "connect to");
  const timeout = checkDuration("timeout", options.timeout, DEFAULT_CONNECT_TIMEOUT);
  checkCommOptions(options);
  const userSignal = options.signal;
  userSignal?.throwIfAborted();
  const deadline = performance.now() + timeout;
  const timedOut = (what: string, cause?: unknown) =>
    new ConnectTimeoutError(
      `Cannot connect to "${address}": ${what} within ${timeout} ms${
        cause === undefined ? "" : ` (last error: ${messageOf(cause)})`
      }`,
      { cause },
    );

  // As dask does: short first attempts, so that one lost SYN does not use
  // up the whole timeout; then attempts as long as the time left.
  let attemptCap = timeout / 5;
  let attempt = 0;
  let lastError: unknown;
  const backOff = async (error: unknown) => {
    lastError = error;
    attemptCap = timeout;
    const wait = Math.random() * Math.min(
      deadline - performance.now(),
      BACKOFF_BASE_MS * 2 ** Math.min(attempt++, 20),
      MAX_BACKOFF_MS,
    );
    if (wait > 0) await delay(wait, { signal: userSignal });
  };
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0) throw timedOut("no connection", lastError);
    const { signal, clear } = timeoutSignal(Math.min(attemptCap, left), userSignal);
    const opening = backend.connect(location, { ...options, signal });
    let comm: Comm;
    try {
      comm = await abortable(opening, signal);
    } catch (error) {
      opening.then((late) => late.abort(), () => {});
      if (userSignal?.aborted) throw userSignal.reason;
      // Misuse (a bad address or option) is reported as it is.
      if (error instanceof TypeError || error instanceof RangeError) {
        throw quoting(error, address, "connect to");
      }
      if (signal.aborted) {
        await backOff(
          new Error(`an attempt took over ${Math.round(Math.min(attemptCap, left))} ms`),
        );
      } else if (error instanceof Error && RETRYABLE.has(error.name)) {
        await backOff(error);
      } else {
        throw new ConnectError(
          `Cannot connect to "${address}": ${messageOf(error)}`,
          { cause: error },
        );
      }
      continue;
    } finally {
      clear();
    }
    try {
      await greet(comm, options, deadline, userSignal);
      return comm;
    } catch (error) {
      comm.abort(error);
      await comm.close();
      if (userSignal?.aborted) throw userSignal.reason;
      if (isTimeout(error)) {
        throw timedOut(
          options.authkey === undefined
            ? "no handshake from the peer"
            : "no authentication and handshake from the peer",
        );
      }
      // A peer that hung up or reset before its part of the exchange (a
      // listener shutting down, or a proxy with no server behind it yet)
      // is dialled again, as a refused connection is.
      if (hungUp(error)) {
        await backOff(error);
        continue;
      }
      // Misuse, such as an authkey where there is no node:crypto, is reported as it is.
      if (error instanceof AuthenticationError || error instanceof TypeError) throw error;
      // A TLS alert at the first read, such as a client certificate required.
      throw new ConnectError(
        `Cannot connect to "${address}": the handshake failed: ${
          messageOf(explainTlsError(error, address))
        }`,
        { cause: error },
      );
    }
  }
}

/** The authkey challenge, if any, and dask's handshake, within what is left of `deadline`. */
async function greet(
  comm: Comm,
  options: ConnectOptions,
  deadline: number,
  userSignal: AbortSignal | undefined,
): Promise<void> {
  const timer = timeoutSignal(Math.max(0, deadline - performance.now()), userSignal);
  try {
    if (options.authkey !== undefined) {
      await authenticate(comm, options.authkey, "client", {
        signal: timer.signal,
        digests: options.authDigests,
      });
    }
    if (checkFraming(options.framing) === "dask") await handshake(comm, timer.signal);
    startReading(comm);
  } finally {
    timer.clear();
  }
}

/**
 * Whether the peer closed or reset the connection during the exchange,
 * having said no word of refusal. A TLS alert (such as a listener requiring
 * a client certificate, which TLS 1.3 reports at the first read) is a word.
 */
function hungUp(error: unknown): boolean {
  if (error instanceof AuthenticationError) error = error.cause;
  return error instanceof CommClosedError && !(error instanceof ProtocolError) &&
    !(error.cause instanceof Error && error.cause.name === "InvalidData");
}

/**
 * Listens on `address` and passes each incoming comm, after the handshake,
 * to `handler`; without a handler, the listener is an async iterable of
 * incoming comms.
 *
 * A comm passed to a handler is closed when the handler settles. Closing
 * the listener closes every comm it accepted.
 *
 * @example With a handler
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   for await (const message of comm) await comm.write(message);
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write([1, 2, 3]);
 * assertEquals(await comm.read(), [1, 2, 3]);
 * ```
 *
 * @example Iterating over incoming comms
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("inproc://");
 * await using client = await connect(listener.contactAddress);
 * for await (const comm of listener) {
 *   await client.write("hi");
 *   assertEquals(await comm.read(), "hi");
 *   break;
 * }
 * ```
 *
 * @param address Where to listen: `tcp://127.0.0.1:0` (any free port),
 * `tcp://` (every interface), `tls://…`, `unix:///path/to.sock`,
 * `unix://` (a fresh private socket), `inproc://` (a fresh name).
 * @param handler Serves each incoming comm.
 * @param options Handshake timeout, error callback, TLS and comm options.
 * @returns The listener.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 * @throws {Deno.errors.AddrInUse} If the address is taken.
 */
export function listen(
  address: string,
  handler?: CommHandler,
  options?: ListenOptions,
): Promise<Listener>;
/**
 * Listens on `address`; the listener is an async iterable of incoming comms.
 *
 * @example
 * ```ts
 * import { listen } from "@x/comm";
 * import { assert } from "@std/assert";
 *
 * await using listener = await listen("tcp://127.0.0.1:0", { handshakeTimeout: 1_000 });
 * assert(listener.listenAddress.startsWith("tcp://127.0.0.1:"));
 * ```
 *
 * @param address Where to listen.
 * @param options Handshake timeout, error callback, TLS and comm options.
 * @returns The listener.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 */
export function listen(address: string, options: ListenOptions): Promise<Listener>;
export async function listen(
  address: string,
  handlerOrOptions?: CommHandler | ListenOptions,
  maybeOptions?: ListenOptions,
): Promise<Listener> {
  let handler: CommHandler | undefined;
  let options: ListenOptions;
  if (typeof handlerOrOptions === "function") {
    handler = handlerOrOptions;
    options = maybeOptions ?? {};
  } else if (handlerOrOptions === undefined || handlerOrOptions === null) {
    options = maybeOptions ?? {};
  } else if (typeof handlerOrOptions === "object") {
    options = handlerOrOptions;
  } else {
    throw new TypeError(
      `Cannot listen on "${address}": the handler is ${
        describe(handlerOrOptions)
      }, expected a function`,
    );
  }
  const [backend, location, scheme] = lookupAddress(address, "listen on");
  checkCommOptions(options);
  const handshakeTimeout = checkDuration(
    "handshakeTimeout",
    options.handshakeTimeout,
    DEFAULT_HANDSHAKE_TIMEOUT,
  );
  let inner: BackendListener;
  try {
    inner = await backend.listen(location, options);
  } catch (error) {
    if (error instanceof TypeError || error instanceof RangeError) {
      throw quoting(error, address, "listen on");
    }
    if (error instanceof Error) {
      error.message = `Cannot listen on "${address}": ${error.message}`;
    }
    throw error;
  }
  return new CommListener(inner, scheme, handler, handshakeTimeout, options);
}

/**
 * Makes a misuse error from a backend quote the caller's address: a backend
 * sees only the location, and may serve a scheme under another name.
 */
function quoting(error: TypeError | RangeError, address: string, action: string): Error {
  if (error.message.includes(`"${address}"`)) return error;
  const Class = error instanceof AddressError
    ? AddressError
    : error instanceof RangeError
    ? RangeError
    : TypeError;
  return new Class(`Cannot ${action} "${address}": ${error.message}`, { cause: error });
}

/** `address` under `scheme`: a backend may serve several schemes. */
function withScheme(address: string, scheme: string): string {
  const [, location] = parseAddress(address);
  return unparseAddress(scheme, location);
}

/** Checks the size options before anything is opened with them. */
function checkCommOptions(options: CommOptions): void {
  checkSize("maxMessageSize", options.maxMessageSize, 1);
  checkSize("highWaterMark", options.highWaterMark, 1);
  checkSize("binaryFrameThreshold", options.binaryFrameThreshold, 1);
  checkAllocate(options.allocate);
  checkFraming(options.framing);
  if ((options as ConnectOptions).authkey !== undefined) {
    authkeyBytes((options as ConnectOptions).authkey);
  }
  checkDigests((options as ConnectOptions).authDigests);
}

/** Both sides write their handshake and read the peer's, until `signal` aborts. */
async function handshake(comm: Comm, signal: AbortSignal): Promise<Record<string, unknown>> {
  const [, info] = await Promise.all([
    comm.write(HANDSHAKE_INFO),
    comm.read({ signal }),
  ]);
  if (
    typeof info !== "object" || info === null || Object.getPrototypeOf(info) !== Object.prototype
  ) {
    throw new ProtocolError(
      `Peer "${comm.peerAddress}" sent ${describe(info)} as its handshake: expected a map such as ${
        JSON.stringify(HANDSHAKE_INFO)
      }`,
    );
  }
  return info as Record<string, unknown>;
}

function isTimeout(error: unknown): boolean {
  return error instanceof DOMException && error.name === "TimeoutError";
}

class CommListener implements Listener {
  #inner: BackendListener;
  #listenAddress: string;
  #contactAddress: string;
  #handler: CommHandler | undefined;
  #handshakeTimeout: number;
  #onError: ((error: unknown) => void) | undefined;
  #authkey: string | Uint8Array | undefined;
  #authDigests: readonly AuthDigest[] | undefined;
  #daskHandshake: boolean;
  #lastAccepted: string | undefined;
  #comms = new Set<Comm>();
  #pruneAt = 64;
  #tasks = new Set<Promise<void>>();
  #ready = new Queue<Comm>();
  #waiters = new Queue<Deferred<IteratorResult<Comm>>>();
  #room: Deferred<void> | undefined;
  #closed = false;
  #closePromise: Promise<void> | undefined;
  #stopPromise: Promise<void> | undefined;
  #acceptLoop: Promise<void>;

  constructor(
    inner: BackendListener,
    scheme: string,
    handler: CommHandler | undefined,
    handshakeTimeout: number,
    options: ListenOptions,
  ) {
    this.#inner = inner;
    this.#listenAddress = withScheme(inner.listenAddress, scheme);
    this.#contactAddress = withScheme(inner.contactAddress, scheme);
    this.#handler = handler;
    this.#handshakeTimeout = handshakeTimeout;
    this.#onError = options.onError;
    this.#authkey = options.authkey;
    this.#authDigests = options.authDigests;
    this.#daskHandshake = checkFraming(options.framing) === "dask";
    this.#acceptLoop = this.#accept();
  }

  get listenAddress(): string {
    return this.#listenAddress;
  }

  get contactAddress(): string {
    return this.#contactAddress;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get lastAccepted(): string | undefined {
    return this.#lastAccepted;
  }

  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  [Symbol.asyncIterator](): AsyncIterator<Comm> {
    if (this.#handler) {
      throw new TypeError(
        `Cannot iterate over the listener on "${this.listenAddress}": it passes comms to its handler`,
      );
    }
    return {
      next: () => this.#next(),
      return: () => Promise.resolve({ done: true, value: undefined }),
    };
  }

  #next(): Promise<IteratorResult<Comm>> {
    const comm = this.#ready.shift();
    if (comm) {
      this.#room?.resolve();
      return Promise.resolve({ done: false, value: comm });
    }
    if (this.#closed) return Promise.resolve({ done: true, value: undefined });
    const waiter = deferred<IteratorResult<Comm>>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      if (!this.#handler && this.#ready.length >= MAX_READY) {
        this.#room = deferred<void>();
        await this.#room.promise;
        this.#room = undefined;
        continue;
      }
      let comm: Comm | null;
      try {
        comm = await this.#inner.accept();
      } catch (error) {
        if (this.#closed) return;
        this.#report(error);
        await delay(ACCEPT_RETRY_MS);
        continue;
      }
      if (comm === null) return;
      if (this.#closed) {
        comm.abort();
        await comm.close();
        return;
      }
      this.#track(comm);
      const task: Promise<void> = this.#serve(comm).finally(() => this.#tasks.delete(task));
      this.#tasks.add(task);
    }
  }

  #track(comm: Comm): void {
    this.#comms.add(comm);
    if (this.#comms.size >= this.#pruneAt) {
      for (const known of this.#comms) if (known.closed) this.#comms.delete(known);
      this.#pruneAt = Math.max(64, this.#comms.size * 2);
    }
  }

  async #serve(comm: Comm): Promise<void> {
    const timer = timeoutSignal(this.#handshakeTimeout);
    try {
      if (this.#authkey !== undefined) {
        await authenticate(comm, this.#authkey, "listener", {
          signal: timer.signal,
          digests: this.#authDigests,
        });
      }
      if (this.#daskHandshake) await handshake(comm, timer.signal);
      startReading(comm);
    } catch (error) {
      comm.abort(error);
      await comm.close();
      this.#comms.delete(comm);
      if (!this.#closed && this.#onError) {
        this.#report(
          isTimeout(error)
            ? new ProtocolError(
              `Comm from "${comm.peerAddress}" did not complete the ${
                this.#authkey === undefined ? "" : "authkey challenge and "
              }handshake within ${this.#handshakeTimeout} ms`,
            )
            : error,
        );
      }
      return;
    } finally {
      timer.clear();
    }
    this.#lastAccepted = comm.peerAddress;
    if (this.#handler) {
      try {
        await this.#handler(comm);
      } catch (error) {
        if (!(this.#closed && error instanceof CommClosedError)) this.#report(error);
      } finally {
        this.#comms.delete(comm);
        await closeWithin(comm, CLOSE_GRACE_MS);
      }
      return;
    }
    if (this.#closed) {
      await closeWithin(comm, CLOSE_GRACE_MS);
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ done: false, value: comm });
    else this.#ready.push(comm);
  }

  #report(error: unknown): void {
    reportError(this.#onError, `Listener on "${this.listenAddress}"`, error);
  }

  static {
    listenerControl.stopAccepting = (listener) =>
      listener instanceof CommListener ? listener.#stop() : listener.close();
  }

  #stop(): Promise<void> {
    return this.#stopPromise ??= (async () => {
      this.#closed = true;
      this.#room?.resolve();
      await this.#inner.close();
      await this.#acceptLoop;
      for (const waiter of this.#waiters.drain()) {
        waiter.resolve({ done: true, value: undefined });
      }
      // Comms accepted but never handed out have no one else to close them.
      await Promise.all(
        this.#ready.drain().map((comm) => closeWithin(comm, CLOSE_GRACE_MS)),
      );
    })();
  }

  async #close(): Promise<void> {
    await this.#stop();
    await Promise.all(
      [...this.#comms].map((comm) => closeWithin(comm, CLOSE_GRACE_MS)),
    );
    this.#comms.clear();
    await Promise.all(this.#tasks);
    await this.#inner.release?.();
  }
}
