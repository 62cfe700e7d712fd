// Decoders never trust input: every decoder is fed random and mutated input,
// split at random points, and may only answer with a correct message or a
// typed error that closes the comm; never another exception, never a hang,
// never a buffer past maxMessageSize. The seed is fixed (FUZZ_SEED overrides
// it); a failure names the case, which FUZZ_CASE replays alone.

import { assert, assertEquals, assertInstanceOf } from "@std/assert";
import { createHmac } from "node:crypto";
import { createCodec } from "../comm/_codec.ts";
import {
  FrameReader,
  type MessageReader,
  MIN_READ_BYTES,
  READ_CHUNK_BYTES,
} from "../comm/_framing.ts";
import { MpFrameReader } from "../comm/_mp_framing.ts";
import { DEFER_READING, StreamComm, type StreamCommOptions } from "../comm/stream_comm.ts";
import { WebSocketByteStream } from "../comm/_ws_stream.ts";
import {
  AddressError,
  AuthenticationError,
  type Backend,
  type BackendListener,
  type ByteStream,
  ChannelClosedError,
  type Comm,
  CommClosedError,
  connect,
  ConnectError,
  listen,
  type ListenOptions,
  pipe,
  ProtocolError,
  registerBackend,
  Sender,
  Switchboard,
} from "../mod.ts";
import { answerChallenge, deliverChallenge } from "../auth/mod.ts";
import { bind, DatagramDecodeError } from "../datagram/mod.ts";
import { socketControl } from "../datagram/_socket_control.ts";
import { Inbox, type Transport } from "../datagram/_transport.ts";
import {
  cases,
  concat,
  cut,
  daskFrame,
  encodeFrames,
  type FuzzCase,
  hostileBody,
  mpFrame,
  mutate,
  randomValue,
  readAll,
  type ReaderOutcome,
  referenceMessage,
  type Rng,
  sameFrames,
  ScriptedStream,
  SEED,
  within,
} from "./_fuzz.ts";

const KIB = 1024;
/** The limit most cases run under: small, so that lies about sizes are cheap to tell. */
const MAX = 64 * KIB;
/** How long one case may take before it counts as a hang. */
const HANG_MS = 5_000;
const HANDSHAKE = { compression: null, python: [3, 11, 0], "pickle-protocol": 5 };

/** Counts outcomes per kind, for the line each test logs. */
class Tally {
  #counts = new Map<string, number>();
  #start = performance.now();
  constructor(readonly name: string) {}
  add(kind: string, n = 1): void {
    this.#counts.set(kind, (this.#counts.get(kind) ?? 0) + n);
  }
  /** Logs one line: the cases tried, then what came of them. */
  log(): void {
    const counts = [...this.#counts].sort((
      [a],
      [b],
    ) => (a === "cases" ? -1 : b === "cases" ? 1 : 0));
    const parts = counts.map(([kind, n]) => `${n} ${kind}`).join(", ");
    const ms = Math.round(performance.now() - this.#start);
    console.log(`fuzz ${this.name}: ${parts} (seed ${SEED}, ${ms} ms)`);
  }
}

/** The name of an error's class, for tallies. */
function kindOf(error: unknown): string {
  return error instanceof Error ? error.name : typeof error;
}

/** What one generated input is: valid as made, mutated, or made hostile. */
type InputKind = "valid" | "mutated" | "hostile" | "random";

// --- dask framing ----------------------------------------------------------

interface DaskInput {
  kind: InputKind;
  bytes: Uint8Array;
  /** The messages, when `kind` is "valid". */
  messages: unknown[];
  threshold: number;
  max: number;
}

/** A dask stream: valid messages, the same mutated, hostile bodies, or noise. */
function daskInput(rng: Rng): DaskInput {
  const max = rng.chance(0.9) ? MAX : rng.pick([4 * KIB, 1024 * KIB]);
  const threshold = rng.pick([KIB, 16 * KIB, 64 * KIB]);
  const codec = createCodec({ binaryFrameThreshold: threshold });
  const roll = rng.float();
  const kind: InputKind = roll < 0.2
    ? "valid"
    : roll < 0.75
    ? "mutated"
    : roll < 0.93
    ? "hostile"
    : "random";
  if (kind === "random") {
    return { kind, bytes: rng.bytes(rng.size(12)), messages: [], threshold, max };
  }
  const messages: unknown[] = [];
  const parts: Uint8Array[] = [];
  const fields: number[] = [];
  let at = 0;
  for (let n = rng.range(1, 4); n > 0; n--) {
    let frames: Uint8Array[];
    let message: unknown = undefined;
    if (kind === "hostile") {
      frames = rng.chance(0.5) ? [hostileBody(rng)] : referenceMessage(rng);
    } else {
      message = randomMessage(rng, Math.min(max / 2, 40 * KIB), true);
      frames = encodeFrames(codec, message);
    }
    const framed = daskFrame(frames);
    if (framed.bytes.length > max) continue;
    messages.push(message);
    parts.push(framed.bytes);
    fields.push(...framed.fields.map((field) => at + field));
    at += framed.bytes.length;
  }
  let bytes = concat(parts);
  if (kind !== "valid" && (kind === "mutated" || rng.chance(0.3))) {
    bytes = mutate(rng, bytes, fields, max, "little", rng.chance(0.2) ? rng.bytes(64) : undefined);
  }
  return { kind, bytes, messages: kind === "valid" ? messages : [], threshold, max };
}

function randomMessage(rng: Rng, maxBinary: number, roundTrip: boolean): unknown {
  return randomValue(rng, { roundTrip, maxBinary });
}

/** An `allocate` that records what it was asked for. */
function allocateSpy(): { allocate: (size: number) => Uint8Array; sizes: number[] } {
  const sizes: number[] = [];
  return { allocate: (size) => (sizes.push(size), new Uint8Array(size)), sizes };
}

/** The most a reader may buffer for messages of at most `max` bytes, whatever it is told. */
function bufferLimit(max: number): number {
  return Math.max(READ_CHUNK_BYTES, max + 16 + MIN_READ_BYTES);
}

/** Checks how a reader's run ended: a ProtocolError or no error, and no buffer past the limit. */
function checkReaderRun(
  c: FuzzCase,
  outcome: ReaderOutcome,
  max: number,
  sizes: number[],
  input: Uint8Array,
): void {
  if (outcome.end instanceof Error && !(outcome.end instanceof ProtocolError)) {
    throw new Error(
      c.where(`the reader threw ${outcome.end.name}: ${outcome.end.message}`, input),
      {
        cause: outcome.end,
      },
    );
  }
  assert(
    outcome.largestBuffer <= bufferLimit(max),
    c.where(`a read buffer of ${outcome.largestBuffer} bytes, maxMessageSize ${max}`, input),
  );
  for (const size of sizes) {
    assert(size <= max, c.where(`allocate(${size}) with maxMessageSize ${max}`, input));
  }
}

/** Whether two reader outcomes end alike. */
function sameEnd(a: ReaderOutcome["end"], b: ReaderOutcome["end"]): boolean {
  if (a instanceof Error || b instanceof Error) {
    return a instanceof Error && b instanceof Error && a.name === b.name &&
      a.message === b.message;
  }
  return a === b;
}

/** Decodes each message with `codec` as StreamComm does; stops at the first error, which must be a ProtocolError. */
function decodeAll(
  c: FuzzCase,
  codec: { decode(frames: readonly Uint8Array[]): unknown },
  messages: Uint8Array[][],
  input: Uint8Array,
): { values: unknown[]; error?: ProtocolError } {
  const values: unknown[] = [];
  for (const frames of messages) {
    try {
      values.push(codec.decode(frames));
    } catch (error) {
      if (!(error instanceof ProtocolError)) {
        throw new Error(c.where(`Codec.decode() threw ${kindOf(error)}: ${error}`, input), {
          cause: error,
        });
      }
      return { values, error };
    }
  }
  return { values };
}

/** Heap growth allowed for decoding one input of at most 64 KiB (far above an honest decode's). */
const HEAP_GROWTH_LIMIT = 96 * 1024 * KIB;

Deno.test("FrameReader.next() and Codec.decode() take random and mutated dask streams, split anywhere, as messages or a ProtocolError", () => {
  const tally = new Tally("dask FrameReader + Codec.decode");
  for (const c of cases("dask reader", 20_000)) {
    const input = daskInput(c.rng);
    const spy = allocateSpy();
    const options = {
      directFrameBytes: input.threshold,
      allocate: c.rng.chance(0.5) ? spy.allocate : undefined,
    };
    const heapBefore = input.kind === "hostile" ? Deno.memoryUsage().heapUsed : 0;
    const split = readAll(new FrameReader(input.max, options), cut(c.rng, input.bytes));
    checkReaderRun(c, split, input.max, spy.sizes, input.bytes);
    // The same bytes in one piece must read the same: where reads cut a
    // stream changes nothing.
    const whole = readAll(new FrameReader(input.max, options), [input.bytes]);
    assert(
      sameFrames(split.messages, whole.messages) && sameEnd(split.end, whole.end),
      c.where(
        `a split read gave ${split.messages.length} messages and ${split.end}, one piece ${whole.messages.length} and ${whole.end}`,
        input.bytes,
      ),
    );
    const codec = createCodec({ binaryFrameThreshold: input.threshold });
    const decoded = decodeAll(c, codec, split.messages, input.bytes);
    if (input.kind === "hostile") {
      const growth = Deno.memoryUsage().heapUsed - heapBefore;
      assert(
        growth < HEAP_GROWTH_LIMIT,
        c.where(`decoding took ${Math.round(growth / KIB)} KiB of heap`, input.bytes),
      );
    }
    if (input.kind === "valid") {
      assertEquals(split.end, "clean", c.where("a valid stream did not end cleanly", input.bytes));
      assertEquals(
        decoded.values,
        input.messages,
        c.where("a valid stream decoded wrong", input.bytes),
      );
    }
    tally.add("cases");
    tally.add("messages decoded", decoded.values.length);
    const end = decoded.error ?? split.end;
    tally.add(end instanceof Error ? end.name : `${end} ends`);
  }
  tally.log();
});

Deno.test("Codec.decode() refuses nested array headers that announce more than follows without allocating for them", () => {
  // 6 KB of `array 16` headers, each announcing 65,535 items: made at their
  // announced length, they took 1 GB before the decode failed.
  const body = new Uint8Array(6000);
  for (let i = 0; i < body.length; i += 3) body.set([0xdc, 0xff, 0xff], i);
  const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
  const before = Deno.memoryUsage().heapUsed;
  let error: unknown;
  try {
    codec.decode([body]);
  } catch (caught) {
    error = caught;
  }
  const growth = Deno.memoryUsage().heapUsed - before;
  assertInstanceOf(error, ProtocolError);
  assert(growth < 64 * 1024 * KIB, `decoding took ${Math.round(growth / KIB)} KiB of heap`);
});

Deno.test("MpFrameReader.next() takes random and mutated multiprocessing streams, split anywhere, as messages or a ProtocolError", () => {
  const tally = new Tally("multiprocessing MpFrameReader");
  for (const c of cases("mp reader", 10_000)) {
    const { kind, bytes, payloads, max, threshold } = mpInput(c.rng);
    const spy = allocateSpy();
    const options = {
      directFrameBytes: threshold,
      allocate: c.rng.chance(0.5) ? spy.allocate : undefined,
    };
    const split = readAll(new MpFrameReader(max, options), cut(c.rng, bytes));
    checkReaderRun(c, split, max, spy.sizes, bytes);
    const whole = readAll(new MpFrameReader(max, options), [bytes]);
    assert(
      sameFrames(split.messages, whole.messages) && sameEnd(split.end, whole.end),
      c.where(
        `a split read gave ${split.messages.length} messages and ${split.end}, one piece ${whole.messages.length} and ${whole.end}`,
        bytes,
      ),
    );
    for (const frames of split.messages) {
      assertEquals(frames.length, 1, c.where("a multiprocessing message of many frames", bytes));
      assert(frames[0].length <= max, c.where(`a message of ${frames[0].length} bytes`, bytes));
    }
    if (kind === "valid") {
      assertEquals(split.end, "clean", c.where("a valid stream did not end cleanly", bytes));
      assert(
        sameFrames(split.messages, payloads.map((p) => [p])),
        c.where("a valid stream read wrong", bytes),
      );
    }
    tally.add("cases");
    tally.add("messages", split.messages.length);
    tally.add(split.end instanceof Error ? split.end.name : `${split.end} ends`);
  }
  tally.log();
});

interface MpInput {
  kind: InputKind;
  bytes: Uint8Array;
  payloads: Uint8Array[];
  max: number;
  threshold: number;
}

/** A multiprocessing stream: messages in the short or long form, mutated or not, or noise. */
function mpInput(rng: Rng): MpInput {
  const max = rng.chance(0.9) ? MAX : rng.pick([4 * KIB, 1024 * KIB]);
  const threshold = rng.pick([KIB, 64 * KIB]);
  const roll = rng.float();
  const kind: InputKind = roll < 0.2 ? "valid" : roll < 0.9 ? "mutated" : "random";
  if (kind === "random") {
    return { kind, bytes: rng.bytes(rng.size(12)), payloads: [], max, threshold };
  }
  const payloads: Uint8Array[] = [];
  const parts: Uint8Array[] = [];
  const fields: number[] = [];
  let at = 0;
  for (let n = rng.range(1, 4); n > 0; n--) {
    const payload = rng.bytes(Math.min(rng.size(rng.chance(0.9) ? 10 : 17), max));
    const framed = mpFrame(payload, rng.chance(0.2));
    payloads.push(payload);
    parts.push(framed.bytes);
    fields.push(...framed.fields.map((field) => at + field));
    at += framed.bytes.length;
  }
  let bytes = concat(parts);
  if (kind === "mutated") bytes = mutate(rng, bytes, fields, max, "big");
  return { kind, bytes, payloads, max, threshold };
}

// --- StreamComm --------------------------------------------------------------

const ADDRESSES = { localAddress: "fuzz://near", peerAddress: "fuzz://far" };

/** Every message a comm gives until read() rejects, and the rejection. */
async function readUntilEnd(comm: Comm): Promise<{ values: unknown[]; error: unknown }> {
  const values: unknown[] = [];
  for (;;) {
    try {
      values.push(await comm.read());
    } catch (error) {
      return { values, error };
    }
  }
}

/**
 * Checks the error that ended a comm fed by a stream that never fails: a
 * ProtocolError, or a CommClosedError for an end of stream. "Lost the
 * connection" would mean a decoder threw something untyped.
 */
function checkCommEnd(c: FuzzCase, error: unknown, input: Uint8Array): void {
  if (!(error instanceof CommClosedError)) {
    throw new Error(c.where(`read() rejected with ${kindOf(error)}: ${error}`, input), {
      cause: error,
    });
  }
  if (error instanceof ProtocolError) return;
  assert(
    /closed by the peer|ended in the middle of a message/.test(error.message),
    c.where(`read() rejected with "${error.message}" (cause ${error.cause})`, input),
  );
}

Deno.test("StreamComm.read() gives the messages, then a typed error and a closed comm, for random and mutated streams in both framings", async () => {
  const tally = new Tally("StreamComm read path");
  for (const c of cases("stream comm", 5_000)) {
    const multiprocessing = c.rng.chance(0.3);
    let bytes: Uint8Array;
    let max: number;
    let threshold: number;
    let kind: InputKind;
    let expected: unknown[] | undefined;
    if (multiprocessing) {
      const input = mpInput(c.rng);
      ({ bytes, max, threshold, kind } = input);
      expected = input.kind === "valid" ? input.payloads : undefined;
    } else {
      const input = daskInput(c.rng);
      ({ bytes, max, threshold, kind } = input);
      expected = input.kind === "valid" ? input.messages : undefined;
    }
    const spy = allocateSpy();
    const stream = ScriptedStream.of(cut(c.rng, bytes));
    const comm = new StreamComm(stream, {
      ...ADDRESSES,
      maxMessageSize: max,
      binaryFrameThreshold: threshold,
      framing: multiprocessing ? "multiprocessing" : "dask",
      allocate: c.rng.chance(0.5) ? spy.allocate : undefined,
    });
    const { values, error } = await within(
      readUntilEnd(comm),
      HANG_MS,
      () => c.where("read()", bytes),
    );
    checkCommEnd(c, error, bytes);
    assert(comm.closed && stream.closed, c.where("the comm or its stream stayed open", bytes));
    for (const size of spy.sizes) assert(size <= max, c.where(`allocate(${size})`, bytes));
    assert(
      stream.largestBuffer <= bufferLimit(max),
      c.where(`a read buffer of ${stream.largestBuffer} bytes, maxMessageSize ${max}`, bytes),
    );
    // The comm must read what the bare reader and codec read.
    const reader: MessageReader = multiprocessing
      ? new MpFrameReader(max, { directFrameBytes: threshold })
      : new FrameReader(max, { directFrameBytes: threshold });
    const bare = readAll(reader, [bytes]);
    const codec = multiprocessing
      ? { decode: (frames: readonly Uint8Array[]) => frames[0] }
      : createCodec({ binaryFrameThreshold: threshold });
    const decoded = decodeAll(c, codec, bare.messages, bytes);
    assertEquals(values, decoded.values, c.where("the comm read otherwise than its reader", bytes));
    const wanted = decoded.error ?? bare.end;
    assert(
      wanted === "clean"
        ? !(error instanceof ProtocolError) && /closed by the peer/.test((error as Error).message)
        : wanted === "truncated"
        ? /ended in the middle/.test((error as Error).message)
        : error instanceof ProtocolError && (error as Error).message.includes(wanted.message),
      c.where(
        `the comm ended with "${(error as Error).message}" where its reader saw ${wanted}`,
        bytes,
      ),
    );
    if (expected) assertEquals(values, expected, c.where("a valid stream read wrong", bytes));
    await comm.close();
    tally.add(
      `${multiprocessing ? "multiprocessing" : "dask"} ${
        kind === "valid" ? "valid" : "fuzzed"
      } cases`,
    );
    tally.add("cases");
    tally.add("messages read", values.length);
    tally.add(kindOf(error));
  }
  tally.log();
});

// --- An in-memory backend, for the handshake and listen() with authkey -------

/** Streams for the next comms a "fuzz" listener accepts, or connect() opens, by location. */
const listeners = new Map<string, FuzzListener>();
const dials = new Map<string, ByteStream[]>();
let peers = 0;

class FuzzListener implements BackendListener {
  readonly listenAddress: string;
  readonly contactAddress: string;
  #options: ListenOptions;
  #pending: ByteStream[] = [];
  #waiter: ((stream: ByteStream | null) => void) | undefined;
  #closed = false;

  constructor(location: string, options: ListenOptions) {
    this.listenAddress = this.contactAddress = `fuzz://${location}`;
    this.#options = options;
  }

  push(stream: ByteStream): void {
    if (this.#waiter) this.#waiter(stream);
    else this.#pending.push(stream);
  }

  async accept(): Promise<Comm | null> {
    if (this.#closed) return null;
    const stream = this.#pending.shift() ??
      await new Promise<ByteStream | null>((resolve) => this.#waiter = resolve);
    this.#waiter = undefined;
    if (stream === null) return null;
    return new StreamComm(stream, {
      ...this.#options,
      localAddress: this.listenAddress,
      peerAddress: `fuzz://peer-${++peers}`,
      [DEFER_READING]: true,
    } as StreamCommOptions);
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#waiter?.(null);
    return Promise.resolve();
  }
}

/** connect() dialled again (after a peer hung up), and there was no stream left to give. */
class NoStream extends Error {
  override name = "NoStream";
}

const fuzzBackend: Backend = {
  connect(location, options) {
    const stream = dials.get(location)?.shift();
    if (!stream) return Promise.reject(new NoStream(`No stream scripted for "fuzz://${location}"`));
    return Promise.resolve(
      new StreamComm(stream, {
        ...options,
        localAddress: "fuzz://client",
        peerAddress: `fuzz://${location}`,
        [DEFER_READING]: true,
      } as StreamCommOptions),
    );
  },
  listen(location, options) {
    const listener = new FuzzListener(location, options);
    listeners.set(location, listener);
    return Promise.resolve(listener);
  },
  getAddressHost: (location) => location,
  getAddressHostPort: (location) => {
    throw new AddressError(`"fuzz://${location}" has no port`);
  },
  resolveAddress: (location) => Promise.resolve(location),
  getLocalAddressFor: (location) => location,
};
registerBackend("fuzz", fuzzBackend);

/** A peer's handshake and what follows it in dask's framing, mutated or not. */
function handshakeInput(rng: Rng): { kind: InputKind; bytes: Uint8Array } {
  const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
  const first = rng.chance(0.8)
    ? { ...HANDSHAKE, ...(rng.chance(0.3) ? { extra: randomMessage(rng, 64, false) } : {}) }
    : randomMessage(rng, 64, false);
  const framed = [daskFrame(encodeFrames(codec, first))];
  if (rng.chance(0.3)) framed.push(daskFrame(encodeFrames(codec, randomMessage(rng, 64, false))));
  const bytes = concat(framed.map((f) => f.bytes));
  const roll = rng.float();
  if (roll < 0.2) return { kind: "valid", bytes };
  if (roll < 0.9) {
    return { kind: "mutated", bytes: mutate(rng, bytes, framed[0].fields, MAX, "little") };
  }
  return { kind: "random", bytes: rng.bytes(rng.size(9)) };
}

/**
 * What dask's handshake makes of `bytes`: "taken" if its first message is a
 * plain map (as connect() and listen() check), "hung up" if the stream ends
 * before one (connect() dials again), else "refused".
 */
function handshakeOutcome(bytes: Uint8Array): "taken" | "hung up" | "refused" {
  const bare = readAll(new FrameReader(MAX), [bytes]);
  if (bare.messages.length === 0) return bare.end instanceof Error ? "refused" : "hung up";
  let info: unknown;
  try {
    info = createCodec({ binaryFrameThreshold: 64 * KIB }).decode(bare.messages[0]);
  } catch {
    return "refused";
  }
  // A plain map: not a list, a set, a binary or a timestamp.
  return typeof info === "object" && info !== null &&
      Object.getPrototypeOf(info) === Object.prototype
    ? "taken"
    : "refused";
}

Deno.test("listen() reports a typed error to onError for each garbage handshake, and keeps serving", async () => {
  const tally = new Tally("listen() handshake");
  let settle: ((outcome: { accepted: boolean; error?: unknown }) => void) | undefined;
  const listener = await listen("fuzz://handshake", () => settle?.({ accepted: true }), {
    maxMessageSize: MAX,
    handshakeTimeout: 2 * HANG_MS,
    onError: (error) => settle?.({ accepted: false, error }),
  });
  const backend = listeners.get("handshake")!;
  const feed = async (c: FuzzCase, bytes: Uint8Array) => {
    const stream = ScriptedStream.of(cut(c.rng, bytes));
    const outcome = new Promise<{ accepted: boolean; error?: unknown }>((resolve) =>
      settle = resolve
    );
    backend.push(stream);
    return {
      stream,
      outcome: await within(outcome, HANG_MS, () => c.where("the handshake", bytes)),
    };
  };
  for (const c of cases("listen handshake", 1_000)) {
    const { kind, bytes } = handshakeInput(c.rng);
    const { stream, outcome } = await feed(c, bytes);
    assertEquals(
      outcome.accepted,
      handshakeOutcome(bytes) === "taken",
      c.where(`accepted: ${outcome.accepted} (${outcome.error})`, bytes),
    );
    if (!outcome.accepted) {
      assert(
        outcome.error instanceof CommClosedError &&
          !/did not complete|Lost the connection/.test(outcome.error.message),
        c.where(`onError got ${kindOf(outcome.error)}: ${outcome.error}`, bytes),
      );
      assert(stream.closed, c.where("the comm of a failed handshake stayed open", bytes));
      tally.add(kindOf(outcome.error));
    } else {
      tally.add("handshakes taken");
    }
    tally.add("cases");
    tally.add(`${kind} cases`);
  }
  // Still serving: an honest peer gets through.
  const [last] = cases("listen handshake, last", 1);
  const honest = daskFrame(encodeFrames(createCodec({ binaryFrameThreshold: 1 }), HANDSHAKE)).bytes;
  assertEquals((await feed(last, honest)).outcome.accepted, true);
  await listener.close();
  tally.log();
});

Deno.test("connect() rejects with a ConnectError, never another error or a hang, when the handshake it reads is garbage", async () => {
  const tally = new Tally("connect() handshake");
  const scripted: ByteStream[] = [];
  dials.set("server", scripted);
  for (const c of cases("connect handshake", 600)) {
    const { kind, bytes } = handshakeInput(c.rng);
    const stream = ScriptedStream.of(cut(c.rng, bytes));
    scripted.push(stream);
    let comm: Comm | undefined;
    let error: unknown;
    try {
      comm = await within(
        connect("fuzz://server", { timeout: 2 * HANG_MS, maxMessageSize: MAX }),
        HANG_MS,
        () => c.where("connect()", bytes),
      );
    } catch (caught) {
      error = caught;
    }
    const expected = handshakeOutcome(bytes);
    const outcome = comm
      ? "taken"
      : error instanceof ConnectError && error.cause instanceof NoStream
      ? "hung up"
      : "refused";
    assertEquals(outcome, expected, c.where(`connect() gave ${error ?? "a comm"}`, bytes));
    if (comm) {
      await comm.close();
    } else {
      assert(
        error instanceof ConnectError && error.name === "ConnectError" &&
          (error.cause instanceof CommClosedError || error.cause instanceof NoStream),
        c.where(`connect() rejected with ${kindOf(error)}: ${error}`, bytes),
      );
      assert(stream.closed, c.where("the comm of a failed connect() stayed open", bytes));
    }
    tally.add(outcome === "refused" ? `refused (${kindOf((error as Error).cause)})` : outcome);
    tally.add("cases");
    tally.add(`${kind} cases`);
  }
  tally.log();
});

// --- The authkey challenge ---------------------------------------------------

const encoder = new TextEncoder();
const CHALLENGE = encoder.encode("#CHALLENGE#");
const WELCOME = encoder.encode("#WELCOME#");
const DIGESTS: Record<string, string> = {
  md5: "md5",
  sha256: "sha256",
  sha384: "sha384",
  sha3_256: "sha3-256",
  sha3_384: "sha3-384",
};
/** What the raw channel of the challenge reads at most: 256 bytes and header words. */
const CHALLENGE_READER_MAX = 256 + 64;

function hmac(digest: string, key: Uint8Array, message: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac(DIGESTS[digest], key).update(message).digest());
}

/** The right answer to `challenge` (what follows "#CHALLENGE#"), as CPython gives it; undefined if it is not a challenge one answers. */
function answerTo(key: Uint8Array, challenge: Uint8Array): Uint8Array | undefined {
  if (challenge.length < 20) return undefined;
  if (challenge.length === 20) return hmac("md5", key, challenge);
  if (challenge[0] !== 0x7b) return undefined;
  const close = challenge.subarray(0, 10).indexOf(0x7d, 1);
  if (close < 0) return undefined;
  const name = new TextDecoder().decode(challenge.subarray(1, close));
  if (!Object.hasOwn(DIGESTS, name)) return undefined;
  return concat([encoder.encode(`{${name}}`), hmac(name, key, challenge)]);
}

function equalBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  return a !== undefined && b !== undefined && sameFrames([[a]], [[b]]);
}

/** The raw channel's messages in `bytes`: each the one frame of at most 256 bytes, else undefined. */
function rawMessages(multiprocessing: boolean, chunks: Uint8Array[]): (Uint8Array | undefined)[] {
  const reader = multiprocessing
    ? new MpFrameReader(CHALLENGE_READER_MAX)
    : new FrameReader(CHALLENGE_READER_MAX);
  return readAll(reader, chunks).messages.map((frames) =>
    frames.length === 1 && frames[0].length <= 256 ? frames[0] : undefined
  );
}

function frameRaw(
  multiprocessing: boolean,
  payload: Uint8Array,
): { bytes: Uint8Array; fields: number[] } {
  return multiprocessing ? mpFrame(payload) : daskFrame([payload]);
}

/** `payload` framed, and mutated one time in three. */
function maybeMutated(rng: Rng, multiprocessing: boolean, payload: Uint8Array): Uint8Array {
  const framed = frameRaw(multiprocessing, payload);
  if (rng.chance(2 / 3)) return framed.bytes;
  return mutate(
    rng,
    framed.bytes,
    framed.fields,
    CHALLENGE_READER_MAX,
    multiprocessing ? "big" : "little",
  );
}

Deno.test("deliverChallenge() and answerChallenge() succeed on the right messages and reject anything else with an AuthenticationError", async () => {
  const tally = new Tally("authkey challenge");
  for (const c of cases("challenge", 3_000)) {
    const rng = c.rng;
    const multiprocessing = rng.chance(0.5);
    const key = rng.bytes(rng.range(1, 40));
    let fed: Uint8Array[] = [];
    let oracle: () => boolean;
    let run: (comm: Comm) => Promise<void>;
    let stream: ScriptedStream;
    if (rng.chance(0.5)) {
      // We challenge; the peer answers in a digest of its choosing.
      const digest = rng.pick(["legacy", ...Object.keys(DIGESTS)]);
      let answer: Uint8Array | undefined;
      stream = new ScriptedStream([{
        after: 1,
        make: (written) => {
          const sent = rawMessages(multiprocessing, [written])[0]!;
          const message = sent.subarray(CHALLENGE.length);
          answer = digest === "legacy"
            ? hmac("md5", key, message)
            : concat([encoder.encode(`{${digest}}`), hmac(digest, key, message)]);
          fed = [maybeMutated(rng, multiprocessing, answer)];
          return cut(rng, fed[0]);
        },
      }]);
      oracle = () => equalBytes(rawMessages(multiprocessing, fed)[0], answer);
      run = (comm) => deliverChallenge(comm, key);
    } else {
      // The peer challenges us, then welcomes our answer.
      const challenge = rng.chance(0.2)
        ? rng.bytes(20)
        : concat([encoder.encode(`{${rng.pick(Object.keys(DIGESTS))}}`), rng.bytes(40)]);
      const steps = [concat([CHALLENGE, challenge]), WELCOME].map((m) =>
        maybeMutated(rng, multiprocessing, m)
      );
      stream = new ScriptedStream([
        { after: 0, make: () => (fed = [steps[0]], cut(rng, steps[0])) },
        { after: 1, make: () => (fed.push(steps[1]), cut(rng, steps[1])) },
      ]);
      oracle = () => {
        const [got] = rawMessages(multiprocessing, [steps[0]]);
        const told = got && got.length >= CHALLENGE.length &&
          equalBytes(got.subarray(0, CHALLENGE.length), CHALLENGE);
        if (!told || !answerTo(key, got.subarray(CHALLENGE.length))) return false;
        return equalBytes(rawMessages(multiprocessing, [steps[0], steps[1]])[1], WELCOME);
      };
      run = async (comm) => {
        await answerChallenge(comm, key);
        // What we answered must be the right answer to what we read.
        const [got] = rawMessages(multiprocessing, [steps[0]]);
        const sent = rawMessages(multiprocessing, [concat(stream.written)])[0];
        assert(
          equalBytes(sent, answerTo(key, got!.subarray(CHALLENGE.length))),
          c.where("a wrong answer was sent"),
        );
      };
    }
    const comm = new StreamComm(stream, {
      ...ADDRESSES,
      framing: multiprocessing ? "multiprocessing" : "dask",
      [DEFER_READING]: true,
    } as StreamCommOptions);
    let error: unknown;
    try {
      await within(run(comm), HANG_MS, () => c.where("the challenge", concat(fed)));
    } catch (caught) {
      error = caught;
    }
    const input = concat(fed);
    assertEquals(
      error === undefined,
      oracle(),
      c.where(`the exchange ended with ${error ?? "success"}`, input),
    );
    if (error !== undefined) {
      assert(
        error instanceof AuthenticationError,
        c.where(`rejected with ${kindOf(error)}: ${error}`, input),
      );
      const cause = (error as Error).cause;
      tally.add(`AuthenticationError${cause ? ` (${kindOf(cause)})` : ""}`);
    } else {
      tally.add("authenticated");
    }
    await comm.close();
    tally.add("cases");
  }
  tally.log();
});

Deno.test("listen() with authkey reports a typed error for each mutated challenge exchange, and keeps serving", async () => {
  const tally = new Tally("listen() with authkey");
  const key = encoder.encode("fuzz key");
  let settle: ((outcome: { accepted: boolean; error?: unknown }) => void) | undefined;
  const listener = await listen("fuzz://auth", () => settle?.({ accepted: true }), {
    authkey: key,
    maxMessageSize: MAX,
    handshakeTimeout: 2 * HANG_MS,
    onError: (error) => settle?.({ accepted: false, error }),
  });
  const backend = listeners.get("auth")!;
  const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
  const run = async (c: FuzzCase, mutated: number) => {
    const rng = c.rng;
    const peerChallenge = concat([CHALLENGE, encoder.encode("{sha256}"), rng.bytes(40)]);
    const step = (index: number, bytes: Uint8Array, fields: number[]) =>
      index === mutated ? mutate(rng, bytes, fields, CHALLENGE_READER_MAX, "little") : bytes;
    const stream = new ScriptedStream([
      {
        // Our answer to the listener's challenge.
        after: 1,
        make: (written) => {
          const sent = rawMessages(false, [written])[0]!;
          const message = sent.subarray(CHALLENGE.length);
          const framed = daskFrame([
            concat([encoder.encode("{sha256}"), hmac("sha256", key, message)]),
          ]);
          return cut(rng, step(0, framed.bytes, framed.fields));
        },
      },
      { after: 2, make: () => cut(rng, step(1, daskFrame([peerChallenge]).bytes, [0, 8, 16])) },
      {
        after: 3,
        make: () => {
          const welcome = daskFrame([WELCOME]);
          const handshake = daskFrame(encodeFrames(codec, HANDSHAKE));
          return cut(rng, step(2, concat([welcome.bytes, handshake.bytes]), welcome.fields));
        },
      },
    ]);
    const outcome = new Promise<{ accepted: boolean; error?: unknown }>((resolve) =>
      settle = resolve
    );
    backend.push(stream);
    return {
      stream,
      outcome: await within(outcome, HANG_MS, () => c.where("listen() with authkey")),
    };
  };
  for (const c of cases("listen authkey", 500)) {
    const mutated = c.rng.chance(0.2) ? -1 : c.rng.int(3);
    const { stream, outcome } = await run(c, mutated);
    if (mutated === -1) {
      assert(outcome.accepted, c.where(`an honest peer failed: ${outcome.error}`));
    }
    if (!outcome.accepted) {
      assert(
        (outcome.error instanceof AuthenticationError ||
          outcome.error instanceof CommClosedError) &&
          !/did not complete/.test(outcome.error.message),
        c.where(`onError got ${kindOf(outcome.error)}: ${outcome.error}`),
      );
      assert(stream.closed, c.where("the comm of a failed exchange stayed open"));
      tally.add(kindOf(outcome.error));
    } else {
      tally.add("accepted");
    }
    tally.add("cases");
  }
  const [last] = cases("listen authkey, last", 1);
  assert((await run(last, -1)).outcome.accepted, "an honest peer was refused after the fuzzing");
  await listener.close();
  tally.log();
});

// --- Datagrams ---------------------------------------------------------------

/** A datagram socket over an in-memory transport: what is delivered is received. */
function memorySocket() {
  const inbox = new Inbox(64 * 1024 * KIB);
  const transport: Transport = {
    implementation: "deno",
    hostname: "127.0.0.1",
    port: 40_000,
    get dropped() {
      return inbox.dropped;
    },
    send: () => Promise.resolve(),
    receive: (signal) => inbox.take(signal),
    join: () => Promise.resolve(),
    leave: () => Promise.resolve(),
    close: (reason) => (inbox.fail(reason), Promise.resolve()),
  };
  const socket = socketControl.open(transport, 4, {
    reuseAddress: false,
    broadcast: false,
    maxQueuedBytes: 64 * 1024 * KIB,
  });
  return {
    socket,
    deliver: (data: Uint8Array) => inbox.deliver({ data, from: "udp://127.0.0.1:5000" }),
  };
}

/** A datagram: a valid message, the same mutated, a hostile body, or noise. */
function datagramInput(rng: Rng): { kind: InputKind; data: Uint8Array; message?: unknown } {
  const codec = createCodec({ binaryFrameThreshold: Infinity });
  const roll = rng.float();
  if (roll < 0.1) return { kind: "random", data: rng.bytes(rng.size(11)) };
  if (roll < 0.3) {
    return { kind: "hostile", data: rng.chance(0.6) ? hostileBody(rng) : referenceMessage(rng)[0] };
  }
  const message = randomMessage(rng, 4 * KIB, roll < 0.45);
  const [data] = encodeFrames(codec, message);
  if (roll < 0.45) return { kind: "valid", data, message };
  return { kind: "mutated", data: mutate(rng, data, [], MAX, "big") };
}

/** Checks a datagram's outcome: its message when valid, else a message or a DatagramDecodeError over a ProtocolError. */
function checkDatagram(
  c: FuzzCase,
  input: { kind: InputKind; data: Uint8Array; message?: unknown },
  outcome: { message?: unknown; error?: unknown },
  tally: Tally,
): void {
  if (outcome.error !== undefined) {
    const error = outcome.error;
    assert(
      error instanceof DatagramDecodeError && error.cause instanceof ProtocolError &&
        error.data === input.data,
      c.where(
        `receiveMessage() rejected with ${kindOf(error)}: ${error} (cause ${
          (error as Error).cause
        })`,
        input.data,
      ),
    );
    tally.add("DatagramDecodeError");
  } else {
    tally.add("messages");
  }
  if (input.kind === "valid") {
    assertEquals(
      outcome.message,
      input.message,
      c.where(`a valid datagram gave ${outcome.error}`, input.data),
    );
  }
}

Deno.test("DatagramSocket.receiveMessage() turns random and mutated datagrams into a DatagramDecodeError, and the socket keeps working", async () => {
  const tally = new Tally("datagram messages (in memory)");
  const { socket, deliver } = memorySocket();
  for (const c of cases("datagram", 20_000)) {
    const input = datagramInput(c.rng);
    const heapBefore = input.kind === "hostile" ? Deno.memoryUsage().heapUsed : 0;
    deliver(input.data);
    const outcome: { message?: unknown; error?: unknown } = await socket.receiveMessage().then(
      ({ message }) => ({ message }),
      (error) => ({ error }),
    );
    if (input.kind === "hostile") {
      const growth = Deno.memoryUsage().heapUsed - heapBefore;
      assert(
        growth < HEAP_GROWTH_LIMIT,
        c.where(`decoding took ${Math.round(growth / KIB)} KiB`, input.data),
      );
    }
    checkDatagram(c, input, outcome, tally);
    tally.add("cases");
  }
  // Iterating with onInvalid skips what does not decode and goes on.
  const sentinel = encodeFrames(createCodec({ binaryFrameThreshold: Infinity }), "end of batch")[0];
  for (const c of cases("datagram batches", 100)) {
    const inputs = Array.from({ length: 20 }, () => datagramInput(c.rng));
    for (const input of inputs) deliver(input.data);
    deliver(sentinel);
    let valid = 0;
    let invalid = 0;
    const iterate = async () => {
      for await (const { message } of socket.messages({ onInvalid: () => invalid++ })) {
        if (message === "end of batch" && valid + invalid === inputs.length) break;
        valid++;
      }
    };
    await within(iterate(), HANG_MS, () => c.where("a batch"));
    assertEquals(valid + invalid, inputs.length, c.where("a batch lost datagrams"));
    tally.add("batched datagrams", inputs.length);
  }
  await socket.close();
  tally.log();
});

Deno.test("DatagramSocket.receiveMessage() over loopback UDP turns random and mutated datagrams into a DatagramDecodeError", async () => {
  const tally = new Tally("datagram messages (loopback UDP)");
  await using socket = await bind("udp://127.0.0.1:0");
  for (const c of cases("udp", 300)) {
    const input = datagramInput(c.rng);
    if (input.data.length > socket.maxDatagramBytes) continue;
    await socket.send(input.data, socket.address);
    const outcome: { message?: unknown; error?: unknown } = await within(
      socket.receiveMessage().then(({ message }) => ({ message }), (error) => ({ error })),
      HANG_MS,
      () => c.where("a loopback datagram", input.data),
    );
    if (outcome.error instanceof DatagramDecodeError) {
      // The socket's own copy of the bytes, equal to what was sent.
      assertEquals(outcome.error.data, input.data);
      checkDatagram(c, { ...input, data: outcome.error.data }, outcome, tally);
    } else {
      checkDatagram(c, input, outcome, tally);
    }
    tally.add("cases");
  }
  tally.log();
});

// --- The switchboard's routing preamble ----------------------------------------

/** A first message to a switchboard node, and what may follow it on the same comm. */
function routingInput(rng: Rng): { kind: InputKind; bytes: Uint8Array } {
  const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
  const any = () => randomMessage(rng, 256, false);
  const preamble = rng.pick([
    () => ({ __switchboard__: "hello", from: rng.pick([1, 0, -1, 1.5, 2 ** 40, "1", null]) }),
    () => ({
      __switchboard__: "mpsc",
      channel: rng.pick(["0.1", "0.1", "0.2", "", 1, null]),
      ...(rng.chance(0.5) ? { ticket: rng.pick(["1:x", 1, null, { a: 1 }]) } : {}),
      from: 1,
    }),
    () => ({
      __switchboard__: "broadcast",
      token: rng.pick(["news", "", "__proto__", 1]),
      from: 1,
    }),
    () => ({ __switchboard__: rng.pick(["nope", 1, null, { a: 1 }, "mpsc"]) }),
    any,
  ])();
  const sender = () => ({
    __Sender__: {
      node: rng.pick([0, 1, -1, 2 ** 40, 0.5]),
      channel: rng.pick(["0.1", "9.9", 1]),
      ticket: rng.pick(["1:t", 5, null]),
    },
  });
  const messages = [preamble];
  for (let n = rng.int(4); n > 0; n--) {
    messages.push(
      rng.pick([
        () => ({
          __switchboard__: rng.pick(["ticket", "cancel"]),
          ticket: rng.pick(["1:t", 7, null, {}]),
        }),
        () => [sender(), { deep: sender() }],
        sender,
        any,
      ])(),
    );
  }
  const framed = messages.map((m) => daskFrame(encodeFrames(codec, m)));
  const bytes = concat(framed.map((f) => f.bytes));
  if (rng.chance(0.4)) return { kind: "valid", bytes };
  if (rng.chance(0.9)) {
    return {
      kind: "mutated",
      bytes: mutate(rng, bytes, framed[0].fields, MAX, "little"),
    };
  }
  return { kind: "random", bytes: rng.bytes(rng.size(10)) };
}

/** What a node answers a valid `preamble` with: ok or not (hello and broadcast say nothing else). */
function routingAnswer(preamble: unknown, channel: string): boolean {
  const header = preamble as Record<string, unknown> | null;
  const kind = header?.__switchboard__;
  if (kind === "hello") return typeof header?.from === "number";
  if (kind === "mpsc") return header?.channel === channel;
  if (kind === "broadcast") return typeof header?.token === "string";
  return false;
}

Deno.test("Switchboard.handleComm() answers or closes on any routing preamble, never throwing or hanging", async () => {
  const tally = new Tally("switchboard routing preamble");
  const board = new Switchboard({ nodes: ["fuzz://board-a", "fuzz://board-b"], id: 0 });
  const [tx, rx] = board.mpsc<unknown>();
  const reply = createCodec({ binaryFrameThreshold: 64 * KIB });
  for (const c of cases("switchboard preamble", 3_000)) {
    const { kind, bytes } = routingInput(c.rng);
    // The peer sends it all, waits for an answer, and closes.
    const stream = new ScriptedStream([
      { after: 0, make: () => cut(c.rng, bytes) },
      { after: 1, make: () => [] },
    ]);
    const comm = new StreamComm(stream, { ...ADDRESSES, maxMessageSize: MAX });
    try {
      await within(board.handleComm(comm), HANG_MS, () => c.where("handleComm()", bytes));
    } catch (error) {
      throw new Error(c.where(`handleComm() threw ${kindOf(error)}: ${error}`, bytes), {
        cause: error,
      });
    }
    assert(comm.closed && stream.closed, c.where("handleComm() left the comm open", bytes));
    const written = readAll(new FrameReader(MAX), [concat(stream.written)]).messages;
    // Whenever every message of the input decodes, the node answers the first.
    const sent = readAll(new FrameReader(MAX), [bytes]);
    const decoded = decodeAll(c, reply, sent.messages, bytes);
    if (sent.end === "clean" && !decoded.error && decoded.values.length > 0) {
      assert(written.length > 0, c.where("a decodable preamble got no answer", bytes));
      const answer = reply.decode(written[0]) as { ok?: boolean };
      assertEquals(
        answer.ok === true,
        routingAnswer(decoded.values[0], "0.1"),
        c.where(`answered ${JSON.stringify(answer)}`, bytes),
      );
    }
    tally.add("cases");
    tally.add(`${kind} cases`);
    tally.add(written.length > 0 ? "answered" : "closed unanswered");
    while (rx.length > 0) {
      const message = await rx.receive();
      if (message instanceof Sender) tally.add("senders revived");
      tally.add("messages delivered");
    }
  }
  await tx.close();
  await board.close();
  tally.log();
});

/**
 * What a node sends a switchboard that opens a broadcast comm to it: the
 * handshake, then a reply to the routing preamble; either may be mutated.
 */
function replyInput(
  rng: Rng,
  prototypeKeys: boolean,
): { input: [Uint8Array, Uint8Array]; ok?: boolean } {
  const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
  const error = () => {
    const value = randomMessage(rng, 64, false);
    return prototypeKeys || !hasPrototypeKey(value) ? value : "refused";
  };
  let reply = rng.pick([
    () => ({ ok: true }),
    () => ({ ok: false, error: rng.chance(0.5) ? "no such channel" : error() }),
    () => ({ ok: rng.pick([1, "yes", null, [], {}]), error: error() }),
    () => randomMessage(rng, 64, false),
  ])();
  if (!prototypeKeys && hasPrototypeKey(reply)) reply = { ok: false, error: "refused" };
  const handshake = daskFrame(encodeFrames(codec, HANDSHAKE));
  const answer = daskFrame(encodeFrames(codec, reply));
  const roll = rng.float();
  const input: [Uint8Array, Uint8Array] = [
    roll < 0.1 ? mutate(rng, handshake.bytes, handshake.fields, MAX, "little") : handshake.bytes,
    roll > 0.5 ? mutate(rng, answer.bytes, answer.fields, MAX, "little") : answer.bytes,
  ];
  // Unmutated, a reply that decodes says whether the node took us.
  let ok: boolean | undefined;
  if (roll >= 0.1 && roll <= 0.5) {
    try {
      ok = Boolean((codec.decode(encodeFrames(codec, reply)) as { ok?: unknown } | null)?.ok);
    } catch {
      ok = undefined;
    }
  }
  return { input, ok };
}

function hasPrototypeKey(value: unknown): boolean {
  if (typeof value !== "object" || value === null) return false;
  return Object.keys(value).some((key) =>
    ["toString", "valueOf", "constructor", "hasOwnProperty", "then"].includes(key) ||
    hasPrototypeKey((value as Record<string, unknown>)[key])
  );
}

/** Sends one message on a broadcast comm to a node that answers with `input`; returns the error, if any. */
async function sendThroughReply(
  c: FuzzCase,
  location: string,
  input: [Uint8Array, Uint8Array],
): Promise<unknown> {
  const board = new Switchboard({ nodes: ["fuzz://reply-a", `fuzz://${location}`], id: 0 });
  // The node answers our handshake at once, our preamble (the second write)
  // with its reply, and closes once our message (the third) came.
  const [handshake, reply] = input;
  const stream = new ScriptedStream([
    { after: 0, make: () => cut(c.rng, handshake) },
    { after: 2, make: () => cut(c.rng, reply) },
    { after: 3, make: () => [] },
  ]);
  dials.set(location, [stream]);
  const tx = board.broadcastTx<number>("news");
  let error: unknown;
  try {
    await within(tx.send(1), HANG_MS, () => c.where("send()", concat(input)));
  } catch (caught) {
    error = caught;
  }
  await tx.close();
  await board.close();
  assert(stream.closed, c.where("the comm to the other node stayed open", concat(input)));
  return error;
}

Deno.test("BroadcastSender.send() rejects with a typed error on a garbage reply to its routing preamble", async () => {
  const tally = new Tally("switchboard reply");
  for (const c of cases("switchboard reply", 600)) {
    // Replies whose maps shadow Object.prototype are left to the test below.
    const { input, ok } = replyInput(c.rng, false);
    const error = await sendThroughReply(c, "reply-b", input);
    assert(
      error === undefined || error instanceof ChannelClosedError || error instanceof ConnectError ||
        error instanceof CommClosedError,
      c.where(`send() rejected with ${kindOf(error)}: ${error}`, concat(input)),
    );
    if (ok !== undefined) {
      assert(
        ok ? error === undefined : error instanceof ChannelClosedError,
        c.where(`a valid reply (ok: ${ok}) gave ${error ?? "success"}`, concat(input)),
      );
    }
    tally.add(error === undefined ? "sent" : kindOf(error));
    tally.add("cases");
  }
  tally.log();
});

// A reply `{ok: false, error: {toString: 1}}` once made send() reject with a
// TypeError ("Cannot convert object to primitive value"), the peer's error
// put in a template literal as it was.
Deno.test({
  name:
    "BroadcastSender.send() rejects with a ChannelClosedError on a reply whose error shadows Object.prototype",
  fn: async () => {
    const codec = createCodec({ binaryFrameThreshold: 64 * KIB });
    const [repro] = cases("switchboard reply, prototype keys", 1);
    const input: [Uint8Array, Uint8Array] = [
      daskFrame(encodeFrames(codec, HANDSHAKE)).bytes,
      daskFrame(encodeFrames(codec, { ok: false, error: { toString: 1 } })).bytes,
    ];
    assertInstanceOf(await sendThroughReply(repro, "proto-b", input), ChannelClosedError);
    for (const c of cases("switchboard reply, prototype keys", 300)) {
      const { input } = replyInput(c.rng, true);
      const error = await sendThroughReply(c, "proto-b", input);
      assert(
        error === undefined || error instanceof ChannelClosedError ||
          error instanceof ConnectError ||
          error instanceof CommClosedError,
        c.where(`send() rejected with ${kindOf(error)}: ${error}`, concat(input)),
      );
    }
  },
});

// A marker naming node 5 of 2 (or -1, or 0.5) once became a sender whose
// send() rejected with "AddressError: Cannot parse address undefined".
Deno.test({
  name: "Switchboard.handleComm() revives only senders whose node is one of its nodes",
  fn: async () => {
    const board = new Switchboard({ nodes: ["fuzz://revive-a", "fuzz://revive-b"], id: 0 });
    const [tx, rx] = board.mpsc<unknown>();
    const [near, far] = pipe();
    const serving = board.handleComm(far);
    await near.write({ __switchboard__: "mpsc", channel: "0.1", from: 1 });
    assertEquals(await near.read(), { ok: true });
    const nodes = [5, -1, 0.5, 2 ** 40];
    for (const node of nodes) {
      await near.write({ __Sender__: { node, channel: "1.1", ticket: "1:t" } });
    }
    for (const node of nodes) {
      const got = await rx.receive();
      assert(
        !(got instanceof Sender),
        `a sender to node ${node} of 2 was revived (its send() fails with AddressError)`,
      );
    }
    await near.close();
    await serving;
    await tx.close();
    await board.close();
  },
});

// --- WebSocket layouts ---------------------------------------------------------

/** Just enough of a WebSocket for WebSocketByteStream: events in, sends and closes recorded. */
class FakeWebSocket extends EventTarget {
  binaryType = "blob";
  readyState: number = WebSocket.OPEN;
  bufferedAmount = 0;
  sent: unknown[] = [];
  closeCode: number | undefined;

  constructor(readonly protocol: string) {
    super();
  }

  send(data: unknown): void {
    this.sent.push(data);
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState === WebSocket.CLOSED) return;
    this.readyState = WebSocket.CLOSED;
    this.closeCode = code;
    queueMicrotask(() =>
      this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean: true }))
    );
  }

  /** The peer sends `data`. */
  receive(data: string | ArrayBuffer): void {
    if (this.readyState !== WebSocket.OPEN) return;
    this.dispatchEvent(new MessageEvent("message", { data }));
  }

  /** The peer closes in good order. */
  end(): void {
    if (this.readyState === WebSocket.CLOSED) return;
    this.readyState = WebSocket.CLOSED;
    this.dispatchEvent(new CloseEvent("close", { code: 1000, reason: "", wasClean: true }));
  }
}

function arrayBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer;
}

/** WebSocket messages in either layout: valid, mutated message by message, or noise. */
function webSocketInput(rng: Rng, layout: "dask" | "x-comm") {
  const codec = createCodec({ binaryFrameThreshold: rng.pick([KIB, 64 * KIB]) });
  const values: unknown[] = [];
  const messages: (string | Uint8Array)[] = [];
  if (layout === "x-comm") messages.push(JSON.stringify({ peer: "ws://127.0.0.1:4000" }));
  const stream: Uint8Array[] = [];
  for (let n = rng.range(1, 3); n > 0; n--) {
    const value = randomMessage(rng, 8 * KIB, true);
    const frames = encodeFrames(codec, value);
    values.push(value);
    if (layout === "dask") {
      const count = new Uint8Array(8);
      new DataView(count.buffer).setBigUint64(0, BigInt(frames.length), true);
      messages.push(count, ...frames);
    } else {
      stream.push(daskFrame(frames).bytes);
    }
  }
  if (layout === "x-comm") {
    messages.push(...cut(rng, concat(stream)));
    if (rng.chance(0.3)) messages.splice(rng.range(1, messages.length), 0, '{"credit":1024}');
  }
  const kind: InputKind = rng.chance(0.25) ? "valid" : "mutated";
  if (kind === "mutated") {
    for (let n = rng.range(1, 3); n > 0; n--) {
      if (messages.length === 0) messages.push(rng.bytes(8));
      const at = rng.int(messages.length);
      const message = messages[at];
      switch (rng.int(6)) {
        case 0: // A message's bytes mutated (the frame count, a frame, or the hello).
          messages[at] = typeof message === "string"
            ? message.slice(0, rng.int(message.length + 1)) + rng.pick(["", "}", "x", '"'])
            : mutate(rng, message, message.length === 8 ? [0] : [], MAX, "little");
          break;
        case 1:
          messages.splice(at, 1);
          break;
        case 2:
          messages.splice(at, 0, message);
          break;
        case 3:
          messages.splice(
            at,
            0,
            rng.pick(['{"credit":-1}', '{"credit":1e400}', "hello", '{"peer":1}', ""]),
          );
          break;
        case 4:
          messages.splice(at, 0, rng.bytes(rng.pick([8, rng.size(8)])));
          break;
        default: { // A frame count that lies.
          const count = new Uint8Array(8);
          new DataView(count.buffer).setBigUint64(
            0,
            rng.pick([0n, 1n, 300n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]),
            true,
          );
          messages.splice(at, 0, count);
        }
      }
    }
  }
  return { kind, messages, values };
}

Deno.test("WebSocketByteStream feeds StreamComm only messages or a typed error for random and mutated WebSocket messages, in both layouts", async () => {
  const tally = new Tally("WebSocket layouts");
  for (const c of cases("websocket", 3_000)) {
    const layout = c.rng.chance(0.5) ? "dask" : "x-comm";
    const { kind, messages, values: expected } = webSocketInput(c.rng, layout);
    const socket = new FakeWebSocket(layout === "x-comm" ? "x-comm" : "");
    // The dask layout as a listener sees it; x-comm as a client, which waits for the hello.
    const stream = new WebSocketByteStream(socket as unknown as WebSocket, {
      peerAddress: "ws://fuzz",
      maxMessageSize: MAX,
      layout: layout === "dask" ? "dask" : undefined,
    });
    socket.dispatchEvent(new Event("open"));
    const describeInput = () =>
      messages.map((m) => typeof m === "string" ? JSON.stringify(m) : `<${m.length} bytes>`).join(
        " ",
      );
    for (const message of messages) {
      socket.receive(typeof message === "string" ? message : arrayBuffer(message));
    }
    socket.end();
    let opened = true;
    try {
      await within(stream.opened, HANG_MS, () => c.where(`opening over ${describeInput()}`));
    } catch (error) {
      opened = false;
      assert(
        error instanceof ProtocolError || (error as Error).name === "ConnectionRefused",
        c.where(`opened rejected with ${error}`),
      );
      tally.add(`not opened (${kindOf(error)})`);
    }
    const comm = new StreamComm(stream, { ...ADDRESSES, maxMessageSize: MAX });
    const { values, error } = await within(
      readUntilEnd(comm),
      HANG_MS,
      () => c.where(`read() over ${describeInput()}`),
    );
    assert(
      error instanceof CommClosedError && !(error.cause instanceof TypeError) &&
        !(error.cause instanceof RangeError),
      c.where(
        `read() rejected with ${kindOf(error)}: ${error} (cause ${
          (error as Error).cause
        }) over ${describeInput()}`,
      ),
    );
    if (kind === "valid") {
      assert(opened, c.where(`a valid ${layout} stream did not open`));
      assertEquals(values, expected, c.where(`a valid ${layout} stream read wrong`));
      assert(
        !(error instanceof ProtocolError),
        c.where(`a valid ${layout} stream ended with ${error}`),
      );
    }
    await comm.close();
    tally.add(`${layout} ${kind === "valid" ? "valid" : "fuzzed"} cases`);
    tally.add("cases");
    tally.add("messages read", values.length);
    tally.add(kindOf(error));
  }
  tally.log();
});
