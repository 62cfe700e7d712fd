// A ByteStream over a WebSocket: what the ws and wss backends put under a
// StreamComm. It uses only the standard WebSocket class, so that it runs in
// Deno and in browsers alike.
//
// Two layouts, chosen by the subprotocol in the opening handshake:
//
// - "x-comm", when both ends are @x/comm: the WebSocket messages, one after
//   another, carry the bytes a tcp comm would (dask's framing), and each comm
//   message is a WebSocket message of its own (StreamComm's WHOLE_WRITES).
//   A message of 64 MiB or more goes on in further WebSocket messages,
//   since Deno refuses to receive one that large. The listener's
//   first message is a text one, {"peer": "ws://ip:port"}: a WebSocket does
//   not tell a client its own address, and the listener sees it.
//   A WebSocket reader cannot stop reading, so the x-comm layout has flow
//   control instead: a sender has at most CREDIT_WINDOW_BYTES sent and not
//   yet read by the other side's comm (one message may overdraw it), and a
//   reader gives credit back as text messages {"credit": bytes} once its
//   comm has read CREDIT_GRANT_BYTES. A slow reader slows the writer, as on
//   a socket. Any other text message is a protocol error.
// - "dask", when the peer offers or picks no subprotocol (dask's
//   distributed/comm/ws.py, or any other WebSocket client): a message is one
//   WebSocket message holding the u64 frame count, then one WebSocket message
//   per frame. It is turned into the tcp framing when read, and back when
//   written, so that StreamComm sees one framing either way.

import {
  FIXED_HEADER_BYTES,
  FRAME_COST_BYTES,
  getU64,
  headerSize,
  LENGTH_BYTES,
  writeHeader,
} from "./_framing.ts";
import { Queue } from "./_queue.ts";
import { type Deferred, deferred, describe, namedError } from "./_util.ts";
import { CommClosedError, ProtocolError } from "./errors.ts";
import { type ByteStream, STREAM_CLOSED } from "./stream_comm.ts";

/**
 * The WebSocket subprotocol of two @x/comm ends: a client offers it, and a
 * listener picks it when offered. Without it, both speak dask's layout.
 *
 * @example A listener picks it when a client offers it
 * ```ts
 * import { listen, WEBSOCKET_PROTOCOL } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("ws://127.0.0.1:0");
 * const socket = new WebSocket(listener.contactAddress, [WEBSOCKET_PROTOCOL]);
 * await new Promise((resolve) => socket.onopen = resolve);
 * assertEquals(socket.protocol, "x-comm");
 * const closed = new Promise((resolve) => socket.onclose = resolve);
 * socket.close();
 * await closed;
 * ```
 */
export const WEBSOCKET_PROTOCOL = "x-comm";

/**
 * The most one WebSocket message carries: 64 MiB less one byte, the most
 * Deno receives in one (it closes the connection on a larger one). A comm
 * message that large or larger goes on in further WebSocket messages.
 *
 * @example A message over the limit crosses a ws comm whole
 * ```ts
 * import { connect, listen, MAX_WEBSOCKET_MESSAGE_BYTES } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("ws://127.0.0.1:0", async (comm) => {
 *   const message = await comm.read() as Uint8Array;
 *   await comm.write(message.length);
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write(new Uint8Array(MAX_WEBSOCKET_MESSAGE_BYTES + 1));
 * assertEquals(await comm.read(), MAX_WEBSOCKET_MESSAGE_BYTES + 1);
 * ```
 */
export const MAX_WEBSOCKET_MESSAGE_BYTES = 64 * 1024 * 1024 - 1;

/** x-comm layout: bytes a sender may have sent that the reader's comm has not read… */
const CREDIT_WINDOW_BYTES = 8 * 1024 * 1024;
/** …and what the reader's comm reads before it gives credit back. */
const CREDIT_GRANT_BYTES = 2 * 1024 * 1024;
/** Unread bytes beyond which an x-comm peer has ignored flow control. */
const X_COMM_UNREAD_LIMIT = CREDIT_WINDOW_BYTES + MAX_WEBSOCKET_MESSAGE_BYTES;
/** dask layout, which has no flow control: unread bytes allowed beyond maxMessageSize. */
const DASK_UNREAD_SLACK = 64 * 1024 * 1024;
/** write() waits while the socket holds more than this unsent… */
const SEND_HIGH_WATER_BYTES = 1024 * 1024;
/** …until it holds this much or less, checking after 1 ms, then less and less often. */
const SEND_LOW_WATER_BYTES = 256 * 1024;
const MAX_DRAIN_POLL_MS = 32;
/** A close reason is limited to 123 bytes of UTF-8. */
const MAX_CLOSE_REASON_BYTES = 123;
const NORMAL_CLOSURE = 1000;
const PROTOCOL_ERROR = 1002;
const UNSUPPORTED_DATA = 1003;
const POLICY_VIOLATION = 1008;
const HELLO_MAX_CHARS = 512;

const CLOSE_CODES: Record<number, string> = {
  1001: "going away",
  1002: "protocol error",
  1003: "unsupported data",
  1007: "invalid data",
  1008: "policy violation",
  1009: "message too big",
  1011: "internal error",
  // What a browser's WebSocket sends for 1002 and 1003, which it may not send.
  4002: "protocol error",
  4003: "unsupported data",
};
/** Added to 1002 and 1003 where the standard WebSocket refuses them (clients). */
const PRIVATE_CODE_OFFSET = 3000;

/** How the bytes of comm messages are laid out in WebSocket messages. */
export type WebSocketLayout = "x-comm" | "dask";

/** How a {@linkcode WebSocketByteStream} starts. */
export interface WebSocketByteStreamInit {
  /** The peer's address, for error messages. */
  peerAddress: string;
  /** The largest message to buffer in the dask layout. */
  maxMessageSize: number;
  /** The layout, when known before the socket opens (the listener's side). */
  layout?: WebSocketLayout;
  /** The listener's side: the text to send as the first message, in the x-comm layout. */
  hello?: string;
}

/** A ByteStream over a WebSocket, in either layout. */
export class WebSocketByteStream implements ByteStream {
  #socket: WebSocket;
  #peerAddress: string;
  #maxMessageSize: number;
  #layout: WebSocketLayout | undefined;
  #hello: string | undefined;
  #awaitingHello = false;
  #opened = deferred<string | undefined>();
  #closed = deferred<void>();
  #closing = false;
  /** Why reading ended: null at an orderly end, undefined while open. */
  #end: Error | null | undefined;
  #lastError = "";

  #received = new Queue<Uint8Array>();
  #offset = 0;
  #wake: Deferred<void> | undefined;
  /** Bytes received that the comm has not read (frames of a dask message coming in included). */
  #unread = 0;
  /** x-comm: bytes read since credit was last given back. */
  #readSinceGrant = 0;
  /** x-comm: bytes sent that the peer has not given credit back for. */
  #inFlight = 0;
  #creditWaiter: Deferred<void> | undefined;

  // The dask layout, reading: the frames of the message coming in.
  #frameCount = -1;
  #frames: Uint8Array[] = [];
  #frameBytes = 0;

  constructor(socket: WebSocket, init: WebSocketByteStreamInit) {
    this.#socket = socket;
    this.#peerAddress = init.peerAddress;
    this.#maxMessageSize = init.maxMessageSize;
    this.#layout = init.layout;
    this.#hello = init.hello;
    this.#opened.promise.catch(() => {});
    socket.binaryType = "arraybuffer";
    // Listening from the start: nothing that arrives before a reader is lost.
    socket.addEventListener("open", () => this.#onOpen());
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("error", (event) => {
      this.#lastError = (event as ErrorEvent).message ?? "";
    });
    socket.addEventListener("close", (event) => this.#onClose(event));
  }

  /**
   * Settles once the socket is open (and, on a client of the x-comm layout,
   * the listener's hello came): with the address the listener sees this end
   * at, when it said. Rejects with an error `connect()` retries when the
   * socket did not open.
   */
  get opened(): Promise<string | undefined> {
    return this.#opened.promise;
  }

  /** Settles once the socket closed all the way; StreamComm's close() waits for it. */
  get [STREAM_CLOSED](): Promise<void> {
    return this.#closed.promise;
  }

  /** The layout in use, once open. */
  get layout(): WebSocketLayout | undefined {
    return this.#layout;
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    while (this.#received.length === 0) {
      if (this.#end === null) return null;
      if (this.#end) throw this.#end;
      this.#wake = deferred<void>();
      await this.#wake.promise;
    }
    const head = this.#received.peek()!;
    const n = Math.min(head.length - this.#offset, buffer.length);
    buffer.set(
      n === head.length ? head : head.subarray(this.#offset, this.#offset + n),
    );
    this.#offset += n;
    if (this.#offset === head.length) {
      this.#received.shift();
      this.#offset = 0;
    }
    this.#unread -= n;
    if (this.#layout === "x-comm") {
      this.#readSinceGrant += n;
      if (this.#readSinceGrant >= CREDIT_GRANT_BYTES) this.#grant();
    }
    return n;
  }

  /** Gives the peer credit for what the comm has read. */
  #grant(): void {
    if (this.#socket.readyState !== WebSocket.OPEN) return;
    this.#socket.send(JSON.stringify({ credit: this.#readSinceGrant }));
    this.#readSinceGrant = 0;
  }

  async write(data: Uint8Array): Promise<number> {
    if (this.#end !== undefined || this.#closing) throw this.#closedError();
    let written: number;
    if (this.#layout === "dask") {
      this.#sendDask(data);
      written = data.length;
    } else {
      while (this.#inFlight >= CREDIT_WINDOW_BYTES) {
        this.#creditWaiter = deferred<void>();
        await this.#creditWaiter.promise;
        if (this.#end !== undefined || this.#closing) throw this.#closedError();
      }
      written = Math.min(data.length, MAX_WEBSOCKET_MESSAGE_BYTES);
      this.#socket.send(written === data.length ? data : data.subarray(0, written));
      this.#inFlight += written;
    }
    // Credit bounds what an x-comm writer has out; toward a peer without
    // flow control, what the socket holds unsent does.
    if (this.#layout === "dask" && this.#socket.bufferedAmount > SEND_HIGH_WATER_BYTES) {
      await this.#drain();
    }
    return written;
  }

  close(reason?: Error): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#end ??= null;
    this.#wakeReader();
    this.#wakeWriter();
    if (this.#socket.readyState === WebSocket.CLOSED) {
      this.#closed.resolve();
      return;
    }
    if (reason instanceof ProtocolError) this.#closeSocket(PROTOCOL_ERROR, reason.message);
    else this.#closeSocket(NORMAL_CLOSURE, "");
  }

  /**
   * Closes the socket with `code` and `reason`. The standard WebSocket (a
   * client's) sends only 1000 and 3000-4999: there 1002 and 1003 go as
   * 4002 and 4003, with the same reason.
   */
  #closeSocket(code: number, reason: string): void {
    const text = truncateReason(reason);
    try {
      this.#socket.close(code, text);
    } catch (error) {
      if (code === NORMAL_CLOSURE || (error as Error)?.name !== "InvalidAccessError") return;
      try {
        this.#socket.close(code + PRIVATE_CODE_OFFSET, text);
      } catch {
        // Closed already.
      }
    }
  }

  #onOpen(): void {
    this.#layout ??= this.#socket.protocol === WEBSOCKET_PROTOCOL ? "x-comm" : "dask";
    if (this.#hello !== undefined) {
      if (this.#layout === "x-comm") {
        this.#socket.send(JSON.stringify({ peer: this.#hello }));
      }
      this.#opened.resolve(undefined);
    } else if (this.#layout === "x-comm") {
      this.#awaitingHello = true;
    } else {
      this.#opened.resolve(undefined);
    }
  }

  #onMessage(event: MessageEvent): void {
    if (this.#end !== undefined) return;
    const data = event.data;
    if (this.#awaitingHello) {
      this.#takeHello(data);
      return;
    }
    if (typeof data === "string") {
      if (this.#layout === "x-comm" && this.#takeCredit(data)) return;
      this.#fail(
        new ProtocolError(
          `"${this.#peerAddress}" sent a text WebSocket message (${describe(data.slice(0, 40))}${
            data.length > 40 ? "…" : ""
          }): a comm carries binary WebSocket messages only`,
        ),
        UNSUPPORTED_DATA,
      );
      return;
    }
    if (!(data instanceof ArrayBuffer)) {
      this.#fail(
        new ProtocolError(`"${this.#peerAddress}" sent ${describe(data)}: expected binary data`),
        UNSUPPORTED_DATA,
      );
      return;
    }
    const bytes = new Uint8Array(data);
    this.#unread += bytes.length;
    const limit = this.#layout === "dask"
      ? this.#maxMessageSize + DASK_UNREAD_SLACK
      : X_COMM_UNREAD_LIMIT;
    if (this.#unread > limit) {
      this.#fail(
        new ProtocolError(
          this.#layout === "dask"
            ? `"${this.#peerAddress}" sent over ${limit} bytes that the comm has not read: without the "${WEBSOCKET_PROTOCOL}" subprotocol a WebSocket peer cannot be slowed down`
            : `"${this.#peerAddress}" sent over ${limit} bytes that the comm has not read, ignoring flow control`,
        ),
        POLICY_VIOLATION,
      );
      return;
    }
    if (this.#layout === "dask") this.#takeDask(bytes);
    else this.#push(bytes);
  }

  /** Takes a credit message from an x-comm peer; false if `text` is not one. */
  #takeCredit(text: string): boolean {
    if (text.length > 40 || !text.startsWith('{"credit":')) return false;
    let credit: unknown;
    try {
      credit = (JSON.parse(text) as { credit?: unknown }).credit;
    } catch {
      return false;
    }
    if (typeof credit !== "number" || !Number.isInteger(credit) || credit <= 0) return false;
    this.#inFlight = Math.max(0, this.#inFlight - credit);
    this.#wakeWriter();
    return true;
  }

  #takeHello(data: unknown): void {
    this.#awaitingHello = false;
    let peer: unknown;
    if (typeof data === "string" && data.length <= HELLO_MAX_CHARS) {
      try {
        peer = (JSON.parse(data) as { peer?: unknown } | null)?.peer;
      } catch {
        // Not JSON: refused below.
      }
    }
    if (typeof peer === "string" && /^wss?:\/\/\S+$/.test(peer)) {
      this.#opened.resolve(peer);
      return;
    }
    const error = new ProtocolError(
      `"${this.#peerAddress}" picked the "${WEBSOCKET_PROTOCOL}" subprotocol but sent ${
        typeof data === "string" ? describe(data.slice(0, 60)) : describe(data)
      } where its hello ({"peer": "ws://…"}) was expected`,
    );
    this.#fail(error, PROTOCOL_ERROR);
    this.#opened.reject(error);
  }

  /** A WebSocket message in dask's layout: a frame count, or a frame. */
  #takeDask(bytes: Uint8Array): void {
    if (this.#frameCount < 0) {
      if (bytes.length !== LENGTH_BYTES) {
        this.#fail(
          new ProtocolError(
            `"${this.#peerAddress}" sent a WebSocket message of ${bytes.length} bytes where a message's 8-byte frame count was expected (dask's layout, as no "${WEBSOCKET_PROTOCOL}" subprotocol was agreed)`,
          ),
          PROTOCOL_ERROR,
        );
        return;
      }
      const count = getU64(new DataView(bytes.buffer, bytes.byteOffset, LENGTH_BYTES), 0);
      if (headerSize(count) + count * FRAME_COST_BYTES > this.#maxMessageSize) {
        this.#fail(
          new ProtocolError(
            `"${this.#peerAddress}" announced a message of ${count} frames, more than maxMessageSize (${this.#maxMessageSize} bytes) allows`,
          ),
          PROTOCOL_ERROR,
        );
        return;
      }
      this.#frameCount = count;
      this.#frames = [];
      this.#frameBytes = 0;
    } else {
      this.#frames.push(bytes);
      this.#frameBytes += bytes.length;
      if (this.#frameBytes > this.#maxMessageSize) {
        this.#fail(
          new ProtocolError(
            `"${this.#peerAddress}" sent a message of over ${this.#frameBytes} bytes, more than maxMessageSize (${this.#maxMessageSize} bytes)`,
          ),
          PROTOCOL_ERROR,
        );
        return;
      }
    }
    if (this.#frames.length < this.#frameCount) return;
    // Whole: the same message in the tcp framing.
    const frames = this.#frames;
    const header = new Uint8Array(headerSize(frames.length));
    writeHeader(new DataView(header.buffer), 0, frames);
    this.#frameCount = -1;
    this.#frames = [];
    this.#unread += header.length;
    this.#received.push(header);
    for (const frame of frames) this.#received.push(frame);
    this.#wakeReader();
  }

  /** Writes one whole message of the tcp framing in dask's layout. */
  #sendDask(data: Uint8Array): void {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const count = getU64(view, 8);
    this.#socket.send(data.subarray(8, FIXED_HEADER_BYTES));
    let at = headerSize(count);
    for (let i = 0; i < count; i++) {
      const length = getU64(view, FIXED_HEADER_BYTES + i * LENGTH_BYTES);
      this.#socket.send(data.subarray(at, at + length));
      at += length;
    }
  }

  #push(bytes: Uint8Array): void {
    this.#received.push(bytes);
    this.#wakeReader();
  }

  #wakeReader(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.resolve();
  }

  /** Wakes a write waiting for credit (it checks again whether it may send). */
  #wakeWriter(): void {
    const waiter = this.#creditWaiter;
    this.#creditWaiter = undefined;
    waiter?.resolve();
  }

  /** Ends reading with `error`, and closes the socket telling the peer why. */
  #fail(error: Error, code: number): void {
    if (this.#end !== undefined) return;
    this.#end = error;
    this.#wakeReader();
    this.#wakeWriter();
    if (this.#closing) return;
    this.#closing = true;
    this.#closeSocket(code, error.message);
  }

  #onClose(event: CloseEvent): void {
    if (this.#end === undefined) {
      const orderly = event.code === NORMAL_CLOSURE || event.code === 1001 ||
        (event.code === 1005 && event.wasClean);
      this.#end = !orderly
        ? new Error(describeClose(event, this.#lastError))
        : this.#frameCount >= 0
        // The tcp framing would see the stream end inside a message; here the
        // frames of one are held back until all came.
        ? new Error(
          `the peer closed the WebSocket after ${this.#frames.length} of the ${this.#frameCount} frames of a message`,
        )
        : null;
    }
    this.#wakeWriter();
    // Does nothing once opened.
    this.#opened.reject(this.#openError(event));
    this.#awaitingHello = false;
    this.#wakeReader();
    this.#closed.resolve();
  }

  /** Why the socket closed before it opened, as an error connect() may retry. */
  #openError(event: CloseEvent): Error {
    const detail = this.#lastError.replace(/^NetworkError: failed to connect to WebSocket: /, "") ||
      describeClose(event, "");
    // A browser says nothing more (nothing listening, an upgrade refused
    // and an untrusted certificate look alike); Deno names a refused dial,
    // and a listener closing or too busy answers 503. Deno's wss goes over
    // HTTP/2 where the server offers it, and its opening request now and
    // then meets an HTTP/2 stream error ("stream error received:
    // unspecific protocol error detected"); a new attempt gets through.
    if (
      this.#lastError === "" ||
      /tcp connect error|refused|reset|status code: 503|stream error received/i.test(detail)
    ) {
      return namedError(
        "ConnectionRefused",
        this.#lastError === ""
          ? "the WebSocket did not open (the runtime does not say why: nothing listening, an upgrade refused, or a certificate not trusted)"
          : `the WebSocket did not open: ${detail}`,
      );
    }
    return new Error(`the WebSocket did not open: ${detail}`);
  }

  /** Waits for the socket to send what it holds (the WebSocket API has no event for it). */
  async #drain(): Promise<void> {
    for (let wait = 1; this.#socket.bufferedAmount > SEND_LOW_WATER_BYTES;) {
      // What was sent is the socket's now, as on a byte stream once written:
      // a peer that read it and closed does not fail the write.
      if (this.#end !== undefined || this.#closing) return;
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, MAX_DRAIN_POLL_MS);
    }
  }

  #closedError(): Error {
    return this.#end ?? new CommClosedError(`The WebSocket to "${this.#peerAddress}" is closed`);
  }
}

/** What a close event says, for an error message. */
function describeClose(event: CloseEvent, lastError: string): string {
  if (event.code === 1006 || event.code === 0) {
    return `the connection dropped without a closing handshake${
      lastError ? ` (${lastError})` : ""
    }`;
  }
  const name = CLOSE_CODES[event.code];
  return `the peer closed the WebSocket with code ${event.code}${name ? ` (${name})` : ""}${
    event.reason ? `: ${event.reason}` : ""
  }`;
}

/** `text` cut to what a close frame's reason can hold. */
function truncateReason(text: string): string {
  const encoder = new TextEncoder();
  if (encoder.encode(text).length <= MAX_CLOSE_REASON_BYTES) return text;
  let cut = text.slice(0, MAX_CLOSE_REASON_BYTES - 1);
  while (encoder.encode(`${cut}…`).length > MAX_CLOSE_REASON_BYTES) cut = cut.slice(0, -1);
  return `${cut}…`;
}
