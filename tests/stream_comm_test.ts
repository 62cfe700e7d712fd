import { assert, assertEquals, assertRejects, assertStrictEquals } from "@std/assert";
import { Encoder } from "@msgpack/msgpack";
import { type ByteStream, CommClosedError, StreamComm } from "../mod.ts";
import { headerSize, writeHeader } from "../comm/_framing.ts";

/** A byte stream under test control: records writes, serves scripted reads. */
class FakeStream implements ByteStream {
  writes: Uint8Array[] = [];
  reads = 0;
  closed = false;
  /** When set, writes wait for this promise. */
  gate: Promise<void> | undefined;
  #incoming: Uint8Array[] = [];
  #wake: (() => void) | undefined;
  /** When set, every read gets this many bytes of endless messages. */
  endless: Uint8Array | undefined;
  endlessUnit = 1;

  push(bytes: Uint8Array): void {
    this.#incoming.push(bytes);
    this.#wake?.();
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    this.reads++;
    if (this.endless) {
      // Whole messages only (the buffer repeats one message), so that the
      // stream stays aligned from read to read.
      const one = this.endlessUnit;
      const n = Math.min(Math.floor(buffer.length / one) * one, this.endless.length);
      buffer.set(this.endless.subarray(0, n));
      await Promise.resolve();
      return n;
    }
    while (this.#incoming.length === 0 && !this.closed) {
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    if (this.closed) throw new Deno.errors.BadResource("closed");
    const chunk = this.#incoming.shift()!;
    const n = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, n));
    if (n < chunk.length) this.#incoming.unshift(chunk.subarray(n));
    return n;
  }

  async write(data: Uint8Array): Promise<number> {
    this.writes.push(data);
    // Like a socket, a write completes in a later turn of the event loop.
    await new Promise((resolve) => setTimeout(resolve, 0));
    if (this.gate) await this.gate;
    return data.length;
  }

  close(): void {
    this.closed = true;
    this.#wake?.();
  }
}

function message(value: unknown): Uint8Array {
  const body = new Encoder().encode(value);
  const out = new Uint8Array(headerSize(1) + body.length);
  writeHeader(new DataView(out.buffer), 0, [body]);
  out.set(body, headerSize(1));
  return out;
}

const ADDRESSES = { localAddress: "fake://a", peerAddress: "fake://b" };

Deno.test("StreamComm.write() coalesces a loop of writes into few stream writes", async () => {
  const stream = new FakeStream();
  const comm = new StreamComm(stream, ADDRESSES);
  for (let i = 0; i < 1000; i++) await comm.write({ i });
  await comm.close();
  const bytes = stream.writes.reduce((n, w) => n + w.length, 0);
  let expected = 0;
  for (let i = 0; i < 1000; i++) expected += message({ i }).length;
  assertEquals(bytes, expected);
  assert(stream.writes.length <= 5, `${stream.writes.length} writes for 1000 messages`);
});

Deno.test("StreamComm.write() waits once more than highWaterMark is queued", async () => {
  const stream = new FakeStream();
  let open!: () => void;
  stream.gate = new Promise<void>((resolve) => open = resolve);
  const comm = new StreamComm(stream, { ...ADDRESSES, highWaterMark: 1000 });
  const first = comm.write(new Uint8Array(600));
  await first; // under the mark: resolved once queued
  let settled = false;
  const second = comm.write(new Uint8Array(600)).then(() => settled = true);
  for (let i = 0; i < 10; i++) await Promise.resolve();
  assertEquals(settled, false, "a write over the mark must wait");
  open();
  await second;
  assertEquals(settled, true);
  await comm.close();
});

Deno.test("StreamComm.write() sends a large binary from the caller's memory", async () => {
  const stream = new FakeStream();
  const comm = new StreamComm(stream, ADDRESSES);
  const payload = new Uint8Array(1 << 20).fill(7);
  await comm.write({ payload });
  assert(
    stream.writes.some((w) => w === payload),
    "the payload should be written as the caller's own array",
  );
  await comm.close();
});

Deno.test("StreamComm.read() stops reading ahead while many messages are unread", async () => {
  const stream = new FakeStream();
  const one = message("x");
  stream.endless = new Uint8Array(Array.from({ length: 4096 }, () => [...one]).flat());
  stream.endlessUnit = one.length;
  const comm = new StreamComm(stream, ADDRESSES);
  for (let i = 0; i < 200; i++) await Promise.resolve();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const readsWhilePaused = stream.reads;
  await new Promise((resolve) => setTimeout(resolve, 20));
  assertEquals(stream.reads, readsWhilePaused, "reading went on with nobody reading");
  // Reading messages resumes it, and every message is intact.
  for (let i = 0; i < 20_000; i++) assertEquals(await comm.read(), "x");
  assert(stream.reads > readsWhilePaused);
  comm.abort();
  await comm.close();
});

Deno.test("StreamComm.write() rejects an unencodable message and stays open", async () => {
  const stream = new FakeStream();
  const comm = new StreamComm(stream, ADDRESSES);
  await assertRejects(() => comm.write({ f: () => 1 }), TypeError, `"fake://b"`);
  await assertRejects(() => comm.write(Symbol("no")), TypeError);
  assertEquals(comm.closed, false);
  await comm.write("still fine");
  stream.push(message("reply"));
  assertEquals(await comm.read(), "reply");
  await comm.close();
  assertEquals(stream.closed, true);
});

Deno.test("StreamComm.read() delivers what arrived before the peer closed, then rejects", async () => {
  const stream = new FakeStream();
  const comm = new StreamComm(stream, ADDRESSES);
  stream.push(new Uint8Array([...message(1), ...message(2)]));
  assertEquals(await comm.read(), 1);
  // The stream ends: reads after the buffered message fail.
  const ended = new FakeStream();
  const comm2 = new StreamComm(
    { read: (b) => ended.read(b).catch(() => null), write: (d) => ended.write(d), close() {} },
    ADDRESSES,
  );
  ended.push(message("last"));
  assertEquals(await comm2.read(), "last");
  ended.close();
  await assertRejects(() => comm2.read(), CommClosedError, "closed by the peer");
  assertEquals(comm2.closed, true);
  assertEquals(await comm.read(), 2);
  await comm.close();
  await comm2.close();
});

Deno.test("StreamComm.close() flushes what is queued before closing the stream", async () => {
  const stream = new FakeStream();
  let open!: () => void;
  stream.gate = new Promise<void>((resolve) => open = resolve);
  const comm = new StreamComm(stream, ADDRESSES);
  for (let i = 0; i < 100; i++) void comm.write(i);
  const closing = comm.close();
  await assertRejects(() => comm.write("late"), CommClosedError);
  assertEquals(stream.closed, false, "closed before the queue was flushed");
  open();
  await closing;
  assertEquals(stream.closed, true);
  const total = stream.writes.reduce((n, w) => n + w.length, 0);
  let expected = 0;
  for (let i = 0; i < 100; i++) expected += message(i).length;
  assertEquals(total, expected);
});

Deno.test("StreamComm.abort() fails pending writes of large frames", async () => {
  const stream = new FakeStream();
  stream.gate = new Promise<void>(() => {});
  const comm = new StreamComm(stream, ADDRESSES);
  const pending = comm.write(new Uint8Array(1 << 20));
  await Promise.resolve();
  comm.abort(new Error("shutting down"));
  const error = await assertRejects(() => pending, CommClosedError, "aborted: shutting down");
  assertStrictEquals((error.cause as Error).message, "shutting down");
});

Deno.test("StreamComm.read() makes no buffer for a large binary behind unread messages", async () => {
  const stream = new FakeStream();
  const asked: number[] = [];
  const comm = new StreamComm(stream, {
    ...ADDRESSES,
    allocate: (size) => {
      asked.push(size);
      return new Uint8Array(size);
    },
  });
  // An unread message, then a message of 9 MiB (more than the comm reads
  // ahead of its reader) of which only the first bytes have arrived.
  const payload = new Uint8Array(9 * 1024 * 1024).map((_, i) => i % 251);
  const frames = [new Uint8Array([0xc0]), new Uint8Array([0x80]), payload];
  const bytes = new Uint8Array(headerSize(3) + 2 + payload.length);
  writeHeader(new DataView(bytes.buffer), 0, frames);
  bytes.set([0xc0, 0x80], headerSize(3));
  bytes.set(payload, headerSize(3) + 2);
  stream.push(new Uint8Array([...message("first"), ...bytes.subarray(0, 1000)]));
  assert(await comm.poll(1000), "the first message did not arrive");
  for (let i = 0; i < 50; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  assertEquals(asked, [], "a buffer was made while a message was left unread");
  assertEquals(await comm.read(), "first");
  stream.push(bytes.subarray(1000));
  assertEquals(await comm.read(), null); // frame 0 is msgpack nil; the payload came all the same
  assertEquals(asked, [payload.length]);
  comm.abort();
  await comm.close();
});

Deno.test("StreamComm.read() gets a large message its peer is still writing, unasked", async () => {
  // A writer waits for its 16 MiB write to be taken before it reads: the
  // reader must take it without a read() waiting (no deadlock).
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = listener.accept();
  const a = new StreamComm(
    await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    ADDRESSES,
  );
  const b = new StreamComm(await accepting, ADDRESSES);
  await b.poll(); // b starts reading, with no read() waiting
  const big = new Uint8Array(16 * 1024 * 1024).fill(3);
  await a.write(big);
  assertEquals((await b.read() as Uint8Array).length, big.length);
  await a.close();
  await b.close();
});
