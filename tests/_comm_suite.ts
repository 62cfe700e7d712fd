// The conformance suite every backend runs, after dask's
// distributed/comm/tests/test_comms.py (get_comm_pair, check_client_server,
// check_comm_closed_explicit): one `Deno.test` per case, named
// "<backend>: <sentence about one symbol>".
//
// Each case listens on a fresh address, bound to loopback, and closes all it
// opens (`await using`), so that Deno's sanitizers stay on. No case asserts
// how long something took; a guard only fails a case that hangs.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStrictEquals,
  assertStringIncludes,
} from "@std/assert";
import {
  AddressError,
  AuthenticationError,
  BufferTooShortError,
  type Comm,
  CommClosedError,
  type CommHandler,
  connect,
  ConnectError,
  type ConnectOptions,
  ConnectTimeoutError,
  listen,
  type Listener,
  type ListenOptions,
} from "../mod.ts";

/** A place to listen on, and what to clean up once the listener is closed. */
export interface ListenSite extends AsyncDisposable {
  /** The address to pass to `listen()`. */
  address: string;
}

/** How to run the suite on one backend. */
export interface CommSuiteSetup {
  /**
   * The address to listen on (such as `tcp://127.0.0.1:0`), or a function
   * that makes a fresh site for each listener (such as a socket path in a
   * temporary directory, removed on dispose).
   */
  listenAddress: string | (() => Promise<ListenSite>);
  /** Options for every `listen()`, such as a TLS certificate. */
  listenOptions?: ListenOptions;
  /** Options for every `connect()`, such as the CA to trust. */
  connectOptions?: ConnectOptions;
  /** Whether messages arrive as the very objects written (inproc). */
  byReference?: boolean;
  /**
   * Addresses of this scheme that are malformed, beyond the one with white
   * space that every scheme refuses.
   */
  malformedAddresses?: { connect?: string[]; listen?: string[] };
  /**
   * Whether a listener can bind a contact address again once the first one
   * closed (not for `unix://`, whose private directory goes with it).
   *
   * @default {true}
   */
  canListenAgain?: boolean;
  /** Why the whole suite is skipped here, if it is. */
  ignore?: string;
}

/** Fails a case that hangs; it does not judge speed. */
const HANG_GUARD_MS = 60_000;
const BIG_PAYLOAD_BYTES = 64 * 1024 * 1024;
const PIPELINED_MESSAGES = 10_000;
const CONCURRENT_CLIENTS = 50;
const ROUND_TRIPS_PER_CLIENT = 5;
const CONCURRENT_WRITES = 100;
const MESSAGES_BEFORE_CLOSE = 1_000;
const BLOB_MESSAGES = 210; // under 256, so that every fill byte is distinct
const UNREAD_MESSAGES = 20_000;
const SLOW_READER_MESSAGES = 200;
const RACING_CLIENTS = 20;
const AUTHKEY = "conformance key";
/** Message sizes for the multiprocessing framing: empty, one byte, a frame of its own, more. */
const MP_SIZES = [0, 1, 64 * 1024, 1024 * 1024];

/**
 * Registers the conformance cases for one backend.
 *
 * @param name The backend's name, prefixed to every case's name.
 * @param setup Where to listen and with which options.
 */
export function commSuite(name: string, setup: CommSuiteSetup): void {
  const listenOptions = setup.listenOptions ?? {};
  const connectOptions = setup.connectOptions ?? {};

  function test(caseName: string, fn: () => Promise<void>): void {
    Deno.test({
      name: `${name}: ${caseName}`,
      ignore: setup.ignore !== undefined,
      fn: () => guard(fn(), `${name}: ${caseName}`),
    });
  }

  function site(): Promise<ListenSite> {
    const address = setup.listenAddress;
    if (typeof address !== "string") return address();
    return Promise.resolve({ address, [Symbol.asyncDispose]: () => Promise.resolve() });
  }

  function serve(at: ListenSite, handler?: CommHandler, extra?: ListenOptions): Promise<Listener> {
    const options = { ...listenOptions, ...extra };
    return handler ? listen(at.address, handler, options) : listen(at.address, options);
  }

  function dial(address: string, extra?: ConnectOptions): Promise<Comm> {
    return connect(address, { ...connectOptions, ...extra });
  }

  /** An address of the site where nothing listens any more. */
  async function deadAddress(at: ListenSite): Promise<string> {
    const listener = await serve(at);
    const address = listener.contactAddress;
    await listener.close();
    return address;
  }

  if (setup.ignore !== undefined) {
    console.warn(`Skipping the ${name} comm suite: ${setup.ignore}`);
  }

  test("Comm.write() and Comm.read() carry every kind of message", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    await using comm = await dial(listener.contactAddress);
    for (const [label, message] of sampleMessages()) {
      await comm.write(message);
      const received = await comm.read();
      if (setup.byReference) {
        assertStrictEquals(received, message, `${label}: not passed by reference`);
      } else {
        assertEquals(received, message, `${label}: changed on the way`);
        if (typeof message === "object" && message !== null) {
          assert(received !== message, `${label}: the same object came back, not a copy`);
        }
      }
    }
  });

  test(
    `Comm.read() returns ${PIPELINED_MESSAGES} pipelined messages in the order written`,
    async () => {
      await using at = await site();
      await using listener = await serve(at, echo);
      await using comm = await dial(listener.contactAddress);
      const writing = (async () => {
        for (let i = 0; i < PIPELINED_MESSAGES; i++) {
          await comm.write({ i, text: `message ${i}` });
        }
      })();
      for (let i = 0; i < PIPELINED_MESSAGES; i++) {
        const message = await comm.read();
        assertEquals(message, { i, text: `message ${i}` }, `message ${i} out of order`);
      }
      await writing;
    },
  );

  test("Comm.write() delivers a 64 MiB Uint8Array intact both ways", async () => {
    await using at = await site();
    await using listener = await serve(at, async (comm) => {
      const payload = await comm.read() as Uint8Array;
      assertInstanceOf(payload, Uint8Array);
      await comm.write({ length: payload.length, digest: await sha256(payload) });
      await comm.write(payload);
      // Hold the comm open until the client has read everything.
      for await (const _ of comm) { /* nothing more is expected */ }
    });
    await using comm = await dial(listener.contactAddress);
    const payload = patterned(BIG_PAYLOAD_BYTES, 0x9e3779b9);
    const digest = await sha256(payload);
    await comm.write(payload);
    assertEquals(await comm.read(), { length: BIG_PAYLOAD_BYTES, digest }, "server received");
    const back = await comm.read() as Uint8Array;
    if (setup.byReference) {
      assertStrictEquals(back, payload);
      return;
    }
    assertInstanceOf(back, Uint8Array);
    assertEquals(back.length, BIG_PAYLOAD_BYTES);
    const step = 4093; // prime, so that samples fall at every offset mod 8
    for (let at = 0; at < BIG_PAYLOAD_BYTES; at += step) {
      if (back[at] !== payload[at]) {
        throw new Error(`byte ${at} came back as ${back[at]}, expected ${payload[at]}`);
      }
    }
    assertEquals(back[BIG_PAYLOAD_BYTES - 1], payload[BIG_PAYLOAD_BYTES - 1]);
    assertEquals(await sha256(back), digest, "client received");
  });

  test(
    `listen() serves ${CONCURRENT_CLIENTS} concurrent comms on one listener`,
    async () => {
      await using at = await site();
      await using listener = await serve(at, echo);
      await Promise.all(
        Array.from({ length: CONCURRENT_CLIENTS }, async (_, client) => {
          await using comm = await dial(listener.contactAddress);
          for (let round = 0; round < ROUND_TRIPS_PER_CLIENT; round++) {
            await comm.write({ client, round });
            assertEquals(await comm.read(), { client, round });
          }
        }),
      );
    },
  );

  test("Comm.write() never interleaves concurrent writes on one comm", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    await using comm = await dial(listener.contactAddress);
    const messages = Array.from({ length: CONCURRENT_WRITES }, (_, i) => largeMessage(i));
    const reading = (async () => {
      const received: unknown[] = [];
      for (let i = 0; i < CONCURRENT_WRITES; i++) received.push(await comm.read());
      return received;
    })();
    await Promise.all(messages.map((message) => comm.write(message)));
    const received = await reading;
    for (let i = 0; i < CONCURRENT_WRITES; i++) {
      if (setup.byReference) assertStrictEquals(received[i], messages[i]);
      else checkLargeMessage(received[i], i);
    }
  });

  test("Comm.read() returns binaries that later messages do not overwrite", async () => {
    await using at = await site();
    await using listener = await serve(at, async (comm) => {
      const received: unknown[] = [];
      for (let i = 0; i < BLOB_MESSAGES; i++) received.push(await comm.read());
      // Checked only once all arrived, so that reused buffers would show.
      await comm.write(received.flatMap((message, i) => isBlobMessage(message, i) ? [] : [i]));
      for (const message of received) await comm.write(message);
      for await (const _ of comm) { /* wait for the client to close */ }
    });
    await using comm = await dial(listener.contactAddress);
    const writes = Array.from({ length: BLOB_MESSAGES }, (_, i) => comm.write(blobMessage(i)));
    assertEquals(await comm.read(), [], "messages the server found overwritten");
    const received: unknown[] = [];
    for (let i = 0; i < BLOB_MESSAGES; i++) received.push(await comm.read());
    await Promise.all(writes);
    const overwritten = received.flatMap((message, i) => isBlobMessage(message, i) ? [] : [i]);
    assertEquals(overwritten, [], "messages the client found overwritten");
  });

  test("Comm.read() puts large binaries into the memory allocate gives", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    const pool = [new Uint8Array(300_000), new Uint8Array(300_000)];
    const asked: number[] = [];
    await using comm = await dial(listener.contactAddress, {
      allocate: (size) => {
        asked.push(size);
        return pool.shift() ?? new Uint8Array(size);
      },
    });
    const first = new Uint8Array(200_000).map((_, i) => i % 251);
    const second = new Uint8Array(100_000).fill(9);
    const message = { first, small: new Uint8Array(100).fill(1), second };
    await comm.write(message);
    const received = await comm.read() as typeof message;
    assertEquals(received, message);
    if (setup.byReference) {
      assertEquals(asked, [], "inproc passes messages by reference and allocates nothing");
      return;
    }
    assertEquals(asked, [200_000, 100_000], "allocate is asked for each large binary only");
    assertEquals(received.first.byteOffset, 0);
    assertEquals(received.first.buffer.byteLength, 300_000, "not the pool's buffer");
    assertEquals(received.second.buffer.byteLength, 300_000, "not the pool's buffer");
  });

  test("Comm.read() rejects with CommClosedError when allocate throws", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    await using comm = await dial(listener.contactAddress, {
      allocate: () => {
        throw new RangeError("pool exhausted");
      },
    });
    await comm.write("small messages never ask");
    assertEquals(await comm.read(), "small messages never ask");
    await comm.write(new Uint8Array(100_000));
    if (setup.byReference) {
      assertEquals((await comm.read() as Uint8Array).length, 100_000);
      return;
    }
    const error = await assertRejects(() => comm.read(), CommClosedError);
    assertStringIncludes(error.message, "allocate(100000) threw: pool exhausted");
    assertInstanceOf(error.cause, RangeError);
  });

  test("connect() and listen() throw TypeError when allocate is not a function", async () => {
    await using at = await site();
    const allocate = 42 as unknown as () => Uint8Array;
    await assertRejects(() => serve(at, echo, { allocate }), TypeError, "Invalid allocate 42");
    await using listener = await serve(at, echo);
    await assertRejects(
      () => dial(listener.contactAddress, { allocate }),
      TypeError,
      "Invalid allocate 42",
    );
  });

  test("Comm.read() gets every message that arrived before any was read", async () => {
    await using at = await site();
    await using listener = await serve(at);
    const client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const writes = Array.from({ length: UNREAD_MESSAGES }, (_, i) => client.write(i));
    // The reader falls behind on purpose: the whole batch is sent first.
    const closing = client.close();
    for (let i = 0; i < UNREAD_MESSAGES; i++) {
      const message = await server.read();
      if (message !== i) assertEquals(message, i, `message ${i} lost or out of order`);
    }
    await assertRejects(() => server.read(), CommClosedError);
    await closing;
    await Promise.all(writes);
  });

  test("Comm.write() waits for a slow reader and loses nothing", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const messages = Array.from(
      { length: SLOW_READER_MESSAGES },
      (_, i) => `${i}:`.padEnd(100_000, String.fromCharCode(97 + i % 26)),
    );
    // Far more than highWaterMark: later writes wait until the reader reads.
    const writes = messages.map((message) => client.write(message));
    for (let i = 0; i < messages.length; i++) {
      const message = await server.read();
      if (message !== messages[i]) {
        throw new Error(`message ${i} changed: ${String(message).slice(0, 40)}…`);
      }
    }
    await Promise.all(writes);
  });

  test("Comm.close() makes pending and later reads and writes reject with CommClosedError", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    const comm = await dial(listener.contactAddress);
    assertFalse(comm.closed);
    const pending = handled(comm.read());
    await comm.close();
    assert(comm.closed);
    await assertRejects(() => pending, CommClosedError);
    await assertRejects(() => comm.read(), CommClosedError);
    await assertRejects(() => comm.write("late"), CommClosedError);
    await comm.close(); // idempotent
    assert(comm.closed);
  });

  test("Comm.read() rejects with CommClosedError when the peer closes", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    assertFalse(server.closed);
    const reading = handled(server.read());
    await client.close();
    await assertRejects(() => reading, CommClosedError);
    assert(server.closed);
    await assertRejects(() => server.read(), CommClosedError);
    await assertRejects(() => server.write("late"), CommClosedError);
  });

  test("Comm.close() delivers every message written before it", async () => {
    await using at = await site();
    const received = Promise.withResolvers<unknown[]>();
    await using listener = await serve(at, async (comm) => {
      try {
        // Iteration must end, not throw, once the peer closed in order.
        received.resolve(await Array.fromAsync(comm));
      } catch (error) {
        received.reject(error);
      }
    });
    const comm = await dial(listener.contactAddress);
    const tail = patterned(1024 * 1024, 7);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < MESSAGES_BEFORE_CLOSE; i++) writes.push(comm.write(i));
    writes.push(comm.write({ tail }));
    await comm.close();
    await Promise.all(writes);
    const messages = await received.promise;
    assertEquals(messages.length, MESSAGES_BEFORE_CLOSE + 1, "messages lost at close");
    for (let i = 0; i < MESSAGES_BEFORE_CLOSE; i++) assertEquals(messages[i], i);
    const last = messages[MESSAGES_BEFORE_CLOSE] as { tail: Uint8Array };
    if (setup.byReference) assertStrictEquals(last.tail, tail);
    else assertEquals(await sha256(last.tail), await sha256(tail));
  });

  test("Comm.abort() rejects a pending read with CommClosedError and closes the peer", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const serverReading = handled(server.read());
    const clientReading = handled(client.read());
    const reason = new Error("given up on purpose");
    client.abort(reason);
    assert(client.closed);
    const error = await assertRejects(() => clientReading, CommClosedError);
    assertStrictEquals((error as Error).cause, reason);
    await assertRejects(() => client.write("late"), CommClosedError);
    await assertRejects(() => serverReading, CommClosedError);
    assert(server.closed);
    await client.close(); // resolves after abort
  });

  if (!setup.byReference) {
    test("Comm.abort() rejects a write still in flight with CommClosedError", async () => {
      await using at = await site();
      await using listener = await serve(at);
      await using client = await dial(listener.contactAddress);
      await using server = await acceptOne(listener);
      const writing = handled(client.write(patterned(16 * 1024 * 1024, 3)));
      client.abort();
      await assertRejects(() => writing, CommClosedError);
      // The peer sees the end, never a partial message taken for a whole one.
      await assertRejects(() => server.read(), CommClosedError);
    });
  }

  test("Comm.localAddress and Comm.peerAddress name both ends in the scheme", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const scheme = schemeOf(at.address);
    for (const address of [client.localAddress, client.peerAddress, server.localAddress]) {
      assert(address.startsWith(`${scheme}://`), `"${address}" is not a ${scheme} address`);
    }
    assert(server.peerAddress.startsWith(`${scheme}://`));
    assertEquals(client.peerAddress, listener.contactAddress);
    assertEquals(server.localAddress, listener.listenAddress);
    assertEquals(server.peerAddress, client.localAddress);
  });

  test("Listener.listenAddress and Listener.contactAddress name the scheme", async () => {
    await using at = await site();
    const scheme = schemeOf(at.address);
    const listener = await serve(at);
    try {
      assert(
        listener.listenAddress.startsWith(`${scheme}://`),
        `listenAddress "${listener.listenAddress}" is not a ${scheme} address`,
      );
      assert(
        listener.contactAddress.startsWith(`${scheme}://`),
        `contactAddress "${listener.contactAddress}" is not a ${scheme} address`,
      );
      assertFalse(listener.closed);
    } finally {
      await listener.close();
    }
    assert(listener.closed);
    await listener.close(); // idempotent
  });

  test("Listener.close() closes the comms it accepted", async () => {
    await using at = await site();
    const listener = await serve(at, echo);
    try {
      await using comm = await dial(listener.contactAddress);
      await comm.write("before");
      assertEquals(await comm.read(), "before");
      const reading = handled(comm.read());
      await listener.close();
      await assertRejects(() => reading, CommClosedError);
      assert(comm.closed);
    } finally {
      await listener.close();
    }
  });

  test("Listener yields incoming comms when it has no handler", async () => {
    await using at = await site();
    await using listener = await serve(at);
    const clients: Comm[] = [];
    const servers: Comm[] = [];
    try {
      for (let i = 0; i < 3; i++) clients.push(await dial(listener.contactAddress));
      for await (const comm of listener) {
        servers.push(comm);
        if (servers.length === clients.length) break;
      }
      await Promise.all(clients.map((client, i) => client.write(`hello ${i}`)));
      const greetings = await Promise.all(servers.map((server) => server.read()));
      assertEquals([...greetings].sort(), ["hello 0", "hello 1", "hello 2"]);
      await Promise.all(servers.map((server, i) => server.write(`${greetings[i]} back`)));
      const replies = await Promise.all(clients.map((client) => client.read()));
      assertEquals(replies, ["hello 0 back", "hello 1 back", "hello 2 back"]);
      assertFalse(listener.closed, "breaking out of the iteration closed the listener");
    } finally {
      await Promise.all([...clients, ...servers].map((comm) => comm.close()));
    }
  });

  test("listen() sends what a handler wrote before the comm is closed", async () => {
    await using at = await site();
    const tail = patterned(1024 * 1024, 11);
    await using listener = await serve(at, async (comm) => {
      await comm.read();
      // Not awaited: closing the comm after the handler must send them all.
      for (let i = 0; i < MESSAGES_BEFORE_CLOSE; i++) handled(comm.write(i));
      handled(comm.write({ tail }));
    });
    await using comm = await dial(listener.contactAddress);
    await comm.write("go");
    for (let i = 0; i < MESSAGES_BEFORE_CLOSE; i++) assertEquals(await comm.read(), i);
    const last = await comm.read() as { tail: Uint8Array };
    if (setup.byReference) assertStrictEquals(last.tail, tail);
    else assertEquals(await sha256(last.tail), await sha256(tail));
    await assertRejects(() => comm.read(), CommClosedError);
  });

  test("Listener iteration ends when the listener closes", async () => {
    await using at = await site();
    const listener = await serve(at);
    const iterating = (async () => {
      let count = 0;
      for await (const comm of listener) {
        count++;
        await comm.close();
      }
      return count;
    })();
    await listener.close();
    assertEquals(await iterating, 0);
  });

  test("Listener.close() leaves no client hanging while they connect", async () => {
    await using at = await site();
    const listener = await serve(at, echo);
    try {
      const connecting = Array.from(
        { length: RACING_CLIENTS },
        () => handled(dial(listener.contactAddress, { timeout: 500 })),
      );
      await Promise.race(connecting.map((comm) => comm.catch(() => {})));
      await listener.close();
      const outcomes = connecting.map(async (connected) => {
        let comm: Comm;
        try {
          comm = await connected;
        } catch (error) {
          return error instanceof ConnectError ? "not connected" : `connect(): ${error}`;
        }
        try {
          await comm.read();
          return "read a message nobody sent";
        } catch (error) {
          return error instanceof CommClosedError ? "closed" : `read(): ${error}`;
        } finally {
          await comm.close();
        }
      });
      for (const outcome of await Promise.all(outcomes)) {
        assert(outcome === "closed" || outcome === "not connected", outcome);
      }
    } finally {
      await listener.close();
    }
  });

  test("listen() reports a handler's error to onError and goes on serving", async () => {
    await using at = await site();
    const reported = Promise.withResolvers<unknown>();
    await using listener = await serve(at, async (comm) => {
      const message = await comm.read();
      if (message === "fail") throw new Error("handler failed on purpose");
      await comm.write(message);
    }, { onError: (error) => reported.resolve(error) });
    {
      await using doomed = await dial(listener.contactAddress);
      await doomed.write("fail");
      await assertRejects(() => doomed.read(), CommClosedError);
    }
    const error = await reported.promise;
    assertInstanceOf(error, Error);
    assertEquals((error as Error).message, "handler failed on purpose");
    await using comm = await dial(listener.contactAddress);
    await comm.write("still serving");
    assertEquals(await comm.read(), "still serving");
  });

  test("connect() rejects with ConnectTimeoutError where nothing listens", async () => {
    await using at = await site();
    const address = await deadAddress(at);
    const error = await assertRejects(
      () => dial(address, { timeout: 200 }),
      ConnectTimeoutError,
    );
    assertStringIncludes((error as Error).message, `"${address}"`);
  });

  if (setup.canListenAgain !== false) {
    test("connect() retries until a listener appears", async () => {
      await using at = await site();
      const address = await deadAddress(at);
      const connecting = handled(dial(address, { timeout: 10_000 }));
      await pause(50); // let it be refused at least once
      await using listener = await listen(address, echo, listenOptions);
      assertEquals(listener.contactAddress, address);
      await using comm = await connecting;
      await comm.write("finally");
      assertEquals(await comm.read(), "finally");
    });
  }

  test("connect() rejects with the signal's reason when aborted", async () => {
    await using at = await site();
    const address = await deadAddress(at);
    const early = new Error("aborted before connecting");
    const error = await dial(address, { signal: AbortSignal.abort(early) }).then(
      (comm) => comm.close().then(() => "connected"),
      (error) => error,
    );
    assertStrictEquals(error, early);

    // Aborted while it retries against nothing.
    const controller = new AbortController();
    const connecting = dial(address, { timeout: 10_000, signal: controller.signal }).then(
      (comm) => comm.close().then(() => "connected"),
      (error) => error,
    );
    await pause(20);
    const late = new Error("aborted while connecting");
    controller.abort(late);
    assertStrictEquals(await connecting, late);
  });

  test("Comm.read() rejects with the signal's reason and the comm stays usable", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    await using comm = await dial(listener.contactAddress);
    const controller = new AbortController();
    const reading = comm.read({ signal: controller.signal });
    const reason = new Error("stopped waiting");
    controller.abort(reason);
    assertStrictEquals(await reading.catch((error) => error), reason);
    const already = await comm.read({ signal: AbortSignal.abort(reason) }).catch((e) => e);
    assertStrictEquals(already, reason);
    assertFalse(comm.closed);
    await comm.write("still here");
    assertEquals(await comm.read({ signal: new AbortController().signal }), "still here");
    await comm.write("and here");
    assertEquals(await comm.read(), "and here");

    // An aborted read in the middle leaves the others in order.
    const middle = new AbortController();
    const first = comm.read();
    const skipped = handled(comm.read({ signal: middle.signal }));
    const last = comm.read();
    middle.abort(reason);
    assertStrictEquals(await skipped.catch((error) => error), reason);
    await comm.write("one");
    await comm.write("two");
    assertEquals(await first, "one");
    assertEquals(await last, "two");
  });

  if (!setup.byReference) {
    test("Comm.write() rejects an unencodable message with TypeError and stays open", async () => {
      await using at = await site();
      await using listener = await serve(at, echo);
      await using comm = await dial(listener.contactAddress);
      await assertRejects(() => comm.write({ call: () => {} }), TypeError);
      await assertRejects(() => comm.write(Symbol("no")), TypeError);
      assertFalse(comm.closed);
      await comm.write("fine");
      assertEquals(await comm.read(), "fine");
    });
  }

  test("connect() and listen() reject malformed addresses with AddressError", async () => {
    await using at = await site();
    // Control characters are refused in every scheme (a space is fine in a
    // unix socket path, so it is no longer garbage everywhere).
    const garbage = `${schemeOf(at.address)}://not\nan\taddress`;
    type Attempt = [call: string, address: string, attempt: () => Promise<Comm | Listener>];
    const attempts: Attempt[] = [
      ...[garbage, ...setup.malformedAddresses?.connect ?? []].map((address): Attempt => [
        `connect("${address}")`,
        address,
        () => dial(address, { timeout: 1_000 }),
      ]),
      ...[garbage, ...setup.malformedAddresses?.listen ?? []].map((address): Attempt => [
        `listen("${address}")`,
        address,
        () => listen(address, listenOptions),
      ]),
    ];
    // Every address is tried, so that a failure lists them all.
    const problems: string[] = [];
    for (const [call, address, attempt] of attempts) {
      const error = await attempt().then(
        async (opened) => {
          await opened.close();
          return undefined;
        },
        (error) => error,
      );
      if (!(error instanceof AddressError)) {
        problems.push(`${call} gave ${error === undefined ? "no error" : String(error)}`);
      } else if (
        !error.message.includes(`"${address}"`) &&
        !error.message.includes(JSON.stringify(address))
      ) {
        problems.push(`${call}: the message does not quote the address: ${error.message}`);
      }
    }
    assertEquals(problems, []);
  });

  // -- authkey, the multiprocessing framing, poll(), readInto(), lastAccepted --

  test("connect() with the listener's authkey passes the challenge and carries messages", async () => {
    await using at = await site();
    await using listener = await serve(at, echo, { authkey: AUTHKEY });
    await using comm = await dial(listener.contactAddress, { authkey: AUTHKEY });
    for (const message of ["after the challenge", { n: 1 }, new Uint8Array([35, 87, 69])]) {
      await comm.write(message);
      assertEquals(await comm.read(), message);
    }
  });

  test("connect() with a wrong authkey rejects with AuthenticationError and the listener reports it", async () => {
    await using at = await site();
    const reported = Promise.withResolvers<unknown>();
    await using listener = await serve(at, echo, {
      authkey: AUTHKEY,
      onError: (error) => reported.resolve(error),
    });
    await assertRejects(
      () => dial(listener.contactAddress, { authkey: `not ${AUTHKEY}`, timeout: 5_000 }),
      AuthenticationError,
    );
    assertInstanceOf(await reported.promise, AuthenticationError);
    assertEquals(listener.lastAccepted, undefined, "a comm that failed the challenge counted");
    // The listener goes on serving clients that know the key.
    await using comm = await dial(listener.contactAddress, { authkey: AUTHKEY });
    await comm.write("still serving");
    assertEquals(await comm.read(), "still serving");
  });

  test("connect() and listen() take an authkey as a Uint8Array the same as its UTF-8 string", async () => {
    await using at = await site();
    const text = "clé partagée 🔑";
    const bytes = new TextEncoder().encode(text);
    const padded = new Uint8Array(bytes.length + 8).fill(0xaa);
    padded.set(bytes, 4);
    const view = padded.subarray(4, 4 + bytes.length); // only the view is the key
    const pairs: [listenKey: string | Uint8Array, connectKey: string | Uint8Array][] = [
      [text, bytes],
      [bytes, text],
      [text, view],
      [new Uint8Array([0, 255, 128, 7]), new Uint8Array([0, 255, 128, 7])], // not UTF-8
    ];
    for (const [i, [listenKey, connectKey]] of pairs.entries()) {
      await using listener = await serve(at, echo, { authkey: listenKey });
      await using comm = await dial(listener.contactAddress, {
        authkey: connectKey,
        timeout: 5_000,
      });
      await comm.write(i);
      assertEquals(await comm.read(), i, `pair ${i}`);
    }
  });

  test("connect() and listen() with the multiprocessing framing carry raw bytes of 0 B to 1 MiB", async () => {
    await using at = await site();
    const framing = "multiprocessing";
    await using listener = await serve(at, echo, { framing });
    await using comm = await dial(listener.contactAddress, { framing });
    const payloads = MP_SIZES.map((size) => patterned(size, size + 1));
    // One at a time, then all pipelined.
    const received: unknown[] = [];
    for (const payload of payloads) {
      await comm.write(payload);
      received.push(await comm.read());
    }
    await Promise.all(payloads.map((payload) => comm.write(payload)));
    for (let i = 0; i < payloads.length; i++) received.push(await comm.read());
    for (const [i, back] of received.entries()) {
      const payload = payloads[i % payloads.length];
      const label = `${payload.length} bytes, ${i < payloads.length ? "alone" : "pipelined"}`;
      if (setup.byReference) {
        assertStrictEquals(back, payload, label);
        continue;
      }
      assertInstanceOf(back, Uint8Array, label);
      assert(back !== payload, `${label}: the same object came back, not a copy`);
      assertEquals((back as Uint8Array).length, payload.length, label);
      assertEquals(await sha256(back as Uint8Array), await sha256(payload), label);
    }
    if (!setup.byReference) {
      // Any binary is sent as its bytes, and read as a Uint8Array.
      const floats = new Float64Array([1.5, -2, Math.PI]);
      await comm.write(floats);
      assertEquals(await comm.read(), new Uint8Array(floats.buffer));
    }
  });

  // A client's first message, written as soon as connect() resolves, often
  // arrives together with its #WELCOME#: it must be decoded then, not once a
  // second message comes (this hung over tcp and unix before bf2e71d).
  test(
    "connect() and listen() with the multiprocessing framing run the authkey challenge",
    async () => {
      await using at = await site();
      const options = { framing: "multiprocessing", authkey: AUTHKEY } as const;
      await using listener = await serve(at, echo, options);
      await using comm = await dial(listener.contactAddress, options);
      const payload = new Uint8Array([1, 2, 3, 4]);
      await comm.write(payload);
      assertEquals(await readWithin(comm, 2_000), payload);
    },
  );

  test("connect() with a wrong authkey and the multiprocessing framing rejects with AuthenticationError", async () => {
    await using at = await site();
    const reported = Promise.withResolvers<unknown>();
    const options = { framing: "multiprocessing", authkey: AUTHKEY } as const;
    await using listener = await serve(at, echo, {
      ...options,
      onError: (error) => reported.resolve(error),
    });
    await assertRejects(
      () => dial(listener.contactAddress, { ...options, authkey: "wrong", timeout: 5_000 }),
      AuthenticationError,
    );
    assertInstanceOf(await reported.promise, AuthenticationError);
  });

  // The same with the dask framing: the client's handshake arrives with its
  // #WELCOME#, and a handler that speaks first must not wait for the client.
  test("listen() with authkey lets a handler speak first", async () => {
    await using at = await site();
    await using listener = await serve(at, async (comm) => {
      await comm.write("greeting");
      await echo(comm);
    }, { authkey: AUTHKEY });
    await using comm = await dial(listener.contactAddress, { authkey: AUTHKEY });
    assertEquals(await readWithin(comm, 2_000), "greeting");
  });

  if (!setup.byReference) {
    test("Comm.write() with the multiprocessing framing rejects a message that is not binary with TypeError", async () => {
      await using at = await site();
      const framing = "multiprocessing";
      await using listener = await serve(at, echo, { framing });
      await using comm = await dial(listener.contactAddress, { framing });
      for (const message of ["text", { op: "ping" }, null, 42, [new Uint8Array(1)]]) {
        const error = await assertRejects(() => comm.write(message), TypeError);
        assertStringIncludes(error.message, "multiprocessing");
      }
      assertFalse(comm.closed);
      const payload = new Uint8Array([9, 8, 7]);
      await comm.write(payload);
      assertEquals(await comm.read(), payload, "the comm is no longer usable");
    });
  }

  test("Comm.poll() resolves false on an idle comm when the time runs out", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    assertEquals(await client.poll(), false);
    assertEquals(await client.poll(0), false);
    assertEquals(await client.poll(20), false);
    assertEquals(await server.poll(5), false);
    await client.write("not consumed by the polls");
    assertEquals(await server.read(), "not consumed by the polls");
  });

  test("Comm.poll() resolves true once a message is ready, and consumes nothing", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const waiting = client.poll(10_000); // resolves when the message comes
    await server.write("first");
    assertEquals(await waiting, true);
    assertEquals(await client.poll(), true);
    assertEquals(await client.poll(5_000), true);
    assertEquals(await client.read(), "first");
    assertEquals(await client.poll(), false, "a message read is still reported");
    await server.write("second");
    await server.write(new Uint8Array(100_000).fill(2));
    assertEquals(await client.poll(5_000), true);
    assertEquals(await client.read(), "second");
    assertEquals(await client.poll(5_000), true);
    assertEquals((await client.read() as Uint8Array).length, 100_000);
  });

  test("Comm.poll() resolves true once the peer closed, and after a local close", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const waiting = client.poll(10_000);
    await server.write("last");
    await server.close();
    assertEquals(await waiting, true);
    assertEquals(await client.read(), "last");
    assertEquals(await client.poll(5_000), true, "the end is not ready");
    await assertRejects(() => client.read(), CommClosedError);
    assertEquals(await client.poll(), true);
    await client.close();
    assertEquals(await client.poll(), true, "after a local close");
  });

  test("Comm.poll() rejects a negative or NaN timeout with RangeError", async () => {
    await using at = await site();
    await using listener = await serve(at, echo);
    await using comm = await dial(listener.contactAddress);
    for (const timeout of [-1, -Infinity, NaN, "10" as unknown as number]) {
      await assertRejects(() => comm.poll(timeout), RangeError, "poll timeout");
    }
    await comm.write("still usable");
    assertEquals(await comm.poll(Infinity), true);
    assertEquals(await comm.read(), "still usable");
  });

  test("Comm.readInto() copies a binary message into the buffer at offset", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const buffer = new Uint8Array(10).fill(0xee);
    await server.write(new Uint8Array([1, 2, 3, 4, 5]));
    assertEquals(await client.readInto(buffer), 5);
    assertEquals(buffer, new Uint8Array([1, 2, 3, 4, 5, 0xee, 0xee, 0xee, 0xee, 0xee]));
    // It waits for a message that has not come yet.
    const reading = client.readInto(buffer, 8);
    await server.write(new Uint8Array([6, 7]));
    assertEquals(await reading, 2);
    assertEquals(buffer, new Uint8Array([1, 2, 3, 4, 5, 0xee, 0xee, 0xee, 6, 7]));
    await server.write(new Uint8Array(0));
    assertEquals(await client.readInto(buffer, buffer.length), 0, "an empty message at the end");
    // A binary large enough to travel as a frame of its own.
    const big = patterned(100_000, 5);
    const room = new Uint8Array(100_001);
    await server.write(big);
    assertEquals(await client.readInto(room, 1), big.length);
    assertEquals(room[0], 0);
    assertEquals(await sha256(room.subarray(1)), await sha256(big));
  });

  test("Comm.readInto() rejects with BufferTooShortError carrying a message that does not fit", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const message = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
    await server.write(message);
    await server.write("next");
    await server.write(new Uint8Array([1, 2, 3]));
    await server.write(new Uint8Array([9]));
    const buffer = new Uint8Array(4).fill(0xee);
    const error = await assertRejects(() => client.readInto(buffer), BufferTooShortError);
    assertEquals(error.data, message, "the message that did not fit is lost");
    assertEquals(buffer, new Uint8Array(4).fill(0xee), "a partial copy was made");
    assertEquals(await client.read(), "next");
    // Too short only because of the offset.
    const wide = new Uint8Array(10).fill(0xee);
    const late = await assertRejects(() => client.readInto(wide, 8), BufferTooShortError);
    assertEquals(late.data, new Uint8Array([1, 2, 3]));
    assertEquals(wide, new Uint8Array(10).fill(0xee));
    assertEquals(await client.readInto(wide, 9), 1, "a message that just fits");
    assertEquals(wide[9], 9);
  });

  test("Comm.readInto() rejects a message that is not binary with TypeError and leaves it for read()", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const buffer = new Uint8Array(16);
    for (const message of [{ not: "binary" }, "text", 42]) {
      await server.write(message);
      const error = await assertRejects(() => client.readInto(buffer), TypeError);
      assertStringIncludes(error.message, "not binary");
      assertEquals(await client.poll(), true, "the message was taken");
      await assertRejects(() => client.readInto(buffer), TypeError, "not binary");
      assertEquals(await client.read(), message);
    }
    await server.write(new Uint8Array([4, 2]));
    assertEquals(await client.readInto(buffer), 2);
    assertEquals(buffer.subarray(0, 2), new Uint8Array([4, 2]));
  });

  test("Comm.readInto() rejects an offset outside the buffer with RangeError", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    await server.write(new Uint8Array([1]));
    const buffer = new Uint8Array(10);
    for (const offset of [-1, 11, 1.5, NaN, Infinity]) {
      await assertRejects(() => client.readInto(buffer, offset), RangeError, "offset");
    }
    assertEquals(await client.readInto(buffer, 10 - 1), 1, "a bad offset consumed the message");
  });

  test("Comm.readInto() rejects with CommClosedError once the peer closed and nothing is left", async () => {
    await using at = await site();
    await using listener = await serve(at);
    await using client = await dial(listener.contactAddress);
    await using server = await acceptOne(listener);
    const buffer = new Uint8Array(4);
    const reading = client.readInto(buffer);
    await server.write(new Uint8Array([7]));
    await server.close();
    assertEquals(await reading, 1);
    await assertRejects(() => client.readInto(buffer), CommClosedError);
  });

  test("Listener.lastAccepted names the peer of the comm accepted last", async () => {
    await using at = await site();
    await using listener = await serve(at);
    assertEquals(listener.lastAccepted, undefined);
    await using first = await dial(listener.contactAddress);
    await using firstServer = await acceptOne(listener);
    assertEquals(listener.lastAccepted, firstServer.peerAddress);
    assertEquals(listener.lastAccepted, first.localAddress);
    await using second = await dial(listener.contactAddress);
    await using secondServer = await acceptOne(listener);
    assertEquals(listener.lastAccepted, secondServer.peerAddress);
    assertEquals(listener.lastAccepted, second.localAddress);
    await listener.close();
    assertEquals(listener.lastAccepted, second.localAddress, "forgotten at close");
  });

  test("Listener.lastAccepted is set once the authkey challenge passed", async () => {
    await using at = await site();
    let seen: string | undefined = "not called";
    let listener: Listener | undefined = undefined;
    listener = await serve(at, async (comm) => {
      seen = listener!.lastAccepted;
      await echo(comm);
    }, { authkey: AUTHKEY, onError: () => {} });
    try {
      await assertRejects(
        () => dial(listener.contactAddress, { authkey: "wrong", timeout: 5_000 }),
        AuthenticationError,
      );
      await using comm = await dial(listener.contactAddress, { authkey: AUTHKEY });
      await comm.write("in");
      assertEquals(await comm.read(), "in");
      assertEquals(seen, comm.localAddress, "not set before the handler ran");
      assertEquals(listener.lastAccepted, comm.localAddress);
    } finally {
      await listener.close();
    }
  });
}

/** Echoes every message back until the peer closes. */
async function echo(comm: Comm): Promise<void> {
  for await (const message of comm) await comm.write(message);
}

/** The next message, or a failure naming the wait if none comes within `ms`. */
async function readWithin(comm: Comm, ms: number): Promise<unknown> {
  try {
    return await comm.read({ signal: AbortSignal.timeout(ms) });
  } catch (error) {
    if (error instanceof DOMException && error.name === "TimeoutError") {
      throw new Error(`No message came within ${ms} ms`);
    }
    throw error;
  }
}

/** The next comm a listener without handler accepts. */
async function acceptOne(listener: Listener): Promise<Comm> {
  const next = await listener[Symbol.asyncIterator]().next();
  if (next.done) throw new Error("The listener closed before a comm arrived");
  return next.value;
}

function schemeOf(address: string): string {
  return address.slice(0, address.indexOf("://"));
}

/** Every kind of message a comm carries, as `[label, message]`. */
function sampleMessages(): [string, unknown][] {
  const big = patterned(100_000, 42);
  return [
    ["null", null],
    ["true", true],
    ["false", false],
    ["zero", 0],
    ["small int", 7],
    ["negative int", -123456],
    ["int32", 2 ** 31 - 1],
    ["uint32", 2 ** 32 - 1],
    ["int above 2^32", 2 ** 40 + 5],
    ["largest safe int", Number.MAX_SAFE_INTEGER],
    ["smallest safe int", Number.MIN_SAFE_INTEGER],
    ["float", 1.5],
    ["negative float", -0.1],
    ["pi", Math.PI],
    ["huge float", 1e300],
    ["tiny float", 5e-324],
    ["infinity", Infinity],
    ["NaN", NaN],
    ["empty string", ""],
    ["ascii string", "hello, world"],
    ["unicode string", "héllo wörld, 日本語, emoji 🎉👩‍👩‍👧, nul \u0000 inside"],
    ["long string", "ab".repeat(50_000)],
    ["empty array", []],
    ["empty object", {}],
    ["nested array", [1, "two", [3, [4, [5, null]]], { six: 6 }]],
    ["nested object", { a: 1, b: { c: [1, 2, { d: null, e: "é" }] }, "key with spaces": true }],
    ["small Uint8Array", new Uint8Array([0, 1, 2, 127, 128, 255])],
    ["empty Uint8Array", new Uint8Array(0)],
    ["Uint8Array in an object", { op: "data", payload: new Uint8Array([9, 8, 7]) }],
    ["Uint8Array over the frame threshold", { op: "big", payload: big, after: "tail" }],
    ["several binaries", [big.subarray(0, 70_000), new Uint8Array([1]), big]],
    ["views into a larger buffer", [big.subarray(1_000, 81_000), big.subarray(5, 20)]],
    ["Set", new Set([1, "two", 3.5])],
    ["Set in an object", { tags: new Set(["a", "b"]) }],
    ["Date", new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789))],
    ["Date before 1970", new Date(-1234567890123)],
    ["Dates in an array", [new Date(0), new Date(1700000000123)]],
  ];
}

/**
 * Message `i` of the concurrent-write case: strings copied into the write
 * buffer, binaries sent as frames of their own, and both at once.
 */
function largeMessage(i: number): unknown {
  const letter = String.fromCharCode(65 + i % 26);
  switch (i % 3) {
    case 0:
      return { i, text: letter.repeat(40_000 + i) };
    case 1:
      return { i, blob: new Uint8Array(100_000 + i).fill(i) };
    default:
      return { i, text: letter.repeat(1_000 + i), blob: new Uint8Array(70_000).fill(255 - i) };
  }
}

function checkLargeMessage(received: unknown, i: number): void {
  const expected = largeMessage(i) as { i: number; text?: string; blob?: Uint8Array };
  const got = received as { i: number; text?: string; blob?: Uint8Array };
  assertEquals(got.i, i, `message ${i} out of place`);
  assertEquals(got.text, expected.text, `message ${i}: text mixed up`);
  if (expected.blob) {
    const blob = got.blob as Uint8Array;
    assertInstanceOf(blob, Uint8Array);
    assertEquals(blob.length, expected.blob.length, `message ${i}: blob length`);
    const value = expected.blob[0];
    for (let k = 0; k < blob.length; k++) {
      if (blob[k] !== value) {
        throw new Error(`message ${i}: blob byte ${k} is ${blob[k]}, expected ${value}`);
      }
    }
  }
}

/** Message `i` of the overwrite case: a binary of a size from tiny to framed. */
function blobMessage(i: number): { i: number; blob: Uint8Array } {
  const sizes = [1, 17, 200, 4_000, 40_000, 70_000, 100_000];
  return { i, blob: new Uint8Array(sizes[i % sizes.length] + i).fill(i) };
}

function isBlobMessage(message: unknown, i: number): boolean {
  const expected = blobMessage(i).blob;
  const { i: index, blob } = message as { i: number; blob: Uint8Array };
  if (index !== i || !(blob instanceof Uint8Array) || blob.length !== expected.length) {
    return false;
  }
  return blob.every((byte) => byte === i);
}

/** `length` bytes of xorshift32 noise from `seed`, so misplaced bytes show. */
function patterned(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer, 0, length >>> 2);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  for (let i = words.length * 4; i < length; i++) bytes[i] = i;
  return bytes;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Marks a promise as handled at once, so that a rejection that comes before
 * the case asserts it is not reported as unhandled.
 */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  return promise;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Settles with `work`, or fails if it hangs for `HANG_GUARD_MS`. */
async function guard(work: Promise<void>, what: string): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`"${what}" hung for ${HANG_GUARD_MS} ms`)),
          HANG_GUARD_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
