// Python's multiprocessing.connection framing over a byte stream
// (Lib/multiprocessing/connection.py, Connection._send_bytes/_recv_bytes):
//
//   i32 length      big-endian, signed
//   u64 length      big-endian, only when the first word is -1 (messages of
//                   more than 0x7fffffff bytes)
//   message bytes
//
// One message is one frame of raw bytes.

import {
  allocateFrame,
  formatSize,
  type FrameReaderOptions,
  type Framing,
  type MessageReader,
  MIN_READ_BYTES,
  movePending,
  READ_CHUNK_BYTES,
} from "./_framing.ts";
import { ProtocolError } from "./errors.ts";
import { describe } from "./_util.ts";

/** Largest length written in the 4-byte form, as CPython does. */
const MAX_SHORT_LENGTH = 0x7fffffff;
const TWO_POW_32 = 2 ** 32;
/** High words at or above this make a value larger than 2^53. */
const MAX_SAFE_HIGH_WORD = 2 ** 21;

function onlyFrame(frames: readonly Uint8Array[]): Uint8Array {
  if (frames.length !== 1) {
    throw new TypeError(
      `multiprocessing framing carries one frame per message, not ${frames.length}`,
    );
  }
  return frames[0];
}

/** Python multiprocessing.connection's framing. */
export const MULTIPROCESSING_FRAMING: Framing = {
  headerSize(frames) {
    return onlyFrame(frames).byteLength > MAX_SHORT_LENGTH ? 12 : 4;
  },
  writeHeader(view, offset, frames) {
    const length = onlyFrame(frames).byteLength;
    if (length <= MAX_SHORT_LENGTH) {
      view.setInt32(offset, length, false);
      return 4;
    }
    view.setInt32(offset, -1, false);
    view.setUint32(offset + 4, Math.floor(length / TWO_POW_32), false);
    view.setUint32(offset + 8, length % TWO_POW_32, false);
    return 12;
  },
  createReader: (maxMessageSize, options) => new MpFrameReader(maxMessageSize, options),
};

/**
 * Cuts multiprocessing-framed messages out of a byte stream. As the dask
 * reader does, it hands out views of its read buffer, and reads a large
 * message that has not all arrived straight into a buffer of its own (from
 * `allocate` when given), made when the next read needs it.
 */
export class MpFrameReader implements MessageReader {
  maxMessageSize: number;
  #directFrameBytes: number;
  #allocate: ((size: number) => Uint8Array) | undefined;
  #buffer = new Uint8Array(READ_CHUNK_BYTES);
  #view = new DataView(this.#buffer.buffer);
  #start = 0;
  #end = 0;
  /** Bytes the message at #start needs in all, once its header was read. */
  #needed = 0;
  #messageBytes = 0;
  /** The length of a large message read into its own buffer, and its header's. */
  #directLength = 0;
  #headerBytes = 0;
  #directPending = false;
  #direct: Uint8Array | undefined;
  #directFilled = 0;

  constructor(maxMessageSize: number, options: FrameReaderOptions = {}) {
    this.maxMessageSize = maxMessageSize;
    this.#directFrameBytes = options.directFrameBytes ?? 64 * 1024;
    this.#allocate = options.allocate;
  }

  get pendingBytes(): number {
    if (this.#direct) return this.#headerBytes + this.#directFilled;
    const buffered = this.#end - this.#start;
    return this.#directPending ? this.#headerBytes + buffered : buffered;
  }

  get neededBytes(): number {
    return this.#direct || this.#directPending
      ? this.#headerBytes + this.#directLength
      : this.#needed;
  }

  get messageBytes(): number {
    return this.#messageBytes;
  }

  space(): Uint8Array {
    if (this.#directPending) {
      // What already arrived is copied in; the rest is read straight into it.
      const target = allocateFrame(this.#allocate, this.#directLength, this.#buffer);
      target.set(this.#buffer.subarray(this.#start, this.#end));
      this.#directFilled = this.#end - this.#start;
      this.#start = this.#end;
      this.#direct = target;
      this.#directPending = false;
    }
    if (this.#direct) return this.#direct.subarray(this.#directFilled);
    const pending = this.#end - this.#start;
    const wanted = Math.max(this.#needed, pending + MIN_READ_BYTES);
    if (this.#start + wanted > this.#buffer.length) {
      const fresh = movePending(this.#buffer, this.#start, this.#end, wanted);
      this.#buffer = fresh;
      this.#view = new DataView(fresh.buffer);
      this.#start = 0;
      this.#end = pending;
    }
    return this.#buffer.subarray(this.#end);
  }

  commit(n: number): void {
    if (this.#direct) this.#directFilled += n;
    else this.#end += n;
  }

  next(): Uint8Array[] | undefined {
    const direct = this.#direct;
    if (direct) {
      if (this.#directFilled < direct.length) return undefined;
      this.#direct = undefined;
      this.#messageBytes = this.#headerBytes + direct.length;
      return [direct];
    }
    if (this.#directPending) return undefined;
    const available = this.#end - this.#start;
    if (available < 4 || available < this.#needed) return undefined;
    const view = this.#view;
    const start = this.#start;
    let length = view.getInt32(start, false);
    let header = 4;
    if (length === -1) {
      if (available < 12) {
        this.#needed = 12;
        return undefined;
      }
      const high = view.getUint32(start + 4, false);
      length = high >= MAX_SAFE_HIGH_WORD
        ? Infinity
        : high * TWO_POW_32 + view.getUint32(start + 8, false);
      header = 12;
    } else if (length < 0) {
      throw new ProtocolError(
        `Peer sent a message length of ${length}: multiprocessing framing allows -1 (a long length follows) and sizes from 0`,
      );
    }
    const max = this.maxMessageSize;
    if (length > max) {
      throw new ProtocolError(
        `Peer announced a message of ${
          formatSize(length)
        } bytes, more than maxMessageSize (${max}): raise maxMessageSize if the peer is trusted`,
      );
    }
    const size = header + length;
    if (available >= size) {
      let frame: Uint8Array = this.#buffer.subarray(start + header, start + size);
      if (this.#allocate && length >= this.#directFrameBytes) {
        const target = allocateFrame(this.#allocate, length, this.#buffer);
        target.set(frame);
        frame = target;
      }
      this.#start += size;
      this.#needed = 0;
      this.#messageBytes = size;
      if (this.#start === this.#end && this.#buffer.length - this.#end < MIN_READ_BYTES) {
        this.#buffer = new Uint8Array(READ_CHUNK_BYTES);
        this.#view = new DataView(this.#buffer.buffer);
        this.#start = this.#end = 0;
      }
      return [frame];
    }
    if (length >= this.#directFrameBytes) {
      this.#start += header;
      this.#headerBytes = header;
      this.#directLength = length;
      this.#directPending = true;
      this.#needed = 0;
      return undefined;
    }
    this.#needed = size;
    return undefined;
  }
}

/**
 * The codec of the multiprocessing framing: a message is its bytes. Any
 * binary (a typed array, a DataView, an ArrayBuffer) can be written; what
 * is read is a `Uint8Array`.
 */
export const BYTES_CODEC = {
  firstFrameShared: false,
  encode(message: unknown): Uint8Array[] {
    if (message instanceof Uint8Array) return [message];
    if (ArrayBuffer.isView(message)) {
      return [new Uint8Array(message.buffer, message.byteOffset, message.byteLength)];
    }
    if (message instanceof ArrayBuffer) return [new Uint8Array(message)];
    throw new TypeError(
      `the multiprocessing framing carries bytes: write a Uint8Array, not ${describe(message)}`,
    );
  },
  decode(frames: readonly Uint8Array[]): unknown {
    return frames[0];
  },
};
