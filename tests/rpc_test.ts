// Remote calls: sendRecv() over a comm, the rpc() proxy, and dask's error
// reply, both as the Server sends it and as _error_reply.ts reads it back.
// Everything binds to loopback (127.0.0.1, port 0) or inproc; every wait is
// bounded by `until()` or `within()`, which only fail a case that hangs.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertNotStrictEquals,
  assertRejects,
  assertStrictEquals,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { delay } from "@std/async/delay";
import {
  CallTimeoutError,
  type Comm,
  CommClosedError,
  connect,
  ConnectTimeoutError,
  type HandlerContext,
  listen,
  pipe,
  RemoteError,
  rpc,
  sendRecv,
  Server,
} from "../mod.ts";
import { isErrorReply, parseErrorReply, pythonRepr, pythonUnrepr } from "../comm/_error_reply.ts";

/** A call timeout short enough to run out while a handler waits. */
const SHORT_MS = 30;

/** A handler that answers only once the server closes (it aborts the signal). */
const untilServerCloses = (_args: unknown, { signal }: HandlerContext) =>
  new Promise((resolve) => signal.addEventListener("abort", () => resolve("late"), { once: true }));

/**
 * A server whose comms are counted: `accepted` is how many comms reached it,
 * and `address` where to call it.
 */
async function countingServer(
  handlers: ConstructorParameters<typeof Server>[0],
  address = "inproc://",
) {
  const server = new Server(handlers);
  const counter = { accepted: 0 };
  const listener = await listen(address, (comm) => {
    counter.accepted++;
    return server.handleComm(comm);
  });
  return {
    server,
    counter,
    address: listener.contactAddress,
    async [Symbol.asyncDispose]() {
      await server.close();
      await listener.close();
    },
  };
}

// sendRecv()

Deno.test("sendRecv() adds reply: true to the message and resolves with the reply", async () => {
  const [client, peer] = pipe();
  const message = { op: "add", x: 1, y: 2 };
  const call = sendRecv(client, message);
  assertEquals(await peer.read(), { op: "add", x: 1, y: 2, reply: true });
  assertEquals(message, { op: "add", x: 1, y: 2 }, "the caller's message is left alone");
  await peer.write({ sum: 3 });
  assertEquals(await call, { sum: 3 });
  // A reply wanted explicitly is sent as it is.
  const explicit = sendRecv(client, { op: "ping", reply: true });
  assertEquals(await peer.read(), { op: "ping", reply: true });
  await peer.write("pong");
  assertEquals(await explicit, "pong");
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() calls a Server's handlers", async () => {
  await using server = new Server({ add: ({ x, y }) => x + y });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "add", x: 1, y: 2 }), 3);
  assertEquals(await sendRecv(comm, { op: "add", x: 40, y: 2 }), 42);
});

Deno.test("sendRecv() with reply: false resolves once written, reading nothing", async () => {
  const [client, peer] = pipe();
  assertStrictEquals(await sendRecv(client, { op: "note", n: 1, reply: false }), undefined);
  assertEquals(await peer.read(), { op: "note", n: 1, reply: false });
  // The comm is free for the next call at once.
  const next = sendRecv(client, { op: "ping" });
  assertEquals(await peer.read(), { op: "ping", reply: true });
  await peer.write("pong");
  assertEquals(await next, "pong");
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() with close: true closes the comm after the reply", async () => {
  const served: Comm[] = [];
  await using server = new Server({
    ping: (_args, { comm }) => {
      served.push(comm);
      return "pong";
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "ping", close: true }), "pong");
  assert(comm.closed);
  // The server closes its end too.
  await until(() => served[0].closed, "the server's end to close");
});

Deno.test({
  // dask's send_recv closes the comm in its `finally` either way.
  name: "sendRecv() with reply: false and close: true closes the comm, as dask's send_recv does",
  fn: async () => {
    await using server = new Server({ ping: () => "pong" });
    await server.listen("tcp://127.0.0.1:0");
    await using comm = await connect(server.address);
    assertStrictEquals(await sendRecv(comm, { op: "ping", reply: false, close: true }), undefined);
    assert(comm.closed);
  },
});

Deno.test("sendRecv() rejects with RemoteError on an error reply and leaves the comm usable", async () => {
  await using server = new Server({
    fail: ({ why }) => {
      throw new TypeError(why);
    },
    ping: () => "pong",
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  const error = await assertRejects(() => sendRecv(comm, { op: "fail", why: "boom" }), RemoteError);
  assertEquals(error.op, "fail");
  assertEquals(error.remoteName, "TypeError");
  assertEquals(error.remoteMessage, "boom");
  assertStringIncludes(error.message, comm.peerAddress);
  assertFalse(comm.closed);
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
  // With close: true, the comm is closed all the same.
  await assertRejects(() => sendRecv(comm, { op: "fail", why: "last", close: true }), RemoteError);
  assert(comm.closed);
});

Deno.test("RemoteError carries the remote error as its cause, stack included", async () => {
  await using server = new Server({
    fail: function failing() {
      throw new RangeError("out of range");
    },
  });
  await server.listen("inproc://");
  await using comm = await connect(server.address);
  const error = await assertRejects(() => sendRecv(comm, { op: "fail" }), RemoteError);
  assertEquals(error.name, "RemoteError");
  const cause = error.cause;
  assertInstanceOf(cause, Error);
  assertEquals(cause.name, "RangeError");
  assertEquals(cause.message, "out of range");
  assert(cause.stack.startsWith("RangeError: out of range\n"), cause.stack);
  assertStringIncludes(cause.stack, error.remoteStack);
  assertStringIncludes(error.remoteStack, "failing");
});

Deno.test("sendRecv() refuses a second call on a comm waiting for a reply with TypeError", async () => {
  const [client, peer] = pipe();
  const first = sendRecv(client, { op: "first" });
  await assertRejects(() => sendRecv(client, { op: "second" }), TypeError, "waiting for the reply");
  // The first call is unharmed, and nothing of the second was sent.
  assertEquals(await peer.read(), { op: "first", reply: true });
  await peer.write(1);
  assertEquals(await first, 1);
  assertFalse(await peer.poll());
  const third = sendRecv(client, { op: "third" });
  assertEquals(await peer.read(), { op: "third", reply: true });
  await peer.write(3);
  assertEquals(await third, 3);
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() refuses a message without a string op with TypeError", async () => {
  const [client, peer] = pipe();
  const bad = [{}, { op: 1 }, { op: null }, null, [], "ping"] as unknown as Record<
    string,
    unknown
  >[];
  for (const message of bad) {
    await assertRejects(() => sendRecv(client, message), TypeError, "op");
  }
  assertFalse(await peer.poll(), "nothing was sent");
  assertFalse(client.closed);
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() refuses a negative or NaN timeout with RangeError", async () => {
  const [client, peer] = pipe();
  await assertRejects(() => sendRecv(client, { op: "ping" }, { timeout: -1 }), RangeError);
  await assertRejects(() => sendRecv(client, { op: "ping" }, { timeout: NaN }), RangeError);
  assertFalse(await peer.poll(), "nothing was sent");
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() rejects with CallTimeoutError when the timeout runs out, aborting the comm", async () => {
  const [client, peer] = pipe();
  const rejected = assertRejects(
    () => sendRecv(client, { op: "silence" }, { timeout: SHORT_MS }),
    CallTimeoutError,
  );
  // The peer gets the message and never answers.
  assertEquals(await peer.read(), { op: "silence", reply: true });
  const error = await rejected;
  assertStringIncludes(error.message, '"silence"');
  assertStringIncludes(error.message, client.peerAddress);
  assert(client.closed);
  await assertRejects(() => peer.read(), CommClosedError);
  await peer.close();
});

Deno.test("sendRecv() times out against a Server whose handler is slow", async () => {
  await using server = new Server({ slow: untilServerCloses, ping: () => "pong" });
  await server.listen("tcp://127.0.0.1:0");
  {
    await using comm = await connect(server.address);
    await assertRejects(
      () => sendRecv(comm, { op: "slow" }, { timeout: SHORT_MS }),
      CallTimeoutError,
    );
    assert(comm.closed);
    await assertRejects(() => sendRecv(comm, { op: "ping" }), CommClosedError);
  }
  await using comm = await connect(server.address);
  assertEquals(await sendRecv(comm, { op: "ping" }, { timeout: HANG_GUARD_MS }), "pong");
});

Deno.test("sendRecv() rejects with the signal's reason when it aborts, aborting the comm", async () => {
  const [client, peer] = pipe();
  const controller = new AbortController();
  const reason = new Error("changed my mind");
  const call = sendRecv(client, { op: "wait" }, { signal: controller.signal });
  assertEquals(await peer.read(), { op: "wait", reply: true });
  controller.abort(reason);
  assertStrictEquals(await assertRejects(() => call), reason);
  assert(client.closed);
  await assertRejects(() => peer.read(), CommClosedError);
  await peer.close();
});

Deno.test("sendRecv() with an aborted signal rejects with its reason and sends nothing", async () => {
  const [client, peer] = pipe();
  const reason = new Error("too late");
  const error = await assertRejects(() =>
    sendRecv(client, { op: "wait" }, { signal: AbortSignal.abort(reason) })
  );
  assertStrictEquals(error, reason);
  assertFalse(await peer.poll(), "nothing was sent");
  await client.close();
  await peer.close();
});

Deno.test("sendRecv() rejects with CommClosedError when the comm breaks", async () => {
  {
    const [client, peer] = pipe();
    const call = sendRecv(client, { op: "wait" });
    await peer.read();
    peer.abort(new Error("gone"));
    await assertRejects(() => call, CommClosedError);
    assert(client.closed);
    await client.close();
  }
  {
    const [client, peer] = pipe();
    await client.close();
    await assertRejects(() => sendRecv(client, { op: "ping" }), CommClosedError);
    await peer.close();
  }
  await using server = new Server({ hangUp: (_args, { comm }) => comm.abort(new Error("bye")) });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await assertRejects(() => sendRecv(comm, { op: "hangUp" }), CommClosedError);
  assert(comm.closed);
});

Deno.test("sendRecv() rejects a message it cannot encode with TypeError, keeping the comm", async () => {
  await using server = new Server({ ping: () => "pong" });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  await assertRejects(() => sendRecv(comm, { op: "ping", bad: () => 1 }), TypeError);
  assertFalse(comm.closed);
  assertEquals(await sendRecv(comm, { op: "ping" }), "pong");
});

// rpc()

Deno.test("rpc() calls operations by property name with named arguments", async () => {
  await using server = new Server({
    add: ({ x, y }) => x + y,
    noArgs: (args) => Object.keys(args),
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  assertEquals(remote.address, server.address);
  assertEquals(await remote.add({ x: 1, y: 2 }), 3);
  assertEquals(await remote.noArgs(), []);
  assertEquals((await remote.identity()).id, server.id);
  assertStrictEquals(remote.add, remote.add);
});

Deno.test("rpc() rejects with RemoteError naming the op and the address", async () => {
  await using server = new Server({
    fail: () => {
      throw new RangeError("division by zero");
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  const error = await assertRejects(() => remote.fail(), RemoteError);
  assertEquals(error.op, "fail");
  assertEquals([error.remoteName, error.remoteMessage], ["RangeError", "division by zero"]);
  assertStringIncludes(error.message, '"fail"');
  assertStringIncludes(error.message, server.address);
  const unknown = await assertRejects(() => remote.nope(), RemoteError);
  assertEquals(unknown.remoteName, "UnknownOperationError");
});

Deno.test("rpc() gives a proxy that is not thenable: awaiting it calls nothing", async () => {
  await using served = await countingServer({ then: () => "then was called", ping: () => "pong" });
  const remote = rpc(served.address);
  try {
    assertStrictEquals(remote.then, undefined);
    assertStrictEquals(await remote, remote);
    assertStrictEquals(await Promise.resolve(remote), remote);
    // An async function may return it: that awaits it too.
    // deno-lint-ignore require-await
    const make = async () => remote;
    assertStrictEquals(await make(), remote);
    assertEquals(served.counter.accepted, 0);
    // The operation named "then" is reached through call().
    assertEquals(await remote.call("then"), "then was called");
    assertEquals(served.counter.accepted, 1);
  } finally {
    await remote.close();
  }
});

Deno.test("rpc() gives a proxy that turns into text and JSON without calling anything", async () => {
  await using served = await countingServer({
    toJSON: () => "toJSON was called",
    toString: () => "toString was called",
    valueOf: () => "valueOf was called",
    inspect: () => "inspect was called",
  });
  await using remote = rpc(served.address);
  assertEquals(String(remote), "[object Object]");
  assertEquals(`${remote}`, "[object Object]");
  assertEquals(JSON.parse(JSON.stringify(remote)), { address: served.address });
  assertStringIncludes(Deno.inspect(remote), served.address);
  assertEquals(served.counter.accepted, 0);
  assertEquals(await remote.call("toJSON"), "toJSON was called");
  assertEquals(await remote.call("toString"), "toString was called");
  assertEquals(await remote.call("valueOf"), "valueOf was called");
  assertEquals(await remote.inspect(), "inspect was called");
});

Deno.test("RpcHandle.call() reaches operations named like members of the proxy", async () => {
  await using server = new Server({
    call: ({ n }) => `call ${n}`,
    address: () => "the address op",
    constructor: () => "the constructor op",
    hasOwnProperty: () => "the hasOwnProperty op",
  });
  await server.listen("inproc://");
  await using remote = rpc(server.address);
  assertEquals(remote.address, server.address);
  assertEquals(await remote.call("call", { n: 1 }), "call 1");
  assertEquals(await remote.call("address"), "the address op");
  assertEquals(await remote.call("constructor"), "the constructor op");
  assertEquals(await remote.call("hasOwnProperty"), "the hasOwnProperty op");
  // "close" is the Server's own: it answers "OK" and closes that comm, which
  // the proxy then drops.
  assertEquals(await remote.call("close"), "OK");
  assertEquals(await remote.call("call", { n: 2 }), "call 2");
});

Deno.test("rpc() refuses arguments that are not an object with TypeError, sending nothing", async () => {
  await using served = await countingServer({ ping: () => "pong" });
  await using remote = rpc(served.address);
  for (const args of [1, "x", null, [1, 2], true]) {
    await assertRejects(
      () => remote.ping(args as unknown as Record<string, unknown>),
      TypeError,
      "named arguments",
    );
  }
  assertEquals(served.counter.accepted, 0);
  assertEquals(await remote.ping(), "pong");
});

Deno.test("rpc() reuses one comm for calls made one after another", async () => {
  const comms = new Set<Comm>();
  await using server = new Server({ whoami: (_args, { comm }) => void comms.add(comm) });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  for (let i = 0; i < 10; i++) await remote.whoami();
  assertEquals(comms.size, 1);
});

Deno.test("rpc() uses separate comms for concurrent calls", async () => {
  const concurrency = 5;
  const comms = new Set<Comm>();
  const allIn = Promise.withResolvers<void>();
  let entered = 0;
  await using server = new Server({
    meet: async (_args, { comm }) => {
      comms.add(comm);
      if (++entered === concurrency) allIn.resolve();
      // Every call waits for the others: only separate comms get them all in.
      await allIn.promise;
      return "met";
    },
    whoami: (_args, { comm }) => void comms.add(comm),
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  const replies = await within(
    Promise.all(Array.from({ length: concurrency }, () => remote.meet())),
    "the concurrent calls to meet",
  );
  assertEquals(replies, Array(concurrency).fill("met"));
  assertEquals(comms.size, concurrency);
  // Later calls reuse those comms.
  await remote.whoami();
  await remote.whoami();
  assertEquals(comms.size, concurrency);
});

Deno.test("rpc() does not reuse a comm the server closed between calls", async () => {
  const comms: Comm[] = [];
  await using server = new Server({ whoami: (_args, { comm }) => void comms.push(comm) });
  // Over inproc, a comm knows at once that its peer closed.
  await server.listen("inproc://");
  await using remote = rpc(server.address);
  await remote.whoami();
  await comms[0].close();
  await remote.whoami();
  assertEquals(comms.length, 2);
  assertNotStrictEquals(comms[1], comms[0]);
  await remote.whoami();
  assertStrictEquals(comms[2], comms[1]);
});

Deno.test("rpc() does not reuse a comm the server broke during a call", async () => {
  const comms: Comm[] = [];
  await using server = new Server({
    abortMine: (_args, { comm }) => comm.abort(new Error("hung up")),
    closeMine: (_args, { comm }) => comm.close(),
    whoami: (_args, { comm }) => void comms.push(comm),
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  for (const op of ["abortMine", "closeMine"]) {
    await remote.whoami();
    await assertRejects(() => remote.call(op), CommClosedError);
    await remote.whoami();
    const [before, after] = comms.slice(-2);
    assertNotStrictEquals(after, before, `${op}: a fresh comm`);
  }
});

Deno.test("rpc() applies callTimeout to every call unless the call sets a timeout", async () => {
  const release = Promise.withResolvers<string>();
  await using server = new Server({
    slow: untilServerCloses,
    gated: () => release.promise,
    ping: () => "pong",
  });
  await server.listen("tcp://127.0.0.1:0");
  {
    await using remote = rpc(server.address, { callTimeout: SHORT_MS });
    const error = await assertRejects(() => remote.slow(), CallTimeoutError);
    assertStringIncludes(error.message, '"slow"');
    // The timed-out comm is dropped: the next call gets a fresh one.
    assertEquals(await remote.ping(), "pong");
    // A call's own timeout wins over callTimeout.
    const gated = remote.gated({}, { timeout: Infinity });
    await delay(3 * SHORT_MS);
    release.resolve("released");
    assertEquals(await within(gated, "the gated call"), "released");
  }
  {
    await using remote = rpc(server.address);
    await assertRejects(() => remote.slow({}, { timeout: SHORT_MS }), CallTimeoutError);
    assertEquals(await remote.ping({}, { timeout: HANG_GUARD_MS }), "pong");
  }
  assertThrows(() => rpc(server.address, { callTimeout: -1 }), RangeError, "callTimeout");
});

Deno.test("rpc() calls reject with the signal's reason when it aborts", async () => {
  const started = Promise.withResolvers<void>();
  await using server = new Server({
    slow: (args, context) => {
      started.resolve();
      return untilServerCloses(args, context);
    },
    ping: () => "pong",
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  const controller = new AbortController();
  const reason = new Error("stop waiting");
  const call = remote.slow({}, { signal: controller.signal });
  await within(started.promise, "the handler to start");
  controller.abort(reason);
  assertStrictEquals(await assertRejects(() => call), reason);
  assertEquals(await remote.ping(), "pong");
});

Deno.test("rpc() calls to an address where nothing listens reject with CallTimeoutError", async () => {
  const listener = await listen("tcp://127.0.0.1:0");
  const address = listener.contactAddress;
  await listener.close();
  // Refused connections are retried until the connect timeout, or the call's
  // own, runs out.
  for (const options of [{ timeout: 100 }, { callTimeout: 100 }]) {
    await using remote = rpc(address, options);
    const error = await assertRejects(() => remote.ping(), CallTimeoutError);
    assertStringIncludes(error.message, '"ping"');
    assertInstanceOf(error.cause, ConnectTimeoutError);
  }
});

Deno.test("RpcHandle.close() closes the comms the proxy opened, and is idempotent", async () => {
  const comms = new Set<Comm>();
  const allIn = Promise.withResolvers<void>();
  await using server = new Server({
    meet: async (_args, { comm }) => {
      comms.add(comm);
      if (comms.size === 3) allIn.resolve();
      await allIn.promise;
    },
  });
  await server.listen("inproc://");
  const remote = rpc(server.address);
  await within(Promise.all([remote.meet(), remote.meet(), remote.meet()]), "three calls");
  assertEquals(comms.size, 3);
  assert([...comms].every((comm) => !comm.closed));
  await remote.close();
  assert([...comms].every((comm) => comm.closed), "the server's ends see the comms closed");
  await remote.close();
  await assertRejects(() => remote.meet(), CommClosedError);
});

Deno.test("RpcHandle.close() fails the calls still waiting for a reply with CommClosedError", async () => {
  const started = Promise.withResolvers<void>();
  await using server = new Server({
    slow: (args, context) => {
      started.resolve();
      return untilServerCloses(args, context);
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  const remote = rpc(server.address);
  const failed = assertRejects(() => remote.slow(), CommClosedError);
  await within(started.promise, "the handler to start");
  await remote.close();
  await failed;
});

Deno.test("rpc() closes its comms at the end of an await using block", async () => {
  const comms: Comm[] = [];
  await using server = new Server({ whoami: (_args, { comm }) => void comms.push(comm) });
  await server.listen("inproc://");
  {
    await using remote = rpc(server.address);
    await remote.whoami();
    assertFalse(comms[0].closed);
  }
  assert(comms[0].closed);
});

// The error reply, as the Server sends it

const ERROR_REPLY_KEYS = ["exception", "exception_text", "status", "traceback", "traceback_text"];

/** Reads a protocol-2 pickle of `module.name(argument)`, as the Server writes it. */
function readPickle(bytes: Uint8Array): { module: string; name: string; argument: string } {
  const text = new TextDecoder("utf-8", { fatal: true });
  assertEquals([bytes[0], bytes[1]], [0x80, 0x02], "PROTO 2");
  assertEquals(bytes[2], 0x63, "GLOBAL");
  const moduleEnd = bytes.indexOf(0x0a, 3);
  const nameEnd = bytes.indexOf(0x0a, moduleEnd + 1);
  assert(moduleEnd > 0 && nameEnd > moduleEnd, "GLOBAL's two lines");
  const module = text.decode(bytes.subarray(3, moduleEnd));
  const name = text.decode(bytes.subarray(moduleEnd + 1, nameEnd));
  let at = nameEnd + 1;
  assertEquals(bytes[at], 0x58, "BINUNICODE");
  const length = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0, true);
  at += 5;
  const argument = text.decode(bytes.subarray(at, at + length));
  at += length;
  assertEquals([...bytes.subarray(at)], [0x85, 0x52, 0x2e], "TUPLE1, REDUCE, STOP");
  return { module, name, argument };
}

function namedError(name: string, message: string): Error {
  const error = new Error(message);
  error.name = name;
  return error;
}

class ValueError extends Error {
  override name = "ValueError";
}

/** The raw error replies, over TCP, of a server that throws each of `errors` in turn. */
async function rawErrorReplies(errors: unknown[]): Promise<Record<string, unknown>[]> {
  await using server = new Server({
    fail: ({ i }) => {
      throw errors[i];
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using comm = await connect(server.address);
  const replies = [];
  for (let i = 0; i < errors.length; i++) {
    await comm.write({ op: "fail", i, reply: true });
    const reply = await within(comm.read(), `reply #${i}`);
    assert(typeof reply === "object" && reply !== null, Deno.inspect(reply));
    replies.push(reply as Record<string, unknown>);
  }
  return replies;
}

Deno.test("Server sends an error reply of dask's exact shape", async () => {
  const [reply] = await rawErrorReplies([new ValueError("boom")]);
  assertEquals(Object.keys(reply).sort(), ERROR_REPLY_KEYS);
  assertEquals(reply.status, "uncaught-error");
  assertStrictEquals(reply.traceback, null);
  assertEquals(reply.exception_text, "ValueError('boom')");
  const exception = reply.exception;
  assertInstanceOf(exception, Uint8Array);
  const bytes = exception as Uint8Array;
  assertEquals([bytes[0], bytes[1]], [0x80, 0x02]);
  assertStringIncludes(new TextDecoder().decode(bytes), "builtins\nValueError\n");
  assertEquals(readPickle(bytes), { module: "builtins", name: "ValueError", argument: "boom" });
  // The stack's frames, without V8's "ValueError: boom" header.
  const traceback = String(reply.traceback_text);
  assert(traceback.startsWith("    at "), traceback);
  assertFalse(traceback.includes("ValueError: boom"), traceback);
  assertStringIncludes(traceback, "rpc_test.ts");
  assert(isErrorReply(reply));
});

Deno.test("Server pickles builtin exceptions by name, a RangeError as ValueError, others as Exception", async () => {
  const cases: [unknown, { name: string; argument: string; text: string }][] = [
    [new TypeError("boom"), { name: "TypeError", argument: "boom", text: "TypeError('boom')" }],
    [new ValueError("bad"), { name: "ValueError", argument: "bad", text: "ValueError('bad')" }],
    [namedError("KeyError", "x"), { name: "KeyError", argument: "x", text: "KeyError('x')" }],
    [
      namedError("ZeroDivisionError", "division by zero"),
      {
        name: "ZeroDivisionError",
        argument: "division by zero",
        text: "ZeroDivisionError('division by zero')",
      },
    ],
    [
      namedError("TimeoutError", "too slow"),
      { name: "TimeoutError", argument: "too slow", text: "TimeoutError('too slow')" },
    ],
    [
      new RangeError("out of range"),
      { name: "ValueError", argument: "out of range", text: "RangeError('out of range')" },
    ],
    [
      namedError("Exception", "generic"),
      { name: "Exception", argument: "generic", text: "Exception('generic')" },
    ],
    [new Error("plain"), { name: "Exception", argument: "Error: plain", text: "Error('plain')" }],
    [
      new SyntaxError("no Python twin"),
      {
        name: "Exception",
        argument: "SyntaxError: no Python twin",
        text: "SyntaxError('no Python twin')",
      },
    ],
    [
      namedError("MyError", "custom"),
      { name: "Exception", argument: "MyError: custom", text: "MyError('custom')" },
    ],
    // Python's "stop" exceptions are left out on purpose.
    [
      namedError("SystemExit", "bye"),
      { name: "Exception", argument: "SystemExit: bye", text: "SystemExit('bye')" },
    ],
    [
      namedError("KeyboardInterrupt", "^C"),
      { name: "Exception", argument: "KeyboardInterrupt: ^C", text: "KeyboardInterrupt('^C')" },
    ],
    // What is thrown need not be an Error.
    ["a string", { name: "Exception", argument: "Error: a string", text: "Error('a string')" }],
    [42, { name: "Exception", argument: "Error: 42", text: "Error('42')" }],
    // Lengths are in UTF-8 bytes.
    [
      new TypeError("héllo 😀 ünïcode"),
      { name: "TypeError", argument: "héllo 😀 ünïcode", text: "TypeError('héllo 😀 ünïcode')" },
    ],
  ];
  const replies = await rawErrorReplies(cases.map(([error]) => error));
  for (const [i, [error, expected]] of cases.entries()) {
    const reply = replies[i];
    const what = Deno.inspect(error);
    assertEquals(Object.keys(reply).sort(), ERROR_REPLY_KEYS, what);
    assertEquals(
      readPickle(reply.exception as Uint8Array),
      { module: "builtins", name: expected.name, argument: expected.argument },
      what,
    );
    assertStringIncludes(
      new TextDecoder().decode(reply.exception as Uint8Array),
      `builtins\n${expected.name}\n`,
      what,
    );
    assertEquals(reply.exception_text, expected.text, what);
  }
});

Deno.test("Server writes exception_text as Python's repr(), quotes and escapes included", async () => {
  const cases: [string, string][] = [
    ["it's", `TypeError("it's")`],
    ['say "hi"', `TypeError('say "hi"')`],
    [`it's "both"`, `TypeError('it\\'s "both"')`],
    ["line one\nline two", "TypeError('line one\\nline two')"],
    ["tab\there\r\n", "TypeError('tab\\there\\r\\n')"],
    ["back\\slash", "TypeError('back\\\\slash')"],
    ["bell\x07 del\x7f nul\x00", "TypeError('bell\\x07 del\\x7f nul\\x00')"],
    ["", "TypeError('')"],
  ];
  const errors = cases.map(([message]) => new TypeError(message));
  const replies = await rawErrorReplies(errors);
  for (const [i, [message, text]] of cases.entries()) {
    assertEquals(replies[i].exception_text, text, JSON.stringify(message));
    assertEquals(readPickle(replies[i].exception as Uint8Array).argument, message);
  }
  // And rpc() reads each message back as it was.
  await using server = new Server({
    fail: ({ message }) => {
      throw new TypeError(message);
    },
  });
  await server.listen("tcp://127.0.0.1:0");
  await using remote = rpc(server.address);
  for (const [message] of cases) {
    const error = await assertRejects(() => remote.fail({ message }), RemoteError);
    assertEquals(error.remoteMessage, message);
    assertEquals(error.remoteName, "TypeError");
  }
});

Deno.test("Server's error reply leaves out the stack's header, even for a message of many lines", async () => {
  const [multiLine, renamed] = await rawErrorReplies([
    new Error("line one\nline two"),
    namedError("KeyError", "k"),
  ]);
  for (const reply of [multiLine, renamed]) {
    const traceback = String(reply.traceback_text);
    assert(traceback.startsWith("    at "), traceback);
    assertFalse(traceback.includes("line two"), traceback);
    assertFalse(traceback.includes("KeyError"), traceback);
  }
});

Deno.test("Server's error reply cuts messages over 10,000 characters", async () => {
  const long = "x".repeat(20_000);
  const [reply] = await rawErrorReplies([new TypeError(long)]);
  const cut = `${"x".repeat(10_000)}...`;
  assertEquals(readPickle(reply.exception as Uint8Array).argument, cut);
  assertEquals(reply.exception_text, `TypeError('${cut}')`);
  assertEquals(parseErrorReply(reply).message, cut);
});

/** python3 with pickle, if there is one (tests that need it are skipped otherwise). */
const PYTHON = (() => {
  try {
    const { success } = new Deno.Command("python3", {
      args: ["-c", "import pickle"],
      stdout: "null",
      stderr: "null",
    }).outputSync();
    return success ? "python3" : undefined;
  } catch {
    return undefined;
  }
})();

const PYTHON_LOADS = `
import base64, json, pickle, sys
out = []
for item in json.load(sys.stdin):
    exc = pickle.loads(base64.b64decode(item))
    out.append([type(exc).__module__, type(exc).__name__, list(exc.args), repr(exc),
                isinstance(exc, Exception)])
print(json.dumps(out))
`;
import { HANG_GUARD_MS, until, within } from "./_wait.ts";

Deno.test({
  name: "Server's error reply unpickles in Python as the builtin exception, repr and all",
  ignore: PYTHON === undefined,
  fn: async () => {
    const errors = [
      new TypeError("boom"),
      new ValueError(`it's "quoted"\nand \\ more`),
      namedError("KeyError", "x"),
      new RangeError("out of range"),
      namedError("MyError", "custom"),
      new TypeError("héllo 😀"),
    ];
    const replies = await rawErrorReplies(errors);
    const pickles = replies.map((reply) => {
      const bytes = reply.exception as Uint8Array;
      return btoa(String.fromCharCode(...bytes));
    });
    const child = new Deno.Command(PYTHON!, {
      args: ["-c", PYTHON_LOADS],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(JSON.stringify(pickles)));
    await writer.close();
    const { success, stdout, stderr } = await within(child.output(), "python3");
    assert(success, new TextDecoder().decode(stderr));
    const loaded = JSON.parse(new TextDecoder().decode(stdout));
    assertEquals(loaded, [
      ["builtins", "TypeError", ["boom"], "TypeError('boom')", true],
      [
        "builtins",
        "ValueError",
        [`it's "quoted"\nand \\ more`],
        `ValueError('it\\'s "quoted"\\nand \\\\ more')`,
        true,
      ],
      ["builtins", "KeyError", ["x"], "KeyError('x')", true],
      ["builtins", "ValueError", ["out of range"], "ValueError('out of range')", true],
      ["builtins", "Exception", ["MyError: custom"], "Exception('MyError: custom')", true],
      ["builtins", "TypeError", ["héllo 😀"], "TypeError('héllo 😀')", true],
    ]);
    // Where the Python class is the error's own, exception_text is Python's repr().
    for (const i of [0, 1, 2, 5]) assertEquals(replies[i].exception_text, loaded[i][3]);
  },
});

// _error_reply.ts

Deno.test("pythonRepr() quotes a string as Python's repr() does", () => {
  const cases: [string, string][] = [
    ["boom", "'boom'"],
    ["", "''"],
    ["it's", `"it's"`],
    ['say "hi"', `'say "hi"'`],
    [`it's "both"`, `'it\\'s "both"'`],
    ["a\nb\rc\td", "'a\\nb\\rc\\td'"],
    ["back\\slash", "'back\\\\slash'"],
    ["\x00\x1f\x7f", "'\\x00\\x1f\\x7f'"],
    ["é ü 😀 中文", "'é ü 😀 中文'"],
    ["\ud800 lone", "'\\ud800 lone'"],
    ["lone \udfff", "'lone \\udfff'"],
  ];
  for (const [text, repr] of cases) assertEquals(pythonRepr(text), repr, JSON.stringify(text));
});

Deno.test({
  // Python's repr() escapes every character str.isprintable() refuses
  // (categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs other than the space), such
  // as U+00A0 or the U+202F that Intl.NumberFormat("fr-FR") puts in numbers.
  name: "pythonRepr() escapes the characters Python's repr() does not print",
  fn: () => {
    const cases: [string, string][] = [
      ["\x85", "'\\x85'"],
      ["\xa0", "'\\xa0'"],
      ["\xad", "'\\xad'"],
      ["1\u202f234", "'1\\u202f234'"],
      ["\u2028", "'\\u2028'"],
      ["\ufeff", "'\\ufeff'"],
      ["\u3000", "'\\u3000'"],
      ["\u{e0001}", "'\\U000e0001'"],
    ];
    for (const [text, repr] of cases) assertEquals(pythonRepr(text), repr, JSON.stringify(text));
  },
});

Deno.test("pythonUnrepr() reads back what pythonRepr() writes", () => {
  const texts = [
    "boom",
    "",
    "it's",
    'say "hi"',
    `it's "both" \\ done`,
    "a\nb\rc\td\x00\x07\x1b\x7f",
    "é ü 😀 中文 \u2028 \xa0",
    "\ud800 and \udfff alone",
    "'",
    '"',
    "\\",
  ];
  for (const text of texts) {
    assertEquals(pythonUnrepr(pythonRepr(text)), text, JSON.stringify(text));
  }
});

Deno.test("pythonUnrepr() reads Python's escapes", () => {
  assertEquals(pythonUnrepr("'\\x41\\u00e9\\U0001F600'"), "Aé😀");
  assertEquals(pythonUnrepr("'\\a\\b\\f\\v\\0'"), "\x07\b\f\v\0");
  assertEquals(pythonUnrepr(`"it's"`), "it's");
  assertEquals(pythonUnrepr(`'say \\"hi\\"'`), 'say "hi"');
});

Deno.test("pythonUnrepr() returns undefined for text that is not exactly one string literal", () => {
  const notOne = [
    "",
    "'",
    "boom",
    "2",
    "2, 'No such file'",
    "'a', 'b'",
    "'a' 'b'",
    `'mismatched"`,
    "'\\q'",
    "'\\x4'",
    "'\\xzz'",
    "'\\u12'",
    "'\\U00110000'",
    "b'bytes'",
  ];
  for (const text of notOne) assertStrictEquals(pythonUnrepr(text), undefined, text);
});

Deno.test({
  // A backslash before the closing quote escapes it: "'abc\\'" is an
  // unterminated literal.
  name: "pythonUnrepr() refuses a literal whose closing quote is escaped",
  fn: () => {
    assertStrictEquals(pythonUnrepr("'abc\\'"), undefined);
    assertStrictEquals(pythonUnrepr('"\\"'), undefined);
  },
});

Deno.test("parseErrorReply() reads the name and message from dask's exception_text", () => {
  const reply = (exception_text: unknown, traceback_text: unknown = "  File ...") => ({
    status: "uncaught-error",
    exception: new Uint8Array([0x80, 0x02]),
    traceback: null,
    exception_text,
    traceback_text,
  });
  const cases: [string, string, string][] = [
    ["ValueError('boom')", "ValueError", "boom"],
    ["KeyError('x')", "KeyError", "x"],
    ["ZeroDivisionError('division by zero')", "ZeroDivisionError", "division by zero"],
    [`Exception("it's")`, "Exception", "it's"],
    [`TypeError('it\\'s "both"\\nnext')`, "TypeError", `it's "both"\nnext`],
    ["ValueError()", "ValueError", ""],
    // Several arguments: the message is their text as it is.
    ["OSError(2, 'No such file')", "OSError", "2, 'No such file'"],
    ["KeyError(1)", "KeyError", "1"],
    [
      "distributed.comm.core.CommClosedError('in <TCP>: Stream is closed')",
      "distributed.comm.core.CommClosedError",
      "in <TCP>: Stream is closed",
    ],
    // Not a call at all: an Exception whose message is the whole text.
    ["something went wrong", "Exception", "something went wrong"],
    ["ValueError('unclosed'", "Exception", "ValueError('unclosed'"],
  ];
  for (const [text, name, message] of cases) {
    assertEquals(parseErrorReply(reply(text)), { name, message, stack: "  File ..." }, text);
  }
  assertEquals(parseErrorReply(reply("ValueError('x')", null)).stack, "");
  assertEquals(parseErrorReply(reply("ValueError('x')", 12)).stack, "");
});

Deno.test("parseErrorReply() falls back to a string exception, then to a placeholder", () => {
  assertEquals(
    parseErrorReply({ status: "uncaught-error", exception: "it failed", traceback_text: "tb" }),
    { name: "Exception", message: "it failed", stack: "tb" },
  );
  const bare = parseErrorReply({ status: "uncaught-error" });
  assertEquals(bare.name, "Exception");
  assertStringIncludes(bare.message, "no description");
  assertEquals(bare.stack, "");
});

Deno.test("isErrorReply() tells dask's error replies from other replies", () => {
  assert(isErrorReply({ status: "uncaught-error" }));
  for (const reply of [null, "uncaught-error", [], { status: "OK" }, { status: "error" }, 1]) {
    assertFalse(isErrorReply(reply), Deno.inspect(reply));
  }
});

Deno.test("rpc() passes reply: false through and resolves once the message is written", async () => {
  const seen: unknown[] = [];
  await using server = new Server({ note: ({ n }) => void seen.push(n) });
  await server.listen("inproc://");
  await using remote = rpc(server.address);
  assertStrictEquals(await remote.note({ n: 1, reply: false }), undefined);
  // The next call on the same comm gets its own reply, not a stray one.
  assertEquals(await remote.echo({ data: "after" }), "after");
  assertEquals(seen, [1]);
});

Deno.test("rpc() calls after close() reject, naming the proxy", async () => {
  await using server = new Server({});
  await server.listen("inproc://");
  const remote = rpc(server.address);
  await remote.close();
  await assertRejects(() => remote.identity(), CommClosedError, "this rpc() proxy is closed");
});
