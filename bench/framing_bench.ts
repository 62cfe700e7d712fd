/**
 * Micro-benchmarks of dask's byte-stream framing (`comm/_framing.ts`): cutting
 * messages out of received bytes with `FrameReader` (many small messages per
 * read; one message dribbled in 1-byte and 1400-byte reads) against a naive
 * reader written here (DataView + BigInt + copied frames), and `writeHeader`
 * against the same header written with `setBigUint64`.
 *
 * Run: `deno bench bench/framing_bench.ts` (or `deno bench bench/` for all).
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { Encoder } from "@msgpack/msgpack";
import { FrameReader, getU64, headerSize, setU64, writeHeader } from "../comm/_framing.ts";

/** The default `maxMessageSize` of the stream transports: 1 GiB. */
const MAX_MESSAGE_SIZE = 2 ** 30;
/** What one socket read hands over when many messages are queued. */
const SOCKET_READ_BYTES = 64 * 1024;
/** About one TCP segment's payload. */
const SEGMENT_BYTES = 1400;

/** Every bench adds what it produced here, so that no work can be dropped. */
let sink = 0;

/** One framed message: the header then the frames, as a peer sends it. */
function frame(frames: readonly Uint8Array[]): Uint8Array {
  let size = headerSize(frames.length);
  for (const f of frames) size += f.byteLength;
  const out = new Uint8Array(size);
  let at = writeHeader(new DataView(out.buffer), 0, frames);
  for (const f of frames) {
    out.set(f, at);
    at += f.byteLength;
  }
  return out;
}

/**
 * The reader anyone would write first: bytes appended to a growing buffer,
 * lengths read with BigInt, each frame copied out with `slice` (views with
 * `copy: false`).
 */
class NaiveReader {
  #buffer = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  #copy: boolean;

  constructor(copy = true) {
    this.#copy = copy;
  }

  push(bytes: Uint8Array): void {
    if (this.#end + bytes.length > this.#buffer.length) {
      const pending = this.#end - this.#start;
      if (pending + bytes.length <= this.#buffer.length / 2) {
        this.#buffer.copyWithin(0, this.#start, this.#end);
      } else {
        const fresh = new Uint8Array(
          Math.max(2 * this.#buffer.length, 2 * (pending + bytes.length)),
        );
        fresh.set(this.#buffer.subarray(this.#start, this.#end));
        this.#buffer = fresh;
      }
      this.#start = 0;
      this.#end = pending;
    }
    this.#buffer.set(bytes, this.#end);
    this.#end += bytes.length;
  }

  next(): Uint8Array[] | undefined {
    const available = this.#end - this.#start;
    if (available < 16) return undefined;
    const view = new DataView(this.#buffer.buffer, this.#start, available);
    const count = Number(view.getBigUint64(8, true));
    const prelude = 16 + 8 * count;
    if (available < prelude) return undefined;
    let size = prelude;
    for (let i = 0; i < count; i++) size += Number(view.getBigUint64(16 + 8 * i, true));
    if (available < size) return undefined;
    const frames: Uint8Array[] = [];
    let at = this.#start + prelude;
    for (let i = 0; i < count; i++) {
      const length = Number(view.getBigUint64(16 + 8 * i, true));
      frames.push(
        this.#copy ? this.#buffer.slice(at, at + length) : this.#buffer.subarray(at, at + length),
      );
      at += length;
    }
    this.#start += size;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return frames;
  }
}

/** Feeds `bytes` to a FrameReader in reads of `readSize`; returns frame bytes seen. */
function feedFrameReader(reader: FrameReader, bytes: Uint8Array, readSize: number): number {
  let seen = 0;
  for (let pos = 0; pos < bytes.length;) {
    const space = reader.space();
    const n = Math.min(space.length, readSize, bytes.length - pos);
    space.set(bytes.subarray(pos, pos + n));
    reader.commit(n);
    pos += n;
    let frames: Uint8Array[] | undefined;
    while ((frames = reader.next()) !== undefined) seen += frames[frames.length - 1].byteLength;
  }
  return seen;
}

/** Feeds `bytes` to a NaiveReader in reads of `readSize`; returns frame bytes seen. */
function feedNaive(reader: NaiveReader, bytes: Uint8Array, readSize: number): number {
  let seen = 0;
  for (let pos = 0; pos < bytes.length;) {
    const n = Math.min(readSize, bytes.length - pos);
    reader.push(bytes.subarray(pos, pos + n));
    pos += n;
    let frames: Uint8Array[] | undefined;
    while ((frames = reader.next()) !== undefined) seen += frames[frames.length - 1].byteLength;
  }
  return seen;
}

/** Runs `feed` and collects the messages it cuts out, for the sanity checks. */
function collect(
  feedOne: (onMessage: (frames: Uint8Array[]) => void) => void,
): Uint8Array[][] {
  const messages: Uint8Array[][] = [];
  feedOne((frames) => messages.push(frames.map((f) => f.slice())));
  return messages;
}

function readAllFrameReader(bytes: Uint8Array, readSize: number): Uint8Array[][] {
  const reader = new FrameReader(MAX_MESSAGE_SIZE);
  return collect((onMessage) => {
    for (let pos = 0; pos < bytes.length;) {
      const space = reader.space();
      const n = Math.min(space.length, readSize, bytes.length - pos);
      space.set(bytes.subarray(pos, pos + n));
      reader.commit(n);
      pos += n;
      let frames: Uint8Array[] | undefined;
      while ((frames = reader.next()) !== undefined) onMessage(frames);
    }
  });
}

function readAllNaive(bytes: Uint8Array, readSize: number, copy: boolean): Uint8Array[][] {
  const reader = new NaiveReader(copy);
  return collect((onMessage) => {
    for (let pos = 0; pos < bytes.length;) {
      const n = Math.min(readSize, bytes.length - pos);
      reader.push(bytes.subarray(pos, pos + n));
      pos += n;
      let frames: Uint8Array[] | undefined;
      while ((frames = reader.next()) !== undefined) onMessage(frames);
    }
  });
}

// ---- many small messages in one 256 KiB chunk ----

const encoder = new Encoder();
const smallMessages: Uint8Array[][] = [];
const chunk = new Uint8Array(256 * 1024);
let chunkBytes = 0;
for (let i = 0;; i++) {
  const frames = [encoder.encode({ op: "data", i, key: `x-${i}`, values: [1, 2.5, "s"] })];
  const framed = frame(frames);
  if (chunkBytes + framed.length > chunk.length) break;
  chunk.set(framed, chunkBytes);
  chunkBytes += framed.length;
  smallMessages.push(frames);
}
const smallChunk = chunk.subarray(0, chunkBytes);
const smallChunkFrameBytes = smallMessages.reduce((sum, [body]) => sum + body.length, 0);

assertEquals(readAllFrameReader(smallChunk, SOCKET_READ_BYTES), smallMessages);
assertEquals(readAllFrameReader(smallChunk, SEGMENT_BYTES), smallMessages);
assertEquals(readAllNaive(smallChunk, SOCKET_READ_BYTES, true), smallMessages);
assertEquals(readAllNaive(smallChunk, SOCKET_READ_BYTES, false), smallMessages);

// One reader per contestant, fed the chunk again and again like a long stream
// (the chunk ends on a message boundary).
const smallFrameReader = new FrameReader(MAX_MESSAGE_SIZE);
const smallNaiveCopy = new NaiveReader(true);
const smallNaiveViews = new NaiveReader(false);
for (
  const seen of [
    feedFrameReader(smallFrameReader, smallChunk, SOCKET_READ_BYTES),
    feedNaive(smallNaiveCopy, smallChunk, SOCKET_READ_BYTES),
    feedNaive(smallNaiveViews, smallChunk, SOCKET_READ_BYTES),
  ]
) {
  assertEquals(seen, smallChunkFrameBytes);
}

const smallGroup = `parse small messages (${smallMessages.length} in ${
  Math.round(chunkBytes / 1024)
} KiB, 64 KiB reads)`;

Deno.bench({
  name: "naive: BigInt lengths, frames copied",
  group: smallGroup,
  baseline: true,
  fn() {
    sink += feedNaive(smallNaiveCopy, smallChunk, SOCKET_READ_BYTES);
  },
});

Deno.bench({
  name: "naive: BigInt lengths, frames as views",
  group: smallGroup,
  fn() {
    sink += feedNaive(smallNaiveViews, smallChunk, SOCKET_READ_BYTES);
  },
});

Deno.bench({
  name: "FrameReader",
  group: smallGroup,
  fn() {
    sink += feedFrameReader(smallFrameReader, smallChunk, SOCKET_READ_BYTES);
  },
});

// ---- one message split into tiny reads ----

const binary = new Uint8Array(16 * 1024);
for (let i = 0; i < binary.length; i++) binary[i] = (i * 31) & 0xff;
const splitFrames = [
  encoder.encode({ op: "put", key: "x-1", data: { __Serialized__: 1 } }),
  encoder.encode({ serializer: "dask", type: "bytes", "num-sub-frames": 1 }),
  binary,
];
const splitMessage = frame(splitFrames);

for (const readSize of [1, 7, SEGMENT_BYTES]) {
  assertEquals(readAllFrameReader(splitMessage, readSize), [splitFrames]);
  assertEquals(readAllNaive(splitMessage, readSize, true), [splitFrames]);
}

const splitFrameReader = new FrameReader(MAX_MESSAGE_SIZE);
const splitNaive = new NaiveReader(true);
const splitGroup = `parse a ${
  (splitMessage.length / 1024).toFixed(1)
} KiB 3-frame message split into 1-byte and 1400-byte reads`;

Deno.bench({
  name: "FrameReader, 1400-byte reads",
  group: splitGroup,
  baseline: true,
  fn() {
    sink += feedFrameReader(splitFrameReader, splitMessage, SEGMENT_BYTES);
  },
});

Deno.bench({
  name: "naive, 1400-byte reads",
  group: splitGroup,
  fn() {
    sink += feedNaive(splitNaive, splitMessage, SEGMENT_BYTES);
  },
});

Deno.bench({
  name: "FrameReader, 1-byte reads",
  group: splitGroup,
  fn() {
    sink += feedFrameReader(splitFrameReader, splitMessage, 1);
  },
});

Deno.bench({
  name: "naive, 1-byte reads",
  group: splitGroup,
  fn() {
    sink += feedNaive(splitNaive, splitMessage, 1);
  },
});

// ---- writeHeader ----

const headerBuffer = new Uint8Array(64 * 1024);
const headerView = new DataView(headerBuffer.buffer);
const oneFrame = [splitFrames[0]];
const threeFrames = splitFrames;

/** The same header with BigInt writes, for comparison. */
function writeHeaderBigInt(view: DataView, offset: number, frames: readonly Uint8Array[]): number {
  let total = 8 * (1 + frames.length);
  for (const f of frames) total += f.byteLength;
  view.setBigUint64(offset, BigInt(total), true);
  view.setBigUint64(offset + 8, BigInt(frames.length), true);
  let at = offset + 16;
  for (const f of frames) {
    view.setBigUint64(at, BigInt(f.byteLength), true);
    at += 8;
  }
  return at - offset;
}

{
  const other = new Uint8Array(headerBuffer.length);
  const otherView = new DataView(other.buffer);
  for (const frames of [oneFrame, threeFrames]) {
    const n = writeHeader(headerView, 8, frames);
    assertEquals(n, headerSize(frames.length));
    assertEquals(writeHeaderBigInt(otherView, 8, frames), n);
    assertEquals(headerBuffer.subarray(8, 8 + n), other.subarray(8, 8 + n));
  }
  for (const value of [0, 1, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
    setU64(headerView, 0, value);
    assertEquals(getU64(headerView, 0), value);
    assertEquals(headerView.getBigUint64(0, true), BigInt(value));
  }
}

Deno.bench({
  name: "writeHeader, 1 frame",
  group: "writeHeader",
  baseline: true,
  fn() {
    sink += writeHeader(headerView, 0, oneFrame);
  },
});

Deno.bench({
  name: "writeHeader, 3 frames",
  group: "writeHeader",
  fn() {
    sink += writeHeader(headerView, 0, threeFrames);
  },
});

Deno.bench({
  name: "setBigUint64 header, 1 frame",
  group: "writeHeader",
  fn() {
    sink += writeHeaderBigInt(headerView, 0, oneFrame);
  },
});

Deno.bench({
  name: "setBigUint64 header, 3 frames",
  group: "writeHeader",
  fn() {
    sink += writeHeaderBigInt(headerView, 0, threeFrames);
  },
});
