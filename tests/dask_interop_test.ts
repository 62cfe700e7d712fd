// Interop with Python's dask.distributed comm layer (2022.12): our tcp and ws
// comms against distributed.comm.listen and distributed.comm.connect, driven by
// tests/testdata/dask_peer.py. Skipped when /usr/bin/python3 has no dask.

import { createHash } from "node:crypto";
import { fromFileUrl } from "@std/path";
import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertMatch,
  assertStrictEquals,
} from "@std/assert";
import { type Comm, connect, listen, Serialized } from "../mod.ts";
import { asBytes, pattern, PythonPeer, WAIT_MS, within } from "./_python_peer.ts";
import { daskUnavailable, PYTHON } from "./_dask.ts";

const PEER_SCRIPT = fromFileUrl(new URL("./testdata/dask_peer.py", import.meta.url));
/** dask's tcp comm, and its WebSocket comm (distributed/comm/ws.py). */
const SCHEMES = ["tcp", "ws"] as const;
type Scheme = typeof SCHEMES[number];
const KiB = 1024;
const MiB = 1024 * KiB;

const unavailable = daskUnavailable();
if (unavailable !== undefined) {
  console.warn(
    `dask interop skipped: ${PYTHON} cannot import distributed ` +
      `(apt-get install python3-distributed): ${unavailable}`,
  );
}
const ignore = unavailable !== undefined;

// ---------------------------------------------------------------------------
// Helpers

// deno-std's npm build has no types, so its asserts do not narrow: this does.
function asSerialized(value: unknown, what = "value"): Serialized {
  assertInstanceOf(value, Serialized, `${what} is not a Serialized: ${Deno.inspect(value)}`);
  return value as Serialized;
}

function sha256(data: unknown): string {
  return createHash("sha256").update(asBytes(data)).digest("hex");
}

/** `tests/testdata/dask_peer.py` running under Debian's Python. */
class DaskPeer extends PythonPeer {
  constructor(args: string[]) {
    super({
      python: PYTHON,
      script: PEER_SCRIPT,
      args,
      pipeStdin: true,
      report: "stderr",
      disposeMs: 10_000,
    });
  }
}

/** Writes `message` and reads the reply, both bounded in time. */
async function request(comm: Comm, message: unknown, peer: PythonPeer): Promise<unknown> {
  await within(comm.write(message), () => `Writing to Python did not finish\n${peer.report}`);
  return await readWithin(comm, peer);
}

async function readWithin(comm: Comm, peer: PythonPeer): Promise<unknown> {
  const controller = new AbortController();
  const timer = setTimeout(
    () =>
      controller.abort(new Error(`No message from Python within ${WAIT_MS} ms\n${peer.report}`)),
    WAIT_MS,
  );
  try {
    return await comm.read({ signal: controller.signal });
  } finally {
    clearTimeout(timer);
  }
}

function record(value: unknown): Record<string, unknown> {
  assert(
    typeof value === "object" && value !== null && !Array.isArray(value),
    `expected a map, got ${Deno.inspect(value)}`,
  );
  return value as Record<string, unknown>;
}

/**
 * The data frames' sizes, from the frame sizes dask_peer.py saw for a message
 * whose out-of-band parts are all one sub-header frame and one data frame.
 */
function oobSizes(frames: unknown): number[] {
  if (!Array.isArray(frames)) throw new Error(`Expected frame sizes, got ${Deno.inspect(frames)}`);
  assertEquals(frames.length % 2, 1, `expected a body and pairs of frames: ${frames}`);
  return frames.filter((_, i) => i > 0 && i % 2 === 0);
}

// What dask_peer.py's describe() says about values Python received.
const py = {
  bytes: (data: Uint8Array) => ({ type: "bytes", len: data.length, sha256: sha256(data) }),
  int: (value: number) => ({ type: "int", value }),
  float: (value: number) => ({ type: "float", value }),
  str: (value: string) => ({ type: "str", value }),
  bool: (value: boolean) => ({ type: "bool", value }),
  none: { type: "NoneType", value: null },
  dict: (items: Record<string, unknown>) => ({ type: "dict", items }),
  // msgpack arrays arrive in dask as tuples (it decodes with use_list=False).
  tuple: (...items: unknown[]) => ({ type: "tuple", items }),
  list: (...items: unknown[]) => ({ type: "list", items }),
  // Items sorted as describe() sorts them: by their JSON.
  set: (...items: unknown[]) => ({ type: "set", items }),
};

// ---------------------------------------------------------------------------
// Deno connects, Python listens

for (const scheme of SCHEMES) {
  Deno.test({
    name: `connect() talks to a dask listener from Python's distributed.comm over ${scheme}`,
    ignore,
    async fn() {
      await using peer = new DaskPeer(["listen", scheme]);
      try {
        const address = await peer.firstLine();
        assertMatch(address, new RegExp(`^${scheme}://127\\.0\\.0\\.1:\\d+$`));
        {
          await using comm = await connect(address, { timeout: WAIT_MS });

          // Values that msgpack carries come back as they went.
          const plain = {
            op: "echo",
            nested: { a: { b: [1, 2, { c: "d", e: [null, true, false] }] }, f: [[[[]]]], g: {} },
            unicode: [
              "héllo wörld",
              "日本語テキスト",
              "emoji 🎉🧪 and 𝄞",
              "nul\0inside",
              "",
              "ℵ₀ → ∞",
            ],
            numbers: [0, 1, -1, 127, 128, -33, 2 ** 31, -(2 ** 31) - 1, Number.MAX_SAFE_INTEGER],
            floats: [1.5, -0.25, 1e300, 5e-324, Infinity, -Infinity],
            flags: [true, false, null],
            set: new Set([1, 2, 3]),
            strings: new Set(["x", "yz", "ü"]),
            empty: { set: new Set(), list: [], map: {}, text: "", bytes: new Uint8Array(0) },
            small: new Uint8Array([0, 1, 254, 255]),
            date: new Date(Date.UTC(2024, 1, 29, 12, 30, 15, 250)),
          };
          assertEquals(await request(comm, plain, peer), plain);

          // A large binary goes out of band to Python, which sends it back
          // out of band with to_serialize.
          const big = pattern(2 * MiB, 1);
          const echo = record(await request(comm, { op: "echo", big, after: "big" }, peer));
          assertEquals(asBytes(echo.big, "echo.big").length, big.length);
          assertEquals(sha256(echo.big), sha256(big));
          assertEquals(echo.after, "big");

          // What Python's types are.
          const atThreshold = pattern(64 * KiB, 2);
          const belowThreshold = pattern(64 * KiB - 1, 3);
          const doubles = new Float64Array([1.5, -2, 1e-3]);
          const floatFrame = new Float32Array(32 * KiB).fill(0.5);
          const described = await request(comm, {
            op: "describe",
            value: {
              big,
              atThreshold,
              belowThreshold,
              small: new Uint8Array([1, 2, 3]),
              empty: new Uint8Array(0),
              doubles,
              floatFrame,
              set: new Set([3, 1, 2]),
              strings: new Set(["b", "a"]),
              emptySet: new Set(),
              nested: { a: [1, "x", { b: null }], c: { d: true } },
              unicode: "héllo 🎉 日本",
              int: 42,
              negative: -7,
              float: 0.5,
              none: null,
              list: [1, [2, 3]],
              bigs: [big, { again: big }],
            },
          }, peer);
          const bytesOf = (view: ArrayBufferView) =>
            new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
          const { frames, ...types } = record(described);
          // Binaries of at least 64 KiB went out of band, each as a dask
          // sub-header frame and a data frame, in the order they appear.
          assertEquals(oobSizes(frames), [2 * MiB, 64 * KiB, 128 * KiB, 2 * MiB, 2 * MiB]);
          assertEquals(types, {
            op: "described",
            value: py.dict({
              big: py.bytes(big),
              atThreshold: py.bytes(atThreshold),
              belowThreshold: py.bytes(belowThreshold),
              small: py.bytes(new Uint8Array([1, 2, 3])),
              empty: py.bytes(new Uint8Array(0)),
              doubles: py.bytes(bytesOf(doubles)),
              floatFrame: py.bytes(bytesOf(floatFrame)),
              set: py.set(py.int(1), py.int(2), py.int(3)),
              strings: py.set(py.str("a"), py.str("b")),
              emptySet: py.set(),
              nested: py.dict({
                a: py.tuple(py.int(1), py.str("x"), py.dict({ b: py.none })),
                c: py.dict({ d: py.bool(true) }),
              }),
              unicode: py.str("héllo 🎉 日本"),
              int: py.int(42),
              negative: py.int(-7),
              float: py.float(0.5),
              none: py.none,
              list: py.tuple(py.int(1), py.tuple(py.int(2), py.int(3))),
              bigs: py.tuple(py.bytes(big), py.dict({ again: py.bytes(big) })),
            }),
          });

          // What dask sends out of band: bytes-likes arrive as Uint8Array,
          // anything else as an opaque Serialized that can be sent back.
          const generated = record(
            await request(comm, { op: "generate", size: MiB, seed: 7 }, peer),
          );
          const sums = record(generated.sha256);
          for (const kind of ["bytes", "bytearray", "memoryview"]) {
            assertEquals(sha256(asBytes(generated[kind], kind)), sums[kind], kind);
          }
          assertEquals(asBytes(generated.bytes).length, MiB);
          assertEquals(asBytes(generated.bytearray).length, 64 * KiB + 1);
          assertEquals(generated.small, new TextEncoder().encode("tiny"));
          assertEquals(generated.empty, new Uint8Array(0));

          const complex = asSerialized(generated.complex, "complex");
          assertEquals(complex.kind, "__Serialized__");
          assertEquals(complex.header.serializer, "pickle");
          const collection = asSerialized(generated.collection, "collection");
          assertEquals(collection.kind, "__Serialized__");
          assertStrictEquals(collection.header["is-collection"], true);
          assertEquals(collection.frames.length, 3);
          assertEquals(sha256(collection.frames[0]), sums.big_part);
          const pickled = asSerialized(generated.pickled, "pickled");
          assertEquals(pickled.kind, "__Pickled__");

          // Passed back, dask decodes them to the original Python objects.
          const roundTrip = await request(comm, {
            op: "describe",
            value: { complex, collection, pickled, bytes: generated.bytes },
          }, peer);
          const { frames: roundTripFrames, ...roundTripTypes } = record(roundTrip);
          // Each goes back as its sub-header and its sub-frames: complex 1,
          // collection 3, pickled 0 (its pickle is in the sub-header), bytes 1.
          if (!Array.isArray(roundTripFrames)) throw new Error("Expected frame sizes");
          assertEquals(roundTripFrames.length, 1 + (1 + 1) + (1 + 3) + 1 + (1 + 1));
          assertEquals(roundTripFrames[4], 128 * KiB);
          assertEquals(roundTripFrames[9], MiB);
          assertEquals(roundTripTypes, {
            op: "described",
            value: py.dict({
              complex: { type: "complex", repr: "(1.5-2j)" },
              collection: py.list(
                { type: "bytes", len: 128 * KiB, sha256: sums.big_part },
                py.str("text"),
                py.int(3),
              ),
              pickled: py.dict({
                frozen: { type: "frozenset", items: [py.int(1), py.int(2), py.int(3)] },
              }),
              bytes: py.bytes(asBytes(generated.bytes)),
            }),
          });

          // dask's 64-bit integers arrive exactly (bigint beyond 2^53) and go
          // back as integers; keys that are not strings arrive as JSON text
          // instead of failing the message; a lone surrogate goes as U+FFFD.
          assertEquals(generated.wide, [
            2n ** 63n - 1n,
            -(2n ** 63n),
            2n ** 53n + 1n,
            2n ** 64n - 1n,
          ]);
          assertEquals(generated.odd_keys, { '["x",0]': "tuple", 2: "int" });
          const wide = record(
            await request(
              comm,
              { op: "describe", value: { wide: generated.wide, s: "a\ud800b" } },
              peer,
            ),
          );
          assertEquals(
            wide.value,
            py.dict({
              wide: py.tuple(
                { type: "int", value: 2n ** 63n - 1n },
                { type: "int", value: -(2n ** 63n) },
                { type: "int", value: 2n ** 53n + 1n },
                { type: "int", value: 2n ** 64n - 1n },
              ),
              s: py.str("a\ufffdb"),
            }),
          );

          // A burst of writes without waiting arrives whole and in order.
          const count = 200;
          await within(
            Promise.all(Array.from({ length: count }, (_, i) => comm.write({ op: "burst", i }))),
            () => `Writing a burst to Python did not finish\n${peer.report}`,
          );
          for (let i = 0; i < count; i++) {
            assertEquals(await readWithin(comm, peer), { op: "burst", i });
          }
        }
        const { code, stderr } = await peer.finish();
        assertEquals(code, 0, `dask_peer.py failed:\n${stderr}`);
      } catch (error) {
        throw await peer.explain(error);
      }
    },
  });
}

// ---------------------------------------------------------------------------
// Python connects, Deno listens

/** Runs dask_peer.py's connect mode against an echo listener. */
async function echoForPython(
  scheme: Scheme,
  args: string[],
): Promise<Record<string, unknown>[]> {
  const received: Record<string, unknown>[] = [];
  const errors: unknown[] = [];
  await using listener = await listen(`${scheme}://127.0.0.1:0`, async (comm) => {
    for await (const message of comm) {
      received.push(record(message));
      await comm.write(message);
    }
  }, { onError: (error) => errors.push(error) });
  assertMatch(listener.contactAddress, new RegExp(`^${scheme}://127\\.0\\.0\\.1:\\d+$`));

  await using peer = new DaskPeer(["connect", listener.contactAddress, ...args]);
  try {
    const { code, stdout, stderr } = await peer.finish();
    const lines = stdout.trim().split("\n");
    let result: Record<string, unknown>;
    try {
      result = record(JSON.parse(lines[lines.length - 1]));
    } catch {
      throw new Error(`dask_peer.py printed no JSON result (exit code ${code}):\n${stdout}`);
    }
    assertEquals(result.errors, [], "Python found echoes that differ from what it sent");
    assertStrictEquals(result.ok, true);
    assertEquals(code, 0, `dask_peer.py failed:\n${stderr}`);
    assertEquals(errors, [], "the listener reported errors");
  } catch (error) {
    throw await peer.explain(error);
  }
  return received;
}

for (const scheme of SCHEMES) {
  Deno.test({
    name:
      `listen() serves Python's distributed.comm.connect, which gets its messages back intact over ${scheme}`,
    ignore,
    async fn() {
      const received = await echoForPython(scheme, []);
      const byOp = new Map(received.map((message) => [message.op, message]));
      const data = (op: string) => {
        assert(byOp.has(op), `Python sent no "${op}" message`);
        return byOp.get(op)!.data;
      };
      // Checked after every message went through, so that a binary that
      // shared a buffer with a later message would show here.
      for (const op of ["serialized_bytes", "serialized_bytearray", "inline_large_bytes"]) {
        assertEquals(sha256(asBytes(data(op), op)), byOp.get(op)!.sha256, op);
      }
      assertEquals(asBytes(data("serialized_bytes")).length, MiB);
      assertEquals(data("small_bytes"), new Uint8Array([0, 1, 254, 255]));
      assertEquals(data("nested"), {
        a: { b: [1, 2, { c: "d", e: [null, true, false] }] },
        f: [[[[]]]],
        g: {},
      });
      assertEquals(data("set"), {
        ints: new Set([1, 2, 3]),
        strs: new Set(["x", "yz", "ü"]),
        empty: new Set(),
      });
      assertEquals(data("unicode"), [
        "héllo wörld",
        "日本語テキスト",
        "emoji 🎉🧪 and 𝄞",
        "nul\0inside",
        "",
        "ℵ₀ → ∞",
      ]);
      assertEquals(data("scalars"), [
        0,
        1,
        -1,
        127,
        128,
        -33,
        2 ** 31,
        -(2 ** 31) - 1,
        2 ** 53 - 1,
        -(2 ** 53) + 1,
        1.5,
        -0.25,
        1e300,
        5e-324,
        Infinity,
        null,
        true,
        false,
      ]);
      assertEquals(data("tuple"), [1, "two", 3.25, null, [4, 5]]);
      const complex = asSerialized(data("complex"), "complex");
      assertEquals(complex.kind, "__Serialized__");
      assertEquals(complex.header.serializer, "pickle");
      const collection = asSerialized(data("collection"), "collection");
      assertStrictEquals(collection.header["is-collection"], true);
      assertEquals(sha256(collection.frames[0]), byOp.get("collection")!.sha256);
      const pickled = asSerialized(data("pickled"), "pickled");
      assertEquals(pickled.kind, "__Pickled__");
      assertEquals(data("empty"), {
        dict: {},
        list: [],
        set: new Set(),
        str: "",
        bytes: new Uint8Array(0),
      });
      const burst = received.filter((message) => message.op === "burst").map((m) => m.i);
      assertEquals(burst, Array.from({ length: 200 }, (_, i) => i));
    },
  });
}

// ---------------------------------------------------------------------------
// Large out-of-band frames

for (const scheme of SCHEMES) {
  Deno.test({
    name:
      `16 MiB binaries cross between connect() and a dask listener in both directions over ${scheme}`,
    ignore,
    async fn() {
      await using peer = new DaskPeer(["listen", scheme]);
      try {
        const address = await peer.firstLine();
        {
          await using comm = await connect(address, { timeout: WAIT_MS });
          const size = 16 * MiB;
          const big = pattern(size, 16);

          // Deno to Python.
          const described = record(await request(comm, { op: "describe", value: big }, peer));
          assertEquals(described.value, py.bytes(big));
          assertEquals(oobSizes(described.frames), [size]);

          // Python to Deno.
          const generated = record(await request(comm, { op: "generate", size, seed: 16 }, peer));
          assertEquals(asBytes(generated.bytes).length, size);
          assertEquals(sha256(generated.bytes), record(generated.sha256).bytes);

          // Both ways in one round trip.
          const echo = record(await request(comm, { op: "echo", data: big }, peer));
          assertEquals(asBytes(echo.data).length, size);
          assertEquals(sha256(echo.data), sha256(big));
        }
        const { code, stderr } = await peer.finish();
        assertEquals(code, 0, `dask_peer.py failed:\n${stderr}`);
      } catch (error) {
        throw await peer.explain(error);
      }
    },
  });
}

for (const scheme of SCHEMES) {
  Deno.test({
    name: `listen() echoes 16 MiB from Python's distributed.comm.connect intact over ${scheme}`,
    ignore,
    async fn() {
      const received = await echoForPython(scheme, [String(16 * MiB)]);
      const big = received.find((message) => message.op === "big");
      if (big === undefined) throw new Error("Python sent no big message");
      assertEquals(asBytes(big.data).length, 16 * MiB);
      assertEquals(sha256(big.data), big.sha256);
    },
  });
}
