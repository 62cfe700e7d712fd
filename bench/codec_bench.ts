/**
 * Micro-benchmarks of the message codec (`comm/_codec.ts`) against plain
 * msgpack: small messages (encode, decode), a 1 MiB binary (ours sends it as a
 * separate frame, msgpack copies it inline) and medium messages (a 1000-element
 * array of small dicts, a dict of 100 keys).
 *
 * Run: `deno bench bench/codec_bench.ts` (or `deno bench bench/` for all).
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import {
  decode as msgpackDecode,
  Decoder,
  encode as msgpackEncode,
  Encoder,
} from "@msgpack/msgpack";
import * as stdMsgpack from "@std/msgpack";
import { createCodec } from "../comm/_codec.ts";

const stdEncode = stdMsgpack.encode as (value: unknown) => Uint8Array;
const stdDecode = stdMsgpack.decode as (bytes: Uint8Array) => unknown;

/** The default of `binaryFrameThreshold` over stream transports (64 KiB). */
const codec = createCodec({ binaryFrameThreshold: 64 * 1024 });
const encoder = new Encoder();
const decoder = new Decoder();

/** Every bench adds what it produced here, so that no work can be dropped. */
let sink = 0;

/** Our encode reuses its buffer for frame 0: keep a copy for decode benches. */
function encodeOurs(message: unknown): Uint8Array[] {
  return codec.encode(message).map((frame, i) => i === 0 ? frame.slice() : frame);
}

// ---- small message ----

const small = { op: "data", i: 12345, key: "x-1", values: [1, 2.5, "s"] };
const smallOurs = encodeOurs(small);
const smallMsgpack = encoder.encode(small);
const smallStd = stdEncode(small);

assertEquals(smallOurs.length, 1);
assertEquals(codec.decode(smallOurs), small);
assertEquals(decoder.decode(smallMsgpack), small);
assertEquals(msgpackDecode(msgpackEncode(small)), small);
assertEquals(stdDecode(smallStd), small);
assertEquals(smallOurs[0], smallMsgpack);

Deno.bench({
  name: "ours: codec.encode",
  group: "encode small",
  baseline: true,
  fn() {
    sink += codec.encode(small)[0].byteLength;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: reused Encoder.encode",
  group: "encode small",
  fn() {
    sink += encoder.encode(small).byteLength;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: reused Encoder.encodeSharedRef (no copy, as ours)",
  group: "encode small",
  fn() {
    sink += encoder.encodeSharedRef(small).byteLength;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: encode() (fresh Encoder)",
  group: "encode small",
  fn() {
    sink += msgpackEncode(small).byteLength;
  },
});

Deno.bench({
  name: "std msgpack: encode()",
  group: "encode small",
  fn() {
    sink += stdEncode(small).byteLength;
  },
});

Deno.bench({
  name: "ours: codec.decode",
  group: "decode small",
  baseline: true,
  fn() {
    sink += (codec.decode(smallOurs) as typeof small).i;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: reused Decoder.decode",
  group: "decode small",
  fn() {
    sink += (decoder.decode(smallMsgpack) as typeof small).i;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: decode() (fresh Decoder)",
  group: "decode small",
  fn() {
    sink += (msgpackDecode(smallMsgpack) as typeof small).i;
  },
});

Deno.bench({
  name: "std msgpack: decode()",
  group: "decode small",
  fn() {
    sink += (stdDecode(smallStd) as typeof small).i;
  },
});

// ---- 1 MiB binary ----

const binary = new Uint8Array(1024 * 1024);
for (let i = 0; i < binary.length; i++) binary[i] = (i * 31) & 0xff;
const large = { op: "put", key: "x-1", data: binary };

{
  const frames = encodeOurs(large);
  assertEquals(frames.length, 3);
  assertEquals(frames[2], binary);
  assertEquals(frames[2].buffer, binary.buffer, "the binary must leave without a copy");
  assertEquals(codec.decode(frames), large);
  assertEquals(decoder.decode(encoder.encode(large)), large);
}

Deno.bench({
  name: "ours: encode + decode (binary as a separate frame)",
  group: "encode/decode 1 MiB binary",
  baseline: true,
  fn() {
    const frames = codec.encode(large);
    sink += (codec.decode(frames) as typeof large).data.byteLength;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: reused Encoder.encode + Decoder.decode (inline)",
  group: "encode/decode 1 MiB binary",
  fn() {
    const bytes = encoder.encode(large);
    sink += (decoder.decode(bytes) as typeof large).data.byteLength;
  },
});

Deno.bench({
  name: "@msgpack/msgpack: reused Encoder.encodeSharedRef + Decoder.decode (inline)",
  group: "encode/decode 1 MiB binary",
  fn() {
    const bytes = encoder.encodeSharedRef(large);
    sink += (decoder.decode(bytes) as typeof large).data.byteLength;
  },
});

// ---- medium messages ----

const manyDicts = Array.from({ length: 1000 }, (_, i) => ({
  key: `task-${i}`,
  state: i % 3 === 0 ? "memory" : "processing",
  nbytes: 1000 + i,
  priority: [0, i, 0.5],
}));
const wideDict: Record<string, number> = {};
for (let i = 0; i < 100; i++) wideDict[`key-${i}`] = i * 1.5;

for (const medium of [manyDicts, wideDict]) {
  const frames = encodeOurs(medium);
  assertEquals(frames.length, 1);
  assertEquals(codec.decode(frames), medium);
  assertEquals(decoder.decode(encoder.encode(medium)), medium);
}

const manyDictsOurs = encodeOurs(manyDicts);
const manyDictsMsgpack = encoder.encode(manyDicts);
const wideDictOurs = encodeOurs(wideDict);
const wideDictMsgpack = encoder.encode(wideDict);

for (
  const [name, message, ours, msgpack] of [
    ["1000-element array of small dicts", manyDicts, manyDictsOurs, manyDictsMsgpack],
    ["dict of 100 keys", wideDict, wideDictOurs, wideDictMsgpack],
  ] as const
) {
  Deno.bench({
    name: "ours: codec.encode",
    group: `encode medium: ${name}`,
    baseline: true,
    fn() {
      sink += codec.encode(message)[0].byteLength;
    },
  });
  Deno.bench({
    name: "@msgpack/msgpack: reused Encoder.encodeSharedRef",
    group: `encode medium: ${name}`,
    fn() {
      sink += encoder.encodeSharedRef(message).byteLength;
    },
  });
  Deno.bench({
    name: "ours: codec.decode",
    group: `decode medium: ${name}`,
    baseline: true,
    fn() {
      sink += Object.keys(codec.decode(ours) as object).length;
    },
  });
  Deno.bench({
    name: "@msgpack/msgpack: reused Decoder.decode",
    group: `decode medium: ${name}`,
    fn() {
      sink += Object.keys(decoder.decode(msgpack) as object).length;
    },
  });
}
