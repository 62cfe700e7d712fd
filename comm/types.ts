/**
 * The public shapes of the comm layer: {@linkcode Comm}, {@linkcode Listener}
 * and their options. `connect()` and `listen()` are in `core.ts`.
 *
 * @module
 */

/** Options for reading one message.
 * @example Giving up on a read
 * ```ts
 * import { pipe } from "@x/comm";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const [a, b] = pipe();
 * const controller = new AbortController();
 * const reading = b.read({ signal: controller.signal });
 * controller.abort(new Error("gave up"));
 * await assertRejects(() => reading, Error, "gave up");
 * await a.write("later"); // the comm is still open, nothing was lost
 * assertEquals(await b.read(), "later");
 * await a.close();
 * await b.close();
 * ```
 */
export interface ReadOptions {
  /**
   * Stops waiting when aborted: the read rejects with the signal's reason
   * and the comm stays open (no message is lost; the next read gets it).
   */
  signal?: AbortSignal;
}

/**
 * A bidirectional channel of whole messages to one peer.
 *
 * A message is any msgpack value: `null`, booleans, numbers, strings,
 * `Uint8Array`, arrays and plain objects of these, plus `Set` and `Date`.
 * Over stream transports, a `Uint8Array` of at least `binaryFrameThreshold`
 * bytes travels as a frame of its own, without being copied into the
 * msgpack body. Over `inproc`, messages are passed by reference.
 *
 * Integers beyond ±2^53 arrive as `bigint`, and a `bigint` is sent as a
 * 64-bit integer. Map keys that are neither strings nor numbers (a Python
 * tuple key) arrive as their JSON text. Lone surrogates in strings are sent
 * as U+FFFD, as `TextEncoder` does.
 *
 * Reading from or writing to a closed comm, or one whose peer went away,
 * rejects with `CommClosedError`. Concurrent writes never interleave.
 *
 * @example Echo over an in-process pipe
 * ```ts
 * import { pipe } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const [client, server] = pipe();
 * await client.write({ op: "echo", data: [1, 2, 3] });
 * await server.write(await server.read());
 * assertEquals(await client.read(), { op: "echo", data: [1, 2, 3] });
 * await client.close();
 * await server.close();
 * ```
 */
export interface Comm extends AsyncIterable<unknown>, AsyncDisposable {
  /** This end's address, such as `tcp://127.0.0.1:53124`. */
  readonly localAddress: string;
  /** The peer's address, such as `tcp://127.0.0.1:8786`. */
  readonly peerAddress: string;
  /**
   * Whether the comm is closed: by `close()` or `abort()`, by the peer, or
   * after an error. After the peer closed, the messages it sent before can
   * still be read; after a local `close()` or `abort()`, nothing can.
   */
  readonly closed: boolean;
  /**
   * Reads the next message.
   *
   * @param options A signal to stop waiting.
   * @returns The message.
   * @throws {CommClosedError} If the comm is closed and no message is left;
   * a `ProtocolError` if the peer broke the wire protocol.
   */
  read(options?: ReadOptions): Promise<unknown>;
  /**
   * Waits up to `timeout` milliseconds for a message to be ready, as
   * `multiprocessing.connection`'s `poll()` does: true when a `read()`
   * would settle at once (a message is ready, or the comm has ended), false
   * when the time ran out. Nothing is consumed.
   *
   * @param timeout Milliseconds to wait: 0 (the default) only checks,
   * `Infinity` waits as long as it takes.
   * @throws {RangeError} If `timeout` is negative or not a number.
   */
  poll(timeout?: number): Promise<boolean>;
  /**
   * Reads the next message, which must be binary, into `buffer` at
   * `offset`, as `recv_bytes_into()` does.
   *
   * @param buffer Where to copy the message.
   * @param offset Where in `buffer` it goes.
   * @returns The message's length in bytes.
   * @throws {BufferTooShortError} If the message does not fit; the error
   * carries the whole message as `data`, so nothing is lost.
   * @throws {TypeError} If the next message is not binary; it is left in
   * place for `read()`.
   * @throws {RangeError} If `offset` is outside `buffer`.
   * @throws {CommClosedError} If the comm is closed and no message is left.
   */
  readInto(buffer: Uint8Array, offset?: number): Promise<number>;
  /**
   * Queues a message for sending.
   *
   * Resolves once the message is queued, so that a loop of awaited writes
   * is coalesced into few socket writes. With more than `highWaterMark`
   * queued, it waits until the queue drains. A message that carries large
   * binaries as separate frames resolves once those frames are written,
   * because they are sent from the caller's memory without a copy.
   *
   * @param message The message.
   * @throws {CommClosedError} If the comm is closed.
   * @throws {TypeError} If the message cannot be encoded (the comm stays
   * open).
   */
  write(message: unknown): Promise<void>;
  /**
   * Sends everything queued, then closes. Idempotent; after `abort()`, it
   * resolves once the transport is released.
   */
  close(): Promise<void>;
  /**
   * Closes now, dropping what is queued; pending reads and writes reject
   * with `CommClosedError` (its cause is `reason`, when given).
   *
   * @param reason Why the comm was aborted.
   */
  abort(reason?: unknown): void;
  /** Iterates over incoming messages until the comm closes. */
  [Symbol.asyncIterator](): AsyncIterator<unknown>;
  /** Closes the comm, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Accepts comms on an address. Without a handler, it is an async iterable
 * of incoming comms; with one, each comm is passed to the handler.
 *
 * Closing a listener stops accepting and closes the comms it accepted.
 *
 * @example
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   for await (const message of comm) await comm.write(message);
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write("hello");
 * assertEquals(await comm.read(), "hello");
 * ```
 */
export interface Listener extends AsyncIterable<Comm>, AsyncDisposable {
  /** The address bound, such as `tcp://0.0.0.0:8786`. */
  readonly listenAddress: string;
  /**
   * An address a peer can connect to, even when bound to every interface
   * (`tcp://` or `tcp://:0`).
   */
  readonly contactAddress: string;
  /** Whether the listener is closed. */
  readonly closed: boolean;
  /**
   * The peer address of the comm accepted last (after its handshake and
   * any `authkey` challenge), as `multiprocessing.connection`'s
   * `last_accepted`; undefined before the first.
   */
  readonly lastAccepted: string | undefined;
  /**
   * Stops accepting, closes the comms this listener accepted, and waits for
   * running handlers to finish. Idempotent.
   */
  close(): Promise<void>;
  /** Iterates over incoming comms (only when there is no handler). */
  [Symbol.asyncIterator](): AsyncIterator<Comm>;
  /** Closes the listener, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** A function that serves one incoming comm.
 * @example
 * ```ts
 * import { type CommHandler, connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const double: CommHandler = async (comm) => {
 *   for await (const n of comm) await comm.write((n as number) * 2);
 * };
 * await using listener = await listen("inproc://", double);
 * await using comm = await connect(listener.contactAddress);
 * await comm.write(21);
 * assertEquals(await comm.read(), 42);
 * ```
 */
export type CommHandler = (comm: Comm) => void | Promise<void>;

/** Options of a comm, for both `connect()` and `listen()`.
 * @example
 * ```ts
 * import { CommClosedError, connect, listen } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * // This server accepts messages of up to 1 KiB.
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   await comm.read().catch(() => {}); // rejects: the message is too large
 * }, { maxMessageSize: 1024 });
 * await using comm = await connect(listener.contactAddress, {
 *   highWaterMark: 64 * 1024,
 *   binaryFrameThreshold: 1024 * 1024,
 * });
 * await comm.write(new Uint8Array(4096));
 * // The server refuses it and closes the comm.
 * await assertRejects(() => comm.read(), CommClosedError);
 * ```
 */
export interface CommOptions {
  /**
   * The largest message accepted from the peer, in bytes. A peer that
   * announces more gets its comm closed with a `ProtocolError`, and nothing
   * of that size is allocated.
   *
   * @default {1073741824}
   */
  maxMessageSize?: number;
  /**
   * How much may wait in the send queue before `write()` waits: bytes for
   * stream transports, messages for `inproc` (where writes also wait while
   * the messages queued hold over 16 MiB of binaries and strings).
   *
   * @default {1048576} (stream), 1024 (inproc)
   */
  highWaterMark?: number;
  /**
   * Binaries (`Uint8Array` and other typed arrays) of at least this many
   * bytes are sent as separate frames, without a copy, in dask's
   * `__Serialized__` form. Smaller ones are inlined in the msgpack body.
   *
   * @default {65536}
   */
  binaryFrameThreshold?: number;
  /**
   * Where large received binaries are put: called with the size of each
   * incoming frame of at least `binaryFrameThreshold` bytes that is not a
   * message's first (the frames binaries travel in), it returns a
   * `Uint8Array` of at least that size, and the frame is read straight into
   * it. The message read then holds a view of it of exactly that size.
   *
   * Fresh buffers cost page faults: over loopback, receiving 64 MiB
   * messages into recycled buffers is about 3x faster than into fresh ones.
   * Recycle a buffer only once nothing uses the message that held it. If
   * `allocate` throws or returns too little, the comm is closed with a
   * `CommClosedError` whose cause says why. Stream transports only:
   * `inproc` passes messages by reference and never calls it.
   *
   * @example Recycling one receive buffer
   * ```ts
   * import { type Comm, connect, listen } from "@x/comm";
   * import { assert, assertEquals } from "@std/assert";
   *
   * let spare: Uint8Array | undefined;
   * const allocate = (size: number) => {
   *   const buffer = spare && spare.length >= size ? spare : new Uint8Array(size);
   *   spare = undefined;
   *   return buffer;
   * };
   * await using listener = await listen("tcp://127.0.0.1:0", { allocate });
   * const accepting = listener[Symbol.asyncIterator]().next();
   * await using client = await connect(listener.contactAddress);
   * await using server = (await accepting).value as Comm;
   * let first: Uint8Array | undefined;
   * for (let i = 0; i < 3; i++) {
   *   await client.write(new Uint8Array(1024 * 1024).fill(i));
   *   const received = await server.read() as Uint8Array;
   *   assertEquals(received[0], i);
   *   first ??= received;
   *   assert(received.buffer === first.buffer); // the same memory each time
   *   spare = received; // done with it: recycle
   * }
   * ```
   */
  allocate?: (size: number) => Uint8Array;
  /**
   * How messages are framed on stream transports (`inproc` ignores it):
   * - `"dask"` (the default): dask's frames, msgpack messages, and dask's
   *   connection handshake.
   * - `"multiprocessing"`: Python's `multiprocessing.connection` framing, a
   *   4-byte big-endian length (or -1 and an 8-byte length from 2 GiB up)
   *   before each message; messages are raw bytes (`Uint8Array` in and
   *   out) and there is no handshake. With it, a Python `Listener` or
   *   `Client` exchanges `send_bytes()` / `recv_bytes()` messages with us.
   *
   * @default {"dask"}
   */
  framing?: "dask" | "multiprocessing";
}

/**
 * The `authkey` option of `connect()` and `listen()`: a shared key, as a
 * string (taken as UTF-8) or bytes. Both ends then prove they know it by
 * `multiprocessing.connection`'s HMAC challenge, before anything else is
 * read.
 *
 * @example
 * ```ts
 * import { type AuthOptions, connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const secret: AuthOptions = { authkey: new TextEncoder().encode("s3cret") };
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   await comm.write(await comm.read());
 * }, secret);
 * await using comm = await connect(listener.contactAddress, secret);
 * await comm.write("in");
 * assertEquals(await comm.read(), "in");
 * ```
 */
export interface AuthOptions {
  /**
   * The shared key. A peer that does not know it gets `AuthenticationError`
   * and its comm is closed; nothing it sent beyond its challenge messages
   * (256 bytes at most each) is decoded.
   */
  authkey?: string | Uint8Array;
  /**
   * The digests this side accepts in the challenge: in the peer's answer
   * to our challenge, and in the challenge we answer. Leave out `"md5"` to
   * refuse legacy peers (Python 3.11 and older answer only in HMAC-MD5),
   * so that nobody can talk an exchange down to MD5.
   *
   * @default {["md5", "sha256", "sha384", "sha3_256", "sha3_384"]}
   */
  authDigests?: readonly AuthDigest[];
}

/**
 * A digest of `multiprocessing.connection`'s HMAC challenge, by Python's
 * name for it. `"md5"` is the legacy one, the only one Python 3.11 and
 * older speak.
 *
 * @example Refusing legacy peers
 * ```ts
 * import { type AuthDigest, connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const authDigests: AuthDigest[] = ["sha256", "sha384"];
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
 *   await comm.write(await comm.read());
 * }, { authkey: "s3cret", authDigests });
 * await using comm = await connect(listener.contactAddress, { authkey: "s3cret", authDigests });
 * await comm.write("in");
 * assertEquals(await comm.read(), "in");
 * ```
 */
export type AuthDigest = "md5" | "sha256" | "sha384" | "sha3_256" | "sha3_384";

/**
 * TLS settings for the `tls` scheme, in PEM. Other schemes ignore them.
 *
 * Deno can present a client certificate (`cert` and `key` on `connect()`),
 * but a Deno listener cannot request or verify client certificates.
 *
 * @example With the test certificates of this repository
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const read = (name: string) => Deno.readTextFile(`tests/testdata/${name}`);
 * const cert = await read("server.pem");
 * const key = await read("server-key.pem");
 * const ca = await read("ca.pem");
 * await using listener = await listen("tls://127.0.0.1:0", async (comm) => {
 *   await comm.write(await comm.read());
 * }, { cert, key });
 * await using comm = await connect(listener.contactAddress, { caCerts: [ca] });
 * await comm.write("secret");
 * assertEquals(await comm.read(), "secret");
 * ```
 */
export interface TlsOptions {
  /** Certificates to trust beyond the system's roots (PEM). */
  caCerts?: string[];
  /** Certificate chain: the server's (required to listen) or the client's. */
  cert?: string;
  /** Private key for `cert`. */
  key?: string;
}

/** Options for `connect()`.
 * @example
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assert } from "@std/assert";
 *
 * await using listener = await listen("inproc://");
 * const controller = new AbortController();
 * await using comm = await connect(listener.contactAddress, {
 *   timeout: 5_000,
 *   signal: controller.signal,
 * });
 * assert(!comm.closed);
 * ```
 */
export interface ConnectOptions extends CommOptions, TlsOptions, AuthOptions {
  /**
   * Milliseconds to keep trying: refused connections are retried with
   * jittered exponential backoff, and the handshake must finish in this
   * time too.
   *
   * @default {10000}
   */
  timeout?: number;
  /** Aborts connecting; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options for `listen()`.
 * @example Collecting handler errors
 * ```ts
 * import { CommClosedError, connect, listen } from "@x/comm";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const errors: unknown[] = [];
 * await using listener = await listen("inproc://", () => {
 *   throw new Error("boom");
 * }, { onError: (error) => errors.push(error), handshakeTimeout: 5_000 });
 * await using comm = await connect(listener.contactAddress);
 * // The comm is closed once its handler settles, here by throwing.
 * await assertRejects(() => comm.read(), CommClosedError);
 * assertEquals((errors[0] as Error).message, "boom");
 * ```
 */
export interface ListenOptions extends CommOptions, TlsOptions, AuthOptions, HttpOptions {
  /**
   * Milliseconds an incoming comm has to complete its handshake (and the
   * `authkey` challenge, if any) before it is closed, so that a silent peer
   * cannot hold resources.
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /**
   * The host to put in `contactAddress` when bound to every interface.
   * Without it, the first non-loopback interface is used when the `sys`
   * permission allows listing interfaces, and loopback otherwise.
   */
  contactHost?: string;
  /**
   * Called with errors that have no caller to go to: a handler that threw,
   * or an incoming comm that failed its handshake. By default, handler
   * errors are printed with `console.error` and failed handshakes are
   * ignored.
   */
  onError?: (error: unknown) => void;
}

/**
 * Options of the `ws` and `wss` listeners, which serve HTTP: the user's own
 * routes can share their server.
 *
 * @example A page and its WebSocket on one port
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
 *   await comm.write(await comm.read());
 * }, {
 *   httpHandler: () => new Response("<!doctype html><p>Hello</p>", {
 *     headers: { "content-type": "text/html" },
 *   }),
 * });
 * const page = await fetch(listener.contactAddress.replace(/^ws/, "http").replace("/comm", "/"));
 * assertEquals(await page.text(), "<!doctype html><p>Hello</p>");
 * await using comm = await connect(listener.contactAddress);
 * await comm.write("over the same port");
 * assertEquals(await comm.read(), "over the same port");
 * ```
 */
export interface HttpOptions {
  /**
   * Answers the HTTP requests that are not a WebSocket upgrade at the
   * listener's path (`ws` and `wss` only). Without it, the path answers
   * 426 Upgrade Required and any other path 404 Not Found. An error it
   * throws becomes a 500 response and goes to `onError`.
   */
  httpHandler?: (
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response>;
  /**
   * The web pages whose WebSocket upgrades are accepted, by origin (such as
   * `"https://app.example.com"`; `"*"` for any), or a function that decides
   * (`ws` and `wss` only). Browsers let any page open a WebSocket to any
   * address, and say which page asks in the `Origin` header: a listener
   * refuses upgrades from other pages' origins with 403, so that a site a
   * user visits cannot reach a service on their machine. Clients that are
   * not browsers (Deno, dask) send no `Origin`, and are always accepted.
   *
   * @default {the listener's own origin: pages it serves with `httpHandler`}
   */
  allowedOrigins?: readonly string[] | ((origin: string) => boolean);
}
