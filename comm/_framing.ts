// dask's frames over a byte stream (distributed/comm/tcp.py, protocol/utils.py):
//
//   u64 total       bytes that follow (2022 dask: all of the message; 2023.11+
//                   dask: only the prelude and the first frames)
//   u64 count       number of frames
//   u64 length × count
//   frame bytes × count
//
// Every integer is little-endian. The reader bounds every length by
// maxMessageSize before it allocates, and trusts the per-frame lengths (not
// `total`) for where a message ends, so that both dask generations read.

import { ProtocolError } from "./errors.ts";
import { describe, messageOf } from "./_util.ts";

/** The `allocate` option failed: the caller's doing, not the peer's. */
export class AllocateError extends Error {
  override name = "AllocateError";
}

/** Bytes of the `total` and `count` words at the start of every message. */
export const FIXED_HEADER_BYTES = 16;
/** Bytes of one frame length in the prelude. */
export const LENGTH_BYTES = 8;
/** Size of a fresh read buffer: several small messages per read syscall. */
export const READ_CHUNK_BYTES = 256 * 1024;
/**
 * What each frame costs against maxMessageSize besides its bytes: the view
 * made for it. Without it, a header of millions of empty frames that is
 * legal by size would take many times that size in memory.
 */
export const FRAME_COST_BYTES = 256;
/** Below this much free space, the next read goes into a fresh buffer. */
export const MIN_READ_BYTES = 16 * 1024;
const TWO_POW_32 = 2 ** 32;
/** High words at or above this make a value larger than 2^53. */
const MAX_SAFE_HIGH_WORD = 2 ** 21;

/** Size of the header (total, count and lengths) for `count` frames. */
export function headerSize(count: number): number {
  return FIXED_HEADER_BYTES + LENGTH_BYTES * count;
}

/** Writes `value` (a safe non-negative integer) as a little-endian u64. */
export function setU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % TWO_POW_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_POW_32), true);
}

/** Reads a little-endian u64; values above 2^53 read as `Infinity`. */
export function getU64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high >= MAX_SAFE_HIGH_WORD) return Infinity;
  return high * TWO_POW_32 + view.getUint32(offset, true);
}

/**
 * Writes the header of a message made of `frames` at `offset` of `view`, in
 * the 2022 dask form (the total covers the prelude and every frame).
 *
 * @returns The number of bytes written.
 */
export function writeHeader(
  view: DataView,
  offset: number,
  frames: readonly Uint8Array[],
): number {
  const count = frames.length;
  let total = LENGTH_BYTES * (1 + count);
  for (let i = 0; i < count; i++) total += frames[i].byteLength;
  setU64(view, offset, total);
  setU64(view, offset + 8, count);
  let at = offset + FIXED_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    setU64(view, at, frames[i].byteLength);
    at += LENGTH_BYTES;
  }
  return at - offset;
}

/** Cuts messages out of a byte stream: what StreamComm needs of a framing. */
export interface MessageReader {
  /** The largest message accepted; may be changed between messages. */
  maxMessageSize: number;
  /** Bytes received that do not yet form a whole message. */
  readonly pendingBytes: number;
  /** Bytes the incomplete message needs in all, or 0 if not yet known. */
  readonly neededBytes: number;
  /** Bytes of the message that `next()` returned last, headers included. */
  readonly messageBytes: number;
  /** Where the next read should put its bytes. */
  space(): Uint8Array;
  /** Records that `n` bytes were read into the last `space()`. */
  commit(n: number): void;
  /** The frames of the next whole message, or `undefined` when more bytes are needed. */
  next(): Uint8Array[] | undefined;
}

/** A wire framing: how message headers are written and messages read. */
export interface Framing {
  /** Bytes of the header for a message of `frames`. */
  headerSize(frames: readonly Uint8Array[]): number;
  /** Writes the header of a message of `frames`; returns its size. */
  writeHeader(view: DataView, offset: number, frames: readonly Uint8Array[]): number;
  /** A reader of messages in this framing. */
  createReader(maxMessageSize: number, options?: FrameReaderOptions): MessageReader;
}

/** Options of a {@linkcode FrameReader} beyond `maxMessageSize`. */
export interface FrameReaderOptions {
  /**
   * Frames after the first of at least this many bytes are received into
   * buffers of their own, from `allocate` when given; smaller frames stay in
   * the shared read buffer.
   */
  directFrameBytes?: number;
  /** Where large frames are received; by default a fresh buffer each. */
  allocate?: (size: number) => Uint8Array;
}

/**
 * Cuts messages out of a byte stream.
 *
 * Bytes are read straight into {@linkcode FrameReader.space} and handed out as
 * views, never copied twice: a buffer is only written past the bytes already
 * handed out, so decoded messages may keep views into it.
 *
 * A message holding a large frame after the first (a binary payload) is taken
 * frame by frame: once the reader reaches that frame, `space()` is the frame's
 * own buffer, so the payload is read in place (into the caller's memory when
 * `allocate` is given) and the message never needs one buffer for all of it.
 */
export class FrameReader implements MessageReader {
  #maxMessageSize: number;
  #directFrameBytes: number;
  #allocate: ((size: number) => Uint8Array) | undefined;
  #buffer: Uint8Array;
  #view: DataView;
  #start = 0;
  #end = 0;
  /** Bytes needed at #start: of the whole message, or of the frame being assembled. */
  #needed = 0;
  #messageBytes = 0;

  // A message taken frame by frame.
  #frames: Uint8Array[] | undefined;
  #lengths: number[] = [];
  #index = 0;
  /** Bytes of the message already placed in #frames, its header included. */
  #assembled = 0;
  #assemblySize = 0;
  /** The buffer that the frame at #index is being read into, if its own. */
  #direct: Uint8Array | undefined;
  #directFilled = 0;
  /** Whether the frame at #index gets its own buffer once space() is asked. */
  #directPending = false;

  constructor(maxMessageSize: number, options: FrameReaderOptions = {}) {
    this.#maxMessageSize = maxMessageSize;
    this.#directFrameBytes = options.directFrameBytes ?? 64 * 1024;
    this.#allocate = options.allocate;
    this.#buffer = new Uint8Array(READ_CHUNK_BYTES);
    this.#view = new DataView(this.#buffer.buffer);
  }

  /** The largest message accepted; may be changed between messages. */
  get maxMessageSize(): number {
    return this.#maxMessageSize;
  }

  set maxMessageSize(value: number) {
    this.#maxMessageSize = value;
  }

  /** Bytes received that do not yet form a whole message. */
  get pendingBytes(): number {
    const buffered = this.#end - this.#start;
    return this.#frames ? this.#assembled + this.#directFilled + buffered : buffered;
  }

  /** Bytes of the message that {@linkcode next} returned last, headers included. */
  get messageBytes(): number {
    return this.#messageBytes;
  }

  /** Bytes the incomplete message needs in all, or 0 if not yet known. */
  get neededBytes(): number {
    return this.#frames ? this.#assemblySize : this.#needed;
  }

  /** Where the next read should put its bytes. */
  space(): Uint8Array {
    if (this.#directPending) this.#openDirect();
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

  /** Records that `n` bytes were read into the last {@linkcode space}. */
  commit(n: number): void {
    const direct = this.#direct;
    if (direct === undefined) {
      this.#end += n;
      return;
    }
    this.#directFilled += n;
    if (this.#directFilled === direct.length) {
      this.#frames![this.#index++] = direct;
      this.#assembled += direct.length;
      this.#direct = undefined;
      this.#directFilled = 0;
    }
  }

  /**
   * Returns the frames of the next whole message, or `undefined` when more
   * bytes are needed.
   *
   * @throws {ProtocolError} If the header breaks the protocol or announces
   * more than `maxMessageSize` bytes.
   * @throws {AllocateError} If `allocate` throws or returns less than asked for.
   */
  next(): Uint8Array[] | undefined {
    if (this.#frames) return this.#assemble();
    const available = this.#end - this.#start;
    if (this.#needed !== 0 && available < this.#needed) return undefined;
    if (available < FIXED_HEADER_BYTES) return undefined;
    const view = this.#view;
    const start = this.#start;
    const max = this.#maxMessageSize;
    const total = getU64(view, start);
    if (total > max) {
      throw new ProtocolError(
        `Peer announced a message of ${
          formatSize(total)
        } bytes, more than maxMessageSize (${max}): raise maxMessageSize if the peer is trusted`,
      );
    }
    const count = getU64(view, start + 8);
    if (count * FRAME_COST_BYTES > max) {
      throw new ProtocolError(
        `Peer announced ${
          formatSize(count)
        } frames in one message, more than maxMessageSize (${max}) allows at ${FRAME_COST_BYTES} bytes a frame`,
      );
    }
    if (count === 0 || LENGTH_BYTES * (1 + count) > total) {
      throw new ProtocolError(
        `Peer sent a malformed message header: ${
          formatSize(count)
        } frames cannot fit in the ${total} bytes announced`,
      );
    }
    const prelude = headerSize(count);
    if (available < prelude) {
      this.#needed = prelude;
      return undefined;
    }
    let size = prelude;
    let direct = false;
    let at = start + FIXED_HEADER_BYTES;
    for (let i = 0; i < count; i++, at += LENGTH_BYTES) {
      const length = getU64(view, at);
      size += length;
      if (i > 0 && length >= this.#directFrameBytes) direct = true;
    }
    if (size - LENGTH_BYTES > max) {
      throw new ProtocolError(
        `Peer sent frame lengths adding up to ${
          formatSize(size - prelude)
        } bytes, more than maxMessageSize (${max}): raise maxMessageSize if the peer is trusted`,
      );
    }
    if (direct && (available < size || this.#allocate)) {
      // Take it frame by frame, large frames into buffers of their own.
      const lengths = new Array<number>(count);
      at = start + FIXED_HEADER_BYTES;
      for (let i = 0; i < count; i++, at += LENGTH_BYTES) lengths[i] = getU64(view, at);
      this.#lengths = lengths;
      this.#frames = new Array<Uint8Array>(count);
      this.#index = 0;
      this.#assembled = prelude;
      this.#assemblySize = size;
      this.#start = start + prelude;
      this.#needed = 0;
      return this.#assemble();
    }
    if (available < size) {
      this.#needed = size;
      return undefined;
    }
    const frames = new Array<Uint8Array>(count);
    let offset = start + prelude;
    at = start + FIXED_HEADER_BYTES;
    for (let i = 0; i < count; i++, at += LENGTH_BYTES) {
      const length = getU64(view, at);
      frames[i] = this.#buffer.subarray(offset, offset + length);
      offset += length;
    }
    this.#start = offset;
    this.#needed = 0;
    this.#messageBytes = size;
    this.#freshenIfSpent();
    return frames;
  }

  /** Places the frames of a message taken frame by frame, as far as received. */
  #assemble(): Uint8Array[] | undefined {
    if (this.#direct || this.#directPending) return undefined;
    const frames = this.#frames!;
    const lengths = this.#lengths;
    while (this.#index < frames.length) {
      const length = lengths[this.#index];
      const start = this.#start;
      const available = this.#end - start;
      if (this.#index > 0 && length >= this.#directFrameBytes) {
        if (available < length) {
          // Its own buffer, made by the next space(): not before the comm
          // wants more bytes, so that a paused reader allocates nothing.
          this.#directPending = true;
          this.#needed = 0;
          return undefined;
        }
        const here = this.#buffer.subarray(start, start + length);
        if (this.#allocate) {
          const target = allocateFrame(this.#allocate, length, this.#buffer, frames, this.#index);
          target.set(here);
          frames[this.#index++] = target;
        } else {
          frames[this.#index++] = here;
        }
      } else if (available >= length) {
        frames[this.#index++] = this.#buffer.subarray(start, start + length);
      } else {
        this.#needed = length;
        return undefined;
      }
      this.#start += length;
      this.#assembled += length;
    }
    this.#frames = undefined;
    this.#lengths = [];
    this.#needed = 0;
    this.#messageBytes = this.#assemblySize;
    this.#freshenIfSpent();
    return frames;
  }

  /**
   * Gives the frame at #index its own buffer: what already arrived is
   * copied in, the rest is read straight into it.
   */
  #openDirect(): void {
    const length = this.#lengths[this.#index];
    const target = allocateFrame(this.#allocate, length, this.#buffer, this.#frames!, this.#index);
    const n = this.#end - this.#start;
    target.set(this.#buffer.subarray(this.#start, this.#end));
    this.#start = this.#end;
    this.#direct = target;
    this.#directFilled = n;
    this.#directPending = false;
  }

  /**
   * With nothing pending and little room left, the next read goes into a
   * fresh buffer rather than copy a tail later.
   */
  #freshenIfSpent(): void {
    if (this.#start === this.#end && this.#buffer.length - this.#end < MIN_READ_BYTES) {
      this.#buffer = new Uint8Array(READ_CHUNK_BYTES);
      this.#view = new DataView(this.#buffer.buffer);
      this.#start = this.#end = 0;
    }
  }
}

/**
 * A fresh read buffer with room for `wanted` bytes, holding the pending
 * bytes `[start, end)` of `buffer` at its start. Handed-out views of the old
 * buffer stay intact; a large frame is then read in place.
 */
export function movePending(
  buffer: Uint8Array,
  start: number,
  end: number,
  wanted: number,
): Uint8Array<ArrayBuffer> {
  const fresh = new Uint8Array(Math.max(wanted, READ_CHUNK_BYTES));
  fresh.set(buffer.subarray(start, end));
  return fresh;
}

/**
 * A buffer of exactly `length` bytes for a large frame: from `allocate`
 * when given (a view of what it returns), else fresh. What `allocate`
 * returns must not be the memory the reader reads into, nor overlap a frame
 * already placed in this message (`placed[0..count)`).
 *
 * @throws {AllocateError} If `allocate` throws, returns too little, or
 * returns memory in use.
 */
export function allocateFrame(
  allocate: ((size: number) => Uint8Array) | undefined,
  length: number,
  readBuffer?: Uint8Array,
  placed: readonly Uint8Array[] = [],
  count = 0,
): Uint8Array {
  if (!allocate) return new Uint8Array(length);
  let buffer: Uint8Array;
  try {
    buffer = allocate(length);
  } catch (error) {
    throw new AllocateError(`allocate(${length}) threw: ${messageOf(error)}`, { cause: error });
  }
  if (!(buffer instanceof Uint8Array) || buffer.length < length) {
    throw new AllocateError(
      `allocate(${length}) returned ${
        buffer instanceof Uint8Array ? `${buffer.length} bytes` : describe(buffer)
      }: it must return a Uint8Array of at least the size asked for`,
    );
  }
  const target = buffer.length === length ? buffer : buffer.subarray(0, length);
  if (readBuffer && target.buffer === readBuffer.buffer) {
    throw new AllocateError(
      `allocate(${length}) returned memory the comm reads into (a small binary received earlier?): recycle only buffers that allocate gave`,
    );
  }
  for (let i = 0; i < count; i++) {
    const frame = placed[i];
    if (
      frame.buffer === target.buffer &&
      frame.byteOffset < target.byteOffset + length &&
      target.byteOffset < frame.byteOffset + frame.byteLength
    ) {
      throw new AllocateError(
        `allocate(${length}) returned memory that holds frame ${i} of the same message: it must give memory nothing else uses`,
      );
    }
  }
  return target;
}

export function formatSize(value: number): string {
  return value === Infinity ? "more than 2^53" : String(value);
}

/** dask's framing (the default). */
export const DASK_FRAMING: Framing = {
  headerSize: (frames) => headerSize(frames.length),
  writeHeader,
  createReader: (maxMessageSize, options) => new FrameReader(maxMessageSize, options),
};
