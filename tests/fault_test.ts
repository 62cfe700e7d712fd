// Faults between a client and a server, injected by a proxy (tests/_fault_proxy.ts):
// delay, drop (a black hole), half-close and reset, at random bytes of either
// direction, in the middle of frames. Each must end in a typed error on both
// sides within the call timeout plus 10 %, with no message delivered twice or
// in part. Then connect()'s retries: refused and reset dials, dialled again
// with jittered backoff inside the timeout.
//
// The offsets come from a seeded generator: FAULT_SEED picks another run, and
// a failure names the seed and the case.

import { assert, assertEquals, assertInstanceOf, assertStringIncludes } from "@std/assert";
import {
  type Backend,
  CallTimeoutError,
  type Comm,
  CommClosedError,
  connect,
  ConnectTimeoutError,
  getAddressHostPort,
  getBackend,
  listen,
  registerBackend,
  sendRecv,
} from "../mod.ts";
import { type Direction, type Fault, FaultProxy } from "./_fault_proxy.ts";
import { soaked } from "./_soak.ts";
import { within } from "./_wait.ts";
import { seededRandom } from "./_fuzz.ts";

const SEED = Number(Deno.env.get("FAULT_SEED") ?? 20261121);
/** The timeout of each call; a fault must be reported on both sides within it plus 10 %. */
const CALL_TIMEOUT_MS = 1_500;
const TOLERANCE = 1.1;
/** Messages a session sends, one call at a time. */
const MESSAGES = 24;
/** Sessions run at once. */
const PARALLEL = 6;

/** The payload of message `seq`: a pattern the receiver checks byte by byte. */
function payload(seq: number, size: number): Uint8Array {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (seq * 31 + i) & 0xff;
  return data;
}

/** Throws unless `message` is message `seq`, whole. */
function checkWhole(message: unknown, seq: number, what: string): void {
  const { seq: got, data } = message as { seq: number; data: Uint8Array };
  assertEquals(got, seq, `${what}: message ${got} where ${seq} was due (lost or repeated)`);
  assertInstanceOf(data, Uint8Array, `${what}: message ${seq} has no payload`);
  const size = (message as { size: number }).size;
  assertEquals(data.length, size, `${what}: message ${seq} arrived in part`);
  for (let i = 0; i < data.length; i++) {
    if (data[i] !== ((seq * 31 + i) & 0xff)) throw new Error(`${what}: message ${seq} is corrupt`);
  }
}

interface Outcome {
  /** Echoes the client got, in order. */
  echoed: number;
  /** Messages the server read, in order. */
  served: number;
  clientError: unknown;
  serverError: unknown;
  /** Milliseconds from the fault to each side's error. */
  clientAfter: number;
  serverAfter: number;
  faultAt: number | undefined;
}

/**
 * One client and one echo server through a proxy: connect, arm `fault`,
 * then call with each message in turn until all are echoed or one fails.
 */
async function session(fault: Fault, sizes: number[], label: string): Promise<Outcome> {
  let served = 0;
  let serverError: unknown;
  let serverErrorAt = NaN;
  const serverDone = Promise.withResolvers<void>();
  await using listener = await listen("tcp://127.0.0.1:0", async (comm: Comm) => {
    try {
      for (;;) {
        const message = await comm.read();
        checkWhole(message, served, `${label}, server`);
        served++;
        await comm.write(message);
      }
    } catch (error) {
      serverError = error;
      serverErrorAt = performance.now();
    } finally {
      serverDone.resolve();
    }
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  await using proxy = await FaultProxy.start(port);
  const comm = await connect(proxy.address, { timeout: 5_000 });
  let echoed = 0;
  let clientError: unknown;
  let clientErrorAt = NaN;
  try {
    proxy.connections[0].arm(fault);
    for (const [seq, size] of sizes.entries()) {
      const message = { op: "echo", seq, size, data: payload(seq, size) };
      const reply = await sendRecv(comm, message, { timeout: CALL_TIMEOUT_MS });
      checkWhole(reply, seq, `${label}, client`);
      echoed++;
    }
  } catch (error) {
    clientError = error;
    clientErrorAt = performance.now();
  } finally {
    await comm.close();
  }
  await within(serverDone.promise, `${label}: the server's comm to end`);
  const faultAt = proxy.connections[0].faultAt;
  return {
    echoed,
    served,
    clientError,
    serverError,
    clientAfter: clientErrorAt - (faultAt ?? NaN),
    serverAfter: serverErrorAt - (faultAt ?? NaN),
    faultAt,
  };
}

/** Runs `tasks` at most `limit` at a time. */
async function pooled<T>(tasks: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, tasks.length) }, async () => {
      while (next < tasks.length) {
        const i = next++;
        results[i] = await tasks[i]();
      }
    }),
  );
  return results;
}

Deno.test("Comm through a proxy that drops, half-closes or resets mid-frame ends in typed errors on both sides within the timeout + 10 %, losing no whole message and delivering none twice or in part", async () => {
  const random = seededRandom(SEED);
  const cases: { fault: Fault; sizes: number[]; label: string }[] = [];
  const rounds = soaked(3);
  for (let round = 0; round < rounds; round++) {
    for (const direction of ["up", "down"] as Direction[]) {
      for (const kind of ["drop", "halfClose", "reset"] as const) {
        // Small messages and binaries of up to 300 kB, which travel as frames of their own.
        const sizes = Array.from(
          { length: MESSAGES },
          () => random() < 0.5 ? Math.floor(random() * 1_000) : Math.floor(random() * 300_000),
        );
        const total = sizes.reduce((a, b) => a + b, 0);
        const afterBytes = Math.floor(random() * total * 0.9);
        cases.push({
          fault: { kind, direction, afterBytes },
          sizes,
          label: `seed ${SEED}, ${kind} ${direction} after ${afterBytes} of ~${total} bytes`,
        });
      }
    }
  }
  const outcomes = await pooled(
    cases.map(({ fault, sizes, label }) => () => session(fault, sizes, label)),
    PARALLEL,
  );
  let worst = 0;
  const errorNames = new Map<string, number>();
  for (const [i, outcome] of outcomes.entries()) {
    const { label } = cases[i];
    assert(outcome.faultAt !== undefined, `${label}: the fault never hit`);
    assert(outcome.echoed < MESSAGES, `${label}: every message went through the fault`);
    // Nothing is echoed that the server did not serve; the server serves at most one more.
    assert(
      outcome.echoed <= outcome.served,
      `${label}: echoed ${outcome.echoed} of ${outcome.served}`,
    );
    assert(
      outcome.served <= outcome.echoed + 1,
      `${label}: served ${outcome.served}, echoed ${outcome.echoed}`,
    );
    for (
      const [side, error] of [["client", outcome.clientError], ["server", outcome.serverError]]
    ) {
      assert(
        error instanceof CommClosedError || error instanceof CallTimeoutError,
        `${label}: the ${side} ended with ${error} rather than a typed error`,
      );
      const name = `${side} ${(error as Error).name}`;
      errorNames.set(name, (errorNames.get(name) ?? 0) + 1);
    }
    for (
      const [side, after] of [["client", outcome.clientAfter], [
        "server",
        outcome.serverAfter,
      ]] as const
    ) {
      assert(
        after <= CALL_TIMEOUT_MS * TOLERANCE,
        `${label}: the ${side} learnt of the fault after ${
          Math.round(after)
        } ms, over ${CALL_TIMEOUT_MS} ms + 10 %`,
      );
      worst = Math.max(worst, after);
    }
  }
  console.log(
    `faults: ${cases.length} injected (seed ${SEED}), errors ${
      JSON.stringify(Object.fromEntries(errorNames))
    }, slowest report ${Math.round(worst)} ms of ${
      Math.round(CALL_TIMEOUT_MS * TOLERANCE)
    } allowed`,
  );
});

Deno.test("Comm through a proxy that delays every chunk delivers everything in order below the timeout, and times out above it", async () => {
  const random = seededRandom(SEED + 1);
  const sizes = Array.from({ length: MESSAGES }, () => Math.floor(random() * 100_000));
  const slow = await session({ kind: "delay", ms: 20 }, sizes, "a delay of 20 ms");
  assertEquals([slow.echoed, slow.served], [MESSAGES, MESSAGES]);
  assertEquals(slow.clientError, undefined);
  assertInstanceOf(slow.serverError, CommClosedError); // the client closed at the end

  const stuck = await session(
    { kind: "delay", ms: CALL_TIMEOUT_MS * 2 },
    sizes,
    `a delay of ${CALL_TIMEOUT_MS * 2} ms`,
  );
  assertInstanceOf(stuck.clientError, CallTimeoutError);
  assertInstanceOf(stuck.serverError, CommClosedError);
  assertEquals(stuck.echoed, 0);
  assert(stuck.served <= 1);
  assert(stuck.clientAfter <= CALL_TIMEOUT_MS * TOLERANCE, `client after ${stuck.clientAfter} ms`);
});

// -- connect() dials again -------------------------------------------------------

/** tcp whose first `failures` dials fail as refused; records when each dial began. */
function flakyBackend(failures: number): Backend & { dials: number[] } {
  const tcp = getBackend("tcp");
  const dials: number[] = [];
  return {
    ...tcp,
    dials,
    connect(location, options) {
      dials.push(performance.now());
      if (dials.length <= failures) {
        return Promise.reject(new Deno.errors.ConnectionRefused("refused by the test"));
      }
      return tcp.connect(location, options);
    },
  };
}

Deno.test("connect() dials a refusing backend again with jittered backoff and succeeds on the fourth dial, as dask's test_retry_connect", async () => {
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    await comm.write(await comm.read());
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  const pauses: number[][] = [];
  for (let run = 0; run < 5; run++) {
    const backend = flakyBackend(3);
    registerBackend(`flaky${run}`, backend);
    await using comm = await connect(`flaky${run}://127.0.0.1:${port}`, { timeout: 5_000 });
    await comm.write("after three refusals");
    assertEquals(await comm.read(), "after three refusals");
    assertEquals(backend.dials.length, 4);
    pauses.push(backend.dials.slice(1).map((at, i) => at - backend.dials[i]));
  }
  // Backoff is jittered: the pauses differ from run to run.
  const firsts = new Set(pauses.map((run) => run[0].toFixed(2)));
  assert(firsts.size > 1, `the same first pause in every run: ${[...firsts]}`);
});

Deno.test("connect() dials again after a peer resets three connections before its handshake, and succeeds on the fourth", async () => {
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    await comm.write(await comm.read());
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  await using proxy = await FaultProxy.start(
    port,
    (i): Fault => i < 3 ? { kind: "refuse" } : { kind: "none" },
  );
  await using comm = await connect(proxy.address, { timeout: 5_000 });
  await comm.write("after three resets");
  assertEquals(await comm.read(), "after three resets");
  assertEquals(proxy.connections.length, 4);
});

Deno.test("connect() to a peer that resets every connection rejects with ConnectTimeoutError naming the reset, within the timeout + 10 %", async () => {
  await using proxy = await FaultProxy.start(1, () => ({ kind: "refuse" }));
  const timeout = 1_000;
  const start = performance.now();
  let error: unknown;
  try {
    await connect(proxy.address, { timeout });
  } catch (caught) {
    error = caught;
  }
  const took = performance.now() - start;
  assertInstanceOf(error, ConnectTimeoutError);
  assertStringIncludes((error as Error).message, "reset");
  assert(took <= timeout * TOLERANCE, `gave up after ${Math.round(took)} ms`);
  assert(proxy.connections.length > 3, `only ${proxy.connections.length} dials`);
});
