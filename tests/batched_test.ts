// BatchedSend: list messages in order, batching by interval, close() and
// abort(), a peer that goes away, unencodable messages, and a Server's
// stream handlers as the receiver. Everything binds to loopback or inproc.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStrictEquals,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { delay } from "@std/async/delay";
import {
  BatchedSend,
  type Comm,
  CommClosedError,
  connect,
  listen,
  type Listener,
  pipe,
  Server,
} from "@x/comm";
import { until } from "./_wait.ts";

/** Two connected comms, `a` to write on and `b` to read from. */
interface Pair extends AsyncDisposable {
  a: Comm;
  b: Comm;
}

function inprocPair(): Promise<Pair> {
  const [a, b] = pipe();
  return Promise.resolve({
    a,
    b,
    async [Symbol.asyncDispose]() {
      await a.close();
      await b.close();
    },
  });
}

async function tcpPair(): Promise<Pair> {
  const listener: Listener = await listen("tcp://127.0.0.1:0");
  const accepted = listener[Symbol.asyncIterator]().next();
  const a = await connect(listener.contactAddress);
  const b = (await accepted).value as Comm;
  return {
    a,
    b,
    async [Symbol.asyncDispose]() {
      await a.close();
      await b.close();
      await listener.close();
    },
  };
}

const TRANSPORTS: [string, () => Promise<Pair>][] = [
  ["an inproc pipe()", inprocPair],
  ["tcp", tcpPair],
];

/** Reads list messages until the comm closes. */
async function readBatches(comm: Comm): Promise<unknown[][]> {
  const batches: unknown[][] = [];
  for await (const batch of comm) {
    assert(Array.isArray(batch), `expected a list message, got ${Deno.inspect(batch)}`);
    batches.push(batch as unknown[]);
  }
  return batches;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

for (const [name, makePair] of TRANSPORTS) {
  Deno.test(`BatchedSend writes messages as list messages, in order, over ${name}`, async () => {
    await using pair = await makePair();
    const batched = new BatchedSend(pair.a);
    assertStrictEquals(batched.comm, pair.a);
    batched.send({ op: "first" });
    batched.send({ op: "second" }, { op: "third" });
    const batches = readBatches(pair.b);
    await delay(5);
    batched.send("later", [1, 2]);
    await batched.close();
    const received = await batches;
    assertEquals(received.flat(), [{ op: "first" }, { op: "second" }, { op: "third" }, "later", [
      1,
      2,
    ]]);
    assertEquals(received.length, batched.batchCount);
    assertEquals(batched.messageCount, 5);
  });

  Deno.test(`BatchedSend batches many sends into few writes over ${name}`, async () => {
    await using pair = await makePair();
    const batched = new BatchedSend(pair.a, { interval: 10 });
    const batches = readBatches(pair.b);
    const COUNT = 300;
    for (let i = 0; i < COUNT; i++) {
      batched.send(i);
      if (i % 10 === 9) await delay(1);
    }
    await batched.close();
    const received = await batches;
    // Every message exactly once, in order.
    assertEquals(received.flat(), range(COUNT));
    assertEquals(batched.messageCount, COUNT);
    assertEquals(batched.batchCount, received.length);
    // Sends between two awaits go together: at most one write per await.
    assert(batched.batchCount < batched.messageCount);
    assert(batched.batchCount <= COUNT / 10 + 1, `${batched.batchCount} writes`);
  });

  Deno.test(`BatchedSend.close() writes what is queued, then closes, over ${name}`, async () => {
    await using pair = await makePair();
    const batched = new BatchedSend(pair.a, { interval: 60_000 });
    batched.send(1);
    assertEquals(await pair.b.read(), [1]);
    batched.send(2, 3);
    batched.send(4);
    assertEquals(batched.pending, 3);
    await batched.close();
    assert(batched.closed);
    assert(pair.a.closed);
    assertEquals(batched.pending, 0);
    assertEquals(await pair.b.read(), [2, 3, 4]);
    await assertRejects(() => pair.b.read(), CommClosedError);
    // Idempotent.
    await batched.close();
  });
}

Deno.test("BatchedSend writes the first message after a quiet spell at once", async () => {
  const [a, b] = pipe();
  const batched = new BatchedSend(a, { interval: 60_000 });
  batched.send("first");
  // Written in a microtask, not after the interval.
  await Promise.resolve();
  assertEquals(batched.pending, 0);
  assertEquals(await b.read(), ["first"]);
  // The next one waits for the interval, or for close().
  batched.send("second");
  assertFalse(await b.poll(30));
  assertEquals(batched.pending, 1);
  await batched.close();
  assertEquals(await b.read(), ["second"]);
  await assertRejects(() => b.read(), CommClosedError);
  await b.close();
});

Deno.test("BatchedSend writes at once again once the interval has passed", async () => {
  await using pair = await inprocPair();
  const INTERVAL = 20;
  const batched = new BatchedSend(pair.a, { interval: INTERVAL });
  batched.send(1);
  assertEquals(await pair.b.read(), [1]);
  await delay(2 * INTERVAL);
  batched.send(2);
  await Promise.resolve();
  assertEquals(batched.pending, 0);
  assertEquals(await pair.b.read(), [2]);
  await batched.close();
});

Deno.test("BatchedSend.abort() drops queued messages and aborts the comm", async () => {
  await using pair = await tcpPair();
  const batched = new BatchedSend(pair.a, { interval: 60_000 });
  batched.send(1);
  assertEquals(await pair.b.read(), [1]);
  batched.send(2, 3);
  assertEquals(batched.pending, 2);
  const reason = new Error("no longer needed");
  batched.abort(reason);
  assert(batched.closed);
  assert(pair.a.closed);
  assertEquals(batched.pending, 0);
  await assertRejects(() => pair.b.read(), CommClosedError);
  assertThrows(() => batched.send(4), CommClosedError, "it was aborted");
  // Nothing was lost to a failure: the caller dropped them.
  await batched.close();
});

Deno.test("BatchedSend.abort() before the first write sends nothing", async () => {
  const [a, b] = pipe();
  const batched = new BatchedSend(a);
  batched.send("never");
  batched.abort();
  await assertRejects(() => b.read(), CommClosedError);
  assertEquals(batched.batchCount, 0);
  await b.close();
});

// abort() while a batch is being written (here, an inproc write blocked at
// the peer's highWaterMark) drops that batch on purpose: it is not reported
// as lost to a failed comm.
Deno.test({
  name: "BatchedSend.abort() with a write in flight leaves close() resolving",
  async fn() {
    const [a, b] = pipe({ highWaterMark: 1 });
    const batched = new BatchedSend(a, { interval: 0 });
    // b reads nothing: the second batch's write waits for room.
    for (let i = 0; i < 5; i++) {
      batched.send(i);
      await delay(1);
    }
    assert(batched.pending > 0);
    batched.abort(new Error("done here"));
    await delay(1);
    assertThrows(() => batched.send(5), CommClosedError, "it was aborted");
    await batched.close();
    await b.close();
  },
});

Deno.test("BatchedSend.send() throws CommClosedError after close()", async () => {
  await using pair = await inprocPair();
  const batched = new BatchedSend(pair.a);
  batched.send(1);
  const closing = batched.close();
  assertStrictEquals(batched.close(), closing);
  assertThrows(() => batched.send(2), CommClosedError, "closed");
  await closing;
  assertThrows(() => batched.send(3), CommClosedError, "closed");
  assertEquals(await pair.b.read(), [1]);
  assertEquals(batched.messageCount, 1);
});

Deno.test("BatchedSend.send() throws CommClosedError once the comm closed", async () => {
  await using pair = await inprocPair();
  const batched = new BatchedSend(pair.a);
  await pair.a.close();
  assert(batched.closed);
  assertThrows(() => batched.send(1), CommClosedError);
  await batched.close();
});

Deno.test("BatchedSend reports messages lost when the peer goes away mid-stream", async () => {
  // The peer reads one batch and aborts. A message queued by then is
  // written at the end of the interval, after the comm saw the peer go:
  // that write fails, and send() and close() say that one message was lost.
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    await comm.read();
    comm.abort(new Error("peer gone"));
  });
  const comm = await connect(listener.contactAddress);
  const batched = new BatchedSend(comm, { interval: 300 });
  batched.send("first");
  // Let "first" go out (its write is in flight, not yet done with I/O), so
  // that "second" waits for the interval rather than joining it.
  await Promise.resolve();
  assertEquals(batched.pending, 0);
  batched.send("second");
  assertEquals(batched.pending, 1);
  await until(() => comm.closed, "the comm saw the peer go");
  // Precondition: the interval is long enough to see the peer go first.
  assertEquals(batched.pending, 1);
  await until(() => batched.pending === 0, "the queued message was tried");
  const error = assertThrows(() => batched.send("third"), CommClosedError);
  assertStringIncludes(error.message, "1 messages were lost");
  const closeError = await assertRejects(() => batched.close(), CommClosedError);
  assertStringIncludes(closeError.message, "1 messages");
  assertStringIncludes(closeError.message, "were not written");
  assertEquals(batched.batchCount, 1);
});

for (const [name, makePair] of TRANSPORTS) {
  Deno.test(`BatchedSend.close() counts queued messages lost to a closed comm over ${name}`, async () => {
    await using pair = await makePair();
    const batched = new BatchedSend(pair.a, { interval: 60_000 });
    batched.send("first");
    assertEquals(await pair.b.read(), ["first"]);
    batched.send("second", "third");
    pair.b.abort(new Error("peer gone"));
    await until(() => pair.a.closed, "the comm saw the peer go");
    assert(batched.closed);
    assertThrows(() => batched.send("fourth"), CommClosedError);
    const error = await assertRejects(() => batched.close(), CommClosedError);
    assertStringIncludes(error.message, "2 messages");
    assertStringIncludes(error.message, "were not written");
    assertEquals(batched.messageCount, 3);
  });
}

Deno.test("BatchedSend.send() throws CommClosedError soon after the peer aborts mid-stream", async () => {
  // What an application sees: it keeps sending, and send() throws once the
  // comm knows the peer is gone. Bounded in count and time.
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    await comm.read();
    comm.abort(new Error("peer gone"));
  });
  const comm = await connect(listener.contactAddress);
  const batched = new BatchedSend(comm, { interval: 1 });
  let failure: unknown;
  const deadline = performance.now() + 5_000;
  for (let i = 0; i < 5_000 && performance.now() < deadline; i++) {
    try {
      batched.send(i);
    } catch (error) {
      failure = error;
      break;
    }
    await delay(1);
  }
  assertInstanceOf(failure, CommClosedError);
  assert(batched.closed);
  // Whatever was still queued is reported as lost; nothing else is.
  await batched.close().catch((error) => {
    assertInstanceOf(error, CommClosedError);
    assertStringIncludes(error.message, "were not written");
  });
});

Deno.test("BatchedSend drops an unencodable message, reports it, and sends the rest in order", async () => {
  await using pair = await tcpPair();
  const errors: unknown[] = [];
  const batched = new BatchedSend(pair.a, {
    interval: 60_000,
    onError: (error) => errors.push(error),
  });
  batched.send(0);
  assertEquals(await pair.b.read(), [0]);
  // One batch with a function and a symbol among good messages.
  batched.send(1, () => "not data", 2, { op: "bad", sym: Symbol("no") }, 3);
  batched.send(4);
  await batched.close();
  const received = await readBatches(pair.b);
  assertEquals(received.flat(), [1, 2, 3, 4]);
  assertEquals(errors.length, 2);
  for (const error of errors) {
    assertInstanceOf(error, TypeError);
    assertStringIncludes((error as TypeError).message, "Dropped a message");
  }
  assertEquals(batched.messageCount, 7);
});

Deno.test("BatchedSend refuses a negative interval", async () => {
  const [a, b] = pipe();
  try {
    for (const interval of [-1, Number.NaN, "5" as unknown as number]) {
      assertThrows(() => new BatchedSend(a, { interval }), RangeError, "interval");
    }
    await using zero = new BatchedSend(a, { interval: 0 });
    zero.send("fine");
  } finally {
    await a.close();
  }
  assertEquals(await b.read(), ["fine"]);
  await b.close();
});

// Beyond setTimeout's range (2^31 ms), an interval means "no limit": later
// messages wait for close(), as connect()'s timeout means no limit there.
Deno.test({
  name: "BatchedSend holds messages until close() with an interval beyond setTimeout's range",
  async fn() {
    for (const interval of [2 ** 31, 2 ** 40, Infinity]) {
      const [a, b] = pipe();
      let batched: BatchedSend;
      try {
        batched = new BatchedSend(a, { interval });
      } catch (error) {
        // Refusing it is fine too.
        assertInstanceOf(error, RangeError);
        await a.close();
        await b.close();
        continue;
      }
      batched.send(1);
      assertEquals(await b.read(), [1]);
      batched.send(2);
      assertFalse(await b.poll(30), `interval ${interval}: the second message went out early`);
      await batched.close();
      assertEquals(await b.read(), [2]);
      await b.close();
    }
  },
});

Deno.test("BatchedSend feeds a Server's stream handlers through connection_stream", async () => {
  const seen: number[] = [];
  const errors: unknown[] = [];
  await using server = new Server({}, {
    streamHandlers: {
      record: ({ n }) => {
        seen.push(n);
      },
    },
    onError: (error) => errors.push(error),
  });
  await server.listen("tcp://127.0.0.1:0");
  const comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  const batched = new BatchedSend(comm, { interval: 5 });
  const COUNT = 500;
  for (let i = 0; i < COUNT; i++) {
    batched.send({ op: "record", n: i });
    if (i % 50 === 49) await delay(1);
  }
  await batched.close();
  await until(() => seen.length === COUNT, "every message was handled");
  assertEquals(seen, range(COUNT));
  assertEquals(errors, []);
  assert(batched.batchCount < COUNT);
});

Deno.test("BatchedSend closes with `await using`", async () => {
  const [a, b] = pipe();
  {
    await using batched = new BatchedSend(a, { interval: 60_000 });
    batched.send(1);
    batched.send(2);
    await Promise.resolve();
    batched.send(3);
  }
  assert(a.closed);
  assertEquals(await readBatches(b), [[1, 2], [3]]);
  await b.close();
});

Deno.test("BatchedSend.close() gives up after closeTimeout when the peer does not read", async () => {
  const [a, b] = pipe({ highWaterMark: 1 });
  const batched = new BatchedSend(a, { interval: 0, closeTimeout: 100 });
  // b reads nothing, so the second write waits for room that never comes.
  for (let i = 0; i < 4; i++) {
    batched.send(i);
    await delay(1);
  }
  const error = await assertRejects(() => batched.close(), CommClosedError, "were not written");
  assertStringIncludes(error.message, "100 ms");
  assert(a.closed);
  await b.close();
});

Deno.test("BatchedSend.send() returns a promise that waits while over highWaterMark, and settles once the comm catches up", async () => {
  // The comm's own writes wait once one message is unread.
  const [a, b] = pipe({ highWaterMark: 1 });
  const batched = new BatchedSend(a, { interval: 0, highWaterMark: 1_000 });
  await batched.send(new Uint8Array(600)); // under the mark: at once
  await until(() => batched.pending === 0, "the first batch to go");
  await batched.send(new Uint8Array(600)); // written, its write waiting for b
  await until(() => batched.pending === 0, "the second batch to go");
  let settled = false;
  const third = batched.send(new Uint8Array(600)).then(() => settled = true);
  await delay(20);
  assertFalse(settled, "1,200 bytes queued and in flight: the promise should wait");
  assertEquals(((await b.read()) as Uint8Array[]).length, 1);
  assertEquals(((await b.read()) as Uint8Array[]).length, 1);
  await third;
  await batched.close();
  assertEquals(((await b.read()) as Uint8Array[]).length, 1);
  await b.close();
});

Deno.test("BatchedSend.send()'s waiting promise settles, never rejects, when the stream is aborted", async () => {
  const [a, b] = pipe({ highWaterMark: 1 });
  const batched = new BatchedSend(a, { interval: 0, highWaterMark: 100 });
  const waiting = [batched.send(new Uint8Array(200)), batched.send(new Uint8Array(200))];
  batched.abort(new Error("stop"));
  await Promise.all(waiting);
  assertThrows(() => batched.send(1), CommClosedError);
  await b.close();
});

Deno.test("BatchedSend refuses a highWaterMark that is not a positive whole number", () => {
  const [a, b] = pipe();
  for (const highWaterMark of [0, -1, 1.5, NaN]) {
    assertThrows(() => new BatchedSend(a, { highWaterMark }), RangeError, "highWaterMark");
  }
  a.abort();
  b.abort();
});
