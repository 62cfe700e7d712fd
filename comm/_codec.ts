// Messages to frames and back: msgpack for the body (frame 0), large binaries
// out of band as dask's `{"__Serialized__": n}` references, so that a Python
// dask peer reads them as `bytes` and we read dask's bytes as Uint8Array.
//
// The msgpack implementation stays behind `Codec`: swapping it touches this
// file only.

import { Decoder, Encoder } from "@msgpack/msgpack";
import { ProtocolError } from "./errors.ts";
import { Serialized } from "./serialized.ts";
import { TO_WIRE, type WireValue } from "./_wire_value.ts";
import { messageOf } from "./_util.ts";

/** Turns a message into frames and frames into a message. */
export interface Codec {
  /** Whether frame 0 of `encode()` is reused by the next call (and must be copied to keep). */
  readonly firstFrameShared: boolean;
  /**
   * Encodes a message. Frame 0 may be a view of a buffer that the next
   * `encode` call overwrites: copy it before encoding again.
   */
  encode(message: unknown): Uint8Array[];
  /** Decodes the frames of one message. */
  decode(frames: readonly Uint8Array[]): unknown;
}

/** Options of {@linkcode createCodec}. */
export interface CodecOptions {
  /** Binaries of at least this many bytes travel as separate frames. */
  binaryFrameThreshold: number;
}

const SERIALIZED_KEY = "__Serialized__";
const PICKLED_KEY = "__Pickled__";
const SET_KEY = "__Set__";
/** Nesting beyond this is not walked when decoding; msgpack refuses it when encoding. */
const MAX_DEPTH = 100;

// pickle.dumps(bytes) as dask 2022.12 writes it in "type-serialized"; dask
// only unpickles it, so any protocol's bytes for `builtins.bytes` will do.
const PICKLED_BYTES_TYPE = new Uint8Array([
  0x80,
  0x05,
  0x95,
  0x16,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0x8c,
  0x08,
  ...new TextEncoder().encode("builtins"),
  0x94,
  0x8c,
  0x05,
  ...new TextEncoder().encode("bytes"),
  0x94,
  0x93,
  0x94,
  0x2e,
]);
const BINARY_TYPES = new Set(["bytes", "bytearray", "memoryview"]);

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MIN_INT64 = -(2n ** 63n);
const MAX_UINT64 = 2n ** 64n - 1n;

// The parts of @msgpack/msgpack 3.x that the codec adjusts (see below).
interface EncoderInternals {
  doEncode(object: unknown, depth: number): void;
  encodeString(object: string): void;
  encodeBigInt64(object: bigint): void;
}
interface DecoderInternals {
  readU64(): number | bigint;
  readI64(): number | bigint;
  readU64AsBigInt(): bigint;
  readI64AsBigInt(): bigint;
  stack: DecoderStack;
}
interface DecoderStack {
  pushArrayState(size: number): void;
  top(): { size: number };
}

/**
 * An encoder that writes what plain msgpack cannot, in the one pass of its
 * own walk over the message:
 * - `bigint` as msgpack int64/uint64, while numbers keep their usual
 *   encoding (the library's `useBigInt64` option would turn integers of
 *   2^32 and more into floats, which Python reads as floats);
 * - strings with lone surrogates, which have no UTF-8 form, with U+FFFD
 *   in their place (as TextEncoder does), rather than bytes no peer decodes;
 * - `Set` as dask's `{"__Set__": true, "as-list": [...]}` and `Map` as a
 *   map of its string and number keys;
 * - whatever `replace` returns in place of an object (large binaries and
 *   `Serialized` payloads become frame references).
 */
function createEncoder(replace?: (object: object) => unknown): Encoder {
  const encoder = new Encoder();
  const internals = encoder as unknown as EncoderInternals;
  const doEncode = internals.doEncode;
  const encodeString = internals.encodeString;
  if (
    typeof doEncode !== "function" || typeof encodeString !== "function" ||
    typeof internals.encodeBigInt64 !== "function"
  ) {
    throw new Error("Unsupported @msgpack/msgpack version: expected 3.x internals");
  }
  internals.doEncode = function (this: EncoderInternals, object, depth) {
    if (typeof object === "object" && object !== null) {
      // Plain objects and arrays, most of what is encoded, skip the lookup.
      if (object.constructor !== Object && !Array.isArray(object) && TO_WIRE in object) {
        object = (object as WireValue)[TO_WIRE]();
      }
      if (replace !== undefined && typeof object === "object" && object !== null) {
        object = replace(object);
      }
      if (object instanceof Set) {
        object = { [SET_KEY]: true, "as-list": [...object] };
      } else if (object instanceof Map) {
        object = mapToRecord(object);
      }
    } else if (typeof object === "bigint") {
      if (object < MIN_INT64 || object > MAX_UINT64) {
        throw new TypeError(
          `Cannot encode the bigint ${object}: msgpack integers range from -2^63 to 2^64-1`,
        );
      }
      this.encodeBigInt64(object);
      return;
    }
    doEncode.call(this, object, depth);
  };
  // Keys and values alike.
  internals.encodeString = function (this: EncoderInternals, object) {
    encodeString.call(this, object.isWellFormed() ? object : object.toWellFormed());
  };
  return encoder;
}

function mapToRecord(map: Map<unknown, unknown>): Record<string, unknown> {
  const record: Record<string, unknown> = {};
  for (const [key, item] of map) {
    if (typeof key !== "string" && typeof key !== "number") {
      throw new TypeError(
        `Cannot encode a Map with a ${typeof key} key: msgpack maps here take string or number keys`,
      );
    }
    record[key] = item;
  }
  return record;
}

/** The library's key decoder interface (not exported by it). */
interface KeyDecoder {
  canBeCached(byteLength: number): boolean;
  decode(bytes: Uint8Array, inputOffset: number, byteLength: number): string;
}

/** Slots of the map key cache (a power of two). */
const KEY_SLOTS = 4096;
/** Longest map key the cache holds, in bytes. */
const MAX_CACHED_KEY_BYTES = 32;
const keySlots: (string | undefined)[] = new Array(KEY_SLOTS).fill(undefined);
const keyCodes: number[] = [];
const utf8 = new TextDecoder();

/**
 * Decoded map keys by their bytes, for every codec of the process: a
 * direct-mapped table of ASCII keys, so that a key costs a hash and a
 * compare. The library's own cache holds 16 keys per length and slows
 * down sharply past that: a map of 100 short keys decoded in 62 µs with
 * it, 7.8 µs with this.
 */
const keyCache: KeyDecoder = {
  canBeCached(byteLength: number): boolean {
    return byteLength > 0 && byteLength <= MAX_CACHED_KEY_BYTES;
  },
  decode(bytes: Uint8Array, offset: number, length: number): string {
    let hash = length;
    for (let i = 0; i < length; i++) hash = Math.imul(hash ^ bytes[offset + i], 0x01000193);
    const slot = (hash ^ (hash >>> 15)) & (KEY_SLOTS - 1);
    const cached = keySlots[slot];
    if (cached !== undefined && cached.length === length) {
      let i = 0;
      while (i < length && cached.charCodeAt(i) === bytes[offset + i]) i++;
      if (i === length) return cached;
    }
    keyCodes.length = length;
    for (let i = 0; i < length; i++) {
      const byte = bytes[offset + i];
      if (byte >= 0x80) return utf8.decode(bytes.subarray(offset, offset + length));
      keyCodes[i] = byte;
    }
    const key = String.fromCharCode.apply(null, keyCodes);
    keySlots[slot] = key;
    return key;
  },
};

/**
 * A decoder that reads 64-bit integers exactly: as numbers when they are
 * safe integers, as `bigint` beyond ±2^53 (instead of rounding silently).
 * Map keys that are neither strings nor numbers (a Python tuple key) become
 * their JSON text rather than failing the whole message.
 *
 * An array is made at the length its header announces only while the
 * lengths announced add up to no more than the bytes decoded (each element
 * takes at least a byte, so every honest message stays within); past that it
 * grows as its elements arrive. The library's `new Array(length)` alone let
 * 15 KB of nested array headers take 2.6 GB before the decode failed.
 */
function createDecoder(): Decoder {
  const decoder = new Decoder({ mapKeyConverter: convertMapKey, keyDecoder: keyCache });
  const internals = decoder as unknown as DecoderInternals;
  const readU64AsBigInt = internals.readU64AsBigInt;
  const readI64AsBigInt = internals.readI64AsBigInt;
  const stack = internals.stack;
  const pushArrayState = stack?.pushArrayState;
  if (
    typeof readU64AsBigInt !== "function" || typeof readI64AsBigInt !== "function" ||
    typeof pushArrayState !== "function" || typeof stack.top !== "function"
  ) {
    throw new Error("Unsupported @msgpack/msgpack version: expected 3.x internals");
  }
  /** Array elements that may still be made ahead of their bytes, in this decode. */
  let budget = 0;
  stack.pushArrayState = function (this: DecoderStack, size: number) {
    if (size <= budget) {
      budget -= size;
      pushArrayState.call(this, size);
    } else {
      pushArrayState.call(this, 0);
      this.top().size = size;
    }
  };
  const decode = decoder.decode;
  decoder.decode = function (this: Decoder, bytes: Parameters<Decoder["decode"]>[0]) {
    budget = (bytes as Uint8Array).byteLength ?? 0;
    return decode.call(this, bytes);
  };
  internals.readU64 = function (this: DecoderInternals) {
    const value = readU64AsBigInt.call(this);
    return value <= MAX_SAFE ? Number(value) : value;
  };
  internals.readI64 = function (this: DecoderInternals) {
    const value = readI64AsBigInt.call(this);
    return value <= MAX_SAFE && value >= MIN_SAFE ? Number(value) : value;
  };
  return decoder;
}

/**
 * The longest JSON text a map key that is neither a string nor a number (a
 * Python tuple) may become. Without a bound, keys nested in keys grow with
 * every level (each escapes the quotes of the one inside): 3 KB of nested
 * one-entry maps took 480 MB.
 */
const MAX_KEY_TEXT = 1024;

function convertMapKey(key: unknown): string | number {
  if (typeof key === "string" || typeof key === "number") return key;
  const tooLong = () =>
    new RangeError(
      `a map key that is neither a string nor a number is over ${MAX_KEY_TEXT} characters as JSON`,
    );
  const text = JSON.stringify(key, (_name, value) => {
    if (typeof value === "bigint") return value.toString();
    if (value instanceof Uint8Array) {
      if (value.length > MAX_KEY_TEXT) throw tooLong();
      return [...value];
    }
    if (typeof value === "string" && value.length > MAX_KEY_TEXT) throw tooLong();
    return value;
  }) ?? String(key);
  if (text.length > MAX_KEY_TEXT) throw tooLong();
  return text;
}

/** Creates a msgpack codec whose encoder and decoder are reused per call. */
export function createCodec(options: CodecOptions): Codec {
  const threshold = options.binaryFrameThreshold;
  /** The frames of the message being encoded (encoding is synchronous). */
  let frames: Uint8Array[] = [];
  const encoder = createEncoder(toReference);
  const subHeaderEncoder = createEncoder();
  const decoder = createDecoder();
  const bytesSubHeader = (): Uint8Array =>
    subHeaderEncoder.encode({
      "sub-header": {},
      type: "bytes",
      "type-serialized": PICKLED_BYTES_TYPE,
      serializer: "dask",
      "split-num-sub-frames": [1],
      "split-offsets": [0],
      compression: [null],
      "num-sub-frames": 1,
    });
  let cachedBytesSubHeader: Uint8Array | undefined;

  /** Large binaries and Serialized payloads leave as frames of their own. */
  function toReference(value: object): unknown {
    if (ArrayBuffer.isView(value)) {
      if (value.byteLength < threshold) return value;
      const bytes = value instanceof Uint8Array
        ? value
        : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
      const offset = frames.length;
      cachedBytesSubHeader ??= bytesSubHeader();
      frames.push(cachedBytesSubHeader, bytes);
      return { [SERIALIZED_KEY]: offset };
    }
    if (value instanceof Serialized) {
      const offset = frames.length;
      frames.push(
        subHeaderEncoder.encode({ ...value.header, "num-sub-frames": value.frames.length }),
        ...value.frames,
      );
      return { [value.kind]: offset };
    }
    return value;
  }

  /** Nested encode() calls under way (from a getter, say). */
  let depth = 0;

  function encode(message: unknown): Uint8Array[] {
    const out: Uint8Array[] = [EMPTY];
    const outer = frames;
    frames = out;
    depth++;
    try {
      // A nested call gets an encoder of its own: the shared one is busy
      // with the outer message.
      out[0] = depth === 1
        ? encoder.encodeSharedRef(message)
        : createEncoder(toReference).encode(message);
    } finally {
      depth--;
      frames = outer;
    }
    return out;
  }

  function decode(frames: readonly Uint8Array[]): unknown {
    let message: unknown;
    try {
      message = decoder.decode(frames[0]);
    } catch (error) {
      throw new ProtocolError(
        startsWithChallenge(frames[0])
          ? "Peer sent an authkey challenge: connect with the authkey option (the key it expects)"
          : `Peer sent a message body that is not valid msgpack: ${
            msgpackProblem(error, frames[0])
          }`,
        { cause: error },
      );
    }
    if (frames.length === 1 && !mayHoldSets(frames[0])) return message;
    // One value per referenced frame, however often it is referenced: a
    // joined payload must not be rebuilt (and reallocated) per reference.
    const resolved = new Map<number, unknown>();
    let claimed: Uint8Array | undefined;
    return restore(message, 0);

    function restore(value: unknown, depth: number): unknown {
      if (typeof value !== "object" || value === null) return value;
      if (ArrayBuffer.isView(value) || depth >= MAX_DEPTH) return value;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          value[i] = restore(value[i], depth + 1);
        }
        return value;
      }
      const record = value as Record<string, unknown>;
      if (SERIALIZED_KEY in record && typeof record[SERIALIZED_KEY] === "number") {
        return reference(SERIALIZED_KEY, record[SERIALIZED_KEY] as number);
      }
      if (PICKLED_KEY in record && typeof record[PICKLED_KEY] === "number") {
        return reference(PICKLED_KEY, record[PICKLED_KEY] as number);
      }
      if (record[SET_KEY] === true && Array.isArray(record["as-list"])) {
        return new Set(restore(record["as-list"], depth + 1) as unknown[]);
      }
      for (const key in record) record[key] = restore(record[key], depth + 1);
      return record;
    }

    function reference(kind: Serialized["kind"], offset: number): unknown {
      if (resolved.has(offset)) return resolved.get(offset);
      const value = resolveReference(kind, offset);
      resolved.set(offset, value);
      return value;
    }

    function resolveReference(kind: Serialized["kind"], offset: number): unknown {
      if (!Number.isInteger(offset) || offset < 1 || offset >= frames.length) {
        throw new ProtocolError(
          `Peer sent a ${kind} reference to frame ${offset}, but the message has frames 0 to ${
            frames.length - 1
          }`,
        );
      }
      let header: unknown;
      try {
        header = decoder.decode(frames[offset]);
      } catch (error) {
        throw new ProtocolError(
          `Peer sent a ${kind} sub-header (frame ${offset}) that is not valid msgpack`,
          { cause: error },
        );
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) {
        throw new ProtocolError(
          `Peer sent a ${kind} sub-header (frame ${offset}) that is not a map`,
        );
      }
      const record = header as Record<string, unknown>;
      const count = record["num-sub-frames"] ?? 0;
      if (
        typeof count !== "number" || !Number.isInteger(count) || count < 0 ||
        offset + 1 + count > frames.length
      ) {
        throw new ProtocolError(
          `Peer sent a ${kind} sub-header (frame ${offset}) announcing ${
            String(count)
          } sub-frames, but only ${frames.length - offset - 1} follow`,
        );
      }
      // Each frame belongs to one payload: references whose frames
      // overlap would make joins copy the same bytes again and again.
      claimed ??= new Uint8Array(frames.length);
      for (let i = offset; i <= offset + count; i++) {
        if (claimed[i]) {
          throw new ProtocolError(
            `Peer sent ${kind} references that share frame ${i}: each frame belongs to one payload`,
          );
        }
        claimed[i] = 1;
      }
      const subFrames = frames.slice(offset + 1, offset + 1 + count);
      if (kind === SERIALIZED_KEY && isPlainBytes(record)) {
        return subFrames.length === 1 ? subFrames[0] : concat(subFrames);
      }
      return new Serialized(kind, record, subFrames);
    }
  }

  return { firstFrameShared: true, encode, decode };
}

const EMPTY = new Uint8Array(0);
const CHALLENGE = new TextEncoder().encode("#CHALLENGE#");

/** Whether `bytes` is multiprocessing.connection's challenge message. */
function startsWithChallenge(bytes: Uint8Array): boolean {
  if (bytes.length < CHALLENGE.length) return false;
  for (let i = 0; i < CHALLENGE.length; i++) if (bytes[i] !== CHALLENGE[i]) return false;
  return true;
}

/**
 * What is wrong with a body the library refused, in words: it reports a
 * value cut short as "Insufficient data" or, for a cut header, as
 * DataView's "Offset is outside the bounds of the DataView".
 */
function msgpackProblem(error: unknown, body: Uint8Array): string {
  const message = messageOf(error);
  if (error instanceof RangeError && /^Insufficient data|outside the bounds/.test(message)) {
    return `it ends in the middle of a value (${body.byteLength} bytes)`;
  }
  return message;
}

function isPlainBytes(header: Record<string, unknown>): boolean {
  if (header.serializer !== "dask") return false;
  if (typeof header.type !== "string" || !BINARY_TYPES.has(header.type)) {
    return false;
  }
  const compression = header.compression;
  if (compression === undefined || compression === null) return true;
  return Array.isArray(compression) && compression.every((c) => c === null);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const part of parts) size += part.byteLength;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

// msgpack's encoding of the string "__Set__" (fixstr of 7 bytes).
const SET_MARKER = new Uint8Array([0xa7, ...new TextEncoder().encode(SET_KEY)]);

/**
 * A single-frame message needs a second pass only if it may hold a dask set;
 * a byte search of the body says so far faster than a walk of the message.
 */
function mayHoldSets(body: Uint8Array): boolean {
  const first = SET_MARKER[0];
  let at = body.indexOf(first);
  while (at !== -1 && at + SET_MARKER.length <= body.length) {
    let i = 1;
    while (i < SET_MARKER.length && body[at + i] === SET_MARKER[i]) i++;
    if (i === SET_MARKER.length) return true;
    at = body.indexOf(first, at + 1);
  }
  return false;
}
