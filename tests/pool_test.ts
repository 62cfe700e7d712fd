// ConnectionPool: reuse, counters, the limit, first come first served,
// timeouts and aborts, broken comms, close(), and rpc() through the pool.
// Everything binds to loopback or inproc.

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
  ConnectionPool,
  ConnectTimeoutError,
  listen,
  type Listener,
  pipe,
  PoolTimeoutError,
  RemoteError,
  Server,
} from "@x/comm";
import { counted, type Gauge } from "./_gauge.ts";
import { until } from "./_wait.ts";

/**
 * An echo listener that keeps the comms it accepted and counts those alive
 * in `gauge` (which listeners may share).
 */
async function echoListener(
  address = "inproc://",
  gauge: Gauge = { live: 0, max: 0 },
): Promise<Listener & { comms: Comm[]; gauge: Gauge }> {
  const comms: Comm[] = [];
  const listener = await listen(
    address,
    counted(gauge, async (comm) => {
      comms.push(comm);
      try {
        for await (const message of comm) await comm.write(message);
      } catch {
        // The client went away mid-write.
      }
    }),
  );
  return Object.assign(listener, { comms, gauge });
}

/** An address where nothing listens: a free loopback port. */
async function deadAddress(): Promise<string> {
  const listener = await listen("tcp://127.0.0.1:0");
  const address = listener.contactAddress;
  await listener.close();
  return address;
}

Deno.test("ConnectionPool.get() hands back the idle comm given to reuse()", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool();
  const address = listener.contactAddress;
  const first = await pool.get(address);
  await first.write("ping");
  assertEquals(await first.read(), "ping");
  pool.reuse(address, first);
  const second = await pool.get(address);
  assertStrictEquals(second, first);
  assertFalse(second.closed);
  pool.reuse(address, second);
  assertEquals(listener.comms.length, 1);
});

Deno.test("ConnectionPool.get() opens separate comms to separate addresses", async () => {
  await using one = await echoListener();
  await using two = await echoListener();
  await using pool = new ConnectionPool();
  const a = await pool.get(one.contactAddress);
  const b = await pool.get(two.contactAddress);
  assertNotStrictEquals(a, b);
  assertEquals(a.peerAddress, one.contactAddress);
  assertEquals(b.peerAddress, two.contactAddress);
  pool.reuse(one.contactAddress, a);
  pool.reuse(two.contactAddress, b);
  // Each address gets its own idle comm back.
  assertStrictEquals(await pool.get(two.contactAddress), b);
  assertStrictEquals(await pool.get(one.contactAddress), a);
  pool.reuse(one.contactAddress, a);
  pool.reuse(two.contactAddress, b);
});

Deno.test("ConnectionPool.get() opens a second comm when the idle one is in use", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool();
  const address = listener.contactAddress;
  const a = await pool.get(address);
  const b = await pool.get(address);
  assertNotStrictEquals(a, b);
  assertEquals(pool.open, 2);
  pool.reuse(address, a);
  pool.reuse(address, b);
  assertEquals(pool.idle, 2);
});

Deno.test("ConnectionPool counts open, active, idle and waiting comms", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const address = listener.contactAddress;
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [0, 0, 0, 0]);
  assertEquals(pool.limit, 1);

  // A comm being opened counts as open at once.
  const getting = pool.get(address);
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [1, 0, 0, 0]);
  const comm = await getting;
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [1, 1, 0, 0]);

  const waiting = pool.get(address);
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [1, 1, 0, 1]);

  pool.reuse(address, comm);
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [1, 1, 0, 0]);
  assertStrictEquals(await waiting, comm);

  pool.reuse(address, comm);
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [1, 0, 1, 0]);
  assertFalse(pool.closed);
});

Deno.test("ConnectionPool never has more comms open than its limit", async () => {
  // Sampled on the client side only: a TCP server sees a comm the pool
  // closed to make room end a little after the pool closed it, so server-side
  // counts may overlap with the replacement (the next test counts on inproc
  // servers, where closing is immediate).
  const LIMIT = 3;
  const listeners = await Promise.all([
    echoListener("tcp://127.0.0.1:0"),
    echoListener("tcp://127.0.0.1:0"),
    echoListener(),
    echoListener(),
  ]);
  try {
    await using pool = new ConnectionPool({ limit: LIMIT });
    let maxOpen = 0;
    const sample = () => {
      maxOpen = Math.max(maxOpen, pool.open);
      assert(pool.open <= LIMIT, `pool.open is ${pool.open}`);
    };
    const CALLERS = 24;
    const ROUNDS = 10;
    await Promise.all(Array.from({ length: CALLERS }, async (_, caller) => {
      for (let round = 0; round < ROUNDS; round++) {
        const address = listeners[(caller + round) % listeners.length].contactAddress;
        sample();
        const comm = await pool.get(address);
        sample();
        await comm.write([caller, round]);
        assertEquals(await comm.read(), [caller, round]);
        sample();
        pool.reuse(address, comm);
        sample();
      }
    }));
    assertEquals(maxOpen, LIMIT);
  } finally {
    await Promise.all(listeners.map((listener) => listener.close()));
  }
});

Deno.test("ConnectionPool never has more comms open than its limit, counted by the servers", async () => {
  // On inproc, a comm the pool closes to make room ends on the server side at
  // once, so the servers' count must stay within the limit at every moment.
  const LIMIT = 2;
  const gauge: Gauge = { live: 0, max: 0 };
  await using one = await echoListener("inproc://", gauge);
  await using two = await echoListener("inproc://", gauge);
  await using three = await echoListener("inproc://", gauge);
  await using pool = new ConnectionPool({ limit: LIMIT });
  const addresses = [one.contactAddress, two.contactAddress, three.contactAddress];
  await Promise.all(Array.from({ length: 12 }, async (_, caller) => {
    for (let round = 0; round < 10; round++) {
      const address = addresses[(caller * 7 + round) % addresses.length];
      const comm = await pool.get(address);
      assert(gauge.live <= LIMIT, `the servers have ${gauge.live} comms`);
      await comm.write(round);
      assertEquals(await comm.read(), round);
      pool.reuse(address, comm);
    }
  }));
  assert(gauge.max <= LIMIT, `the servers had ${gauge.max} comms at once`);
  assertEquals(gauge.max, LIMIT);
});

Deno.test("ConnectionPool.get() serves waiters first come first served at the limit", async () => {
  await using one = await echoListener();
  await using two = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const held = await pool.get(one.contactAddress);
  const order: number[] = [];
  // Waiters for both addresses: the first one for `two` needs the comm to
  // `one` closed to make room, and still goes in its turn.
  const addresses = [0, 1, 0, 0, 1, 1, 0, 1].map((i) => [one, two][i].contactAddress);
  const waiters = addresses.map(async (address, i) => {
    const comm = await pool.get(address);
    order.push(i);
    assertEquals(comm.peerAddress, address);
    await delay(0);
    pool.reuse(address, comm);
  });
  assertEquals(pool.waiting, addresses.length);
  // A caller arriving now queues behind them too.
  const late = pool.get(one.contactAddress).then((comm) => {
    order.push(addresses.length);
    pool.reuse(one.contactAddress, comm);
  });
  pool.reuse(one.contactAddress, held);
  await Promise.all([...waiters, late]);
  assertEquals(order, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert(pool.open <= 1);
});

Deno.test("ConnectionPool.get() times out with PoolTimeoutError and leaves the queue", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const address = listener.contactAddress;
  const held = await pool.get(address);
  const error = await assertRejects(
    () => pool.get(address, { timeout: 20 }),
    PoolTimeoutError,
  );
  assertStringIncludes(error.message, address);
  assertStringIncludes(error.message, "all 1 comms");
  assertEquals(pool.waiting, 0);
  // The comm given back goes idle, not to the caller who gave up.
  pool.reuse(address, held);
  assertEquals([pool.open, pool.active, pool.idle], [1, 0, 1]);
  assertStrictEquals(await pool.get(address), held);
  pool.reuse(address, held);
});

Deno.test("ConnectionPool's timeout option bounds waiting in get()", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1, timeout: 20 });
  const held = await pool.get(listener.contactAddress);
  await assertRejects(() => pool.get(listener.contactAddress), PoolTimeoutError);
  pool.reuse(listener.contactAddress, held);
});

Deno.test("ConnectionPool.get() rejects with the signal's reason when aborted while waiting", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const address = listener.contactAddress;
  const held = await pool.get(address);
  const controller = new AbortController();
  const waiting = pool.get(address, { signal: controller.signal });
  assertEquals(pool.waiting, 1);
  const reason = new Error("no longer needed");
  controller.abort(reason);
  const error = await assertRejects(() => waiting);
  assertStrictEquals(error, reason);
  assertEquals(pool.waiting, 0);
  pool.reuse(address, held);
  assertEquals(pool.idle, 1);

  // An already aborted signal rejects at once, with its reason.
  const aborted = AbortSignal.abort(reason);
  assertStrictEquals(await assertRejects(() => pool.get(address, { signal: aborted })), reason);
  assertEquals(pool.idle, 1);
});

Deno.test("ConnectionPool.get() closes an idle comm to another address to make room", async () => {
  await using one = await echoListener();
  await using two = await echoListener();
  await using three = await echoListener();
  await using pool = new ConnectionPool({ limit: 2 });
  const a = await pool.get(one.contactAddress);
  const b = await pool.get(two.contactAddress);
  pool.reuse(one.contactAddress, a);
  pool.reuse(two.contactAddress, b);
  // `a` is the least recently used idle comm: it goes first.
  const c = await pool.get(three.contactAddress);
  assert(a.closed, "the least recently used idle comm was closed");
  assertFalse(b.closed);
  assertEquals([pool.open, pool.active, pool.idle], [2, 1, 1]);
  await until(() => one.gauge.live === 0, "the server saw the evicted comm end");
  pool.reuse(three.contactAddress, c);
  assertStrictEquals(await pool.get(two.contactAddress), b);
  pool.reuse(two.contactAddress, b);
});

Deno.test("ConnectionPool.reuse() drops a comm that was closed or aborted while in use", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool();
  const address = listener.contactAddress;
  const closed = await pool.get(address);
  const aborted = await pool.get(address);
  await closed.close();
  aborted.abort(new Error("broken"));
  pool.reuse(address, closed);
  pool.reuse(address, aborted);
  assertEquals([pool.open, pool.active, pool.idle], [0, 0, 0]);
  const fresh = await pool.get(address);
  assertFalse(fresh.closed);
  assert(fresh !== closed && fresh !== aborted);
  pool.reuse(address, fresh);
});

Deno.test("ConnectionPool.reuse() of a broken comm makes room for a waiter", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const address = listener.contactAddress;
  const broken = await pool.get(address);
  const waiting = pool.get(address);
  broken.abort();
  pool.reuse(address, broken);
  const fresh = await waiting;
  assertNotStrictEquals(fresh, broken);
  assertFalse(fresh.closed);
  pool.reuse(address, fresh);
});

Deno.test("ConnectionPool.get() skips an idle comm that the server closed", async () => {
  await using listener = await echoListener("tcp://127.0.0.1:0");
  await using pool = new ConnectionPool();
  const address = listener.contactAddress;
  const first = await pool.get(address);
  pool.reuse(address, first);
  await listener.comms[0].close();
  await until(() => first.closed, "the client saw the server close");
  const second = await pool.get(address);
  assertNotStrictEquals(second, first);
  assertFalse(second.closed);
  await second.write("still here");
  assertEquals(await second.read(), "still here");
  assertEquals([pool.open, pool.active, pool.idle], [1, 1, 0]);
  pool.reuse(address, second);
});

Deno.test("ConnectionPool.reuse() refuses comms it did not hand out, twice, or for another address", async () => {
  await using one = await echoListener();
  await using two = await echoListener();
  await using pool = new ConnectionPool();
  const [a, b] = pipe();
  try {
    assertThrows(() => pool.reuse(one.contactAddress, a), TypeError, "did not hand it out");
  } finally {
    await a.close();
    await b.close();
  }
  const comm = await pool.get(one.contactAddress);
  const error = assertThrows(() => pool.reuse(two.contactAddress, comm), TypeError);
  assertStringIncludes(error.message, one.contactAddress);
  assertStringIncludes(error.message, two.contactAddress);
  assertEquals(pool.active, 1);
  pool.reuse(one.contactAddress, comm);
  assertThrows(() => pool.reuse(one.contactAddress, comm), TypeError, "given back already");
  assertEquals([pool.open, pool.active, pool.idle], [1, 0, 1]);
});

Deno.test("ConnectionPool.collect() closes idle comms and keeps those in use", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool();
  const address = listener.contactAddress;
  const busy = await pool.get(address);
  const idle = await pool.get(address);
  pool.reuse(address, idle);
  await pool.collect();
  assert(idle.closed);
  assertFalse(busy.closed);
  assertEquals([pool.open, pool.active, pool.idle], [1, 1, 0]);
  await busy.write("busy");
  assertEquals(await busy.read(), "busy");
  pool.reuse(address, busy);
  assertStrictEquals(await pool.get(address), busy);
  pool.reuse(address, busy);
});

Deno.test("ConnectionPool.close() closes every comm and turns waiters and callers away", async () => {
  await using listener = await echoListener();
  const pool = new ConnectionPool({ limit: 2 });
  const address = listener.contactAddress;
  const active = await pool.get(address);
  const idle = await pool.get(address);
  pool.reuse(address, idle);
  const other = await pool.get(address);
  assertStrictEquals(other, idle);
  const waiting = pool.get(address);
  assertEquals(pool.waiting, 1);

  const closing = pool.close();
  assert(pool.closed);
  await assertRejects(() => waiting, CommClosedError, "closed");
  await closing;
  assert(active.closed);
  assert(idle.closed);
  await assertRejects(() => active.read(), CommClosedError);
  await assertRejects(() => pool.get(address), CommClosedError, "closed");
  // Idempotent, and giving back comms afterwards is harmless.
  await pool.close();
  pool.reuse(address, active);
  pool.reuse(address, other);
  assertEquals(pool.idle, 0);
  await pool.close();
});

Deno.test("ConnectionPool closes with `await using`", async () => {
  await using listener = await echoListener();
  let comm: Comm;
  let escaped: ConnectionPool;
  {
    await using pool = new ConnectionPool();
    escaped = pool;
    comm = await pool.get(listener.contactAddress);
    pool.reuse(listener.contactAddress, comm);
  }
  assert(escaped.closed);
  assert(comm.closed);
  await until(() => listener.gauge.live === 0, "the server saw the comm end");
});

Deno.test("ConnectionPool.get() frees the slot of a failed connect for the next waiter", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const dead = await deadAddress();
  const failing = pool.get(dead, { timeout: 100 });
  assertEquals(pool.open, 1);
  const waiting = pool.get(listener.contactAddress);
  assertEquals(pool.waiting, 1);
  await assertRejects(() => failing, ConnectTimeoutError);
  const comm = await waiting;
  assertFalse(comm.closed);
  assertEquals([pool.open, pool.active, pool.waiting], [1, 1, 0]);
  pool.reuse(listener.contactAddress, comm);
});

Deno.test("ConnectionPool.get() gives up a connect when its signal aborts, freeing the slot", async () => {
  await using listener = await echoListener();
  await using pool = new ConnectionPool({ limit: 1 });
  const dead = await deadAddress();
  const controller = new AbortController();
  const connecting = pool.get(dead, { signal: controller.signal, timeout: 10_000 });
  const waiting = pool.get(listener.contactAddress);
  const reason = new Error("changed my mind");
  controller.abort(reason);
  assertStrictEquals(await assertRejects(() => connecting), reason);
  const comm = await waiting;
  assertEquals([pool.open, pool.active], [1, 1]);
  pool.reuse(listener.contactAddress, comm);
});

Deno.test("ConnectionPool.get() rejects bad arguments without taking a slot", async () => {
  await using pool = new ConnectionPool({ limit: 1 });
  await assertRejects(() => pool.get("no-scheme-here"), TypeError);
  await assertRejects(() => pool.get("tcp://127.0.0.1:99999"), TypeError, "99999");
  await assertRejects(() => pool.get(42 as unknown as string), TypeError, "Invalid address");
  await assertRejects(() => pool.get("inproc://", { timeout: -1 }), RangeError, "timeout");
  assertEquals([pool.open, pool.active, pool.waiting], [0, 0, 0]);
});

Deno.test("ConnectionPool.close() stops a connect in progress", async () => {
  const pool = new ConnectionPool();
  const dead = await deadAddress();
  const connecting = pool.get(dead, { timeout: 10_000 });
  assertEquals(pool.open, 1);
  await pool.close();
  await assertRejects(() => connecting, CommClosedError);
  assertEquals(pool.open, 0);
});

Deno.test("ConnectionPool refuses a limit that is not a positive whole number or Infinity", async () => {
  for (const limit of [0, -1, 1.5, Number.NaN, -Infinity, "4" as unknown as number]) {
    assertThrows(() => new ConnectionPool({ limit }), RangeError, "Invalid limit");
  }
  await using unlimited = new ConnectionPool({ limit: Infinity });
  assertEquals(unlimited.limit, Infinity);
  await using one = new ConnectionPool({ limit: 1 });
  assertEquals(one.limit, 1);
  await using fallback = new ConnectionPool();
  assertEquals(fallback.limit, 512);
  assertThrows(() => new ConnectionPool({ timeout: -1 }), RangeError, "timeout");
  assertThrows(() => new ConnectionPool({ callTimeout: -1 }), RangeError, "callTimeout");
});

Deno.test("ConnectionPool.rpc() runs many concurrent calls over at most `limit` comms", async () => {
  const gauge: Gauge = { live: 0, max: 0 };
  await using server = new Server({ square: ({ n }) => n * n });
  await using listener = await listen(
    "tcp://127.0.0.1:0",
    counted(gauge, (comm) => server.handleComm(comm)),
  );
  await using pool = new ConnectionPool({ limit: 4 });
  const remote = pool.rpc(listener.contactAddress);
  assertEquals(remote.address, listener.contactAddress);
  let maxOpen = 0;
  const CALLERS = 64;
  const CALLS = 500;
  let next = 0;
  const results: number[] = [];
  await Promise.all(Array.from({ length: CALLERS }, async () => {
    while (next < CALLS) {
      const n = next++;
      results[n] = await remote.square({ n });
      maxOpen = Math.max(maxOpen, pool.open);
    }
  }));
  assertEquals(results.length, CALLS);
  for (let n = 0; n < CALLS; n++) assertEquals(results[n], n * n);
  assert(maxOpen <= 4, `pool.open reached ${maxOpen}`);
  assert(gauge.max <= 4, `the server saw ${gauge.max} comms at once`);
  assertEquals(pool.active, 0);
  assertEquals(pool.waiting, 0);
});

Deno.test("ConnectionPool.rpc() drops the comm of a call that timed out", async () => {
  await using server = new Server({
    slow: (_args, { signal }) =>
      new Promise((resolve) => signal.addEventListener("abort", resolve)),
    ping: () => "pong",
  });
  await server.listen("inproc://");
  await using pool = new ConnectionPool();
  const remote = pool.rpc(server.address);
  assertEquals(await remote.ping(), "pong");
  const comm = await pool.get(server.address);
  pool.reuse(server.address, comm);
  const error = await assertRejects(() => remote.slow({}, { timeout: 20 }), CallTimeoutError);
  assertStringIncludes(error.message, "slow");
  assert(comm.closed, "the comm of the timed out call was aborted");
  assertEquals([pool.open, pool.active, pool.idle], [0, 0, 0]);
  assertEquals(await remote.ping(), "pong");
  assertEquals(pool.open, 1);
});

Deno.test("ConnectionPool.rpc() uses the pool's callTimeout", async () => {
  await using server = new Server({
    slow: (_args, { signal }) =>
      new Promise((resolve) => signal.addEventListener("abort", resolve)),
  });
  await server.listen("inproc://");
  await using pool = new ConnectionPool({ callTimeout: 20 });
  await assertRejects(() => pool.rpc(server.address).slow(), CallTimeoutError);
  assertEquals(pool.open, 0);
});

Deno.test("ConnectionPool.rpc() counts waiting for a comm in the call's timeout", async () => {
  // Waiting for room is part of the call's time; when that is what runs
  // out, the CallTimeoutError says so, with the PoolTimeoutError as cause.
  await using server = new Server({ ping: () => "pong" });
  await server.listen("inproc://");
  await using pool = new ConnectionPool({ limit: 1 });
  const held = await pool.get(server.address);
  const remote = pool.rpc(server.address);
  const error = await assertRejects(() => remote.ping({}, { timeout: 20 }), CallTimeoutError);
  assertStringIncludes(error.message, server.address);
  assertStringIncludes(error.message, "waiting for a comm");
  assertInstanceOf(error.cause, PoolTimeoutError);
  assertEquals(pool.waiting, 0);
  // An aborted call leaves the queue too, with the signal's reason.
  const controller = new AbortController();
  const call = remote.ping({}, { signal: controller.signal });
  assertEquals(pool.waiting, 1);
  const reason = new Error("never mind");
  controller.abort(reason);
  assertStrictEquals(await assertRejects(() => call), reason);
  assertEquals(pool.waiting, 0);
  pool.reuse(server.address, held);
  assertEquals(await remote.ping({}, { timeout: 5_000 }), "pong");
  assertEquals([pool.open, pool.idle], [1, 1]);
});

Deno.test("ConnectionPool.rpc() keeps the comm after a RemoteError", async () => {
  await using server = new Server({
    fail: () => {
      throw new RangeError("out of range");
    },
    ping: () => "pong",
  });
  await server.listen("inproc://");
  await using pool = new ConnectionPool();
  const remote = pool.rpc(server.address);
  assertEquals(await remote.ping(), "pong");
  const comm = await pool.get(server.address);
  pool.reuse(server.address, comm);
  const error = await assertRejects(() => remote.fail(), RemoteError);
  assertEquals(error.remoteName, "RangeError");
  assertEquals([pool.open, pool.active, pool.idle], [1, 0, 1]);
  assertFalse(comm.closed);
  assertEquals(await remote.ping(), "pong");
  assertStrictEquals(await pool.get(server.address), comm);
  pool.reuse(server.address, comm);
});

Deno.test("ConnectionPool.rpc() proxy's close() leaves the pool working", async () => {
  await using server = new Server({ ping: () => "pong" });
  await server.listen("inproc://");
  await using pool = new ConnectionPool();
  {
    await using remote = pool.rpc(server.address);
    assertEquals(await remote.ping(), "pong");
    await remote.close();
    assertEquals(pool.idle, 1);
    assertEquals(await remote.ping(), "pong");
  }
  assertFalse(pool.closed);
  assertEquals(pool.idle, 1);
  assertEquals(await pool.rpc(server.address).call("ping"), "pong");
  assertEquals(pool.open, 1);
});

Deno.test("ConnectionPool.rpc() calls reject with CommClosedError once the pool is closed", async () => {
  await using server = new Server({ ping: () => "pong" });
  await server.listen("inproc://");
  const pool = new ConnectionPool();
  const remote = pool.rpc(server.address);
  assertEquals(await remote.ping(), "pong");
  await pool.close();
  await assertRejects(() => remote.ping(), CommClosedError);
});

Deno.test("ConnectionPool.close() fails calls in flight through rpc()", async () => {
  let started!: () => void;
  const running = new Promise<void>((resolve) => started = resolve);
  await using server = new Server({
    slow: (_args, { signal }) => {
      started();
      return new Promise((resolve) => signal.addEventListener("abort", resolve));
    },
  });
  await server.listen("inproc://");
  const pool = new ConnectionPool();
  const call = pool.rpc(server.address).slow();
  await running;
  await pool.close();
  const error = await assertRejects(() => call);
  assertInstanceOf(error, CommClosedError);
  assertEquals(pool.open, 0);
});

Deno.test("ConnectionPool.rpc() reports a call that could not connect in time as CallTimeoutError", async () => {
  await using pool = new ConnectionPool({ callTimeout: 100 });
  const dead = await deadAddress();
  const error = await assertRejects(() => pool.rpc(dead).ping(), CallTimeoutError);
  assertStringIncludes(error.message, `"ping" on "${dead}" could not start`);
  assertInstanceOf(error.cause, ConnectTimeoutError);
  assertEquals(pool.open, 0);
});
