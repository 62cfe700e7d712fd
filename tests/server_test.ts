// Server: handlers by operation over comms, as dask.distributed's Server.
// Everything binds to loopback (127.0.0.1, port 0) or inproc; every wait is
// bounded by `until()` or `within()`, which only fail a case that hangs.

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
  type Comm,
  CommClosedError,
  connect,
  ConnectTimeoutError,
  type HandlerContext,
  listen,
  pipe,
  ProtocolError,
  RemoteError,
  sendRecv,
  Server,
  type StreamHandler,
} from "../mod.ts";
import { until, within } from "./_wait.ts";

/** Collects what a server reports to `onError`. */
function errorLog() {
  const errors: unknown[] = [];
  return {
    errors,
    onError: (error: unknown) => {
      errors.push(error);
    },
    /** Waits for the `count`-th error, which must be an Error; returns it. */
    async nth(count: number): Promise<Error> {
      await until(() => errors.length >= count, `error #${count} reported to onError`);
      const error = errors[count - 1];
      assertInstanceOf(error, Error);
      return error as Error;
    },
  };
}

/** A message's error reply, checked to be one. */
function asErrorReply(reply: unknown): Record<string, unknown> {
  assert(typeof reply === "object" && reply !== null, `not an error reply: ${Deno.inspect(reply)}`);
  const record = reply as Record<string, unknown>;
  assertEquals(record.status, "uncaught-error", `not an error reply: ${Deno.inspect(reply)}`);
  return record;
}

/** Captures console.error while `fn` runs. */
async function capturingConsoleError(fn: (printed: unknown[][]) => Promise<void>): Promise<void> {
  const printed: unknown[][] = [];
  const consoleError = console.error;
  console.error = (...args: unknown[]) => printed.push(args);
  try {
    await fn(printed);
  } finally {
    console.error = consoleError;
  }
}

// Handlers, by op, with arguments

Deno.test("Server calls the handler of a message's op with its other fields", async () => {
  const calls: { args: unknown; context: HandlerContext }[] = [];
  await using server = new Server({
    look: (args, context) => {
      calls.push({ args, context });
      return "seen";
    },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  const reply = await sendRecv(comm, {
    op: "look",
    x: 1,
    nested: { y: [1, 2], z: null },
    close: false,
    serializers: ["msgpack"],
  });
  assertEquals(reply, "seen");
  assertEquals(calls.length, 1);
  // op, reply, close and serializers are the server's, not the handler's.
  assertEquals(calls[0].args, { x: 1, nested: { y: [1, 2], z: null } });
  const { context } = calls[0];
  assertEquals(context.op, "look");
  assertStrictEquals(context.server, server);
  assertEquals(context.comm.peerAddress, comm.localAddress);
  assertFalse(context.signal.aborted);
});

Deno.test("Server awaits an async handler and replies with what it resolves to", async () => {
  await using server = new Server({
    slowDouble: async ({ n }) => {
      await delay(1);
      return 2 * n;
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "slowDouble", n: 21 }), 42);
  assertEquals(await sendRecv(comm, { op: "slowDouble", n: -1 }), -2);
});

Deno.test("Server replies null for a handler that returns undefined", async () => {
  await using server = new Server({
    nothing: () => {},
    nothingLater: async () => {},
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  assertStrictEquals(await sendRecv(comm, { op: "nothing" }), null);
  assertStrictEquals(await sendRecv(comm, { op: "nothingLater" }), null);
});

Deno.test("Server handles the messages of one comm one at a time, in order", async () => {
  let running = 0;
  let mostRunning = 0;
  await using server = new Server({
    step: async ({ i }) => {
      running++;
      mostRunning = Math.max(mostRunning, running);
      await delay(i % 3);
      running--;
      return i;
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  const count = 20;
  for (let i = 0; i < count; i++) await comm.write({ op: "step", i, reply: true });
  const replies = [];
  for (let i = 0; i < count; i++) replies.push(await within(comm.read(), `reply #${i}`));
  assertEquals(replies, Array.from({ length: count }, (_, i) => i));
  assertEquals(mostRunning, 1);
});

Deno.test("Server runs the handler of a reply: false message and writes nothing back", async () => {
  const recorded: unknown[] = [];
  await using server = new Server({
    record: ({ n }) => {
      recorded.push(n);
      return "a reply nobody asked for";
    },
    ping: () => "pong",
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "record", n: 1, reply: false });
  await comm.write({ op: "record", n: 2, reply: false });
  // The next thing read is the reply to ping: nothing was written before it.
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  assertEquals(recorded, [1, 2]);
});

Deno.test("Server reports to onError what fails for a reply: false message", async () => {
  const log = errorLog();
  await using server = new Server({
    fail: () => {
      throw new RangeError("nobody hears this");
    },
    failLater: () => Promise.reject(new TypeError("nor this")),
    ping: () => "pong",
  }, { onError: log.onError });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "fail", reply: false });
  await comm.write({ op: "failLater", reply: false });
  await comm.write({ op: "nowhere", reply: false });
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  const [fail, failLater, unknown] = [await log.nth(1), await log.nth(2), await log.nth(3)];
  assertInstanceOf(fail, RangeError);
  assertEquals(fail.message, "nobody hears this");
  assertInstanceOf(failLater, TypeError);
  assertEquals(failLater.message, "nor this");
  assertInstanceOf(unknown, Error);
  assertStringIncludes(unknown.message, '"nowhere"');
  assertEquals(log.errors.length, 3);
  assertFalse(comm.closed);
});

Deno.test("Server closes the comm after handling a close: true message", async () => {
  const ran: string[] = [];
  await using server = new Server({
    last: () => {
      ran.push("last");
      return "bye";
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  {
    await using comm = await connect(server.address);
    await comm.write({ op: "last", reply: true, close: true });
    assertEquals(await comm.read(), "bye");
    await assertRejects(() => comm.read(), CommClosedError);
  }
  {
    await using comm = await connect(server.address);
    await comm.write({ op: "last", reply: false, close: true });
    // No reply: the comm just ends.
    await assertRejects(() => comm.read(), CommClosedError);
  }
  assertEquals(ran, ["last", "last"]);
});

// Built-in operations

Deno.test("Server answers identity, echo and connection_stream by default", async () => {
  const seen: unknown[] = [];
  await using server = new Server({}, {
    id: "the-server",
    streamHandlers: { note: ({ n }) => void seen.push(n) },
  });
  assertEquals(server.id, "the-server");
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "identity" }), { type: "Server", id: "the-server" });
  assertEquals(await sendRecv(comm, { op: "echo", data: { a: [1, "two"] } }), { a: [1, "two"] });
  assertStrictEquals(await sendRecv(comm, { op: "echo" }), null);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write({ op: "note", n: 1 });
  await until(() => seen.length === 1, "the stream message");
  assertEquals(seen, [1]);
});

Deno.test("Server gives each server a fresh id by default", async () => {
  await using a = new Server();
  await using b = new Server();
  assert(a.id.startsWith("Server-"), a.id);
  assert(a.id !== b.id);
  await a.listen("inproc://");
  await using comm = await connect(a.address);
  assertEquals(await sendRecv(comm, { op: "identity" }), { type: "Server", id: a.id });
});

Deno.test("Server lets handlers replace identity, echo and connection_stream", async () => {
  await using server = new Server({
    identity: () => ({ type: "Scheduler", id: "mine" }),
    echo: ({ data }) => ["echoed", data],
    connection_stream: () => "no streams here",
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "identity" }), { type: "Scheduler", id: "mine" });
  assertEquals(await sendRecv(comm, { op: "echo", data: 1 }), ["echoed", 1]);
  // Not a stream: the comm still answers calls.
  assertEquals(await sendRecv(comm, { op: "connection_stream" }), "no streams here");
  assertEquals(await sendRecv(comm, { op: "echo", data: 2 }), ["echoed", 2]);
});

Deno.test('Server answers the close op with "OK" and closes the comm', async () => {
  await using server = new Server({ ping: () => "pong" });
  await server.listen("tcp://127.0.0.1:0");
  {
    await using comm = await connect(server.address);
    assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
    await comm.write({ op: "close", reply: true });
    assertEquals(await comm.read(), "OK");
    await assertRejects(() => comm.read(), CommClosedError);
  }
  {
    await using comm = await connect(server.address);
    await comm.write({ op: "close", reply: false });
    await assertRejects(() => comm.read(), CommClosedError);
  }
  // Other comms are served as before.
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
});

// Errors

Deno.test("Server replies to an unknown op with an error naming it and the known ops", async () => {
  await using server = new Server({ ping: () => "pong", add: ({ x, y }) => x + y });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  const error = await assertRejects(() => sendRecv(comm, { op: "nope" }), RemoteError);
  assertEquals(error.op, "nope");
  assertEquals(error.remoteName, "UnknownOperationError");
  assertStringIncludes(error.remoteMessage, '"nope"');
  assertStringIncludes(error.remoteMessage, server.id);
  assertStringIncludes(error.remoteMessage, "add, close, connection_stream, echo, identity, ping");
  // The comm stays usable.
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
});

Deno.test("Server replies to a handler that throws with a RemoteError and keeps serving", async () => {
  await using server = new Server({
    explode: function explode({ why }) {
      throw new TypeError(`boom: ${why}`);
    },
    rejectLater: async () => {
      await delay(1);
      throw new RangeError("later");
    },
    throwString: () => {
      throw "just a string";
    },
    ping: () => "pong",
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await using other = await connect(server.address);

  const error = await assertRejects(
    () => sendRecv(comm, { op: "explode", why: "testing" }),
    RemoteError,
  );
  assertEquals(error.op, "explode");
  assertEquals(error.remoteName, "TypeError");
  assertEquals(error.remoteMessage, "boom: testing");
  assertStringIncludes(error.remoteStack, "explode");
  assertStringIncludes(error.remoteStack, "server_test.ts");
  assertFalse(error.remoteStack.startsWith("TypeError"), error.remoteStack);
  assertStringIncludes(error.message, "boom: testing");

  const later = await assertRejects(() => sendRecv(comm, { op: "rejectLater" }), RemoteError);
  assertEquals([later.remoteName, later.remoteMessage], ["RangeError", "later"]);

  const thrown = await assertRejects(() => sendRecv(comm, { op: "throwString" }), RemoteError);
  assertEquals([thrown.remoteName, thrown.remoteMessage], ["Error", "just a string"]);

  // The same comm, and others, are served as before.
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  assertEquals(await sendRecv(other, { op: "ping" }), "pong");
  assertFalse(comm.closed);
});

Deno.test("Server replies with a TypeError when a handler's result cannot be encoded", async () => {
  await using server = new Server({
    aFunction: () => () => 1,
    aSymbol: () => Symbol("s"),
    inAnObject: () => ({ ok: 1, bad: Symbol("nested") }),
    aHugeBigint: () => 2n ** 70n,
    ping: () => "pong",
  });
  // inproc passes replies by reference, encoding nothing: TCP encodes.
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  for (const op of ["aFunction", "aSymbol", "inAnObject", "aHugeBigint"]) {
    const error = await assertRejects(() => sendRecv(comm, { op }), RemoteError);
    assertEquals(error.remoteName, "TypeError", op);
    assertStringIncludes(error.remoteMessage, `The reply of "${op}" cannot be sent`);
    // The server keeps serving the comm.
    assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  }
});

Deno.test("Server replies with an error to a message whose op is not a string, keeping the comm", async () => {
  const log = errorLog();
  await using server = new Server({ ping: () => "pong" }, { onError: log.onError });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);

  await comm.write({ x: 1, y: 2 });
  const noOp = asErrorReply(await comm.read());
  assert(String(noOp.exception_text).startsWith("TypeError("), String(noOp.exception_text));
  assertStringIncludes(String(noOp.exception_text), 'its "op" is undefined');
  assertStringIncludes(String(noOp.exception_text), "its fields are x, y");

  await comm.write({ op: 7, reply: true });
  const numberOp = asErrorReply(await comm.read());
  assertStringIncludes(String(numberOp.exception_text), 'its "op" is 7');

  // Without a reply wanted, it goes to onError instead.
  await comm.write({ op: null, reply: false });
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  const reported = await log.nth(1);
  assertInstanceOf(reported, TypeError);
  assertStringIncludes(reported.message, 'its "op" is null');
  assertEquals(log.errors.length, 1);
});

Deno.test("Server closes a comm that sends something other than a message object", async () => {
  const log = errorLog();
  await using server = new Server({ ping: () => "pong" }, { onError: log.onError });
  await server.listen("inproc://");
  const badMessages = [42, "ping", null, [{ op: "ping" }], new Uint8Array([1, 2]), true];
  for (const [i, bad] of badMessages.entries()) {
    await using comm = await connect(server.address);
    await comm.write(bad);
    await assertRejects(() => comm.read(), CommClosedError);
    const reported = await log.nth(i + 1);
    assertInstanceOf(reported, ProtocolError);
    assertStringIncludes(reported.message, 'expected a message object with an "op"');
  }
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
});

Deno.test("Server prints errors with console.error without an onError, or when it throws", async () => {
  await capturingConsoleError(async (printed) => {
    {
      await using server = new Server({
        fail: () => {
          throw new Error("printed failure");
        },
      });
      await server.listen("inproc://");
      await using comm = await connect(server.address);
      await comm.write({ op: "fail", reply: false });
      await until(() => printed.length >= 1, "console.error");
      assertStringIncludes(printed.flat().map(String).join("\n"), "printed failure");
    }
    printed.length = 0;
    {
      await using server = new Server({
        fail: () => {
          throw new Error("the failure");
        },
      }, {
        onError() {
          throw new Error("onError failed too");
        },
      });
      await server.listen("inproc://");
      await using comm = await connect(server.address);
      await comm.write({ op: "fail", reply: false });
      await until(() => printed.length >= 2, "console.error, twice");
      const text = printed.flat().map(String).join("\n");
      assertStringIncludes(text, "onError failed too");
      assertStringIncludes(text, "the failure");
    }
  });
});

// Many comms

for (const address of ["tcp://127.0.0.1:0", "inproc://"]) {
  const scheme = address.split(":")[0];
  Deno.test(`Server serves 50 ${scheme} comms making 20 calls each at once`, async () => {
    const comms = new Set<Comm>();
    await using server = new Server({
      add: async ({ x, y }, { comm }) => {
        comms.add(comm);
        if ((x + y) % 3 === 0) await delay(0);
        return x + y;
      },
    });
    await server.listen(address);
    const clients = 50;
    const calls = 20;
    const results = await within(
      Promise.all(Array.from({ length: clients }, async (_, c) => {
        await using comm = await connect(server.address);
        const replies = [];
        for (let i = 0; i < calls; i++) {
          replies.push(await sendRecv(comm, { op: "add", x: c * 1000, y: i }));
        }
        return replies;
      })),
      "every client's calls",
    );
    for (const [c, replies] of results.entries()) {
      assertEquals(replies, Array.from({ length: calls }, (_, i) => c * 1000 + i));
    }
    assertEquals(comms.size, clients);
  });
}

Deno.test("Server.listen() serves on every address it listens on", async () => {
  await using server = new Server({ ping: (_args, { comm }) => `pong on ${comm.localAddress}` });
  const tcp = await server.listen("tcp://127.0.0.1:0");
  const local = await server.listen("inproc://");
  assertEquals(server.listeners, [tcp, local]);
  assertEquals(server.address, tcp.contactAddress);
  for (const listener of [tcp, local]) {
    await using comm = await connect(listener.contactAddress);
    const reply = await sendRecv(comm, { op: "ping" });
    assertEquals(reply, `pong on ${comm.peerAddress}`);
  }
});

Deno.test("Server.address throws TypeError before listen()", async () => {
  await using server = new Server({}, { id: "nowhere" });
  assertThrows(() => server.address, TypeError, "listens nowhere");
  assertEquals(server.listeners, []);
});

Deno.test("new Server() refuses handlers that are not functions with TypeError", () => {
  assertThrows(
    () => new Server({ ping: "pong" as unknown as () => string }),
    TypeError,
    '"ping"',
  );
  assertThrows(
    () => new Server({}, { streamHandlers: { note: null as unknown as StreamHandler } }),
    TypeError,
    '"note"',
  );
});

// close()

Deno.test("Server.close() stops listening: connecting afterwards fails", async () => {
  const server = new Server({ ping: () => "pong" });
  const tcp = await server.listen("tcp://127.0.0.1:0");
  const local = await server.listen("inproc://");
  assertFalse(server.closed);
  const closing = server.close();
  assertStrictEquals(server.close(), closing);
  assert(server.closed);
  await closing;
  assert(tcp.closed);
  assert(local.closed);
  for (const listener of [tcp, local]) {
    await assertRejects(
      () => connect(listener.contactAddress, { timeout: 100 }),
      ConnectTimeoutError,
    );
  }
  await assertRejects(() => server.listen("inproc://"), CommClosedError);
  await server.close();
});

Deno.test("Server.close() closes idle comms without waiting for busy ones", async () => {
  const started = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const server = new Server({
    ping: () => "pong",
    gated: async () => {
      started.resolve();
      await release.promise;
      return "released";
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using idle = await connect(server.address);
  await using busy = await connect(server.address);
  assertEquals(await sendRecv(idle, { op: "ping" }), "pong");
  await busy.write({ op: "gated", reply: true });
  await within(started.promise, "the gated handler to start");

  const closing = server.close();
  // The idle comm is closed while the busy one's handler still runs; the busy
  // one once its reply is written.
  await within(assertRejects(() => idle.read(), CommClosedError), "the idle comm to close");
  release.resolve();
  assertEquals(await within(busy.read(), "the busy comm's reply"), "released");
  await assertRejects(() => busy.read(), CommClosedError);
  await within(closing, "close()");
});

// Over ws too, whose listener must keep its HTTP server until the comms
// close: stopping it would cut their WebSockets.
for (const address of ["inproc://", "ws://127.0.0.1:0"]) {
  const over = address.startsWith("ws") ? " over ws://" : "";
  Deno.test(`Server.close()${over} answers the requests that arrived before it closed`, async () => {
    const started = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    await using server = new Server({
      gated: async () => {
        started.resolve();
        await release.promise;
        return "first";
      },
      echo: ({ data }) => data,
    });
    await server.listen(address);
    await using comm = await connect(server.address);
    await comm.write({ op: "gated", reply: true });
    await within(started.promise, "the gated handler to start");
    // Queued behind the running call when close() is called.
    await comm.write({ op: "echo", data: 2, reply: true });
    await comm.write({ op: "echo", data: 3, reply: true });
    const closing = server.close();
    release.resolve();
    const replies = [];
    for (let i = 0; i < 3; i++) replies.push(await within(comm.read(), `reply #${i}`));
    assertEquals(replies, ["first", 2, 3]);
    await within(assertRejects(() => comm.read(), CommClosedError), "the comm to close");
    await within(closing, "close()");
  });
}

Deno.test("Server.close() stops reading a comm that keeps sending, after a grace period", async () => {
  let handled = 0;
  await using server = new Server({}, {
    streamHandlers: { tick: () => void handled++ },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  let stop = false;
  // Far more often than the server's quiet period, for longer than its grace.
  const chatter = (async () => {
    for (let i = 0; i < 2_000 && !stop && !comm.closed; i++) {
      await comm.write({ op: "tick" }).catch(() => {});
      await delay(2);
    }
  })();
  await until(() => handled > 0, "the first tick");
  try {
    await within(server.close(), "close() while the peer keeps sending");
  } finally {
    stop = true;
    await chatter;
  }
  assert(comm.closed);
});

Deno.test("Server.close() lets a running handler write its reply, and aborts its signal", async () => {
  const started = Promise.withResolvers<void>();
  let reason: unknown;
  await using server = new Server({
    slow: async (_args, { signal }) => {
      started.resolve();
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      reason = signal.reason;
      await delay(1);
      return "finished";
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "slow", reply: true });
  await within(started.promise, "the handler to start");
  const closing = server.close();
  assertEquals(await within(comm.read(), "the reply"), "finished");
  await assertRejects(() => comm.read(), CommClosedError);
  await within(closing, "close()");
  assertInstanceOf(reason, CommClosedError);
});

Deno.test("Server.close() waits for stream handlers still running", async () => {
  const started = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  let finished = false;
  await using server = new Server({}, {
    streamHandlers: {
      work: async () => {
        started.resolve();
        await release.promise;
        finished = true;
      },
    },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write({ op: "work" });
  await within(started.promise, "the stream handler to start");

  let closed = false;
  const closing = server.close().then(() => closed = true);
  // The stream itself ends…
  await within(assertRejects(() => comm.read(), CommClosedError), "the stream comm to close");
  // …but close() waits for the handler.
  await delay(20);
  assertFalse(closed);
  release.resolve();
  await within(closing, "close()");
  assert(finished);
});

Deno.test("Server.close() waits for the stream handlers' rejections to be reported", async () => {
  const log = errorLog();
  const started = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const server = new Server({}, {
    onError: log.onError,
    streamHandlers: {
      work: async () => {
        started.resolve();
        await release.promise;
        throw new Error("failed while closing");
      },
    },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write({ op: "work" });
  await within(started.promise, "the stream handler to start");
  const closing = server.close();
  release.resolve();
  await within(closing, "close()");
  assertEquals(log.errors.map((e) => (e as Error).message), ["failed while closing"]);
});

Deno.test({
  // As dask's Scheduler does from its "terminate" handler: close() must not
  // wait for the handler that awaits it.
  name: "Server.close() called and awaited by a handler does not wait for that handler",
  fn: async () => {
    const server = new Server({
      terminate: async (_args, { server }) => {
        await server.close();
        return "bye";
      },
    });
    await server.listen("tcp://127.0.0.1:0");
    await using comm = await connect(server.address);
    await comm.write({ op: "terminate", reply: true });
    await until(() => server.closed, "the handler to call close()");
    await within(server.close(), "close() called from a handler", 2_000);
  },
});

// handleComm()

Deno.test("Server.handleComm() serves a comm the server did not accept", async () => {
  await using server = new Server({ ping: (_args, { comm }) => `pong to ${comm.peerAddress}` });
  const [client, served] = pipe();
  const serving = server.handleComm(served);
  assertEquals(await sendRecv(client, { op: "ping" }), `pong to ${client.localAddress}`);
  assertEquals(await sendRecv(client, { op: "identity" }), { type: "Server", id: server.id });
  await client.close();
  await within(serving, "handleComm() to end");
  assert(served.closed);
});

Deno.test("Server.close() closes comms given to handleComm(), and aborts those given after", async () => {
  const server = new Server({ ping: () => "pong" });
  const [client, served] = pipe();
  const serving = server.handleComm(served);
  assertEquals(await sendRecv(client, { op: "ping" }), "pong");
  await within(server.close(), "close()");
  await within(serving, "handleComm() to end");
  await assertRejects(() => client.read(), CommClosedError);
  await client.close();

  const [late, lateServed] = pipe();
  await server.handleComm(lateServed);
  assert(lateServed.closed);
  await assertRejects(() => late.read(), CommClosedError);
  await late.close();
});

// Streams

Deno.test("Server.handleStream() hands single messages and lists to the stream handlers", async () => {
  const seen: { message: unknown; op: string }[] = [];
  const record: StreamHandler = (message, { op }) => {
    seen.push({ message, op });
  };
  await using server = new Server({}, { streamHandlers: { record, also: record } });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write({ op: "record", n: 1 });
  await comm.write([{ op: "record", n: 2 }, "OK", { op: "also", n: 3, extra: [true] }]);
  await comm.write([]);
  await comm.write({ op: "record", n: 4 });
  await until(() => seen.length === 4, "four stream messages");
  assertEquals(seen, [
    { message: { n: 1 }, op: "record" },
    { message: { n: 2 }, op: "record" },
    { message: { n: 3, extra: [true] }, op: "also" },
    { message: { n: 4 }, op: "record" },
  ]);
});

Deno.test('Server.handleStream() ends the stream at "close-stream" and closes the comm', async () => {
  const seen: unknown[] = [];
  await using server = new Server({}, {
    streamHandlers: { record: ({ n }) => void seen.push(n) },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  // What follows close-stream in its batch is not handled.
  await comm.write([{ op: "record", n: 1 }, { op: "close-stream" }, { op: "record", n: 2 }]);
  await within(assertRejects(() => comm.read(), CommClosedError), "the comm to close");
  assertEquals(seen, [1]);
});

Deno.test("Server.handleStream() reports unknown ops and bad messages to onError and goes on", async () => {
  const log = errorLog();
  const seen: unknown[] = [];
  await using server = new Server({}, {
    onError: log.onError,
    streamHandlers: { record: ({ n }) => void seen.push(n) },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write({ op: "mystery", n: 0 });
  await comm.write([42, { op: 3 }, { op: "record", n: 1 }]);
  await comm.write({ op: "record", n: 2 });
  await until(() => seen.length === 2, "the good stream messages");
  assertEquals(seen, [1, 2]);
  assertEquals(log.errors.length, 3);
  const [mystery, number, badOp] = log.errors as Error[];
  assertInstanceOf(mystery, TypeError);
  assertStringIncludes(mystery.message, '"mystery"');
  assertStringIncludes(mystery.message, "record");
  assertInstanceOf(number, TypeError);
  assertStringIncludes(number.message, "42");
  assertInstanceOf(badOp, TypeError);
  assertStringIncludes(badOp.message, 'whose "op" is 3');
  assertFalse(comm.closed);
});

Deno.test("Server.handleStream() reports stream handlers that throw or reject to onError", async () => {
  const log = errorLog();
  const seen: unknown[] = [];
  await using server = new Server({}, {
    onError: log.onError,
    streamHandlers: {
      throws: () => {
        throw new Error("thrown");
      },
      rejects: async () => {
        await delay(1);
        throw new Error("rejected");
      },
      record: ({ n }) => void seen.push(n),
    },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write([{ op: "throws" }, { op: "rejects" }, { op: "record", n: 1 }]);
  await log.nth(2);
  await until(() => seen.length === 1, "the stream message after the failures");
  assertEquals(log.errors.map((e) => (e as Error).message).sort(), ["rejected", "thrown"]);
});

Deno.test("Server.handleStream() merges extra under each message's fields", async () => {
  const seen: unknown[] = [];
  await using server = new Server({
    register: ({ client }, { comm, server }) =>
      server.handleStream(comm, { client, from: "register" }),
  }, {
    streamHandlers: { note: (message) => void seen.push(message) },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "register", client: "alice", reply: false });
  await comm.write({ op: "note", n: 1 });
  await comm.write([{ op: "note", n: 2, from: "the message" }]);
  await until(() => seen.length === 2, "two stream messages");
  assertEquals(seen, [
    { client: "alice", from: "register", n: 1 },
    { client: "alice", from: "the message", n: 2 },
  ]);
  await comm.write({ op: "close-stream" });
  await within(assertRejects(() => comm.read(), CommClosedError), "the comm to close");
});

Deno.test("Server.handleStream() over a comm the server did not accept ends when it closes", async () => {
  const seen: unknown[] = [];
  await using server = new Server({}, {
    streamHandlers: { note: ({ n }) => void seen.push(n) },
  });
  const [client, served] = pipe();
  const streaming = server.handleStream(served, { side: "pipe" });
  await client.write({ op: "note", n: 1 });
  await client.write([{ op: "note", n: 2 }]);
  await client.close();
  await within(streaming, "handleStream() to end");
  assertEquals(seen, [1, 2]);
  assert(served.closed);
});

Deno.test("Server.handleComm() works as the handler of a plain listener", async () => {
  await using server = new Server({ ping: () => "pong" });
  let accepted = 0;
  await using listener = await listen("inproc://", (comm) => {
    accepted++;
    return server.handleComm(comm);
  });
  for (let i = 0; i < 3; i++) {
    await using comm = await connect(listener.contactAddress);
    assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  }
  assertEquals(accepted, 3);
});

Deno.test("Server refuses a handler for the close operation, which it answers itself", () => {
  assertThrows(() => new Server({ close: () => "mine" }), TypeError, `"close"`);
});

Deno.test("Server replies with an error for a thrown value that cannot become a string", async () => {
  await using server = new Server({
    odd: () => {
      throw Object.create(null);
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  const error = await assertRejects(() => sendRecv(comm, { op: "odd" }), RemoteError);
  assertEquals(error.remoteName, "Error");
  assertEquals(error.remoteMessage, "[object Object]");
  assertEquals(await sendRecv(comm, { op: "echo", data: 1 }), 1);
});

Deno.test("Server handles every message a peer sent before closing its end", async () => {
  for (const address of ["inproc://", "tcp://127.0.0.1:0"]) {
    const seen: number[] = [];
    await using server = new Server({ note: ({ n }) => void seen.push(n) });
    await server.listen(address);
    const comm = await connect(server.address);
    for (let n = 0; n < 5; n++) await comm.write({ op: "note", n, reply: false });
    await comm.close();
    await until(() => seen.length === 5, `the server to handle all five notes over ${address}`);
    assertEquals(seen, [0, 1, 2, 3, 4]);
  }
});

Deno.test("Server treats any false reply (null included) as no reply, as dask does", async () => {
  const seen: unknown[] = [];
  await using server = new Server({ note: ({ n }) => void seen.push(n) });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "note", n: 1, reply: null });
  await comm.write({ op: "note", n: 2, reply: 0 });
  // The next reply is the echo's: nothing was written for the notes.
  assertEquals(await sendRecv(comm, { op: "echo", data: "next" }), "next");
  assertEquals(seen, [1, 2]);
});

Deno.test("Server.close() stops accepting before it waits for running handlers", async () => {
  const release = Promise.withResolvers<void>();
  const started = Promise.withResolvers<void>();
  await using server = new Server({
    hold: async () => {
      started.resolve();
      await release.promise;
      return "held";
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "hold" });
  await within(started.promise, "the handler to start");
  const closing = server.close();
  // Nothing listens any more, although a handler still runs.
  await assertRejects(() => connect(server.address, { timeout: 200 }), ConnectTimeoutError);
  release.resolve();
  assertEquals(await comm.read(), "held");
  await within(closing, "close()");
});

Deno.test("Server.close() aborts comms still busy after closeTimeout and reports handlers that ignore their signal", async () => {
  const log = errorLog();
  const release = Promise.withResolvers<void>();
  const server = new Server({
    stubborn: async () => {
      await release.promise;
      return "late";
    },
  }, { closeTimeout: 100, onError: log.onError });
  await server.listen("tcp://127.0.0.1:0");
  const comm = await connect(server.address);
  await comm.write({ op: "stubborn" });
  await delay(20);
  await within(server.close(), "close() past its closeTimeout");
  await assertRejects(() => comm.read(), CommClosedError);
  assertEquals(log.errors.length, 1);
  assertStringIncludes((log.errors[0] as Error).message, "handlers still running");
  release.resolve();
  await comm.close();
  await delay(10);
});

Deno.test("Server.close() does not hang on a peer that stops reading replies", async () => {
  const big = new Uint8Array(16 * 1024 * 1024);
  const server = new Server({ big: () => big }, { closeTimeout: 300, onError: () => {} });
  await server.listen("tcp://127.0.0.1:0");
  const comm = await connect(server.address);
  for (let i = 0; i < 16; i++) await comm.write({ op: "big" });
  await delay(50);
  await within(server.close(), "close() with replies the peer does not read");
  comm.abort();
  await comm.close();
});

Deno.test("Server.close() awaited by a stream handler does not wait for it", async () => {
  const server = new Server({}, {
    streamHandlers: {
      shutdown: async (_message, { server }) => {
        await server.close();
      },
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  await comm.write([{ op: "shutdown" }]);
  await until(() => server.closed, "the stream handler to call close()");
  await within(server.close(), "close() awaited by a stream handler");
});
