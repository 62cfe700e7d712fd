// What only the ws and wss backends do, beyond the conformance suite: the
// wire layouts as a raw WebSocket peer sees them, misbehaving peers, the
// HTTP side of the listener, and addresses with a path. Raw peers are the
// standard WebSocket class and Deno.serve with Deno.upgradeWebSocket.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { decode, encode } from "@msgpack/msgpack";
import {
  AddressError,
  type Comm,
  CommClosedError,
  connect,
  ConnectError,
  ConnectTimeoutError,
  getAddressHost,
  getAddressHostPort,
  listen,
  type Listener,
  type ListenOptions,
  ProtocolError,
  resolveAddress,
} from "../mod.ts";
import { until, within } from "./_wait.ts";
import { SERVER_CERT, SERVER_KEY } from "./_certs.ts";

const MiB = 1024 * 1024;

/** dask's handshake, the first message each side sends. */
const HANDSHAKE_INFO = { compression: null, python: [3, 11, 0], "pickle-protocol": 5 };
const HANDSHAKE = encode(HANDSHAKE_INFO);

/** Checks that `frames` are one message holding the handshake. */
function assertHandshake(frames: Uint8Array[], what = "the handshake"): void {
  assertEquals(frames.map((frame) => decode(frame)), [HANDSHAKE_INFO], what);
}

const echo = async (comm: Comm) => {
  for await (const message of comm) await comm.write(message);
};

// -- Raw peers ------------------------------------------------------------------

/** A raw WebSocket end: what it received, in order, and how it closed. */
class RawPeer {
  readonly messages: (string | Uint8Array)[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #taken = 0;

  constructor(readonly socket: WebSocket) {
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => {
      const data = event.data;
      this.messages.push(typeof data === "string" ? data : new Uint8Array(data));
    });
    this.opened = new Promise((resolve) => socket.addEventListener("open", () => resolve()));
    this.closed = new Promise((resolve) => socket.addEventListener("close", resolve));
  }

  static client(url: string, protocols?: string[]): RawPeer {
    return new RawPeer(protocols ? new WebSocket(url, protocols) : new WebSocket(url));
  }

  /** The next message not taken yet. */
  async next(): Promise<string | Uint8Array> {
    await until(() => this.messages.length > this.#taken, "a WebSocket message");
    return this.messages[this.#taken++];
  }

  async nextBinary(): Promise<Uint8Array> {
    const message = await this.next();
    if (typeof message === "string") throw new Error(`expected a binary message, got "${message}"`);
    return message;
  }

  send(data: string | Uint8Array): void {
    this.socket.send(data);
  }

  /** Sends one message in the x-comm layout: dask's tcp framing in one WebSocket message. */
  sendFramed(frames: Uint8Array[]): void {
    this.send(tcpFramed(frames));
  }

  /** Reads one message in the x-comm layout. */
  async readFramed(): Promise<Uint8Array[]> {
    return framesOf(await this.nextBinary());
  }

  /** Sends one message in dask's layout: the frame count, then each frame. */
  sendDask(frames: Uint8Array[]): void {
    const count = new Uint8Array(8);
    new DataView(count.buffer).setBigUint64(0, BigInt(frames.length), true);
    this.send(count);
    for (const frame of frames) this.send(frame);
  }

  /** Reads one message in dask's layout. */
  async readDask(): Promise<Uint8Array[]> {
    const count = await this.nextBinary();
    assertEquals(count.length, 8, "a frame count is 8 bytes");
    const frames = [];
    for (let i = new DataView(count.buffer).getBigUint64(0, true); i > 0; i--) {
      frames.push(await this.nextBinary());
    }
    return frames;
  }

  async close(code?: number, reason?: string): Promise<CloseEvent> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close(code, reason);
    return await within(this.closed, "the raw WebSocket to close");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A raw WebSocket server on 127.0.0.1, picking `protocol` if given. */
class RawServer {
  readonly url: string;
  readonly peers: RawPeer[] = [];
  #server: Deno.HttpServer<Deno.NetAddr>;
  #accepted = 0;

  constructor(protocol?: string) {
    this.#server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
      const { socket, response } = Deno.upgradeWebSocket(request, protocol ? { protocol } : {});
      this.peers.push(new RawPeer(socket));
      return response;
    });
    this.url = `ws://127.0.0.1:${this.#server.addr.port}`;
  }

  async accept(): Promise<RawPeer> {
    await until(() => this.peers.length > this.#accepted, "a raw WebSocket to be accepted");
    const peer = this.peers[this.#accepted++];
    await within(peer.opened, "the raw WebSocket to open");
    return peer;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const peer of this.peers) await peer.close();
    await this.#server.shutdown();
  }
}

/** `connect()` run beside a raw server's side of the opening (hello and handshake). */
async function connectBeside(
  connecting: Promise<Comm>,
  serve: () => Promise<void>,
): Promise<Comm> {
  const [comm] = await Promise.all([within(connecting, "connect()"), serve()]);
  return comm;
}

/** The raw server's side of the dask-layout opening: a handshake each way. */
async function daskOpening(peer: RawPeer): Promise<void> {
  assertHandshake(await peer.readDask());
  peer.sendDask([HANDSHAKE]);
}

/** A raw x-comm client that took the hello and did the handshake with a listener. */
async function xcommClient(listener: Listener): Promise<{ peer: RawPeer; hello: string }> {
  const peer = RawPeer.client(listener.contactAddress, ["x-comm"]);
  const hello = await peer.next();
  assertEquals(typeof hello, "string", "the listener speaks first, in text");
  assertEquals(peer.socket.protocol, "x-comm");
  peer.sendFramed([HANDSHAKE]);
  assertHandshake(await peer.readFramed());
  return { peer, hello: hello as string };
}

/** Frames in dask's tcp framing: u64 total, u64 count, u64 per length, the frames. */
function tcpFramed(frames: Uint8Array[]): Uint8Array {
  const head = 16 + 8 * frames.length;
  const size = frames.reduce((sum, frame) => sum + frame.length, head);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(size - 8), true);
  view.setBigUint64(8, BigInt(frames.length), true);
  let at = head;
  frames.forEach((frame, i) => {
    view.setBigUint64(16 + 8 * i, BigInt(frame.length), true);
    bytes.set(frame, at);
    at += frame.length;
  });
  return bytes;
}

/** The frames of one WebSocket message in the x-comm layout; it must hold exactly one message. */
function framesOf(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assertEquals(Number(view.getBigUint64(0, true)), bytes.length - 8, "the header's total");
  const count = Number(view.getBigUint64(8, true));
  const frames = [];
  let at = 16 + 8 * count;
  for (let i = 0; i < count; i++) {
    const length = Number(view.getBigUint64(16 + 8 * i, true));
    frames.push(bytes.subarray(at, at + length));
    at += length;
  }
  assertEquals(at, bytes.length, "one WebSocket message holds exactly one comm message");
  return frames;
}

/** The http:// form of a ws:// address, at `path`. */
function httpUrl(listener: Listener, path: string): string {
  const [host, port] = getAddressHostPort(listener.contactAddress);
  return `http://${host}:${port}${path}`;
}

// -- The wire layouts ---------------------------------------------------------------

Deno.test("listen() on ws:// sends an x-comm client its hello first, then each message as one binary WebSocket message", async () => {
  const binary = new Uint8Array(1024 * 1024).map((_, i) => i % 251);
  const sent = ["small", { op: "x", data: [1, 2, 3] }, binary, "y".repeat(100_000), null];
  const serverPeer = Promise.withResolvers<string>();
  await using listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
    serverPeer.resolve(comm.peerAddress);
    for (const message of sent) await comm.write(message);
  });
  const { peer, hello } = await xcommClient(listener);
  await using _peer = peer;
  assertEquals(JSON.parse(hello), { peer: await serverPeer.promise });
  // The handler returned: the listener closes the comm, after what it wrote.
  assertEquals((await within(peer.closed, "the listener to close")).code, 1000);
  const received = peer.messages.slice(2);
  assertEquals(received.length, sent.length, "one WebSocket message per comm message");
  for (const [i, message] of received.entries()) {
    if (typeof message === "string") throw new Error(`a text message: "${message}"`);
    const frames = framesOf(message);
    if (sent[i] instanceof Uint8Array) {
      assertEquals(frames.length, 3, "body, sub-header, and the binary as a frame of its own");
      assertEquals(frames[2], binary);
    } else {
      assertEquals(frames.length, 1);
      assertEquals(decode(frames[0]), sent[i]);
    }
  }
});

Deno.test("listen() on ws:// serves a client speaking dask's layout without a subprotocol", async () => {
  await using listener = await listen("ws://127.0.0.1:0/comm", echo);
  await using peer = RawPeer.client(listener.contactAddress);
  await within(peer.opened, "the raw WebSocket to open");
  peer.sendDask([HANDSHAKE]);
  assertHandshake(await peer.readDask(), "no hello, and the handshake in dask's layout");
  assertEquals(peer.socket.protocol, "");
  for (const message of [{ op: "ping", n: 1 }, "two", [3]]) {
    peer.sendDask([encode(message)]);
    const frames = await peer.readDask();
    assertEquals(frames.length, 1);
    assertEquals(decode(frames[0]), message);
  }
});

Deno.test("connect() to a ws:// server speaking dask's layout carries messages with localAddress unknown", async () => {
  await using server = new RawServer();
  await using comm = await connectBeside(connect(server.url), async () => {
    await daskOpening(await server.accept());
  });
  assertEquals(comm.localAddress, "ws://0.0.0.0:0", "a WebSocket does not tell its own address");
  assertEquals(comm.peerAddress, server.url);
  const peer = server.peers[0];
  await comm.write({ n: 41 });
  assertEquals((await peer.readDask()).map((frame) => decode(frame)), [{ n: 41 }]);
  peer.sendDask([encode({ n: 42 })]);
  assertEquals(await within(comm.read(), "a message"), { n: 42 });
});

Deno.test("connect() to an x-comm ws:// server takes its localAddress from the hello", async () => {
  await using server = new RawServer("x-comm");
  await using comm = await connectBeside(connect(server.url), async () => {
    const peer = await server.accept();
    peer.send(JSON.stringify({ peer: "ws://127.0.0.1:5555" }));
    assertHandshake(await peer.readFramed());
    peer.sendFramed([HANDSHAKE]);
  });
  assertEquals(comm.localAddress, "ws://127.0.0.1:5555");
  await comm.write("x");
  assertEquals(decode((await server.peers[0].readFramed())[0]), "x");
});

// -- Misbehaving peers -------------------------------------------------------------

/** Whether a handler may read yet. */
interface Gate {
  open: boolean;
}

/** Waits until `gate` is open or `comm` closed (as when its listener closes), at most a while. */
async function opening(gate: Gate, comm: Comm): Promise<void> {
  await until(() => gate.open || comm.closed, "the test to let the handler read").catch(() => {});
}

/**
 * A listener whose handler, once `gate` is open, reads with `for await` and
 * reports how that ended: the error, or "ended quietly". `read` gets the
 * messages it read.
 */
async function failingReads(
  options: ListenOptions = {},
  gate: Gate = { open: true },
): Promise<{ listener: Listener; failure: Promise<unknown>; read: unknown[] }> {
  const failure = Promise.withResolvers<unknown>();
  const read: unknown[] = [];
  const listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
    await opening(gate, comm);
    try {
      for await (const message of comm) read.push(message);
      failure.resolve("ended quietly");
    } catch (error) {
      failure.resolve(error);
    }
  }, options);
  const ended = within(failure.promise, "the handler's reading to end");
  ended.catch(() => {}); // Reported where a test awaits it.
  return { listener, failure: ended, read };
}

/** A 16-byte x-comm header announcing 2**40 frames. */
function hugeHeader(): Uint8Array {
  const header = new Uint8Array(16);
  new DataView(header.buffer).setBigUint64(0, 8n + 8n * 2n ** 40n, true);
  new DataView(header.buffer).setBigUint64(8, 2n ** 40n, true);
  return header;
}

/**
 * connect() to a raw server (picking `protocol`, if given); once the comm
 * is open and reading, the server does `misbehave`, and `check` gets how
 * the pending read failed and the server's end.
 */
async function serverMisbehaves(
  protocol: "x-comm" | undefined,
  misbehave: (peer: RawPeer) => unknown,
  check: (error: Error, peer: RawPeer) => void | Promise<void>,
): Promise<void> {
  await using server = new RawServer(protocol);
  await using comm = await connectBeside(connect(server.url), async () => {
    const peer = await server.accept();
    if (protocol === undefined) return await daskOpening(peer);
    peer.send(JSON.stringify({ peer: "ws://127.0.0.1:5555" }));
    assertHandshake(await peer.readFramed());
    peer.sendFramed([HANDSHAKE]);
  });
  const reading = within(comm.read(), "the read to fail");
  reading.catch(() => {});
  await misbehave(server.peers[0]);
  await check(await assertRejects(() => reading, CommClosedError), server.peers[0]);
}

Deno.test("listen() on ws:// closes a peer that sends a text message with code 1003", async () => {
  const { listener, failure } = await failingReads();
  await using _listener = listener;
  const { peer } = await xcommClient(listener);
  await using _peer = peer;
  peer.send("not binary");
  const error = await failure;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "text");
  const closed = await within(peer.closed, "the listener to close");
  assertEquals(closed.code, 1003);
  assertStringIncludes(closed.reason, "text");
});

Deno.test("listen() on ws:// closes an x-comm peer announcing 2**40 frames with code 1002", async () => {
  const { listener, failure } = await failingReads();
  await using _listener = listener;
  const { peer } = await xcommClient(listener);
  await using _peer = peer;
  peer.send(hugeHeader());
  assertInstanceOf(await failure, ProtocolError);
  const closed = await within(peer.closed, "the listener to close");
  assertEquals(closed.code, 1002);
  assert(closed.reason.length > 0, "the close gives a reason");
});

Deno.test("listen() on ws:// closes a dask-layout peer whose frame count is not 8 bytes with code 1002", async () => {
  const { listener, failure } = await failingReads();
  await using _listener = listener;
  await using peer = RawPeer.client(listener.contactAddress);
  await within(peer.opened, "the raw WebSocket to open");
  peer.sendDask([HANDSHAKE]);
  assertHandshake(await peer.readDask());
  peer.send(new Uint8Array(5));
  const error = await failure;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "8-byte frame count");
  const closed = await within(peer.closed, "the listener to close");
  assertEquals(closed.code, 1002);
  assert(closed.reason.length > 0, "the close gives a reason");
});

Deno.test("connect() over ws:// ends the comm with ProtocolError when the server sends a text message", async () => {
  await serverMisbehaves(undefined, (peer) => peer.send("not binary"), (error) => {
    assertInstanceOf(error, ProtocolError);
    assertStringIncludes(error.message, "text");
  });
});

Deno.test("connect() over ws:// ends the comm with ProtocolError when an x-comm server announces 2**40 frames", async () => {
  await serverMisbehaves("x-comm", (peer) => peer.send(hugeHeader()), (error) => {
    assertInstanceOf(error, ProtocolError);
  });
});

// The standard WebSocket (a client's) may not send 1002 or 1003: it closes
// with 4003 and 4002 instead, and the same reason.
Deno.test("connect() over ws:// closes the socket to a server that sent a text message with code 4003", async () => {
  await serverMisbehaves(undefined, (peer) => peer.send("not binary"), async (_, peer) => {
    const closed = await within(peer.closed, "our end to close the socket");
    assertEquals(closed.code, 4003);
    assertStringIncludes(closed.reason, "text");
  });
});

Deno.test("connect() over ws:// closes the socket to an x-comm server that announced 2**40 frames with code 4002", async () => {
  await serverMisbehaves("x-comm", (peer) => peer.send(hugeHeader()), async (_, peer) => {
    const closed = await within(peer.closed, "our end to close the socket");
    assertEquals(closed.code, 4002);
    assert(closed.reason.length > 0, "the close gives a reason");
  });
});

Deno.test("Comm.read() over ws:// rejects with CommClosedError naming the code and reason of a peer's close", async () => {
  await serverMisbehaves(undefined, (peer) => peer.close(1011, "overloaded"), (error) => {
    assertFalse(error instanceof ProtocolError, error.message);
    assertStringIncludes(error.message, "1011");
    assertStringIncludes(error.message, "overloaded");
  });
});

Deno.test("Comm.read() over ws:// rejects with CommClosedError naming the frames when a dask-layout peer closes inside a message", async () => {
  const { listener, failure, read } = await failingReads();
  await using _listener = listener;
  await using peer = RawPeer.client(listener.contactAddress);
  await within(peer.opened, "the raw WebSocket to open");
  peer.sendDask([HANDSHAKE]);
  assertHandshake(await peer.readDask());
  peer.sendDask([encode("whole")]);
  // A frame count of 2, one frame, and an orderly close.
  const count = new Uint8Array(8);
  new DataView(count.buffer).setBigUint64(0, 2n, true);
  peer.send(count);
  peer.send(encode({ op: "first of two frames" }));
  assertEquals((await peer.close(1000)).code, 1000);
  const error = await failure;
  assertInstanceOf(error, CommClosedError, "not a quiet end");
  assertStringIncludes((error as Error).message, "frames");
  assertEquals(read, ["whole"]);
});

// -- Flow control --------------------------------------------------------------------

/** Waits until `count()` is above 0 and the same over 50 polls in a row; returns it. */
async function settled(count: () => number, what: string): Promise<number> {
  let last = -1;
  let same = 0;
  await until(() => {
    const now = count();
    same = now === last ? same + 1 : 0;
    last = now;
    return now > 0 && same >= 50;
  }, what);
  return last;
}

/**
 * Sends `messages` over and over, ignoring what the listener says, until
 * it closes the socket or `maxBytes` went; resolves with the close. It
 * waits for the socket to send what it holds each time: a connection that
 * still has much coming in when the listener closes it is often dropped
 * instead (see assertPolicyClose()).
 */
async function flood(peer: RawPeer, messages: Uint8Array[], maxBytes: number): Promise<CloseEvent> {
  const { socket } = peer;
  for (let sent = 0; socket.readyState === WebSocket.OPEN && sent < maxBytes;) {
    for (const message of messages) socket.send(message);
    sent += messages.reduce((sum, message) => sum + message.length, 0);
    await until(
      () => socket.bufferedAmount === 0 || socket.readyState !== WebSocket.OPEN,
      "the raw WebSocket to send what it holds",
    );
  }
  return await within(peer.closed, "the listener to close the flooding socket");
}

/**
 * Checks that the listener closed a flooding peer with 1008. Deno drops a
 * connection that still has bytes coming in when it closes, now and then,
 * rather than finish the closing handshake: the peer then sees an unclean
 * close with no code.
 */
function assertPolicyClose(closed: CloseEvent, reason: string): void {
  if (closed.wasClean) {
    assertEquals(closed.code, 1008);
    assertStringIncludes(closed.reason, reason);
  } else {
    assert([0, 1006].includes(closed.code), `an unclean close with code ${closed.code}`);
  }
}

Deno.test("Comm.write() over ws:// stops resolving while the peer's comm reads nothing, then delivers everything in order", async () => {
  const total = 40;
  const gate = { open: false };
  const received: unknown[] = [];
  await using listener = await listen("ws://127.0.0.1:0", async (comm) => {
    await opening(gate, comm);
    while (received.length < total) received.push(await comm.read());
    // Until the client closes: a write still waiting on a closed comm rejects.
    await comm.read().catch(() => {});
  });
  await using comm = await connect(listener.contactAddress);
  let resolved = 0;
  const writing = (async () => {
    for (let i = 0; i < total; i++) {
      await comm.write(new Uint8Array(MiB).fill(i));
      resolved++;
    }
  })();
  writing.catch(() => {});
  try {
    const stalled = await settled(() => resolved, "the writes to stall");
    assert(stalled < 32, `${stalled} writes of 1 MiB resolved while the peer read nothing`);
    gate.open = true;
    await within(writing, "the writes to go on once the peer reads");
  } finally {
    // close() would wait for what is queued.
    if (resolved < total) comm.abort();
  }
  await until(() => received.length === total, "the peer to read every message");
  received.forEach((message, i) => {
    assertInstanceOf(message, Uint8Array);
    const bytes = message as Uint8Array;
    assert(bytes.length === MiB && bytes.every((byte) => byte === i), `message #${i}`);
  });
});

Deno.test("listen() on ws:// closes an x-comm peer that ignores flow control with code 1008 and ProtocolError", async () => {
  const gate = { open: false };
  const { listener, failure } = await failingReads({}, gate);
  await using _listener = listener;
  const { peer } = await xcommClient(listener);
  await using _peer = peer;
  // The handler reads nothing; the raw peer sends on, credit or not. The
  // listener holds 8 MiB + 64 MiB unread, and its comm reads about 8 MiB
  // ahead: 88 MiB is enough.
  const closed = await flood(peer, [tcpFramed([encode(new Uint8Array(MiB))])], 88 * MiB);
  assertPolicyClose(closed, "flow control");
  gate.open = true;
  const error = await failure;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "flow control");
});

Deno.test("listen() on ws:// closes a dask-layout peer with over maxMessageSize + 64 MiB unread with code 1008 and ProtocolError", async () => {
  const gate = { open: false };
  const { listener, failure } = await failingReads({ maxMessageSize: MiB }, gate);
  await using _listener = listener;
  await using peer = RawPeer.client(listener.contactAddress);
  await within(peer.opened, "the raw WebSocket to open");
  peer.sendDask([HANDSHAKE]);
  assertHandshake(await peer.readDask());
  // 1 MiB + 64 MiB unread, and about 8 MiB read ahead: 88 MiB is enough.
  const count = new Uint8Array(8);
  new DataView(count.buffer).setBigUint64(0, 1n, true);
  const closed = await flood(peer, [count, encode(new Uint8Array(MiB / 2))], 88 * MiB);
  assertPolicyClose(closed, "has not read");
  gate.open = true;
  const error = await failure;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "has not read");
});

// -- Closing ---------------------------------------------------------------------------

Deno.test("Listener.close() on ws:// ends a client's for await loop without an error", async () => {
  await using listener = await listen("ws://127.0.0.1:0", echo);
  await using comm = await connect(listener.contactAddress);
  await comm.write(1);
  assertEquals(await within(comm.read(), "the echo"), 1);
  const seen: unknown[] = [];
  const loop = (async () => {
    for await (const message of comm) seen.push(message);
  })();
  await within(listener.close(), "Listener.close()");
  await within(loop, "the loop to end");
  assertEquals(seen, []);
});

// -- The listener's HTTP side ---------------------------------------------------------

Deno.test("listen() on ws:// passes other paths and plain requests at its path to httpHandler", async () => {
  const seen: string[] = [];
  await using listener = await listen("ws://127.0.0.1:0/comm", echo, {
    httpHandler: (request, info) => {
      seen.push(info.remoteAddr.hostname);
      return new Response(`page ${new URL(request.url).pathname}`);
    },
  });
  for (const path of ["/", "/index.html", "/comm"]) {
    const response = await fetch(httpUrl(listener, path));
    assertEquals(response.status, 200);
    assertEquals(await response.text(), `page ${path}`);
  }
  assertEquals(seen, ["127.0.0.1", "127.0.0.1", "127.0.0.1"]);
  await using comm = await connect(listener.contactAddress);
  await comm.write("still a comm");
  assertEquals(await comm.read(), "still a comm");
});

Deno.test("listen() on ws:// answers 500 and reports to onError when httpHandler throws", async () => {
  const boom = new Error("boom");
  const reported: unknown[] = [];
  await using listener = await listen("ws://127.0.0.1:0/comm", echo, {
    httpHandler: () => {
      throw boom;
    },
    onError: (error) => reported.push(error),
  });
  const response = await fetch(httpUrl(listener, "/page"));
  assertEquals(response.status, 500);
  await response.body?.cancel();
  assertEquals(reported, [boom]);
});

Deno.test("listen() on ws:// without httpHandler answers 426 at its path and 404 elsewhere", async () => {
  await using listener = await listen("ws://127.0.0.1:0/comm", echo);
  const atPath = await fetch(httpUrl(listener, "/comm"));
  assertEquals(atPath.status, 426);
  assertEquals(atPath.headers.get("upgrade"), "websocket");
  await atPath.body?.cancel();
  for (const path of ["/", "/comm/more", "/other"]) {
    const response = await fetch(httpUrl(listener, path));
    assertEquals(response.status, 404, path);
    await response.body?.cancel();
  }
});

// -- Refusals ---------------------------------------------------------------------

/** The status line a raw HTTP upgrade request to `path`, with `headers` added, gets. */
async function upgradeStatus(
  listener: Listener,
  path: string,
  headers: string[] = [],
): Promise<string> {
  const [hostname, port] = getAddressHostPort(listener.contactAddress);
  using conn = await Deno.connect({ hostname, port });
  const request = [
    `GET ${path} HTTP/1.1`,
    `Host: ${hostname}:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    ...headers,
    "",
    "",
  ].join("\r\n");
  await conn.write(new TextEncoder().encode(request));
  let text = "";
  const buffer = new Uint8Array(4096);
  while (!text.includes("\r\n")) {
    const n = await within(conn.read(buffer), "the response");
    if (n === null) break;
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  return text.split("\r\n")[0];
}

Deno.test("listen() on ws:// refuses an upgrade from another page's Origin with 403 and takes its own", async () => {
  await using listener = await listen("ws://127.0.0.1:0/comm", echo);
  const [host, port] = getAddressHostPort(listener.contactAddress);
  const from = (origin: string) => upgradeStatus(listener, "/comm", [`Origin: ${origin}`]);
  assertStringIncludes(await from("https://elsewhere.example"), " 403 ");
  assertStringIncludes(await from(`http://${host}:${port + 1}`), " 403 ", "another port");
  assertStringIncludes(await from("null"), " 403 ");
  assertStringIncludes(await from(`http://${host}:${port}`), " 101 ");
  assertStringIncludes(await upgradeStatus(listener, "/comm"), " 101 ", "no Origin");
});

Deno.test("listen() on ws:// takes upgrades from the origins allowedOrigins lists or accepts", async () => {
  const asked: string[] = [];
  const accepts = (origin: string) => {
    asked.push(origin);
    return origin.endsWith(".app.example");
  };
  const cases: [ListenOptions["allowedOrigins"], string, string][] = [
    [["https://app.example"], "https://app.example", " 101 "],
    [["https://app.example"], "https://other.example", " 403 "],
    [["*"], "https://any.example", " 101 "],
    [accepts, "https://a.app.example", " 101 "],
    [accepts, "https://other.example", " 403 "],
  ];
  for (const [allowedOrigins, origin, status] of cases) {
    await using listener = await listen("ws://127.0.0.1:0/comm", echo, { allowedOrigins });
    const got = await upgradeStatus(listener, "/comm", [`Origin: ${origin}`]);
    assertStringIncludes(got, status, `${origin} with ${JSON.stringify(allowedOrigins)}`);
  }
  assertEquals(asked, ["https://a.app.example", "https://other.example"]);
});

Deno.test("listen() on ws:// throws TypeError for allowedOrigins neither an array of strings nor a function", async () => {
  for (const allowedOrigins of ["https://app.example", [42], { "*": true }]) {
    await assertRejects(
      () => listen("ws://127.0.0.1:0", { allowedOrigins } as unknown as ListenOptions),
      TypeError,
      "allowedOrigins",
    );
  }
});

Deno.test("listen() on ws:// with the multiprocessing framing refuses a client without x-comm with 400", async () => {
  await using listener = await listen("ws://127.0.0.1:0/comm", echo, {
    framing: "multiprocessing",
  });
  assertStringIncludes(await upgradeStatus(listener, "/comm"), " 400 ");
});

Deno.test("connect() with the multiprocessing framing rejects a dask-layout ws:// server with ConnectError", async () => {
  await using server = new RawServer();
  const error = await assertRejects(
    () => connect(server.url, { framing: "multiprocessing", timeout: 10_000 }),
    ConnectError,
  );
  assertFalse(error instanceof ConnectTimeoutError, error.message);
  assertStringIncludes(error.message, "x-comm");
  await within(server.peers[0].closed, "the refused socket to close");
});

Deno.test("connect() to a wrong ws:// path rejects with ConnectError naming 404, without retrying", async () => {
  await using listener = await listen("ws://127.0.0.1:0/comm", echo);
  const address = listener.contactAddress.replace(/\/comm$/, "/other");
  const error = await assertRejects(() => connect(address, { timeout: 10_000 }), ConnectError);
  assertFalse(error instanceof ConnectTimeoutError, error.message);
  assertStringIncludes(error.message, "404");
});

Deno.test("connect() to wss:// without caCerts rejects with ConnectError naming the certificate", async () => {
  await using listener = await listen("wss://127.0.0.1:0", echo, {
    cert: SERVER_CERT,
    key: SERVER_KEY,
    onError: () => {},
  });
  const error = await assertRejects(
    () => connect(listener.contactAddress, { timeout: 10_000 }),
    ConnectError,
  );
  assertFalse(error instanceof ConnectTimeoutError, error.message);
  assertStringIncludes(error.message.toLowerCase(), "certificate");
});

Deno.test("listen() on wss:// without cert and key throws TypeError", async () => {
  await assertRejects(() => listen("wss://127.0.0.1:0"), TypeError, "cert");
  await assertRejects(() => listen("wss://127.0.0.1:0", { cert: SERVER_CERT }), TypeError, "key");
});

// -- Addresses with a path ------------------------------------------------------------

Deno.test("resolveAddress() keeps the path and query of a ws:// address", async () => {
  const address = "ws://localhost:8786/a/b?x=1";
  assertEquals(getAddressHost(address), "localhost");
  assertEquals(getAddressHostPort(address), ["localhost", 8786]);
  const resolved = await resolveAddress(address);
  assert(/^ws:\/\/(127\.0\.0\.1|\[::1\]):8786\/a\/b\?x=1$/.test(resolved), resolved);
  assertEquals(
    await resolveAddress("wss://127.0.0.1:8786/a/b?x=1"),
    "wss://127.0.0.1:8786/a/b?x=1",
  );
});

Deno.test("listen() on ws:// at a path puts the path in listenAddress and contactAddress", async () => {
  await using listener = await listen("ws://127.0.0.1:0/a/b");
  assert(listener.listenAddress.endsWith("/a/b"), listener.listenAddress);
  assert(listener.contactAddress.endsWith("/a/b"), listener.contactAddress);
});

Deno.test(`listen() on ws:// refuses a path with "." or ".." segments with AddressError`, async () => {
  for (const path of ["/a/../b", "/./x", "/a/.."]) {
    await assertRejects(() => listen(`ws://127.0.0.1:0${path}`), AddressError, "segments");
  }
});

Deno.test(`connect() to a ws:// path with "." or ".." segments rejects with AddressError`, async () => {
  for (const path of ["/a/../b", "/./x", "/a/.."]) {
    await assertRejects(
      () => connect(`ws://127.0.0.1:1${path}`, { timeout: 1_000 }),
      AddressError,
      "segments",
    );
  }
});

Deno.test("connect() to a ws:// address with a query reaches the listener at its path", async () => {
  await using listener = await listen("ws://127.0.0.1:0/a/b");
  const [, port] = getAddressHostPort(listener.contactAddress);
  const accepting = listener[Symbol.asyncIterator]().next();
  await using client = await connect(`ws://127.0.0.1:${port}/a/b?token=1`);
  const { value: server } = await within(accepting, "the comm to be accepted");
  await using _server = server as Comm;
  assertEquals(client.peerAddress, `ws://127.0.0.1:${port}/a/b?token=1`);
  assertEquals(client.localAddress, server.peerAddress);
  await client.write("through the query");
  assertEquals(await within(server.read(), "a message"), "through the query");
});
