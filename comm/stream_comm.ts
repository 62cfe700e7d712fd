/**
 * {@linkcode StreamComm}: a comm over any byte stream, in dask's framing.
 *
 * The tcp, tls and unix backends use it; a user's backend over another byte
 * stream (a serial line, a QUIC stream, a child's stdio) can use it too.
 * Nothing here touches `Deno.*`: the transport is a {@linkcode ByteStream}.
 *
 * @module
 */

import { type Codec, createCodec } from "./_codec.ts";
import { AllocateError, DASK_FRAMING, type Framing, type MessageReader } from "./_framing.ts";
import { BYTES_CODEC, MULTIPROCESSING_FRAMING } from "./_mp_framing.ts";
import { Queue, waitInLine } from "./_queue.ts";
import {
  abortable,
  checkAllocate,
  checkFraming,
  checkSize,
  CLOSE_GRACE_MS,
  type Deferred,
  deferred,
  describe,
  messageOf,
} from "./_util.ts";
import { BufferTooShortError, CommClosedError, ProtocolError } from "./errors.ts";
import type { Comm, CommOptions, ReadOptions } from "./types.ts";

/** Default of `maxMessageSize`: 1 GiB. */
export const DEFAULT_MAX_MESSAGE_SIZE = 2 ** 30;
/** Default of `highWaterMark` for stream transports: 1 MiB queued. */
const DEFAULT_STREAM_HIGH_WATER_MARK = 1024 * 1024;
/** Default of `binaryFrameThreshold`: 64 KiB. */
const DEFAULT_BINARY_FRAME_THRESHOLD = 64 * 1024;

/** Size of a coalescing write buffer. */
const WRITE_BUFFER_BYTES = 64 * 1024;
/** Frames up to this size are copied into the write buffer. */
const COPY_LIMIT_BYTES = 32 * 1024;
/** Reading pauses with this many decoded messages unread… */
const READ_AHEAD_MESSAGES = 8192;
/** …or this many bytes of them. */
const READ_AHEAD_BYTES = 8 * 1024 * 1024;
const SPARE_BUFFERS = 4;
const RESOLVED: Promise<void> = Promise.resolve();

/**
 * The byte stream under a {@linkcode StreamComm}: the part of `Deno.Conn`
 * it uses, so that any `Deno.Conn` is one.
 *
 * @example Any Deno.Conn is a byte stream
 * ```ts
 * import { type ByteStream, StreamComm } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const accepting = listener.accept();
 * const near: ByteStream = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const far: ByteStream = await accepting;
 * const client = new StreamComm(near, { localAddress: "raw://a", peerAddress: "raw://b" });
 * const server = new StreamComm(far, { localAddress: "raw://b", peerAddress: "raw://a" });
 * await client.write({ over: "a raw connection" });
 * assertEquals(await server.read(), { over: "a raw connection" });
 * await client.close();
 * await server.close();
 * ```
 */
export interface ByteStream {
  /** Reads into `buffer`; resolves with the count, or `null` at the end. */
  read(buffer: Uint8Array): Promise<number | null>;
  /** Writes some of `data`; resolves with how much was written. */
  write(data: Uint8Array): Promise<number>;
  /**
   * Closes the stream; pending reads and writes reject.
   *
   * @param reason Why, when the comm ends on an error rather than by a
   * close: a stream that can tell its peer (a WebSocket's close code and
   * reason) may pass it on.
   */
  close(reason?: Error): void;
}

/** Options of a {@linkcode StreamComm}.
 * @example
 * ```ts
 * import { StreamComm, type StreamCommOptions } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const accepting = listener.accept();
 * const options: StreamCommOptions = {
 *   localAddress: "raw://client",
 *   peerAddress: "raw://server",
 *   maxMessageSize: 1024 * 1024,
 * };
 * const client = new StreamComm(await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }), options);
 * const server = new StreamComm(await accepting, {
 *   localAddress: "raw://server",
 *   peerAddress: "raw://client",
 * });
 * assertEquals(client.peerAddress, "raw://server");
 * await client.write(1);
 * assertEquals(await server.read(), 1);
 * await client.close();
 * await server.close();
 * ```
 */
export interface StreamCommOptions extends CommOptions {
  /** This end's address, as `scheme://location`. */
  localAddress: string;
  /** The peer's address, as `scheme://location`. */
  peerAddress: string;
}

// Set by StreamComm's static block: how the functions below reach a comm's privates.
let rawChannelOf: (comm: StreamComm) => RawChannel | undefined;
let startReadingOf: (comm: StreamComm) => void;

/**
 * Internal option: a comm made with it reads nothing until `startReading()`
 * or its first read, so that the `authkey` challenge can go first over
 * `rawChannel()`. The built-in backends set it; `connect()` and `listen()`
 * start reading once a comm is set up.
 */
export const DEFER_READING: unique symbol = Symbol("deferReading");

/**
 * Internal: a byte stream may hold, under this key, a promise that settles
 * once it is closed all the way (a WebSocket's closing handshake done), if
 * that comes later than `close()`; the comm's `close()` waits for it, up to
 * CLOSE_GRACE_MS.
 */
export const STREAM_CLOSED: unique symbol = Symbol("streamClosed");

/**
 * Internal option, a size in bytes: a comm made with it hands each message
 * of up to that size to the stream in one `write()` of a buffer of its own,
 * never coalesced with others, so that a stream of messages (a WebSocket)
 * sends one message for each. A larger message, which the stream would cut
 * into pieces anyway, is written as on a byte stream, its large frames
 * from where they are rather than copied together first.
 */
export const WHOLE_WRITES: unique symbol = Symbol("wholeWrites");

/** Starts reading ahead on `comm`, if it is a StreamComm that has not yet. */
export function startReading(comm: unknown): void {
  if (comm instanceof StreamComm) startReadingOf(comm);
}

interface Chunk {
  bytes: Uint8Array;
  /** A coalescing buffer that may be reused once written. */
  recycle: boolean;
  /** Settled once the chunk is written (for frames sent from user memory). */
  written?: Deferred<void>;
}

/**
 * A comm over a {@linkcode ByteStream}, in dask's TCP framing.
 *
 * Writes are encoded at once and queued; queued messages are coalesced into
 * few stream writes, one at a time, in order. Reads are done ahead: every
 * whole message already received is decoded without awaiting between them,
 * and reading pauses when many are left unread (8192 messages or 8 MiB,
 * counting the message being received), so a slow consumer slows the peer
 * down instead of filling memory.
 *
 * It does not do the connection handshake: `connect()` and `listen()` do.
 *
 * @example A comm over a pair of in-memory byte streams
 * ```ts
 * import { type ByteStream, StreamComm } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * // A loopback byte stream: what is written is read back.
 * const chunks: Uint8Array[] = [];
 * let wake: (() => void) | undefined;
 * let open = true;
 * const loop: ByteStream = {
 *   async read(buffer) {
 *     while (chunks.length === 0 && open) {
 *       await new Promise<void>((resolve) => wake = resolve);
 *     }
 *     if (chunks.length === 0) return null;
 *     const chunk = chunks.shift()!;
 *     const n = Math.min(chunk.length, buffer.length);
 *     buffer.set(chunk.subarray(0, n));
 *     if (n < chunk.length) chunks.unshift(chunk.subarray(n));
 *     return n;
 *   },
 *   write(data) {
 *     chunks.push(data.slice());
 *     wake?.();
 *     return Promise.resolve(data.length);
 *   },
 *   close() {
 *     open = false;
 *     wake?.();
 *   },
 * };
 * const comm = new StreamComm(loop, {
 *   localAddress: "loop://a",
 *   peerAddress: "loop://a",
 * });
 * await comm.write({ hello: "world" });
 * assertEquals(await comm.read(), { hello: "world" });
 * await comm.close();
 * ```
 */
export class StreamComm implements Comm {
  #conn: ByteStream;
  #codec: Codec;
  #framing: Framing;
  #reader: MessageReader;
  #localAddress: string;
  #peerAddress: string;
  #highWaterMark: number;
  /** WHOLE_WRITES: the largest message written whole, or 0. */
  #wholeWrites: number;

  // Write side.
  #out = new Uint8Array(WRITE_BUFFER_BYTES);
  #outView = new DataView(this.#out.buffer);
  #outPos = 0;
  #chunks = new Queue<Chunk>();
  #queuedBytes = 0;
  #flushing: Promise<void> | undefined;
  #drainWaiters = new Queue<Deferred<void>>();
  #inFlight: Chunk | undefined;
  #spare: Uint8Array<ArrayBuffer>[] = [];

  // Read side.
  #inbox = new Queue<unknown>();
  #inboxSizes = new Queue<number>();
  #inboxBytes = 0;
  #readers = new Queue<Deferred<unknown>>();
  #readLoop: Promise<void> | undefined;
  /** Whether reading started: at once, or (DEFER_READING) by startReading() or the first read. */
  #reading = false;
  #paused = false;
  /** poll() calls waiting for a message to reach the inbox. */
  #arrivals = new Queue<Deferred<boolean>>();

  // Life cycle.
  #closing = false;
  #ended: CommClosedError | undefined;
  /** Whether the end was orderly (closed by either side), not an error. */
  #orderly = false;
  #closePromise: Promise<void> | undefined;

  /**
   * Wraps a byte stream. Reading starts at once.
   *
   * @param conn The byte stream, such as a `Deno.Conn`.
   * @param options The addresses of both ends and the comm options.
   * @throws {RangeError} If a size option is not a positive whole number.
   */
  constructor(conn: ByteStream, options: StreamCommOptions) {
    this.#conn = conn;
    this.#localAddress = options.localAddress;
    this.#peerAddress = options.peerAddress;
    this.#highWaterMark = checkSize(
      "highWaterMark",
      options.highWaterMark,
      DEFAULT_STREAM_HIGH_WATER_MARK,
    );
    const binaryFrameThreshold = checkSize(
      "binaryFrameThreshold",
      options.binaryFrameThreshold,
      DEFAULT_BINARY_FRAME_THRESHOLD,
    );
    const multiprocessing = checkFraming(options.framing) === "multiprocessing";
    this.#framing = multiprocessing ? MULTIPROCESSING_FRAMING : DASK_FRAMING;
    this.#reader = this.#framing.createReader(
      checkSize("maxMessageSize", options.maxMessageSize, DEFAULT_MAX_MESSAGE_SIZE),
      { directFrameBytes: binaryFrameThreshold, allocate: checkAllocate(options.allocate) },
    );
    this.#codec = multiprocessing ? BYTES_CODEC : createCodec({ binaryFrameThreshold });
    const internal = options as { [DEFER_READING]?: boolean; [WHOLE_WRITES]?: number };
    this.#wholeWrites = internal[WHOLE_WRITES] ?? 0;
    if (!internal[DEFER_READING]) this.#startReading();
  }

  /** This end's address. */
  get localAddress(): string {
    return this.#localAddress;
  }

  /** The peer's address. */
  get peerAddress(): string {
    return this.#peerAddress;
  }

  /** Whether the comm is closed (messages received may still be read). */
  get closed(): boolean {
    return this.#closing || this.#ended !== undefined;
  }

  /**
   * Reads the next message.
   *
   * @param options A signal to stop waiting.
   * @returns The message.
   * @throws {CommClosedError} If the comm is closed and nothing is left.
   */
  read(options?: ReadOptions): Promise<unknown> {
    if (this.#inbox.length > 0 && !this.#closing) {
      return Promise.resolve(this.#take());
    }
    if (this.#ended) return Promise.reject(this.#ended);
    if (this.#closing) return Promise.reject(this.#closedError());
    const read = waitInLine(this.#readers, options?.signal);
    this.#startReading();
    if (this.#paused) this.#resume();
    return read;
  }

  /**
   * Waits up to `timeout` milliseconds for a message to be ready.
   *
   * @param timeout Milliseconds: 0 (the default) checks, `Infinity` waits.
   * @returns Whether a `read()` would settle at once.
   * @throws {RangeError} If `timeout` is negative or not a number.
   */
  poll(timeout = 0): Promise<boolean> {
    return pollWith(this.#arrivals, timeout, () => {
      if (this.#inbox.length > 0 || this.#ended !== undefined || this.#closing) return true;
      this.#startReading();
      if (this.#paused) this.#resume();
      return false;
    });
  }

  /**
   * Reads the next message, which must be binary, into `buffer` at `offset`.
   *
   * @param buffer Where to copy the message.
   * @param offset Where in `buffer` it goes.
   * @returns The message's length in bytes.
   * @throws {BufferTooShortError} If it does not fit (the error carries it).
   * @throws {TypeError} If the next message is not binary (it stays unread).
   * @throws {RangeError} If `offset` is outside `buffer`.
   */
  async readInto(buffer: Uint8Array, offset = 0): Promise<number> {
    checkReadInto(buffer, offset);
    while (this.#inbox.length === 0 || this.#closing) {
      if (this.#ended || this.#closing) await this.read(); // rejects
      await this.poll(Infinity);
    }
    return copyInto(this.#inbox.peek(), () => this.#take(), buffer, offset, this.#peerAddress);
  }

  /**
   * Queues a message for sending.
   *
   * @param message The message.
   * @throws {CommClosedError} If the comm is closed.
   * @throws {TypeError} If the message cannot be encoded.
   */
  write(message: unknown): Promise<void> {
    if (this.#ended) return Promise.reject(this.#ended);
    if (this.#closing) return Promise.reject(this.#closedError());
    let frames: Uint8Array[];
    try {
      frames = this.#codec.encode(message);
    } catch (error) {
      return Promise.reject(
        new TypeError(
          `Cannot write a message to "${this.#peerAddress}": ${messageOf(error)}`,
          { cause: error },
        ),
      );
    }
    return this.#enqueue(frames, this.#codec.firstFrameShared);
  }

  /**
   * Queues the frames of one message. Frames up to COPY_LIMIT_BYTES are
   * copied into the coalescing buffer; larger ones are written from where
   * they are, except a first frame that the encoder reuses (`shared`).
   */
  #enqueue(frames: Uint8Array[], shared: boolean): Promise<void> {
    if (this.#wholeWrites > 0) {
      let whole = this.#framing.headerSize(frames);
      for (let i = 0; i < frames.length; i++) whole += frames[i].byteLength;
      if (whole <= this.#wholeWrites) return this.#enqueueWhole(frames, whole);
    }
    let size = this.#framing.headerSize(frames);
    this.#reserve(size);
    this.#outPos += this.#framing.writeHeader(this.#outView, this.#outPos, frames);
    let external: Chunk | undefined;
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i];
      const length = frame.byteLength;
      size += length;
      if (length <= COPY_LIMIT_BYTES) {
        this.#reserve(length);
        this.#out.set(frame, this.#outPos);
        this.#outPos += length;
      } else {
        this.#seal();
        // A shared frame 0 is a view of the encoder's buffer, reused by the
        // next encode: it must be copied. Other frames are the caller's.
        const copied = i === 0 && shared;
        const chunk: Chunk = { bytes: copied ? frame.slice() : frame, recycle: false };
        if (!copied) external = chunk;
        this.#chunks.push(chunk);
      }
    }
    // Nothing of the next message joins this one's last chunk.
    if (this.#wholeWrites > 0) this.#seal();
    this.#queuedBytes += size;
    this.#flushing ??= this.#flush();
    if (external) {
      external.written = deferred<void>();
      return external.written.promise;
    }
    return this.#drained();
  }

  /** Queues one message of `size` bytes as one chunk of its own (WHOLE_WRITES). */
  #enqueueWhole(frames: Uint8Array[], size: number): Promise<void> {
    const bytes = new Uint8Array(size);
    let at = this.#framing.writeHeader(new DataView(bytes.buffer), 0, frames);
    for (let i = 0; i < frames.length; i++) {
      bytes.set(frames[i], at);
      at += frames[i].byteLength;
    }
    this.#chunks.push({ bytes, recycle: false });
    this.#queuedBytes += size;
    this.#flushing ??= this.#flush();
    return this.#drained();
  }

  /** Settles once the bytes queued are down to highWaterMark. */
  #drained(): Promise<void> {
    if (this.#queuedBytes <= this.#highWaterMark) return RESOLVED;
    const waiter = deferred<void>();
    this.#drainWaiters.push(waiter);
    return waiter.promise;
  }

  /** Sends everything queued, then closes the stream. Idempotent. */
  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  /**
   * Closes the stream now, dropping what is queued.
   *
   * @param reason Why; attached as the cause of the errors pending calls get.
   */
  abort(reason?: unknown): void {
    if (this.#ended) return;
    this.#closing = true;
    this.#end(
      new CommClosedError(
        `Comm to "${this.#peerAddress}" was aborted${
          reason === undefined ? "" : `: ${messageOf(reason)}`
        }`,
        { cause: reason },
      ),
      true,
    );
    this.#closePromise ??= this.#settle();
  }

  /** Iterates over incoming messages until the comm closes. */
  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    while (true) {
      let message: unknown;
      try {
        message = await this.read();
      } catch (error) {
        if (this.#orderly && error === this.#ended) return;
        if (this.#closing && !this.#ended) return;
        throw error;
      }
      yield message;
    }
  }

  /** Closes the comm, so that `await using` works. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #closedError(): CommClosedError {
    return this.#ended ??
      new CommClosedError(`Comm to "${this.#peerAddress}" is closed`);
  }

  #take(): unknown {
    const message = this.#inbox.shift();
    this.#inboxBytes -= this.#inboxSizes.shift()!;
    if (
      this.#paused && this.#inbox.length <= READ_AHEAD_MESSAGES / 2 &&
      this.#inboxBytes <= READ_AHEAD_BYTES / 2
    ) {
      this.#resume();
    }
    return message;
  }

  #resume(): void {
    if (!this.#paused || this.#ended || this.#closing) return;
    this.#paused = false;
    this.#readLoop = this.#runReadLoop();
  }

  #startReading(): void {
    if (this.#reading || this.#ended || this.#closing) return;
    this.#reading = true;
    this.#readLoop = this.#runReadLoop();
  }

  /**
   * Exchanges raw one-frame messages before reading starts (the `authkey`
   * challenge): nothing is decoded, nothing is read ahead of the message
   * asked for, and each message is limited in size.
   */
  #rawChannel(): RawChannel {
    const misuse = () => new Error("Cannot exchange raw messages once reading started");
    return {
      send: (bytes) => {
        if (this.#reading) return Promise.reject(misuse());
        if (this.#ended) return Promise.reject(this.#ended);
        if (this.#closing) return Promise.reject(this.#closedError());
        return this.#enqueue([bytes], true);
      },
      receive: async (maxBytes, signal) => {
        if (this.#reading) throw misuse();
        if (this.#ended) throw this.#ended;
        const reader = this.#reader;
        const max = reader.maxMessageSize;
        // Room for the header words that count against it too.
        reader.maxMessageSize = maxBytes + 64;
        try {
          let frames: Uint8Array[] | undefined;
          while ((frames = nextWithin(reader, maxBytes)) === undefined) {
            const reading = this.#conn.read(reader.space());
            const n = await (signal ? abortable(reading, signal) : reading);
            if (n === null) {
              throw new CommClosedError(
                `Comm to "${this.#peerAddress}" was closed by the peer before it answered`,
              );
            }
            reader.commit(n);
          }
          if (frames.length !== 1 || frames[0].length > maxBytes) {
            throw new ProtocolError(
              `Peer sent a message of ${frames.length} frames and ${reader.messageBytes} bytes where one of at most ${maxBytes} bytes was expected`,
            );
          }
          return frames[0].slice();
        } finally {
          reader.maxMessageSize = max;
        }
      },
    };
  }

  static {
    rawChannelOf = (comm) => comm.#reading ? undefined : comm.#rawChannel();
    startReadingOf = (comm) => comm.#startReading();
  }

  async #runReadLoop(): Promise<void> {
    const reader = this.#reader;
    const codec = this.#codec;
    try {
      while (!this.#closing && !this.#ended) {
        // Whole messages buffered first: some may have come in with the
        // last raw message of the authkey challenge.
        let frames: Uint8Array[] | undefined;
        while ((frames = reader.next()) !== undefined) {
          const message = codec.decode(frames);
          const waiting = this.#readers.shift();
          if (waiting) {
            waiting.resolve(message);
          } else {
            this.#inbox.push(message);
            this.#inboxSizes.push(reader.messageBytes);
            this.#inboxBytes += reader.messageBytes;
            for (let w; (w = this.#arrivals.shift());) w.resolve(true);
          }
        }
        // Behind unread messages, the message being received counts too,
        // before its buffer is made: a large one waits until they are read
        // rather than sit in memory beside them. With none unread, reading
        // goes on whatever the size, or a sender waiting for its large
        // write to be taken before it reads would never be answered.
        const inbox = this.#inbox.length;
        if (
          this.#readers.length === 0 && inbox > 0 &&
          (inbox >= READ_AHEAD_MESSAGES ||
            this.#inboxBytes + reader.neededBytes >= READ_AHEAD_BYTES)
        ) {
          this.#paused = true;
          return;
        }
        const n = await this.#conn.read(reader.space());
        if (n === null) {
          this.#onEndOfStream();
          return;
        }
        reader.commit(n);
      }
    } catch (error) {
      if (this.#ended || (this.#closing && !(error instanceof ProtocolError))) {
        return;
      }
      this.#end(this.#lost(error), false);
    }
  }

  #onEndOfStream(): void {
    const pending = this.#reader.pendingBytes;
    if (pending > 0) {
      const needed = this.#reader.neededBytes;
      this.#end(
        new CommClosedError(
          `Connection to "${this.#peerAddress}" ended in the middle of a message (${pending}${
            needed ? ` of ${needed}` : ""
          } bytes received)`,
        ),
        false,
      );
    } else {
      this.#end(
        new CommClosedError(`Comm to "${this.#peerAddress}" was closed by the peer`),
        true,
      );
    }
  }

  #lost(error: unknown): CommClosedError {
    if (error instanceof AllocateError) {
      return new CommClosedError(`Closed the comm to "${this.#peerAddress}": ${error.message}`, {
        cause: error.cause ?? error,
      });
    }
    if (error instanceof ProtocolError) {
      return new ProtocolError(
        `Closed the comm to "${this.#peerAddress}": ${error.message}`,
        { cause: error },
      );
    }
    return new CommClosedError(
      `Lost the connection to "${this.#peerAddress}": ${messageOf(error)}`,
      { cause: error },
    );
  }

  /** Makes room for `n` bytes in the coalescing buffer. */
  #reserve(n: number): void {
    if (this.#outPos + n <= this.#out.length) return;
    this.#seal();
    if (n > this.#out.length) {
      this.#out = new Uint8Array(n);
      this.#outView = new DataView(this.#out.buffer);
    }
  }

  /** Queues the coalescing buffer's bytes and starts a fresh buffer. */
  #seal(): void {
    if (this.#outPos === 0) return;
    this.#chunks.push({
      bytes: this.#out.subarray(0, this.#outPos),
      recycle: this.#out.length === WRITE_BUFFER_BYTES,
    });
    this.#out = this.#spare.pop() ?? new Uint8Array(WRITE_BUFFER_BYTES);
    this.#outView = new DataView(this.#out.buffer);
    this.#outPos = 0;
  }

  async #flush(): Promise<void> {
    // Yield once so that every write made in this turn goes out together.
    await undefined;
    try {
      while (!this.#ended) {
        if (this.#chunks.length === 0) {
          if (this.#outPos === 0) break;
          this.#seal();
        }
        const chunk = this.#chunks.shift()!;
        const bytes = chunk.bytes;
        this.#inFlight = chunk;
        let written = await this.#conn.write(bytes);
        while (written < bytes.length) {
          written += await this.#conn.write(bytes.subarray(written));
        }
        this.#inFlight = undefined;
        this.#queuedBytes -= bytes.length;
        if (chunk.recycle && this.#spare.length < SPARE_BUFFERS) {
          this.#spare.push(new Uint8Array(bytes.buffer as ArrayBuffer, 0, WRITE_BUFFER_BYTES));
        }
        chunk.written?.resolve();
        if (this.#queuedBytes <= this.#highWaterMark) {
          for (let w; (w = this.#drainWaiters.shift());) w.resolve();
        }
      }
    } catch (error) {
      if (!this.#ended) this.#end(this.#lost(error), false);
    } finally {
      this.#flushing = undefined;
    }
  }

  async #close(): Promise<void> {
    this.#closing = true;
    while (this.#flushing) await this.#flushing;
    this.#end(new CommClosedError(`Comm to "${this.#peerAddress}" is closed`), true);
    await this.#settle();
  }

  /** Waits for the read and write loops to stop, and the stream to close. */
  async #settle(): Promise<void> {
    await this.#readLoop;
    while (this.#flushing) await this.#flushing;
    const closed = (this.#conn as { [STREAM_CLOSED]?: Promise<void> })[STREAM_CLOSED];
    if (closed) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        closed.catch(() => {}),
        new Promise<void>((resolve) => timer = setTimeout(resolve, CLOSE_GRACE_MS)),
      ]);
      clearTimeout(timer);
    }
  }

  /** Ends the comm: closes the stream and fails every pending call. */
  #end(error: CommClosedError, orderly: boolean): void {
    if (this.#ended) return;
    this.#ended = error;
    this.#orderly = orderly;
    try {
      if (orderly) this.#conn.close();
      else this.#conn.close(error);
    } catch {
      // Already closed by the runtime (for example after a reset).
    }
    for (const reader of this.#readers.drain()) reader.reject(error);
    for (const waiter of this.#arrivals.drain()) waiter.resolve(true);
    for (const waiter of this.#drainWaiters.drain()) waiter.reject(error);
    this.#inFlight?.written?.reject(error);
    this.#inFlight = undefined;
    for (const chunk of this.#chunks.drain()) chunk.written?.reject(error);
    this.#outPos = 0;
    this.#queuedBytes = 0;
  }
}

/** `reader.next()`, with a size error that names the challenge's limit. */
function nextWithin(reader: MessageReader, maxBytes: number): Uint8Array[] | undefined {
  try {
    return reader.next();
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    // The reader's limit here is the challenge's, not maxMessageSize.
    const what = error.message.replace(/,? more than maxMessageSize.*$/, "");
    throw new ProtocolError(
      `${what}: the authkey challenge allows one frame of at most ${maxBytes} bytes a message`,
      { cause: error },
    );
  }
}

/** Raw one-frame messages over a comm that has not started reading. */
export interface RawChannel {
  /** Sends `bytes` as one message. */
  send(bytes: Uint8Array): Promise<void>;
  /**
   * Receives one message of at most `maxBytes` bytes.
   *
   * @throws {ProtocolError} If the peer sends a larger message, or more frames.
   */
  receive(maxBytes: number, signal?: AbortSignal): Promise<Uint8Array>;
}

/**
 * A raw channel over `comm`, if it is a StreamComm that has not started
 * reading; undefined otherwise. Internal: not exported from `mod.ts`.
 */
export function rawChannel(comm: unknown): RawChannel | undefined {
  return comm instanceof StreamComm ? rawChannelOf(comm) : undefined;
}

/**
 * poll() for a comm: resolves true at once if `ready()` says so, else when
 * a waiter pushed on `arrivals` is resolved, or false after `timeout`.
 */
export function pollWith(
  arrivals: Queue<Deferred<boolean>>,
  timeout: number,
  ready: () => boolean,
): Promise<boolean> {
  if (typeof timeout !== "number" || !(timeout >= 0)) {
    return Promise.reject(
      new RangeError(`Invalid poll timeout ${describe(timeout)}: expected milliseconds, 0 or more`),
    );
  }
  if (ready()) return Promise.resolve(true);
  const waiter = deferred<boolean>();
  arrivals.push(waiter);
  if (timeout !== Infinity) {
    // A zero timeout still lets the I/O that is due be processed.
    const timer = setTimeout(() => {
      if (arrivals.remove(waiter)) waiter.resolve(false);
    }, Math.min(timeout, 2 ** 31 - 1));
    waiter.promise.finally(() => clearTimeout(timer));
  }
  return waiter.promise;
}

/** Checks readInto()'s arguments. */
export function checkReadInto(buffer: Uint8Array, offset: number): void {
  if (!(buffer instanceof Uint8Array)) {
    throw new TypeError(`Cannot read into ${describe(buffer)}: expected a Uint8Array`);
  }
  if (!Number.isInteger(offset) || offset < 0 || offset > buffer.length) {
    throw new RangeError(
      `Invalid offset ${describe(offset)}: expected a whole number from 0 to ${buffer.length}`,
    );
  }
}

/**
 * readInto() once a message is ready: `head` is the next message, `take`
 * consumes it. A message that is not binary is left in place.
 */
export function copyInto(
  head: unknown,
  take: () => unknown,
  buffer: Uint8Array,
  offset: number,
  peerAddress: string,
): number {
  if (!ArrayBuffer.isView(head)) {
    throw new TypeError(
      `The next message from "${peerAddress}" is ${
        describe(head)
      }, not binary: read it with read()`,
    );
  }
  take();
  const bytes = head instanceof Uint8Array
    ? head
    : new Uint8Array(head.buffer, head.byteOffset, head.byteLength);
  const room = buffer.length - offset;
  if (bytes.length > room) {
    throw new BufferTooShortError(
      `A message of ${bytes.length} bytes does not fit in the ${room} bytes left in the buffer`,
      bytes,
    );
  }
  buffer.set(bytes, offset);
  return bytes.length;
}
