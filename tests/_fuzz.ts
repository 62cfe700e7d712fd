// What the fuzz tests share: a seeded PRNG whose every case can be replayed
// alone, generators of valid and hostile inputs, byte mutations, and byte
// streams that serve an input cut at given points.
//
// FUZZ_SEED=<n> picks another seed (decimal or 0x…); FUZZ_CASE=<i> runs only
// case i of every fuzz test, for replaying a failure; COMM_SOAK scales counts.

import { Encoder } from "@msgpack/msgpack";
import type { Codec } from "../comm/_codec.ts";
import { headerSize, type MessageReader, writeHeader } from "../comm/_framing.ts";
import type { ByteStream } from "../comm/stream_comm.ts";
import { soaked } from "./_soak.ts";

/** The seed of every fuzz test: FUZZ_SEED, or a fixed one. */
export const SEED: number = parseSeed(Deno.env.get("FUZZ_SEED")) ?? 0xc0ffee;
const ONLY_CASE = Deno.env.get("FUZZ_CASE");

function parseSeed(text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`Invalid FUZZ_SEED "${text}"`);
  return value >>> 0;
}

/** A seeded generator of numbers in [0, 1): the same run for the same seed. */
export function seededRandom(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next() / 2 ** 32;
}

/** A mulberry32 generator: small, fast, and good enough to pick test inputs. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 2 ** 32 ? Math.floor((this.next() / 2 ** 32) * n) : Math.floor(this.float() * n);
  }

  /** An integer in [low, high]. */
  range(low: number, high: number): number {
    return low + this.int(high - low + 1);
  }

  float(): number {
    return (this.next() * 2 ** 21 + (this.next() >>> 11)) / 2 ** 53;
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.next() & 0xff;
    return out;
  }

  /** A size, mostly small: each power of two up to 2^maxBits equally likely. */
  size(maxBits: number): number {
    const bits = this.int(maxBits + 1);
    return bits === 0 ? 0 : this.range(2 ** (bits - 1), 2 ** bits - 1);
  }
}

function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}

/** One fuzz case: its own generator, and how to name it in a failure. */
export interface FuzzCase {
  index: number;
  rng: Rng;
  /** Where a failure came from, with what replays it. */
  where(detail: string, input?: Uint8Array): string;
}

/**
 * The cases of one fuzz test: `count` (soaked) of them, each with a
 * generator seeded from SEED, the test's name and the case's index, so that
 * FUZZ_CASE replays one case alone.
 */
export function* cases(name: string, count: number): Generator<FuzzCase> {
  const salt = hashString(name);
  const total = soaked(count);
  const indices = ONLY_CASE === undefined ? undefined : [Number(ONLY_CASE)];
  for (const index of indices ?? Array.from({ length: total }, (_, i) => i)) {
    const rng = new Rng(Math.imul(SEED ^ salt, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b));
    // Warm the state, so that neighbouring seeds diverge at once.
    rng.next();
    rng.next();
    yield {
      index,
      rng,
      where: (detail, input) =>
        `${name}, case ${index} (replay: FUZZ_SEED=${SEED} FUZZ_CASE=${index}): ${detail}${
          input ? `\ninput (${input.length} bytes): ${hex(input, 96)}` : ""
        }`,
    };
  }
}

/** The first `limit` bytes of `bytes` in hex. */
export function hex(bytes: Uint8Array, limit = 64): string {
  let text = "";
  for (let i = 0; i < Math.min(bytes.length, limit); i++) {
    text += bytes[i].toString(16).padStart(2, "0");
  }
  return bytes.length > limit ? `${text}…` : text;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// --- Values ----------------------------------------------------------------

const WORDS = ["", "op", "a", "key", "héllo ✓", "\u{1f600}", "x".repeat(40), "0", "-1", "1.5"];

/**
 * Map keys: plain ones, the markers our decoders look for, and names that
 * shadow Object.prototype (`{toString: 1}` is what a careless template
 * literal or method call on a peer's value trips over).
 */
export const MARKER_KEYS = [
  "__Serialized__",
  "__Pickled__",
  "__Set__",
  "as-list",
  "num-sub-frames",
  "serializer",
  "type",
  "compression",
  "__switchboard__",
  "__Sender__",
  "ok",
  "error",
  "channel",
  "token",
  "ticket",
  "from",
  "node",
];
export const PROTOTYPE_KEYS = ["toString", "valueOf", "constructor", "hasOwnProperty", "then"];

/** Options of {@linkcode randomValue}. */
export interface ValueOptions {
  /** Whether values are exactly what the codec gives back (no markers, no prototype keys). */
  roundTrip: boolean;
  /** Largest binary made. */
  maxBinary: number;
}

/** A random message. With `roundTrip`, the codec decodes its encoding as an equal value. */
export function randomValue(rng: Rng, options: ValueOptions, depth = 0): unknown {
  const kind = rng.int(depth > 3 ? 9 : 12);
  switch (kind) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.range(-200, 200);
    case 3:
      return rng.pick([2 ** 31 - 1, -(2 ** 31), 2 ** 32, 2 ** 53 - 1, -(2 ** 53 - 1), 1e15 + 3]);
    case 4:
      return rng.pick([2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n, -(2n ** 63n), -(2n ** 53n) - 7n]);
    case 5:
      return rng.pick([0.5, -1.25, 1e300, 5e-324, Math.PI, Infinity, -Infinity]);
    case 6:
      return rng.chance(0.8) ? rng.pick(WORDS) : randomText(rng, rng.size(12));
    case 7:
      return rng.chance(0.9) ? rng.bytes(rng.size(8)) : rng.bytes(rng.int(options.maxBinary + 1));
    case 8: {
      if (options.roundTrip) return rng.bytes(rng.size(6));
      return new Set([rng.range(0, 9), rng.pick(WORDS)]);
    }
    case 9:
    case 10: {
      const items = [];
      for (let n = rng.int(6); n > 0; n--) items.push(randomValue(rng, options, depth + 1));
      return items;
    }
    default: {
      const record: Record<string, unknown> = {};
      for (let n = rng.int(6); n > 0; n--) {
        const key = options.roundTrip || rng.chance(0.6)
          ? rng.pick(WORDS)
          : rng.pick(rng.chance(0.7) ? MARKER_KEYS : PROTOTYPE_KEYS);
        record[key] = randomValue(rng, options, depth + 1);
      }
      return record;
    }
  }
}

function randomText(rng: Rng, length: number): string {
  let text = "";
  for (let i = 0; i < length; i++) {
    text += rng.chance(0.9)
      ? String.fromCharCode(rng.range(0x20, 0x7e))
      : String.fromCodePoint(rng.pick([0xe9, 0x2713, 0x1f600, 0xfffd, 0x10ffff]));
  }
  return text;
}

const rawEncoder = new Encoder({ useBigInt64: true });

/**
 * A msgpack body built to hurt a decoder: container headers that announce
 * far more than follows (nested, so that each would be allocated at once),
 * deep nesting, ext and str lengths past the end, `__proto__` keys, map keys
 * that are containers, and broken UTF-8.
 */
export function hostileBody(rng: Rng): Uint8Array {
  const parts: number[] = [];
  const target = rng.size(14);
  switch (rng.int(6)) {
    case 0: // Nested containers announcing up to 2^32-1 items each.
      while (parts.length < target) {
        const size = rng.chance(0.5) ? rng.range(1000, 0xffff) : rng.int(2 ** 32);
        if (size <= 0xffff && rng.chance(0.7)) {
          parts.push(rng.pick([0xdc, 0xde]), size >> 8, size & 0xff);
        } else {
          parts.push(rng.pick([0xdd, 0xdf]), size >>> 24, (size >> 16) & 0xff, (size >> 8) & 0xff);
          parts.push(size & 0xff);
        }
      }
      break;
    case 1: { // Deep nesting, sometimes inside a map key.
      if (rng.chance(0.5)) parts.push(0x81);
      const depth = rng.size(15);
      for (let i = 0; i < depth; i++) parts.push(rng.pick([0x91, 0x81, 0x81, 0x92]));
      for (let i = rng.int(4); i > 0; i--) parts.push(0xc0);
      break;
    }
    case 2: { // Lengths past the end: str, bin, ext, fixext with the timestamp type.
      const head = rng.pick([0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd6, 0xd7]);
      parts.push(head);
      for (let i = rng.int(6); i > 0; i--) parts.push(rng.pick([0xff, 0x00, 0x7f, 0x80]));
      if (rng.chance(0.5)) parts.push(0xff); // ext type -1: a timestamp
      for (let i = rng.int(16); i > 0; i--) parts.push(rng.int(256));
      break;
    }
    case 3: // `__proto__` and other keys no decoder should take as they are.
      return rawEncoder.encode(
        JSON.parse(`{"__proto__": {"x": 1}, "${rng.pick(PROTOTYPE_KEYS)}": ${rng.int(9)}}`),
      );
    case 4: { // Strings of broken UTF-8, as keys and values.
      const length = rng.range(1, 40);
      parts.push(0x81, 0xa0 | Math.min(length, 31));
      for (let i = 0; i < Math.min(length, 31); i++) parts.push(rng.pick([0xff, 0xc3, 0x80, 0xed]));
      parts.push(0xc0);
      break;
    }
    default: // Random bytes with msgpack head bytes salted in.
      for (let i = 0; i < target; i++) {
        parts.push(
          rng.chance(0.3) ? rng.pick([0xdc, 0xdd, 0xde, 0xdf, 0xc7, 0xd9, 0x91]) : rng.int(256),
        );
      }
  }
  return new Uint8Array(parts);
}

/**
 * A message meant to reach the codec's second pass: references to frames
 * (valid, out of range, overlapping, not integers), sub-headers announcing
 * any number of sub-frames, and dask sets whose list is not a list.
 */
export function referenceMessage(rng: Rng): Uint8Array[] {
  const count = rng.int(5);
  const offsets = [0, 1, 2, 3, -1, 1.5, 2 ** 53, 2 ** 32, "1", null];
  const header = (): unknown => ({
    serializer: rng.pick(["dask", "pickle", 7]),
    type: rng.pick(["bytes", "bytearray", "memoryview", "numpy", 1]),
    compression: rng.pick([[null], null, ["lz4"], "x", [null, null]]),
    "num-sub-frames": rng.pick([0, 1, 2, 3, -1, 1.5, 2 ** 40, "2", null]),
  });
  const body: Record<string, unknown> = {};
  for (let n = rng.range(1, 3); n > 0; n--) {
    const kind = rng.pick(["__Serialized__", "__Pickled__", "__Set__"]);
    body[`k${n}`] = kind === "__Set__"
      ? { __Set__: rng.pick([true, 1]), "as-list": rng.pick([[1, 2], "x", { a: 1 }, null]) }
      : { [kind]: rng.pick(offsets) };
  }
  const frames: Uint8Array[] = [rawEncoder.encode(rng.chance(0.5) ? body : [body, body])];
  for (let i = 0; i < count; i++) {
    frames.push(rng.chance(0.5) ? rawEncoder.encode(header()) : rng.bytes(rng.size(6)));
  }
  return frames;
}

// --- Framing ---------------------------------------------------------------

/** One framed message, and where its header fields are. */
export interface Framed {
  bytes: Uint8Array;
  /** Offsets of 8-byte fields in `bytes` (dask: total, count, lengths) or the mp length word. */
  fields: number[];
}

/** A message of `frames` in dask's framing (2022 form). */
export function daskFrame(frames: readonly Uint8Array[]): Framed {
  const head = headerSize(frames.length);
  const bytes = new Uint8Array(head + frames.reduce((n, f) => n + f.length, 0));
  let at = writeHeader(new DataView(bytes.buffer), 0, frames);
  for (const frame of frames) {
    bytes.set(frame, at);
    at += frame.length;
  }
  return { bytes, fields: Array.from({ length: 2 + frames.length }, (_, i) => 8 * i) };
}

/** A message in Python multiprocessing's framing: the short form, or the long form on request. */
export function mpFrame(payload: Uint8Array, long = false): Framed {
  const bytes = new Uint8Array((long ? 12 : 4) + payload.length);
  const view = new DataView(bytes.buffer);
  if (long) {
    view.setInt32(0, -1, false);
    view.setBigUint64(4, BigInt(payload.length), false);
  } else {
    view.setInt32(0, payload.length, false);
  }
  bytes.set(payload, long ? 12 : 4);
  return { bytes, fields: long ? [0, 4] : [0] };
}

/** Encodes `message` with `codec`; frame 0 is copied (the codec reuses its buffer). */
export function encodeFrames(codec: Codec, message: unknown): Uint8Array[] {
  const frames = codec.encode(message);
  frames[0] = frames[0].slice();
  return frames;
}

// --- Mutations -------------------------------------------------------------

/** Values that lengths and counts are tried with. */
export function interestingSizes(max: number): bigint[] {
  const m = BigInt(max);
  return [
    0n,
    1n,
    7n,
    8n,
    16n,
    24n,
    m - 1n,
    m,
    m + 1n,
    m + 8n,
    m / 256n,
    m / 256n + 1n,
    2n ** 31n - 1n,
    2n ** 31n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    2n ** 61n, // times 8 wraps to 0 in 64-bit arithmetic
    2n ** 63n - 1n,
    2n ** 63n, // negative when read as signed
    2n ** 64n - 1n, // -1 when read as signed
    2n ** 64n - 8n,
  ];
}

/**
 * Mutates `input` one to three times: bit flips, bytes set to edge values,
 * truncation, insertion, deletion, duplication, a splice with `other`, and
 * header fields (at `fields`) set to interesting sizes in `endian` order.
 */
export function mutate(
  rng: Rng,
  input: Uint8Array,
  fields: readonly number[],
  max: number,
  endian: "little" | "big",
  other?: Uint8Array,
): Uint8Array {
  let bytes: Uint8Array = input.slice();
  for (let n = rng.range(1, 3); n > 0; n--) {
    const at = rng.int(bytes.length + 1);
    switch (rng.int(fields.length > 0 ? 10 : 8)) {
      case 0:
        if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)] ^= 1 << rng.int(8);
        break;
      case 1:
        if (bytes.length > 0) {
          bytes[Math.min(at, bytes.length - 1)] = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(256)]);
        }
        break;
      case 2:
        bytes = bytes.slice(0, at);
        break;
      case 3:
        bytes = concat([bytes.subarray(0, at), rng.bytes(rng.size(6)), bytes.subarray(at)]);
        break;
      case 4:
        bytes = concat([bytes.subarray(0, at), bytes.subarray(at + rng.size(6))]);
        break;
      case 5: {
        const end = Math.min(bytes.length, at + rng.size(8));
        bytes = concat([bytes.subarray(0, end), bytes.subarray(at, end), bytes.subarray(end)]);
        break;
      }
      case 6:
        if (other) {
          bytes = concat([bytes.subarray(0, at), other.subarray(rng.int(other.length + 1))]);
        }
        break;
      case 7:
        bytes = rng.bytes(rng.size(10));
        break;
      default: {
        // A header field: the place where lies about sizes are told.
        const field = rng.pick(fields);
        const word = new Uint8Array(8);
        new DataView(word.buffer).setBigUint64(
          0,
          rng.pick(interestingSizes(max)),
          endian === "little",
        );
        const width = endian === "big" && field === 0 && rng.chance(0.5) ? 4 : 8;
        const source = width === 4 ? word.subarray(4) : word;
        for (let i = 0; i < width && field + i < bytes.length; i++) bytes[field + i] = source[i];
      }
    }
  }
  return bytes;
}

/** Cuts `bytes` into 1 to 8 chunks at random points (sometimes into single bytes). */
export function cut(rng: Rng, bytes: Uint8Array): Uint8Array[] {
  if (bytes.length <= 64 && rng.chance(0.1)) {
    return Array.from(bytes, (_, i) => bytes.subarray(i, i + 1));
  }
  const points = new Set<number>();
  for (let n = rng.int(8); n > 0; n--) points.add(rng.int(bytes.length + 1));
  const sorted = [0, ...[...points].sort((a, b) => a - b), bytes.length];
  const chunks = [];
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] > sorted[i - 1]) chunks.push(bytes.subarray(sorted[i - 1], sorted[i]));
  }
  return chunks;
}

// --- Streams ---------------------------------------------------------------

/**
 * A byte stream whose input comes in steps: each step is made once the comm
 * has written `after` chunks (so that it can answer them), then served in
 * the chunks it is cut into. After the last step, reads see the end; so do
 * reads that wait for a step whose write does not come (a peer giving up).
 */
export class ScriptedStream implements ByteStream {
  written: Uint8Array[] = [];
  /** The largest buffer the comm read into (its read buffer, or a frame's own). */
  largestBuffer = 0;
  closed = false;
  closeReason: Error | undefined;
  #steps: { after: number; make: (written: Uint8Array) => Uint8Array[] }[];
  #chunks: Uint8Array[] = [];
  #wake: (() => void) | undefined;

  constructor(steps: { after: number; make: (written: Uint8Array) => Uint8Array[] }[]) {
    this.#steps = steps;
  }

  /** A stream that serves `chunks` and then ends. */
  static of(chunks: Uint8Array[]): ScriptedStream {
    return new ScriptedStream([{ after: 0, make: () => chunks }]);
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    this.largestBuffer = Math.max(this.largestBuffer, buffer.buffer.byteLength);
    while (this.#chunks.length === 0) {
      if (this.closed) return null;
      const step = this.#steps[0];
      if (step === undefined) return null;
      if (this.written.length < step.after) {
        // The comm reads before it writes what this step answers. A write
        // under way lands within microtasks; if none came by the next
        // macrotask, the comm waits for us as we wait for it, and the peer
        // gives up: the stream ends.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const wrote = await new Promise<boolean>((resolve) => {
          this.#wake = () => resolve(true);
          timer = setTimeout(() => resolve(false), 0);
        });
        clearTimeout(timer);
        this.#wake = undefined;
        if (!wrote && this.written.length < step.after) {
          this.#steps.length = 0;
          return null;
        }
        continue;
      }
      this.#steps.shift();
      this.#chunks = step.make(concat(this.written)).filter((chunk) => chunk.length > 0);
    }
    const chunk = this.#chunks[0];
    const n = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, n));
    if (n < chunk.length) this.#chunks[0] = chunk.subarray(n);
    else this.#chunks.shift();
    return n;
  }

  write(data: Uint8Array): Promise<number> {
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    this.written.push(data.slice());
    this.#wake?.();
    return Promise.resolve(data.length);
  }

  close(reason?: Error): void {
    this.closed = true;
    this.closeReason = reason;
    this.#wake?.();
  }
}

// --- Reading without a comm ------------------------------------------------

/** What a reader made of an input: each message's frames, and how it ended. */
export interface ReaderOutcome {
  messages: Uint8Array[][];
  /** "clean" at the end of a message, "truncated" inside one, or the error thrown. */
  end: "clean" | "truncated" | Error;
  /** The largest buffer the reader asked bytes to be read into. */
  largestBuffer: number;
}

/**
 * Feeds `chunks` to `reader` as StreamComm's read loop does: every whole
 * message first, then one read of at most `space()` bytes.
 */
export function readAll(reader: MessageReader, chunks: readonly Uint8Array[]): ReaderOutcome {
  const messages: Uint8Array[][] = [];
  let largestBuffer = 0;
  let index = 0;
  let offset = 0;
  try {
    for (;;) {
      for (let frames; (frames = reader.next()) !== undefined;) messages.push(frames);
      if (index === chunks.length) {
        return { messages, end: reader.pendingBytes > 0 ? "truncated" : "clean", largestBuffer };
      }
      const space = reader.space();
      largestBuffer = Math.max(largestBuffer, space.buffer.byteLength);
      const chunk = chunks[index];
      const n = Math.min(space.length, chunk.length - offset);
      space.set(chunk.subarray(offset, offset + n));
      reader.commit(n);
      offset += n;
      if (offset === chunk.length) {
        index++;
        offset = 0;
      }
    }
  } catch (error) {
    return { messages, end: error as Error, largestBuffer };
  }
}

/** Whether two lists of messages hold the same frames. */
export function sameFrames(a: Uint8Array[][], b: Uint8Array[][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (a[i].length !== b[i].length) return false;
    for (let j = 0; j < a[i].length; j++) {
      const x = a[i][j];
      const y = b[i][j];
      if (x.length !== y.length) return false;
      for (let k = 0; k < x.length; k++) if (x[k] !== y[k]) return false;
    }
  }
  return true;
}

/** Rejects with a "hang" error if `promise` takes longer than `ms`; clears its timer. */
export async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Hang: ${what()} took over ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
