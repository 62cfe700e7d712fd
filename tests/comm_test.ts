// The conformance suite on every backend, then what only one backend does.
// Everything binds to loopback, except the one `tcp://:0` case, which still
// connects to 127.0.0.1 only.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { encode } from "@msgpack/msgpack";
import { join } from "@std/path";
import {
  AddressError,
  type Backend,
  type BackendListener,
  type Comm,
  CommClosedError,
  connect,
  ConnectError,
  ConnectTimeoutError,
  getAddressHostPort,
  getBackend,
  listen,
  ProtocolError,
  type ReadOptions,
  registerBackend,
  StreamComm,
  type StreamCommOptions,
} from "../mod.ts";
import { commSuite, type ListenSite } from "./_comm_suite.ts";
import { daskMessage, prelude } from "./_wire.ts";
import { CA, CLIENT_CERT, CLIENT_KEY, OTHER_CA, SERVER_CERT, SERVER_KEY } from "./_certs.ts";

/** Malformed addresses of a host:port scheme. */
function malformedHostPort(scheme: string): { connect: string[]; listen: string[] } {
  return {
    connect: [
      `${scheme}://127.0.0.1:0`,
      `${scheme}://:8786`,
      `${scheme}://127.0.0.1:99999`,
      `${scheme}://host-without-port`,
      `${scheme}://127.0.0.1:http`,
      `${scheme}://::1:8786`,
      `${scheme}://[::1:8786`,
    ],
    listen: [
      `${scheme}://127.0.0.1:99999`,
      `${scheme}://127.0.0.1:http`,
      `${scheme}://::1:8786`,
    ],
  };
}

// -- The suite, once per backend ---------------------------------------------

commSuite("tcp", {
  listenAddress: "tcp://127.0.0.1:0",
  malformedAddresses: malformedHostPort("tcp"),
});

commSuite("tcp over IPv6", {
  listenAddress: "tcp://[::1]:0",
  malformedAddresses: malformedHostPort("tcp"),
  ignore: canBindIpv6Loopback() ? undefined : "this host cannot bind ::1 (no IPv6 loopback)",
});

commSuite("tls", {
  listenAddress: "tls://127.0.0.1:0",
  listenOptions: { cert: SERVER_CERT, key: SERVER_KEY },
  connectOptions: { caCerts: [CA] },
  malformedAddresses: malformedHostPort("tls"),
});

commSuite("unix", {
  listenAddress: "unix://",
  canListenAgain: false,
  malformedAddresses: { connect: ["unix://"] },
});

commSuite("unix at a path", {
  listenAddress: unixPathSite,
  malformedAddresses: { connect: ["unix://"] },
});

/** Malformed addresses of a WebSocket scheme (a missing port means 80 or 443 there). */
function malformedWebSocket(scheme: string): { connect: string[]; listen: string[] } {
  const hostPort = malformedHostPort(scheme);
  return {
    connect: [
      ...hostPort.connect.filter((address) => !address.endsWith("host-without-port")),
      `${scheme}://127.0.0.1:8786/a path`,
      `${scheme}://127.0.0.1:8786/path#fragment`,
      `${scheme}://127.0.0.1:8786/?q=a"b`,
    ],
    listen: [...hostPort.listen, `${scheme}://127.0.0.1:0/path?query`, `${scheme}://127.0.0.1:0/é`],
  };
}

commSuite("ws", {
  listenAddress: "ws://127.0.0.1:0",
  malformedAddresses: malformedWebSocket("ws"),
});

commSuite("ws at a path", {
  listenAddress: "ws://127.0.0.1:0/comm/v1",
  malformedAddresses: malformedWebSocket("ws"),
});

commSuite("ws over IPv6", {
  listenAddress: "ws://[::1]:0",
  ignore: canBindIpv6Loopback() ? undefined : "this host cannot bind ::1 (no IPv6 loopback)",
});

commSuite("wss", {
  listenAddress: "wss://127.0.0.1:0",
  listenOptions: { cert: SERVER_CERT, key: SERVER_KEY },
  connectOptions: { caCerts: [CA] },
  malformedAddresses: malformedWebSocket("wss"),
});

commSuite("inproc", {
  listenAddress: "inproc://",
  byReference: true,
});

/** A user's backend: tcp under another scheme, with its own addresses. */
const mytcp = renamedBackend("mytcp", "tcp");
registerBackend("mytcp", mytcp);

commSuite("mytcp (registered by the user)", {
  listenAddress: "mytcp://127.0.0.1:0",
  malformedAddresses: malformedHostPort("mytcp"),
});

// -- Addresses and the registry -----------------------------------------------

Deno.test("connect() rejects an unknown scheme with AddressError listing the known schemes", async () => {
  for (const action of ["connect", "listen"] as const) {
    const error = await assertRejects(
      () => action === "connect" ? connect("foo://x", { timeout: 1_000 }) : listen("foo://x"),
      AddressError,
    ) as Error;
    assertStringIncludes(error.message, `"foo://x"`);
    assertStringIncludes(error.message, `"foo"`);
    assertStringIncludes(error.message, "known schemes");
    for (const scheme of ["inproc", "mytcp", "tcp", "tls", "unix", "ws", "wss"]) {
      assertStringIncludes(error.message, scheme);
    }
  }
});

Deno.test("registerBackend() routes connect() and listen() of its scheme to the backend", async () => {
  const before = { ...mytcp.calls };
  await using listener = await listen("mytcp://127.0.0.1:0", echo);
  await using comm = await connect(listener.contactAddress);
  await comm.write("through mytcp");
  assertEquals(await comm.read(), "through mytcp");
  assertEquals(mytcp.calls.listen, before.listen + 1);
  assertEquals(mytcp.calls.connect, before.connect + 1);
  assertEquals(mytcp.calls.accept, before.accept + 1);
});

// -- tcp ------------------------------------------------------------------------

Deno.test("listen() on tcp://:0 puts contactHost in contactAddress", async () => {
  await using listener = await listen("tcp://:0", echo, { contactHost: "127.0.0.1" });
  const [, port] = getAddressHostPort(listener.listenAddress);
  assert(port > 0);
  assertEquals(listener.listenAddress, `tcp://0.0.0.0:${port}`);
  assertEquals(listener.contactAddress, `tcp://127.0.0.1:${port}`);
  await using comm = await connect(listener.contactAddress);
  await comm.write("via the contact address");
  assertEquals(await comm.read(), "via the contact address");
});

Deno.test("listen() on a taken tcp port rejects with AddrInUse", async () => {
  await using first = await listen("tcp://127.0.0.1:0", echo);
  const error = await assertRejects(
    () => listen(first.listenAddress),
    Deno.errors.AddrInUse,
  ) as Error;
  assertStringIncludes(error.message, `"${first.listenAddress}"`);
});

Deno.test("connect() rejects with ConnectTimeoutError when the peer never does the handshake", async () => {
  using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `tcp://127.0.0.1:${server.addr.port}`;
  const accepting = server.accept();
  const error = await assertRejects(
    () => connect(address, { timeout: 300 }),
    ConnectTimeoutError,
  ) as Error;
  assertStringIncludes(error.message, `"${address}"`);
  (await accepting).close();
});

Deno.test("connect() rejects with ConnectError when the peer's handshake is not dask's", async () => {
  using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `tcp://127.0.0.1:${server.addr.port}`;
  const serving = (async () => {
    using conn = await server.accept();
    await writeAll(conn, daskMessage(encode([1, 2, 3])));
    await drain(conn);
  })();
  const error = await assertRejects(
    () => connect(address, { timeout: 5_000 }),
    ConnectError,
  ) as Error;
  assertFalse(error instanceof ConnectTimeoutError, "a bad handshake is not a timeout");
  assertStringIncludes(error.message, `"${address}"`);
  assertStringIncludes(error.message, "handshake");
  await serving;
});

Deno.test("listen() closes a comm whose peer announces more than maxMessageSize", async () => {
  const reported = Promise.withResolvers<unknown>();
  await using listener = await listen("tcp://127.0.0.1:0", echo, {
    maxMessageSize: 1024,
    onError: (error) => reported.resolve(error),
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  using raw = await Deno.connect({ hostname: "127.0.0.1", port });
  await writeAll(
    raw,
    daskMessage(encode({ compression: null, python: [3, 11, 0], "pickle-protocol": 5 })),
  );
  await writeAll(raw, prelude(2n ** 40n, [2n ** 40n - 16n]));
  const error = await reported.promise;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "maxMessageSize");
  await drain(raw); // the listener hung up
});

Deno.test("listen() closes a comm that does not finish the handshake within handshakeTimeout", async () => {
  const reported = Promise.withResolvers<unknown>();
  await using listener = await listen("tcp://127.0.0.1:0", echo, {
    handshakeTimeout: 100,
    onError: (error) => reported.resolve(error),
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  using raw = await Deno.connect({ hostname: "127.0.0.1", port });
  const error = await reported.promise;
  assertInstanceOf(error, ProtocolError);
  assertStringIncludes((error as Error).message, "handshake");
  await drain(raw); // the listener hung up
});

Deno.test("Comm.write() sends binaries as frames of their own down to binaryFrameThreshold", async () => {
  const options = { binaryFrameThreshold: 16 };
  await using listener = await listen("tcp://127.0.0.1:0", echo, options);
  await using comm = await connect(listener.contactAddress, options);
  const blobs = Array.from({ length: 1_000 }, (_, i) => new Uint8Array(16 + i % 50).fill(i));
  const backing = new Uint8Array(100).map((_, i) => i);
  const message = {
    blobs,
    inline: new Uint8Array(15).fill(7),
    view: backing.subarray(10, 60),
    floats: new Float64Array([1.5, -2, Math.PI]),
  };
  await comm.write(message);
  assertEquals(await comm.read(), {
    ...message,
    view: backing.slice(10, 60),
    floats: new Uint8Array(message.floats.buffer),
  });
});

Deno.test("Listener iteration throws TypeError when the listener has a handler", async () => {
  await using listener = await listen("inproc://", echo);
  assertThrows(() => listener[Symbol.asyncIterator](), TypeError, "handler");
});

// -- StreamComm over a raw connection -----------------------------------------

Deno.test("StreamComm.read() rejects with ProtocolError when the peer announces more than maxMessageSize", async () => {
  {
    await using pair = await rawPair({ maxMessageSize: 1024 });
    await writeAll(pair.raw, prelude(2n ** 40n, [2n ** 40n - 16n]));
    const error = await assertRejects(() => pair.comm.read(), ProtocolError) as Error;
    assertInstanceOf(error, CommClosedError);
    assertStringIncludes(error.message, "maxMessageSize");
    assert(pair.comm.closed);
    await drain(pair.raw);
  }
  {
    // A small total, but frame lengths that add up to far more.
    await using pair = await rawPair({ maxMessageSize: 1024 });
    await writeAll(pair.raw, prelude(26n, [2n ** 40n]));
    const error = await assertRejects(() => pair.comm.read(), ProtocolError) as Error;
    assertStringIncludes(error.message, "maxMessageSize");
    await drain(pair.raw);
  }
});

Deno.test("StreamComm.read() rejects with CommClosedError when the peer stops in the middle of a message", async () => {
  await using pair = await rawPair();
  await writeAll(pair.raw, daskMessage(encode("complete")));
  const partial = daskMessage(encode("this one is cut short"));
  await writeAll(pair.raw, partial.subarray(0, partial.length - 5));
  pair.raw.close();
  assertEquals(await pair.comm.read(), "complete");
  const error = await assertRejects(() => pair.comm.read(), CommClosedError) as Error;
  assertStringIncludes(error.message, "middle of a message");
  assert(pair.comm.closed);
});

// -- tls ------------------------------------------------------------------------

Deno.test("connect() to tls rejects with ConnectError, without retrying, when the CA is wrong", async () => {
  await using listener = await listen("tls://127.0.0.1:0", echo, {
    cert: SERVER_CERT,
    key: SERVER_KEY,
    onError: () => {}, // the failed TLS handshake on the server side
  });
  const error = await assertRejects(
    () => connect(listener.contactAddress, { caCerts: [OTHER_CA], timeout: 10_000 }),
    ConnectError,
  ) as Error;
  assertFalse(
    error instanceof ConnectTimeoutError,
    `a certificate that does not verify was retried until the timeout: ${error.message}`,
  );
  assertStringIncludes(error.message, `"${listener.contactAddress}"`);
});

Deno.test("connect() to tls presents a client certificate", async () => {
  await using listener = await listen("tls://127.0.0.1:0", echo, {
    cert: SERVER_CERT,
    key: SERVER_KEY,
  });
  await using comm = await connect(listener.contactAddress, {
    caCerts: [CA],
    cert: CLIENT_CERT,
    key: CLIENT_KEY,
  });
  await comm.write("with a client certificate");
  assertEquals(await comm.read(), "with a client certificate");
});

for (const scheme of ["tls", "wss"]) {
  Deno.test(`connect() to ${scheme} with a client certificate but no key rejects with TypeError`, async () => {
    await using listener = await listen(`${scheme}://127.0.0.1:0`, echo, {
      cert: SERVER_CERT,
      key: SERVER_KEY,
    });
    await assertRejects(
      () => connect(listener.contactAddress, { caCerts: [CA], cert: CLIENT_CERT, timeout: 1_000 }),
      TypeError,
      "key",
    );
  });
}

Deno.test("listen() on tls without a certificate throws TypeError", async () => {
  const error = await assertRejects(() => listen("tls://127.0.0.1:0"), TypeError) as Error;
  assertStringIncludes(error.message, "cert");
});

// -- unix -----------------------------------------------------------------------

Deno.test("listen() on a unix path makes an owner-only socket and removes it on close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "x-comm-test-" });
  try {
    const path = join(dir, "app.sock");
    const listener = await listen(`unix://${path}`, echo);
    try {
      assertEquals(listener.listenAddress, `unix://${path}`);
      const info = await Deno.lstat(path);
      assert(info.isSocket, `${path} is not a socket`);
      assertEquals((info.mode ?? 0) & 0o777, 0o600);
      await using comm = await connect(listener.contactAddress);
      await comm.write("over the file");
      assertEquals(await comm.read(), "over the file");
    } finally {
      await listener.close();
    }
    await assertRejects(() => Deno.lstat(path), Deno.errors.NotFound);
    assertEquals(await Array.fromAsync(Deno.readDir(dir)), [], "files left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listen() on unix:// removes its private directory on close", async () => {
  const listener = await listen("unix://", echo);
  const path = listener.listenAddress.slice("unix://".length);
  try {
    const info = await Deno.lstat(path);
    assert(info.isSocket);
    assertEquals((info.mode ?? 0) & 0o777, 0o600);
  } finally {
    await listener.close();
  }
  await assertRejects(() => Deno.lstat(path), Deno.errors.NotFound);
  await assertRejects(() => Deno.lstat(join(path, "..")), Deno.errors.NotFound);
});

Deno.test("listen() on a unix path takes any file name, spaces included", async () => {
  const dir = await Deno.makeTempDir({ prefix: "x-comm-test-" });
  try {
    // Such paths are common, as in macOS's "~/Library/Application Support".
    const path = join(dir, "Application Support", "my app.sock");
    await Deno.mkdir(join(dir, "Application Support"));
    await using listener = await listen(`unix://${path}`, echo);
    assertEquals(listener.listenAddress, `unix://${path}`);
    await using comm = await connect(listener.contactAddress);
    await comm.write("spaces are fine");
    assertEquals(await comm.read(), "spaces are fine");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listen() on a unix path that exists rejects with AddrInUse", async () => {
  const dir = await Deno.makeTempDir({ prefix: "x-comm-test-" });
  try {
    const file = join(dir, "not-a-socket");
    await Deno.writeTextFile(file, "keep me");
    const error = await assertRejects(
      () => listen(`unix://${file}`),
      Deno.errors.AddrInUse,
    ) as Error;
    assertStringIncludes(error.message, `"unix://${file}"`);
    assertStringIncludes(error.message, "already exists");
    assertEquals(await Deno.readTextFile(file), "keep me");

    const path = join(dir, "app.sock");
    await using first = await listen(`unix://${path}`, echo);
    const second = await assertRejects(
      () => listen(`unix://${path}`),
      Deno.errors.AddrInUse,
    ) as Error;
    assertStringIncludes(second.message, `"unix://${path}"`);
    await using comm = await connect(first.contactAddress);
    await comm.write("the first listener still serves");
    assertEquals(await comm.read(), "the first listener still serves");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// -- inproc ---------------------------------------------------------------------

Deno.test("listen() on a taken inproc name rejects with AddrInUse", async () => {
  const address = "inproc://taken-name-test";
  {
    await using first = await listen(address, echo);
    assertEquals(first.listenAddress, address);
    const error = await assertRejects(() => listen(address), Deno.errors.AddrInUse) as Error;
    assertStringIncludes(error.message, `"${address}"`);
    await using comm = await connect(address);
    await comm.write("the first listener still serves");
    assertEquals(await comm.read(), "the first listener still serves");
  }
  await using again = await listen(address);
  assertEquals(again.listenAddress, address);
});

// -- Helpers ----------------------------------------------------------------------

async function echo(comm: Comm): Promise<void> {
  for await (const message of comm) await comm.write(message);
}

function canBindIpv6Loopback(): boolean {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
}

/** A socket path in a fresh temporary directory, removed on dispose. */
async function unixPathSite(): Promise<ListenSite> {
  const dir = await Deno.makeTempDir({ prefix: "x-comm-test-" });
  return {
    address: `unix://${join(dir, "app.sock")}`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** Reads until the peer hangs up (bounded: the peer sends little). */
async function drain(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  for (let reads = 0; reads < 1_000; reads++) {
    try {
      if (await conn.read(buffer) === null) return;
    } catch (error) {
      if (error instanceof Deno.errors.ConnectionReset) return;
      throw error;
    }
  }
  throw new Error("The peer kept sending instead of hanging up");
}

/** A StreamComm over one end of a loopback TCP connection; raw is the other. */
async function rawPair(
  options: Partial<StreamCommOptions> = {},
): Promise<{ comm: StreamComm; raw: Deno.TcpConn } & AsyncDisposable> {
  using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [raw, accepted] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: server.addr.port }),
    server.accept(),
  ]);
  const comm = new StreamComm(accepted, {
    localAddress: "tcp://127.0.0.1:1",
    peerAddress: "tcp://127.0.0.1:2",
    ...options,
  });
  return {
    comm,
    raw,
    async [Symbol.asyncDispose]() {
      await comm.close();
      try {
        raw.close();
      } catch {
        // Closed by the case already.
      }
    },
  };
}

/**
 * A backend that forwards to the `inner` backend but speaks of its own
 * scheme in every address, as a user's backend built on tcp would.
 */
function renamedBackend(
  scheme: string,
  innerScheme: string,
): Backend & { calls: { connect: number; listen: number; accept: number } } {
  const inner = getBackend(innerScheme);
  const rename = (address: string) =>
    address.startsWith(`${innerScheme}://`)
      ? `${scheme}://${address.slice(innerScheme.length + 3)}`
      : address;
  const calls = { connect: 0, listen: 0, accept: 0 };
  return {
    calls,
    async connect(location, options) {
      calls.connect++;
      return new RenamedComm(await inner.connect(location, options), rename);
    },
    async listen(location, options): Promise<BackendListener> {
      calls.listen++;
      const listener = await inner.listen(location, options);
      return {
        listenAddress: rename(listener.listenAddress),
        contactAddress: rename(listener.contactAddress),
        async accept() {
          const comm = await listener.accept();
          if (comm) calls.accept++;
          return comm && new RenamedComm(comm, rename);
        },
        close: () => listener.close(),
      };
    },
    getAddressHost: (location) => inner.getAddressHost(location),
    getAddressHostPort: (location) => inner.getAddressHostPort(location),
    resolveAddress: (location) => inner.resolveAddress(location),
    getLocalAddressFor: (location) => inner.getLocalAddressFor(location),
  };
}

/** A comm that reports renamed addresses and otherwise forwards. */
class RenamedComm implements Comm {
  #inner: Comm;
  readonly localAddress: string;
  readonly peerAddress: string;

  constructor(inner: Comm, rename: (address: string) => string) {
    this.#inner = inner;
    this.localAddress = rename(inner.localAddress);
    this.peerAddress = rename(inner.peerAddress);
  }

  get closed(): boolean {
    return this.#inner.closed;
  }

  read(options?: ReadOptions): Promise<unknown> {
    return this.#inner.read(options);
  }
  poll(timeout?: number): Promise<boolean> {
    return this.#inner.poll(timeout);
  }
  readInto(buffer: Uint8Array, offset?: number): Promise<number> {
    return this.#inner.readInto(buffer, offset);
  }

  write(message: unknown): Promise<void> {
    return this.#inner.write(message);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  abort(reason?: unknown): void {
    this.#inner.abort(reason);
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return this.#inner[Symbol.asyncIterator]();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
