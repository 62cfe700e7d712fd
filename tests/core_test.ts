import { assert, assertEquals, assertFalse, assertRejects, assertStrictEquals } from "@std/assert";
import { delay } from "@std/async/delay";
import { CommClosedError, connect, listen, pipe } from "../mod.ts";

Deno.test("connect() checks size options before opening a connection", async () => {
  let accepted = 0;
  await using listener = await listen("tcp://127.0.0.1:0", () => {
    accepted++;
  });
  for (
    const options of [{ maxMessageSize: 0 }, { highWaterMark: -1 }, { binaryFrameThreshold: 1.5 }]
  ) {
    await assertRejects(() => connect(listener.contactAddress, options), RangeError, "Invalid");
  }
  // Had a socket been opened, the listener would have accepted it (and the
  // resource sanitizer would see it leak).
  assertEquals(accepted, 0);
});

Deno.test("listen() refuses bad size options at once", async () => {
  await assertRejects(
    () => listen("tcp://127.0.0.1:0", { highWaterMark: 0 }),
    RangeError,
    "highWaterMark",
  );
  await assertRejects(
    () => listen("inproc://", { maxMessageSize: Number.NaN }),
    RangeError,
    "maxMessageSize",
  );
});

Deno.test("connect() treats timeouts beyond setTimeout's range as no limit", async () => {
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    await comm.write(await comm.read());
  }, { handshakeTimeout: 30 * 24 * 3600 * 1000 });
  await using comm = await connect(listener.contactAddress, { timeout: 2 ** 40 });
  await comm.write("slow and steady");
  assertEquals(await comm.read(), "slow and steady");
});

Deno.test("listen() keeps serving when onError itself throws", async () => {
  const printed: unknown[][] = [];
  const consoleError = console.error;
  console.error = (...args: unknown[]) => printed.push(args);
  try {
    await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
      const message = await comm.read();
      if (message === "fail") throw new Error("handler failed");
      await comm.write(message);
    }, {
      onError() {
        throw new Error("onError failed too");
      },
    });
    {
      await using bad = await connect(listener.contactAddress);
      await bad.write("fail");
      await assertRejects(() => bad.read(), CommClosedError);
    }
    await using good = await connect(listener.contactAddress);
    await good.write("fine");
    assertEquals(await good.read(), "fine");
  } finally {
    console.error = consoleError;
  }
  const text = printed.flat().map(String).join("\n");
  assert(text.includes("onError failed too"), text);
  assert(text.includes("handler failed"), text);
});

Deno.test("Comm.abort() on inproc drops what the peer has not read and fails blocked writes", async () => {
  const [a, b] = pipe({ highWaterMark: 4 });
  const writes = Array.from({ length: 10 }, (_, i) => a.write(i).then(() => "ok", (e) => e));
  await Promise.resolve();
  a.abort(new Error("stop"));
  const outcomes = await Promise.all(writes);
  assertEquals(outcomes.slice(0, 4), ["ok", "ok", "ok", "ok"]);
  assert(outcomes.slice(5).every((o) => o instanceof CommClosedError), String(outcomes));
  await assertRejects(() => b.read(), CommClosedError, "closed by the peer");
  await b.close();
});

Deno.test("Comm.close() on inproc lets the peer read everything written", async () => {
  const [a, b] = pipe({ highWaterMark: 4 });
  const writes = Array.from({ length: 10 }, (_, i) => a.write(i));
  await a.close();
  await Promise.all(writes);
  assertEquals(await Array.fromAsync(b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assertStrictEquals(b.closed, true);
});

Deno.test("Comm.write() on inproc waits while the peer's queue holds over 16 MiB, below highWaterMark messages", async () => {
  const [a, b] = pipe();
  const MIB = 1024 * 1024;
  for (let i = 0; i < 15; i++) await a.write(new Uint8Array(MIB));
  let written = false;
  const sixteenth = a.write(new Uint8Array(MIB)).then(() => written = true);
  await delay(10);
  assertFalse(written, "16 MiB and more queued: the write should wait");
  // Writers go on once the queue is down to half of that: 7 of the 16 left.
  for (let i = 0; i < 8; i++) assertEquals(((await b.read()) as Uint8Array).length, MIB);
  await delay(10);
  assertFalse(written, "8 MiB and a little more queued: the write should still wait");
  assertEquals(((await b.read()) as Uint8Array).length, MIB);
  await sixteenth;
  await a.close();
  assertEquals((await Array.fromAsync(b)).length, 7);
});
