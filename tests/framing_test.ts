import { assert, assertEquals, assertInstanceOf, assertThrows } from "@std/assert";
import { Encoder } from "@msgpack/msgpack";
import { createCodec } from "../comm/_codec.ts";
import { AllocateError, FrameReader, headerSize, setU64, writeHeader } from "../comm/_framing.ts";
import { ProtocolError, Serialized } from "../mod.ts";

const MAX = 1 << 20;

/** One message in dask 2022 framing, as bytes. */
function frame(frames: Uint8Array[]): Uint8Array {
  const size = headerSize(frames.length) + frames.reduce((n, f) => n + f.length, 0);
  const out = new Uint8Array(size);
  let at = writeHeader(new DataView(out.buffer), 0, frames);
  for (const f of frames) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

/** Feeds `bytes` to a reader in pieces of `step` bytes; returns every message. */
function feed(reader: FrameReader, bytes: Uint8Array, step: number): Uint8Array[][] {
  const messages: Uint8Array[][] = [];
  for (let at = 0; at < bytes.length;) {
    const space = reader.space();
    const n = Math.min(step, space.length, bytes.length - at);
    space.set(bytes.subarray(at, at + n));
    reader.commit(n);
    at += n;
    for (let m; (m = reader.next());) messages.push(m.map((f) => f.slice()));
  }
  return messages;
}

Deno.test("FrameReader.next() cuts messages split at every point", () => {
  const a = frame([new Uint8Array([1, 2, 3])]);
  const b = frame([new Uint8Array(0), new Uint8Array([9]), new Uint8Array(300).fill(7)]);
  const stream = new Uint8Array([...a, ...b, ...a]);
  for (const step of [1, 2, 3, 7, 8, 16, 17, 100, stream.length]) {
    const messages = feed(new FrameReader(MAX), stream, step);
    assertEquals(messages.length, 3, `step ${step}`);
    assertEquals(messages[0], [new Uint8Array([1, 2, 3])]);
    assertEquals(messages[1][2], new Uint8Array(300).fill(7));
    assertEquals(messages[2], messages[0]);
  }
});

Deno.test("FrameReader.next() trusts frame lengths over the total, as newer dask needs", () => {
  // dask 2023.11+ writes a first length covering only the prelude and the
  // first frames; the frame lengths say where the message ends.
  const frames = [new Uint8Array([1]), new Uint8Array(5000).fill(3)];
  const bytes = frame(frames);
  setU64(new DataView(bytes.buffer), 0, headerSize(2) - 8 + 1);
  const messages = feed(new FrameReader(MAX), new Uint8Array([...bytes, ...bytes]), 999);
  assertEquals(messages.length, 2);
  assertEquals(messages[1][1].length, 5000);
});

Deno.test("FrameReader.next() refuses a total over maxMessageSize before allocating", () => {
  for (const total of [MAX + 1, 2 ** 40, 2 ** 63]) {
    const header = new Uint8Array(16);
    const view = new DataView(header.buffer);
    view.setBigUint64(0, BigInt(total), true);
    view.setBigUint64(8, 1n, true);
    const reader = new FrameReader(MAX);
    reader.space().set(header);
    reader.commit(16);
    assertThrows(() => reader.next(), ProtocolError, "more than maxMessageSize (1048576)");
    // Nothing was sized after the lie: the next read buffer stays small.
    assert(reader.space().length <= 256 * 1024);
  }
});

Deno.test("FrameReader.next() refuses frame tables that do not fit", () => {
  const cases: [bigint, bigint, string][] = [
    [8n, 0n, "0 frames cannot fit"],
    [16n, 5n, "5 frames cannot fit in the 16 bytes"],
    [64n, 2n ** 62n, "frames in one message"],
  ];
  for (const [total, count, message] of cases) {
    const header = new Uint8Array(16);
    const view = new DataView(header.buffer);
    view.setBigUint64(0, total, true);
    view.setBigUint64(8, count, true);
    const reader = new FrameReader(MAX);
    reader.space().set(header);
    reader.commit(16);
    assertThrows(() => reader.next(), ProtocolError, message);
  }
});

Deno.test("FrameReader.next() refuses frame lengths adding up past maxMessageSize", () => {
  const header = new Uint8Array(32);
  const view = new DataView(header.buffer);
  view.setBigUint64(0, 24n, true);
  view.setBigUint64(8, 2n, true);
  view.setBigUint64(16, BigInt(MAX), true);
  view.setBigUint64(24, 2n ** 63n, true);
  const reader = new FrameReader(MAX);
  reader.space().set(header);
  reader.commit(32);
  assertThrows(() => reader.next(), ProtocolError, "frame lengths adding up to");
});

Deno.test("FrameReader.space() reads a large frame in place", () => {
  const payload = new Uint8Array(600_000).map((_, i) => i % 251);
  const bytes = frame([new Uint8Array([1]), payload]);
  const reader = new FrameReader(MAX);
  let message: Uint8Array[] | undefined;
  let reads = 0;
  for (let at = 0; at < bytes.length && reads < 100; reads++) {
    const space = reader.space();
    const n = Math.min(space.length, bytes.length - at);
    space.set(bytes.subarray(at, at + n));
    reader.commit(n);
    at += n;
    message = reader.next() ?? message;
  }
  if (!message) throw new Error("no message");
  assertEquals(message[1], payload);
  // After the header is known, the payload gets a buffer of its own and the
  // rest of it is read straight into it: a couple of reads in all.
  assert(reads <= 3, `took ${reads} reads`);
});

Deno.test("Codec round-trips msgpack values", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const values = [
    null,
    true,
    0,
    -1,
    2 ** 40,
    1.5,
    "",
    "héllo ✓",
    [1, [2, [3]]],
    { a: { b: [null, "x"] } },
    new Uint8Array([1, 2, 3]),
    new Set([1, "two"]),
    { nested: new Set([new Uint8Array(2000)]) },
  ];
  for (const value of values) {
    const frames = codec.encode(value).map((f) => f.slice());
    assertEquals(codec.decode(frames), value);
  }
});

Deno.test("Codec sends large binaries as dask __Serialized__ frames", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const big = new Uint8Array(4096).fill(5);
  const frames = codec.encode({ data: big, small: new Uint8Array(10) }).map((f) => f);
  assertEquals(frames.length, 3);
  assert(frames[2] === big, "the payload frame is the caller's array, not a copy");
  const decoded = createCodec({ binaryFrameThreshold: 1024 }).decode(
    frames.map((f) => f.slice()),
  ) as { data: Uint8Array };
  assertEquals(decoded.data, big);
  const header = codec.decode([frames[1]]) as Record<string, unknown>;
  assertEquals(header.serializer, "dask");
  assertEquals(header.type, "bytes");
  assertEquals(header["num-sub-frames"], 1);
});

Deno.test("Codec joins dask bytes split into several sub-frames", () => {
  const encoder = new Encoder();
  const body = encoder.encode({ x: { __Serialized__: 1 } });
  const header = encoder.encode({
    serializer: "dask",
    type: "bytes",
    "split-num-sub-frames": [2],
    "split-offsets": [0],
    compression: [null, null],
    "num-sub-frames": 2,
  });
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const decoded = codec.decode([
    body,
    header,
    new Uint8Array([1, 2]),
    new Uint8Array([3]),
  ]) as { x: Uint8Array };
  assertEquals(decoded.x, new Uint8Array([1, 2, 3]));
});

Deno.test("Codec keeps payloads it cannot decode as Serialized, and writes them back", () => {
  const encoder = new Encoder();
  const body = encoder.encode({ obj: { __Pickled__: 1 }, arr: { __Serialized__: 3 } });
  const pickled = encoder.encode({ "pickled-obj": new Uint8Array([0x80, 5]), "num-sub-frames": 1 });
  const numpy = encoder.encode({ serializer: "dask", type: "numpy.ndarray", "num-sub-frames": 1 });
  const frames = [body, pickled, new Uint8Array([9]), numpy, new Uint8Array([4, 4])];
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const decoded = codec.decode(frames) as Record<string, Serialized>;
  assertInstanceOf(decoded.obj, Serialized);
  assertEquals(decoded.obj.kind, "__Pickled__");
  assertEquals(decoded.obj.frames, [new Uint8Array([9])]);
  assertEquals(decoded.arr.header.type, "numpy.ndarray");
  // Passing through: the payloads go out as they came in.
  const again = codec.decode(codec.encode(decoded).map((f) => f.slice())) as Record<
    string,
    Serialized
  >;
  assertEquals(again.obj.frames, [new Uint8Array([9])]);
  assertEquals(again.arr.frames, [new Uint8Array([4, 4])]);
  assertEquals(again.arr.header.type, "numpy.ndarray");
});

Deno.test("Codec refuses bad references and bad msgpack with ProtocolError", () => {
  const encoder = new Encoder();
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const header = encoder.encode({ serializer: "dask", type: "bytes", "num-sub-frames": 5 });
  assertThrows(
    () => codec.decode([encoder.encode({ __Serialized__: 7 }), header]),
    ProtocolError,
    "reference to frame 7",
  );
  assertThrows(
    () => codec.decode([encoder.encode({ __Serialized__: 1 }), header]),
    ProtocolError,
    "announcing 5 sub-frames",
  );
  assertThrows(
    () => codec.decode([encoder.encode({ __Serialized__: 1 }), new Uint8Array([0xc1])]),
    ProtocolError,
    "not valid msgpack",
  );
  assertThrows(() => codec.decode([new Uint8Array([0xc1])]), ProtocolError, "not valid msgpack");
  assertThrows(() => codec.decode([new Uint8Array([0x92, 1])]), ProtocolError);
});

Deno.test("Codec refuses values msgpack cannot carry with a TypeError", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  assertThrows(() => codec.encode(new Map([[{}, 1]])), TypeError, "Map with a object key");
  assertEquals(codec.decode(codec.encode(new Map([["a", 1]]))), { a: 1 });
});

Deno.test("Codec reads 64-bit integers exactly, as bigint beyond 2^53", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const cases: [Uint8Array, unknown][] = [
    // uint64 and int64 tags, as Python's msgpack writes large ints.
    [new Uint8Array([0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), 2n ** 63n - 1n],
    [new Uint8Array([0xcf, 0, 0, 0, 1, 0, 0, 0, 0]), 2 ** 32],
    [new Uint8Array([0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]), -(2n ** 63n)],
    [new Uint8Array([0xd3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), -(2 ** 32)],
    [new Uint8Array([0xcf, 0, 0x20, 0, 0, 0, 0, 0, 0]), 2n ** 53n],
  ];
  for (const [bytes, expected] of cases) assertEquals(codec.decode([bytes]), expected);
});

Deno.test("Codec writes bigint as a 64-bit integer and numbers as before", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const body = (value: unknown) => [...codec.encode(value)[0]];
  assertEquals(body(2n ** 63n - 1n), [0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assertEquals(body(-1n), [0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  // A safe integer of 2^40 stays an integer (not a float) on the wire.
  assertEquals(body(2 ** 40)[0], 0xcf);
  assertEquals(codec.decode(codec.encode({ n: 2n ** 64n - 1n })), { n: 2n ** 64n - 1n });
  assertThrows(() => codec.encode(2n ** 64n), TypeError, "range from -2^63 to 2^64-1");
});

Deno.test("Codec turns map keys that are not strings into their JSON text", () => {
  const encoder = new Encoder();
  // {("x", 0): 1, 2: "two", None: 3} as Python's msgpack writes it, by hand:
  const bytes = new Uint8Array([
    0x83,
    ...[0x92, 0xa1, 0x78, 0x00],
    0x01,
    0x02,
    ...encoder.encode("two"),
    0xc0,
    0x03,
  ]);
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  assertEquals(codec.decode([bytes]), { '["x",0]': 1, 2: "two", null: 3 });
});

Deno.test("Codec refuses map keys over 1,024 characters of JSON, keys nested in keys included, with ProtocolError", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  // 3,000 one-entry maps, each the key of the next: each level escapes the
  // quotes of the one inside, so the text doubles (it took 480 MB).
  // Then the innermost key, and each map's value: 3,001 nils.
  const nested = new Uint8Array(6_001).fill(0xc0);
  nested.fill(0x81, 0, 3_000);
  const tupleKey = (text: string) =>
    new Uint8Array([0x81, 0x91, ...new Encoder().encode(text), 0x01]);
  const long = tupleKey("x".repeat(2_000));
  for (const bytes of [nested, long]) {
    assertThrows(() => codec.decode([bytes]), ProtocolError, "over 1024 characters as JSON");
  }
  // Keys up to the bound still arrive as their JSON text.
  assertEquals(codec.decode([tupleKey("x".repeat(1_000))]), { [`["${"x".repeat(1_000)}"]`]: 1 });
});

Deno.test("Codec sends lone surrogates as U+FFFD so that any peer can decode them", () => {
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const body = codec.encode({ ["k\ud800"]: "a\ud800b", ok: "é✓😀" })[0].slice();
  // UTF-8 never encodes a surrogate: no ED A0..BF sequence may appear.
  const encodedSurrogate = body.findIndex((b, i) => b === 0xed && body[i + 1] >= 0xa0);
  assertEquals(encodedSurrogate, -1);
  assertEquals(codec.decode([body]), { ["k\ufffd"]: "a\ufffdb", ok: "é✓😀" });
  assertEquals(codec.decode(codec.encode("\udc00")), "\ufffd");
});

Deno.test("FrameReader.next() refuses more frames than maxMessageSize pays for", () => {
  // Legal by bytes (8 bytes a length), but millions of views in memory.
  const count = MAX / 8 - 1;
  const header = new Uint8Array(16);
  const view = new DataView(header.buffer);
  view.setBigUint64(0, BigInt(8 * (1 + count)), true);
  view.setBigUint64(8, BigInt(count), true);
  const reader = new FrameReader(MAX);
  reader.space().set(header);
  reader.commit(16);
  assertThrows(() => reader.next(), ProtocolError, "frames in one message");
});

Deno.test("Codec decodes a payload referenced many times once", () => {
  const encoder = new Encoder();
  const references = Array.from({ length: 50 }, () => ({ __Serialized__: 1 }));
  const header = encoder.encode({
    serializer: "dask",
    type: "bytes",
    compression: [null, null],
    "num-sub-frames": 2,
  });
  const codec = createCodec({ binaryFrameThreshold: 1024 });
  const decoded = codec.decode([
    encoder.encode(references),
    header,
    new Uint8Array(1000),
    new Uint8Array(1000),
  ]) as Uint8Array[];
  assertEquals(decoded.length, 50);
  assertEquals(decoded[0].length, 2000);
  assert(decoded.every((d) => d === decoded[0]), "one joined buffer, shared");
});

/** A message with large frames among small ones, around two small ones. */
function mixedStream(): { bytes: Uint8Array; big: Uint8Array[] } {
  const small = frame([new Uint8Array([1, 2, 3])]);
  const big = [
    new Uint8Array(200_000).map((_, i) => i % 253), // a large first frame: never allocated
    new Uint8Array([4, 5]),
    new Uint8Array(70_000).map((_, i) => i % 241),
    new Uint8Array(5).fill(6),
    new Uint8Array(100_000).map((_, i) => i % 239),
    new Uint8Array(0),
  ];
  return { bytes: new Uint8Array([...small, ...frame(big), ...small]), big };
}

Deno.test("FrameReader takes messages with large frames frame by frame, split anywhere", () => {
  const { bytes, big } = mixedStream();
  for (const step of [1, 13, 1000, 65_536, 70_001, bytes.length]) {
    for (const pooled of [false, true]) {
      const sizes: number[] = [];
      const allocate = pooled
        ? (size: number) => {
          sizes.push(size);
          return new Uint8Array(size + 10); // larger than asked: a view is cut from it
        }
        : undefined;
      const reader = new FrameReader(MAX, { directFrameBytes: 65_536, allocate });
      const messages = feed(reader, bytes, step);
      assertEquals(messages.length, 3, `step ${step}`);
      assertEquals(messages[0], [new Uint8Array([1, 2, 3])]);
      assertEquals(messages[1], big, `step ${step}`);
      assertEquals(messages[2], messages[0]);
      assertEquals(reader.pendingBytes, 0);
      if (pooled) assertEquals(sizes, [70_000, 100_000]);
    }
  }
});

Deno.test("FrameReader reads large frames into the memory allocate gives", () => {
  const { bytes, big } = mixedStream();
  const given: Uint8Array[] = [];
  const reader = new FrameReader(MAX, {
    directFrameBytes: 65_536,
    allocate: (size) => {
      const buffer = new Uint8Array(size);
      given.push(buffer);
      return buffer;
    },
  });
  const messages: Uint8Array[][] = [];
  for (let at = 0, reads = 0; at < bytes.length; reads++) {
    assert(reads < 1000, "too many reads");
    const space = reader.space();
    const n = Math.min(4096, space.length, bytes.length - at);
    space.set(bytes.subarray(at, at + n));
    reader.commit(n);
    at += n;
    for (let m; (m = reader.next());) messages.push(m);
  }
  assertEquals(messages.length, 3);
  // The frames handed out are the very buffers allocate returned.
  assert(messages[1][2] === given[0]);
  assert(messages[1][4] === given[1]);
  assertEquals(given[0], big[2]);
  assertEquals(given[1], big[4]);
});

Deno.test("FrameReader says how much of a message arrived while reading a large frame", () => {
  const { bytes } = mixedStream();
  const reader = new FrameReader(MAX, { directFrameBytes: 65_536 });
  const first = headerSize(1) + 3;
  const cut = first + headerSize(6) + 200_000 + 2 + 30_000;
  assertEquals(feed(reader, bytes.subarray(0, cut), 4096).length, 1);
  assertEquals(reader.pendingBytes, cut - first);
  assertEquals(reader.neededBytes, headerSize(6) + 200_000 + 2 + 70_000 + 5 + 100_000);
});

Deno.test("FrameReader refuses an allocate that returns too little", () => {
  for (const bad of [new Uint8Array(10), new ArrayBuffer(100_000), "no"]) {
    const reader = new FrameReader(MAX, {
      directFrameBytes: 1000,
      allocate: () => bad as Uint8Array,
    });
    const bytes = frame([new Uint8Array(1), new Uint8Array(5000)]);
    reader.space().set(bytes.subarray(0, 100));
    reader.commit(100);
    // The frame's buffer is asked for when the next read needs it.
    assertEquals(reader.next(), undefined);
    assertThrows(() => reader.space(), AllocateError, "allocate(5000) returned");
  }
});

Deno.test("Codec decodes map keys right whatever its key cache holds", () => {
  const codec = createCodec({ binaryFrameThreshold: 1 << 16 });
  // Deterministic keys: ASCII and not, 1 to 40 bytes, many more than the
  // cache has slots, so that slots are shared and overwritten.
  let seed = 7;
  const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const alphabet = "abcxyz_-09AZé€𝄞";
  const keys = new Set<string>();
  while (keys.size < 10_000) {
    const length = 1 + Math.floor(random() * 24);
    let key = "";
    for (let i = 0; i < length; i++) key += [...alphabet][Math.floor(random() * 15)];
    keys.add(key);
  }
  const record: Record<string, number> = {};
  let i = 0;
  for (const key of keys) record[key] = i++;
  for (let round = 0; round < 3; round++) {
    const frames = codec.encode(record).map((f) => f.slice());
    assertEquals(codec.decode(frames), record);
    // Keys met one by one, in other orders, in small maps.
    const some = [...keys].filter((_, j) => j % (round + 2) === 0).reverse();
    for (const key of some.slice(0, 2000)) {
      const small = codec.encode({ [key]: 1, [key + "!"]: 2 }).map((f) => f.slice());
      assertEquals(codec.decode(small), { [key]: 1, [key + "!"]: 2 });
    }
  }
});

Deno.test("Codec encodes a message whose getter encodes another, both intact", () => {
  const codec = createCodec({ binaryFrameThreshold: 1000 });
  const inner: Uint8Array[][] = [];
  const big = new Uint8Array(5000).fill(4);
  const message = {
    get early() {
      inner.push(
        codec.encode({ nested: new Set([1]), big: new Uint8Array(3000).fill(1), n: 2n ** 60n }),
      );
      return "x";
    },
    big,
  };
  const frames = codec.encode(message).map((f) => f.slice());
  assertEquals(codec.decode(frames), { early: "x", big });
  assertEquals(codec.decode(inner[0].map((f) => f.slice())), {
    nested: new Set([1]),
    big: new Uint8Array(3000).fill(1),
    n: 2n ** 60n,
  });
});

Deno.test("FrameReader refuses an allocate that returns memory in use", () => {
  const bytes = frame([
    new Uint8Array(1),
    new Uint8Array(5000).fill(1),
    new Uint8Array(5000).fill(2),
  ]);
  // The same memory twice in one message.
  const shared = new Uint8Array(5000);
  let reader = new FrameReader(MAX, { directFrameBytes: 1000, allocate: () => shared });
  assertThrows(() => feed(reader, bytes, 100), AllocateError, "holds frame 1 of the same message");
  // The memory the reader reads into.
  const readInto: { space?: Uint8Array } = {};
  reader = new FrameReader(MAX, {
    directFrameBytes: 1000,
    allocate: (size) => new Uint8Array(readInto.space!.buffer, 0, size),
  });
  readInto.space = reader.space();
  assertThrows(() => feed(reader, bytes, 100), AllocateError, "memory the comm reads into");
});

Deno.test("Codec refuses references whose frames overlap, before joining them", () => {
  const codec = createCodec({ binaryFrameThreshold: 1 << 16 });
  const encoder = new Encoder();
  const subHeader = (count: number) =>
    encoder.encode({ serializer: "dask", type: "bytes", "num-sub-frames": count });
  // Frame 1 claims frames 2 to 4; frame 2 claims 3 and 4 again.
  const body = encoder.encode([{ __Serialized__: 1 }, { __Serialized__: 2 }]);
  const part = new Uint8Array(1000);
  const frames = [body, subHeader(3), subHeader(2), part, part];
  assertThrows(() => codec.decode(frames), ProtocolError, "share frame 2");
});
