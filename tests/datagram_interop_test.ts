// Interop of our datagram sockets (`@x/comm/datagram`) with Python's socket
// module (SOCK_DGRAM), driven by tests/testdata/udp_peer.py: datagrams both
// ways, byte-exact and from the right address, and msgpack messages both
// ways with Python's msgpack. Every test runs on both implementations
// ("deno": Deno.listenDatagram, "node": node:dgram) over IPv4 (127.0.0.1)
// and IPv6 (::1).
//
// Skipped with a note: everything without python3, the message tests
// without a Python that has msgpack (Debian: apt-get install
// python3-msgpack), the "deno" ones without --unstable-net, the IPv6 ones
// where ::1 cannot be bound.
//
// Loopback UDP loses a datagram only when a receiver's buffer is full. Both
// of our implementations read datagrams as they arrive, whether or not
// receive() asks, into a queue bounded by maxQueuedBytes (4 MiB by default),
// but only when this process's event loop gets to run; until then, and on
// Python's side until its asyncio loop reads, datagrams wait in the kernel's
// buffer, and Linux's default of 208 KiB holds only 92 datagrams of 1,000
// bytes, or 3 of 64 KiB. So neither side sends more than one group ahead of
// its reader: at most GROUP_COUNT datagrams and GROUP_BYTES bytes (or a
// single larger datagram), then it waits for the other side to catch up.
// Nothing may be lost, and the tests say so.

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { fromFileUrl } from "@std/path";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotStrictEquals,
  assertStrictEquals,
  assertStringIncludes,
} from "@std/assert";
import {
  bind,
  type Datagram,
  DatagramDecodeError,
  type DatagramImplementation,
  type DatagramMessage,
  type DatagramSocket,
  MAX_DATAGRAM_BYTES,
  MAX_DATAGRAM_BYTES_IPV6,
} from "../datagram/mod.ts";
import { asBytes, messageOf, pattern, PythonPeer, WAIT_MS, within } from "./_python_peer.ts";

const PEER_SCRIPT = fromFileUrl(new URL("./testdata/udp_peer.py", import.meta.url));
/** How many datagrams each direction's bulk test sends. */
const COUNT = 200;
/** The most datagrams one side sends before the other catches up. */
const GROUP_COUNT = 50;
/** The most bytes one side sends before the other catches up (or one larger datagram). */
const GROUP_BYTES = 32 * 1024;
/** What tells udp_peer.py to send its next group: any datagram from our socket. */
const GO_AHEAD = new TextEncoder().encode("next");

// ---------------------------------------------------------------------------
// What can run here

interface Family {
  version: 4 | 6;
  /** The loopback address, as Python's getsockname() reports it. */
  host: string;
  /** The host as it appears in a udp:// address. */
  literal: string;
  /** The largest datagram payload. */
  max: number;
}

const FAMILIES: Family[] = [
  { version: 4, host: "127.0.0.1", literal: "127.0.0.1", max: MAX_DATAGRAM_BYTES },
  { version: 6, host: "::1", literal: "[::1]", max: MAX_DATAGRAM_BYTES_IPV6 },
];
const IMPLEMENTATIONS: DatagramImplementation[] = ["deno", "node"];

/** What `code` prints under `python`, or an error's last line. */
function run(python: string, code: string): { ok: boolean; text: string } {
  try {
    const output = new Deno.Command(python, {
      args: ["-c", code],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    const text = new TextDecoder().decode(output.success ? output.stdout : output.stderr).trim();
    return { ok: output.success, text: output.success ? text : text.split("\n").at(-1) ?? "" };
  } catch (error) {
    return { ok: false, text: messageOf(error) }; // Not installed, or not runnable.
  }
}

/** The first of `candidates` that runs `code`, and why none did. */
function findPython(candidates: string[], code: string): { path?: string; why: string[] } {
  const why: string[] = [];
  for (const path of candidates) {
    const { ok, text } = run(path, code);
    if (ok) return { path, why };
    why.push(`${path}: ${text}`);
  }
  return { why };
}

const windows = Deno.build.os === "windows";
// The peer's asyncio loop watches a pipe and a socket with add_reader,
// which Windows' event loop does not offer.
const python = windows
  ? { why: ["udp_peer.py needs a Unix asyncio event loop"] }
  : findPython(["python3"], "import asyncio, socket");
const msgpackPython = python.path === undefined
  ? { why: ["no python3"] }
  : findPython(["python3", "/usr/bin/python3"], "import asyncio, socket, msgpack");
const ipv6 = python.path === undefined ? { ok: false, text: "no python3" } : run(
  python.path,
  "import socket\nwith socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s: s.bind(('::1', 0))",
);
const denoOffered =
  typeof (Deno as unknown as { listenDatagram?: unknown }).listenDatagram === "function";

if (python.path === undefined) {
  console.warn(`datagram interop tests skipped: no python3 (${python.why.join("; ")})`);
} else {
  if (msgpackPython.path === undefined) {
    console.warn(
      "datagram interop: the msgpack message tests are skipped, as no Python here imports " +
        `msgpack (${msgpackPython.why.join("; ")}); apt-get install python3-msgpack ` +
        "or pip install msgpack to run them",
    );
  }
  if (!ipv6.ok) {
    console.warn(
      `datagram interop: the IPv6 tests are skipped, as ::1 cannot be bound: ${ipv6.text}`,
    );
  }
}
if (!denoOffered) {
  console.warn(
    'datagram interop: the implementation "deno" tests are skipped, as Deno.listenDatagram ' +
      "is not offered (run with --unstable-net)",
  );
}

function skipped(implementation: DatagramImplementation, family: Family): boolean {
  return python.path === undefined || (implementation === "deno" && !denoOffered) ||
    (family.version === 6 && !ipv6.ok);
}

// ---------------------------------------------------------------------------
// Helpers

/** tests/testdata/udp_peer.py, with stdin piped so that it ends when we do. */
class UdpPeer extends PythonPeer {
  constructor(interpreter: string, args: string[]) {
    super({ python: interpreter, script: PEER_SCRIPT, args, pipeStdin: true });
  }

  /** Python's socket's address, from the port on its first line. */
  async address(family: Family): Promise<string> {
    const line = await this.firstLine({
      exited: "udp_peer.py exited without printing its port",
      timeout: "No port from udp_peer.py",
    });
    assertMatch(line, /^\d+$/, "udp_peer.py's first line is not a port");
    return `udp://${family.literal}:${line}`;
  }

  /** Closes stdin, checks that Python exits 0, and parses its lines after the port. */
  async lines(): Promise<Record<string, unknown>[]> {
    const { code, stdout } = await this.finish();
    assertEquals(code, 0, `udp_peer.py exited with ${code}`);
    return stdout.trim().split("\n").slice(1).map((line) => JSON.parse(line));
  }
}

/** Runs `body`, adding Python's output to any failure. */
async function withPeer(peer: PythonPeer, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (error) {
    throw await peer.explain(error);
  }
}

/** Runs `receive` with a signal that aborts it, saying `what()`, after WAIT_MS. */
async function bounded<T>(
  receive: (signal: AbortSignal) => Promise<T>,
  what: () => string,
): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`${what()} (waited ${WAIT_MS} ms)`)),
    WAIT_MS,
  );
  try {
    return await receive(controller.signal);
  } finally {
    clearTimeout(timer);
  }
}

function receive(socket: DatagramSocket, what: string): Promise<Datagram> {
  return bounded((signal) => socket.receive({ signal }), () => what);
}

function receiveMessage(socket: DatagramSocket, what: string): Promise<DatagramMessage> {
  return bounded((signal) => socket.receiveMessage({ signal }), () => what);
}

function portOf(address: string): number {
  const match = /:(\d+)$/.exec(address);
  if (!match) throw new Error(`No port in ${address}`);
  return Number(match[1]);
}

/** Compares bytes quickly, and says where they differ. */
function assertSameBytes(actual: unknown, expected: Uint8Array, what: string): void {
  const bytes = asBytes(actual, what);
  if (Buffer.from(bytes).equals(Buffer.from(expected))) return;
  let at = 0;
  while (at < bytes.length && at < expected.length && bytes[at] === expected[at]) at++;
  throw new Error(
    `${what}: got ${bytes.length} bytes, expected ${expected.length}; first difference at byte ${at}`,
  );
}

function shake(text: string, size: number): Uint8Array {
  if (size === 0) return new Uint8Array(0);
  return new Uint8Array(createHash("shake256", { outputLength: size }).update(text).digest());
}

/** What udp_peer.py's send mode puts in its index-th datagram. */
function pythonPayload(index: number, size: number): Uint8Array {
  return shake(`udp_peer ${index}`, size);
}

/** udp_peer.py's blob(size). */
function pythonBlob(size: number): Uint8Array {
  return shake("udp_peer blob", size);
}

/**
 * COUNT sizes: the edges (0 bytes, the IPv4 minimum reassembly size 576
 * less headers, Ethernet's 1,472, the maximum and one below it), then
 * mostly small ones with a larger one now and then.
 */
function sizes(max: number, seed: number): number[] {
  const edges = [max, 0, 1, 2, 7, 8, 255, 256, 508, 509, 1024, 1472, 1473, 4096, 9000];
  const more = [16_384, 32_767, 32_768, 32_769, 65_000, max - 1, 0, max];
  const out = [...edges];
  let x = seed;
  while (out.length < COUNT - more.length) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push(out.length % 10 === 0 ? x % (max + 1) : x % 1473);
  }
  return [...out, ...more];
}

/** Splits `sizes` into groups that one side may send before the other catches up. */
function groups(sizes: number[]): number[][] {
  const out: number[][] = [];
  let group: number[] = [];
  let bytes = 0;
  for (const size of sizes) {
    if (group.length > 0 && (group.length === GROUP_COUNT || bytes + size > GROUP_BYTES)) {
      out.push(group);
      group = [];
      bytes = 0;
    }
    group.push(size);
    bytes += size;
  }
  if (group.length > 0) out.push(group);
  return out;
}

/** udp_peer.py echo's hash: each datagram's size (4 bytes, big-endian), then its bytes. */
function echoHash(datagrams: Uint8Array[]): string {
  const hash = createHash("sha256");
  for (const data of datagrams) {
    const size = new Uint8Array(4);
    new DataView(size.buffer).setUint32(0, data.length);
    hash.update(size).update(data);
  }
  return hash.digest("hex");
}

function float64Hex(value: number): string {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, value);
  return Buffer.from(bytes).toString("hex");
}

// What udp_peer.py's describe() says of values Python unpacked.
const py = {
  none: { type: "NoneType", value: null },
  bool: (value: boolean) => ({ type: "bool", value }),
  int: (value: number | bigint) => ({ type: "int", value: String(value) }),
  float: (value: number) => ({ type: "float", bits: float64Hex(value) }),
  str: (value: string) => ({ type: "str", value }),
  bytes: (value: Uint8Array) =>
    value.length > 64
      ? {
        type: "bytes",
        len: value.length,
        sha256: createHash("sha256").update(value).digest("hex"),
      }
      : { type: "bytes", hex: Buffer.from(value).toString("hex") },
  list: (...items: unknown[]) => ({ type: "list", items }),
  /** A dict with string keys, in order. */
  dict: (items: Record<string, unknown>) => ({
    type: "dict",
    items: Object.entries(items).map(([key, value]) => [py.str(key), value]),
  }),
  timestamp: (seconds: number, nanoseconds: number) => ({
    type: "Timestamp",
    seconds,
    nanoseconds,
  }),
};

/** udp_peer.py's GARBAGE, each followed by {"after": index}. */
const GARBAGE = [
  new Uint8Array([0xc1]),
  new Uint8Array([0x81, 0xa1, 0x61, 0x93, 0x01, 0x02]),
  new Uint8Array([0x01, 0x02]),
  new TextEncoder().encode("not msgpack"),
  new Uint8Array(0),
];

/** What our decoder makes of udp_peer.py's values() and the float32 after them. */
function pythonValues(max: number): unknown[] {
  return [
    { op: "hello", n: 1, nested: { list: [1, 2, [3, null]], empty: {} } },
    [1, "two", null, true, false, 3.5],
    new Uint8Array([0, 1, 0xfe, 0xff]),
    new Uint8Array(0),
    [0, 1, -1, 127, 128, 255, 256, -32, -33, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32],
    [-(2 ** 31), -(2 ** 31) - 1, 2 ** 53 - 1, -(2 ** 53) + 1],
    // Beyond ±(2^53 - 1), exactly, as bigint.
    [2n ** 53n, -(2n ** 53n), 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n],
    [0, -0, 1, 1.5, -0.25, 0.1, 1e300, 5e-324, Infinity, -Infinity],
    NaN,
    "héllo wörld 日本語 🎉 𝄞",
    "",
    "nul\0inside",
    null,
    true,
    false,
    // Integer keys become the object's (string) keys.
    { 1: "one", "-2": "minus two" },
    { deep: [[[[{ x: [null] }]]]] },
    new Date(1709209815250),
    { blob: pythonBlob(max - 9) },
    // Packed with use_single_float=True.
    Math.fround(0.1),
  ];
}

interface OurValue {
  /** What we send. */
  value: unknown;
  /** What udp_peer.py's describe() says Python unpacked. */
  python: unknown;
  /** What comes back when Python packs it again; `value` when absent. */
  back?: unknown;
}

/** What we send with sendMessage, what Python makes of it, and what comes back. */
function ourValues(max: number): OurValue[] {
  const blob = pattern(max - 9, 11);
  return [
    {
      value: { op: "hello", nested: { list: [1, 2, [3, null]], empty: {} } },
      python: py.dict({
        op: py.str("hello"),
        nested: py.dict({
          list: py.list(py.int(1), py.int(2), py.list(py.int(3), py.none)),
          empty: py.dict({}),
        }),
      }),
    },
    {
      value: [1, "two", null, true, false, 3.5],
      python: py.list(
        py.int(1),
        py.str("two"),
        py.none,
        py.bool(true),
        py.bool(false),
        py.float(3.5),
      ),
    },
    {
      value: new Uint8Array([0, 1, 0xfe, 0xff]),
      python: py.bytes(new Uint8Array([0, 1, 254, 255])),
    },
    { value: new Uint8Array(0), python: py.bytes(new Uint8Array(0)) },
    ...[
      [0, 1, -1, 127, 128, 255, 256, -32, -33, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32],
      [-(2 ** 31), -(2 ** 31) - 1, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER],
    ].map((ints) => ({ value: ints, python: py.list(...ints.map(py.int)) })),
    {
      // bigints go as 64-bit integers; those within ±(2^53 - 1) come back as numbers.
      value: [2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 53n + 1n, 5n, -5n],
      python: py.list(
        ...[2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 53n + 1n, 5n, -5n].map(py.int),
      ),
      back: [2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 53n + 1n, 5, -5],
    },
    {
      value: [0.5, -0.25, 0.1, 1e300, 5e-324, Infinity, -Infinity, NaN, 1.5e-10],
      python: py.list(
        ...[0.5, -0.25, 0.1, 1e300, 5e-324, Infinity, -Infinity, NaN, 1.5e-10].map(py.float),
      ),
    },
    {
      // A number with no fraction is a msgpack integer, -0 included.
      value: [2.0, -0],
      python: py.list(py.int(2), py.int(0)),
    },
    {
      value: ["héllo wörld 日本語 🎉 𝄞", "", "nul\0inside"],
      python: py.list(py.str("héllo wörld 日本語 🎉 𝄞"), py.str(""), py.str("nul\0inside")),
    },
    { value: null, python: py.none },
    { value: true, python: py.bool(true) },
    { value: false, python: py.bool(false) },
    {
      value: new Date(1709209815250),
      python: py.timestamp(1709209815, 250_000_000),
    },
    {
      // A Set goes as dask's {"__Set__": true, "as-list": [...]}, and that
      // comes back as a Set.
      value: new Set([1, 2]),
      python: py.dict({ __Set__: py.bool(true), "as-list": py.list(py.int(1), py.int(2)) }),
    },
    {
      value: { deep: [[[[{ x: [null] }]]]] },
      python: py.dict({
        deep: py.list(py.list(py.list(py.list(py.dict({ x: py.list(py.none) }))))),
      }),
    },
    // Exactly the largest datagram: fixmap, fixstr "blob", bin16 header.
    { value: { blob }, python: py.dict({ blob: py.bytes(blob) }) },
  ];
}

// ---------------------------------------------------------------------------
// The tests

for (const implementation of IMPLEMENTATIONS) {
  for (const family of FAMILIES) {
    const where = `datagram interop [${implementation}, IPv${family.version}]`;
    const ignore = skipped(implementation, family);
    const bindHere = async () => {
      const socket = await bind(`udp://${family.literal}:0`, { implementation });
      assertEquals(socket.implementation, implementation);
      assertMatch(
        socket.address,
        new RegExp(`^udp://${family.literal.replace(/[[\]]/g, "\\$&")}:\\d+$`),
      );
      return socket;
    };

    Deno.test({
      name: `${where}: ${COUNT} datagrams from Python's socket arrive byte-exact, from its address`,
      ignore,
      async fn() {
        await using socket = await bindHere();
        const spec = groups(sizes(family.max, 1));
        await using peer = new UdpPeer(python.path!, [
          "send",
          String(family.version),
          String(portOf(socket.address)),
          spec.map((group) => group.join(",")).join("/"),
        ]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          // Received by iterating the socket.
          const datagrams = socket[Symbol.asyncIterator]();
          let index = 0;
          for (const [number, group] of spec.entries()) {
            if (number > 0) await socket.send(GO_AHEAD, pythonAddress);
            for (const size of group) {
              const next = await within(
                datagrams.next(),
                () => `Datagram ${index} (${size} bytes) did not arrive`,
              );
              assert(!next.done, "the iteration ended");
              const { data, from } = next.value;
              assertEquals(from, pythonAddress, `datagram ${index}'s sender`);
              assertSameBytes(data, pythonPayload(index, size), `datagram ${index}`);
              index++;
            }
          }
          assertEquals(index, COUNT);
          assertEquals(await peer.lines(), [{
            sent: COUNT,
            sockname: [family.host, portOf(pythonAddress)],
          }]);
          assertEquals(socket.dropped, 0);
        });
      },
    });

    Deno.test({
      name: `${where}: received bytes are plain Uint8Arrays, and data.slice() is a copy`,
      ignore,
      async fn() {
        await using socket = await bindHere();
        const spec = [[1], [4096], [4097], [family.max]];
        await using peer = new UdpPeer(python.path!, [
          "send",
          String(family.version),
          String(portOf(socket.address)),
          spec.join("/"),
        ]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          for (const [index, [size]] of spec.entries()) {
            if (index > 0) await socket.send(GO_AHEAD, pythonAddress);
            const { data } = await receive(socket, `No datagram of ${size} bytes`);
            assertSameBytes(data, pythonPayload(index, size), `the datagram of ${size} bytes`);
            assertStrictEquals(
              Object.getPrototypeOf(data),
              Uint8Array.prototype,
              `the datagram of ${size} bytes is a ${data.constructor.name}`,
            );
            const own = data.slice();
            assertNotStrictEquals(
              own.buffer,
              data.buffer,
              `data.slice() of ${size} bytes is a view`,
            );
            assertEquals(own.buffer.byteLength, size);
          }
          await peer.lines();
        });
      },
    });

    Deno.test({
      name:
        `${where}: ${COUNT} datagrams to Python's socket are echoed back, and Python saw them all`,
      ignore,
      async fn() {
        await using socket = await bindHere();
        await using peer = new UdpPeer(python.path!, ["echo", String(family.version)]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          const sent: Uint8Array[] = [];
          for (const group of groups(sizes(family.max, 2))) {
            const first = sent.length;
            for (const size of group) {
              const data = pattern(size, sent.length + 1);
              await socket.send(data, pythonAddress);
              sent.push(data);
            }
            for (let index = first; index < sent.length; index++) {
              const what = `echo ${index} (${sent[index].length} bytes)`;
              const { data, from } = await receive(socket, `No ${what}`);
              assertEquals(from, pythonAddress, `the sender of ${what}`);
              assertSameBytes(data, sent[index], what);
            }
          }
          assertEquals(await peer.lines(), [{
            count: COUNT,
            sizes: sent.map((data) => data.length),
            sha256: echoHash(sent),
            senders: [[family.host, portOf(socket.address)]],
            sockname: [family.host, portOf(pythonAddress)],
          }]);
          assertEquals(socket.dropped, 0);
        });
      },
    });

    Deno.test({
      name: `${where}: a datagram that is not msgpack rejects receiveMessage() ` +
        "with a DatagramDecodeError holding its bytes and sender; the next one decodes",
      ignore,
      async fn() {
        await using socket = await bindHere();
        await using peer = new UdpPeer(python.path!, [
          "garbage",
          String(family.version),
          String(portOf(socket.address)),
        ]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          for (const [index, garbage] of GARBAGE.entries()) {
            if (index > 0) await socket.send(GO_AHEAD, pythonAddress);
            const error = await receiveMessage(socket, `No garbage datagram ${index}`).then(
              (received) => {
                throw new Error(
                  `Garbage ${index} (${Deno.inspect(garbage)}) decoded: ${Deno.inspect(received)}`,
                );
              },
              (error: unknown) => error,
            );
            if (!(error instanceof DatagramDecodeError)) throw error;
            assertSameBytes(error.data, garbage, `the bytes of garbage ${index}`);
            assertEquals(error.from, pythonAddress);
            assertStringIncludes(error.message, pythonAddress);
            assert(error.cause !== undefined, "no cause");

            await socket.send(GO_AHEAD, pythonAddress);
            const { message, from } = await receiveMessage(socket, `No message after ${index}`);
            assertEquals(message, { after: index });
            assertEquals(from, pythonAddress);
          }
          assertEquals(await peer.lines(), [{
            sent: 2 * GARBAGE.length,
            sockname: [family.host, portOf(pythonAddress)],
          }]);
        });
      },
    });

    Deno.test({
      name: `${where}: receiveMessage() decodes what Python's msgpack.packb() sends`,
      ignore: ignore || msgpackPython.path === undefined,
      async fn() {
        await using socket = await bindHere();
        await using peer = new UdpPeer(msgpackPython.path!, [
          "msgsend",
          String(family.version),
          String(portOf(socket.address)),
        ]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          const expected = pythonValues(family.max);
          const received: unknown[] = [];
          await bounded(async (signal) => {
            // Received by iterating the socket's messages.
            for await (const { message, from } of socket.messages({ signal })) {
              assertEquals(from, pythonAddress, `the sender of message ${received.length}`);
              received.push(message);
              if (received.length === expected.length) break;
              await socket.send(GO_AHEAD, pythonAddress);
            }
          }, () => `Only ${received.length} of ${expected.length} messages from Python arrived`);
          for (const [index, value] of expected.entries()) {
            assertEquals(received[index], value, `message ${index}`);
          }
          // assertEquals takes -0 for 0.
          assert(Object.is((received[7] as number[])[1], -0), "-0.0 arrived as 0");
          assertEquals(await peer.lines(), [{
            sent: expected.length,
            sockname: [family.host, portOf(pythonAddress)],
          }]);
        });
      },
    });

    Deno.test({
      name: `${where}: what sendMessage() sends, Python's msgpack.unpackb() reads, ` +
        "and what Python packs back decodes the same",
      ignore: ignore || msgpackPython.path === undefined,
      async fn() {
        await using socket = await bindHere();
        await using peer = new UdpPeer(msgpackPython.path!, ["msgecho", String(family.version)]);
        await withPeer(peer, async () => {
          const pythonAddress = await peer.address(family);
          const values = ourValues(family.max);
          for (const [index, { value, back }] of values.entries()) {
            await socket.sendMessage(value, pythonAddress);
            const { message, from } = await receiveMessage(socket, `No echo of message ${index}`);
            assertEquals(from, pythonAddress);
            assertEquals(message, back ?? value, `echo of message ${index}`);
          }
          const lines = await peer.lines();
          assertEquals(lines.length, values.length + 1, "one line per message, then the end");
          for (const [index, { python: described }] of values.entries()) {
            assertEquals(
              lines[index],
              { value: described },
              `what Python read of message ${index}`,
            );
          }
          assertEquals(lines.at(-1), {
            end: values.length,
            senders: [[family.host, portOf(socket.address)]],
            sockname: [family.host, portOf(pythonAddress)],
          });
        });
      },
    });
  }
}
