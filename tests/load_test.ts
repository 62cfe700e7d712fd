// Load without loss: many concurrent comms each carrying many ordered
// messages both ways, dask's BatchedSend traffic jam, and a pool at its
// limit under many concurrent calls. Counts scale with COMM_SOAK (see
// _soak.ts); each case logs the figures the README quotes. Everything binds
// to loopback, port 0, or a private unix socket.

import { assert, assertEquals } from "@std/assert";
import { delay } from "@std/async/delay";
import { BatchedSend, type Comm, connect, ConnectionPool, listen, Server } from "@x/comm";
import { counted, type Gauge } from "./_gauge.ts";
import { SOAK, soaked } from "./_soak.ts";
import { HANG_GUARD_MS, until, within } from "./_wait.ts";
import { seededRandom } from "./_fuzz.ts";

/** `n` in the README's style: 10,000. */
function count(n: number): string {
  return n.toLocaleString("en-US");
}

function seconds(ms: number): string {
  return `${(ms / 1_000).toFixed(2)} s`;
}

/**
 * Settles as `promise` does, or rejects once `progress()` has not changed
 * for HANG_GUARD_MS: a hang fails soon, however long a slow or soaked run
 * takes as a whole.
 */
async function whileMoving<T>(
  promise: Promise<T>,
  progress: () => number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stalled = new Promise<never>((_, reject) => {
    let last = progress();
    const check = () => {
      const now = progress();
      if (now === last) {
        reject(new Error(`Timed out waiting for ${what}: nothing moved for ${HANG_GUARD_MS} ms`));
      } else {
        last = now;
        timer = setTimeout(check, HANG_GUARD_MS);
      }
    };
    timer = setTimeout(check, HANG_GUARD_MS);
  });
  try {
    return await Promise.race([promise, stalled]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// Many comms, many ordered messages, both ways.

/** What the client sends after its last numbered message. */
const DONE = "done";
const PAYLOAD_BYTES = 16;

/** The message number `seq` of comm `index`: [index, seq, payload]. */
function numbered(index: number, seq: number): [number, number, Uint8Array] {
  const payload = new Uint8Array(PAYLOAD_BYTES);
  payload[0] = seq & 0xff;
  payload[PAYLOAD_BYTES - 1] = index & 0xff;
  return [index, seq, payload];
}

/**
 * Why `message` is not message `seq` of comm `index` (as the other end
 * would have it), or undefined if it is.
 */
function mismatch(message: unknown, index: number, seq: number): string | undefined {
  if (Array.isArray(message) && message.length === 3) {
    const [i, s, payload] = message;
    if (
      i === index && s === seq && payload instanceof Uint8Array &&
      payload.length === PAYLOAD_BYTES && payload[0] === (seq & 0xff) &&
      payload[PAYLOAD_BYTES - 1] === (index & 0xff)
    ) return undefined;
  }
  return `expected message ${seq} of comm ${index}, got ${Deno.inspect(message)}`;
}

/** What the server saw on one comm. */
interface Seen {
  index: number;
  received: number;
  done: boolean;
  problem?: string;
}

/**
 * Runs `comms` concurrent comms to one listener on `address`, each sending
 * `messages` numbered messages and then DONE; the server checks each comm's
 * messages and echoes them, and the client checks the echoes. Logs the
 * totals.
 */
async function exchange(
  scheme: string,
  address: string,
  comms: number,
  messages: number,
): Promise<void> {
  const seen: Seen[] = [];
  await using listener = await listen(address, async (comm) => {
    const record: Seen = { index: -1, received: 0, done: false };
    seen.push(record);
    const note = (problem: string) => record.problem ??= problem;
    for await (const message of comm) {
      if (record.done) note(`got ${Deno.inspect(message)} after "${DONE}"`);
      else if (message === DONE) record.done = true;
      else {
        if (record.index === -1 && Array.isArray(message)) record.index = message[0];
        const wrong = mismatch(message, record.index, record.received);
        if (wrong !== undefined) note(wrong);
        record.received++;
      }
      await comm.write(message);
    }
  });

  let sent = 0;
  let echoed = 0;
  // Every comm is open before any streams: in one process, a ws upgrade can
  // wait over 10 s behind 99 comms streaming flat out (a soak run saw it).
  const open: Comm[] = await within(
    Promise.all(Array.from({ length: comms }, () => connect(listener.contactAddress))),
    `${comms} ${scheme} comms to open`,
  );
  const start = performance.now();
  const clients = open.map(async (comm, index) => {
    const reading = (async () => {
      for (let seq = 0; seq < messages; seq++) {
        const wrong = mismatch(await comm.read(), index, seq);
        if (wrong !== undefined) throw new Error(`The echoes on comm ${index}: ${wrong}`);
        echoed++;
      }
      const last = await comm.read();
      if (last !== DONE) {
        throw new Error(
          `The echoes on comm ${index}: expected "${DONE}", got ${Deno.inspect(last)}`,
        );
      }
    })();
    // A wrong echo stops the writer too; the finally below reports it.
    reading.catch(() => comm.abort());
    try {
      for (let seq = 0; seq < messages; seq++) {
        await comm.write(numbered(index, seq));
        sent++;
      }
      await comm.write(DONE);
    } finally {
      await reading;
    }
    await comm.close();
  });
  const all = Promise.all(clients);
  try {
    await whileMoving(all, () => sent + echoed, `${count(comms)} ${scheme} comms to finish`);
  } finally {
    // After a failure, stop the others before the listener closes.
    for (const comm of open) comm.abort();
    await Promise.allSettled(clients);
  }
  const elapsed = performance.now() - start;

  const received = seen.reduce((total, record) => total + record.received, 0);
  console.log(
    `Comm over ${scheme}: ${count(comms)} comms × ${count(messages)} messages: ${
      count(sent)
    } sent, ${count(received)} received by the server, ${count(echoed)} echoes received, in ${
      seconds(elapsed)
    }`,
  );
  assertEquals(seen.map((record) => record.problem).filter(Boolean), []);
  assertEquals(seen.length, comms);
  // Each comm's messages went to exactly one server comm, whole.
  const byIndex = seen.map(({ index, received, done }) => [index, received, done]);
  byIndex.sort((a, b) => (a[0] as number) - (b[0] as number));
  assertEquals(byIndex, Array.from({ length: comms }, (_, index) => [index, messages, true]));
  assertEquals(sent, comms * messages);
  assertEquals(received, comms * messages);
  assertEquals(echoed, comms * messages);
}

const COMMS = 100;
const MESSAGES = soaked(10_000);
// Deno's WebSockets cost about ten times as much per message as its sockets.
const WS_MESSAGES = soaked(2_000);

Deno.test(`Comm over tcp delivers ${count(MESSAGES)} messages on each of ${COMMS} concurrent comms, once and in order, both ways`, async () => {
  await exchange("tcp", "tcp://127.0.0.1:0", COMMS, MESSAGES);
});

Deno.test(`Comm over unix delivers ${count(MESSAGES)} messages on each of ${COMMS} concurrent comms, once and in order, both ways`, async () => {
  await exchange("unix", "unix://", COMMS, MESSAGES);
});

Deno.test(`Comm over ws delivers ${count(WS_MESSAGES)} messages on each of ${COMMS} concurrent comms, once and in order, both ways`, async () => {
  await exchange("ws", "ws://127.0.0.1:0", COMMS, WS_MESSAGES);
});

// ---------------------------------------------------------------------------
// dask's traffic jam (distributed/tests/test_batched.py, run_traffic_jam).

const JAM_SENDS = 50;
const JAM_BYTES = 300_000;
const JAM_INTERVAL = 10;
const JAM_ROUNDS = soaked(3);

/** `bytes` random bytes from `random`. */
function randomBytes(bytes: number, random: () => number): Uint8Array {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) data[i] = random() * 256;
  return data;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * One round: a BatchedSend with a 10 ms interval sends JAM_SENDS messages
 * of JAM_BYTES to an echo server, pausing 1 ms after half of them at random
 * as dask does; returns the number of batches.
 */
async function trafficJam(seed: number): Promise<number> {
  const random = seededRandom(seed);
  // The echo server counts the list messages (batches) it reads, and the
  // messages in them, checking their order.
  const server = { batches: 0, messages: 0, problem: undefined as string | undefined };
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    for await (const batch of comm) {
      server.batches++;
      if (!Array.isArray(batch)) server.problem ??= `got ${Deno.inspect(batch)}, not a batch`;
      else {
        for (const message of batch) {
          const i = (message as { i?: unknown })?.i;
          if (i !== server.messages) server.problem ??= `got message ${i} as ${server.messages}`;
          server.messages++;
        }
      }
      await comm.write(batch);
    }
  });

  const comm = await connect(listener.contactAddress);
  const batched = new BatchedSend(comm, { interval: JAM_INTERVAL });
  const sentData: Uint8Array[] = [];
  try {
    const reading = (async () => {
      const results: number[] = [];
      let batches = 0;
      // Bounded by count: a lost message shows as the guard timing out.
      while (results.length < JAM_SENDS) {
        const batch = await comm.read() as { i: number; x: Uint8Array }[];
        batches++;
        for (const { i, x } of batch) {
          assert(x instanceof Uint8Array, `message ${i} came back without its bytes`);
          assert(sameBytes(x, sentData[i]), `message ${i} came back with other bytes`);
          results.push(i);
        }
      }
      return { results, batches };
    })();
    // Reported by within() below, unless sending fails first.
    reading.catch(() => {});
    for (let i = 0; i < JAM_SENDS; i++) {
      const x = randomBytes(JAM_BYTES, random);
      sentData.push(x);
      // Whatever send() returns (nothing, or a promise once it applies
      // backpressure), the messages must all arrive.
      batched.send({ x, i });
      if (random() > 0.5) await delay(1);
    }
    const { results, batches } = await within(reading, `the echoes of round ${seed}`);
    await batched.close();

    assertEquals(server.problem, undefined);
    assertEquals(results, Array.from({ length: JAM_SENDS }, (_, i) => i));
    assertEquals(batched.messageCount, JAM_SENDS);
    assertEquals(server.messages, JAM_SENDS);
    // Every batch written was read as one list message, at each end.
    assertEquals(batches, batched.batchCount);
    assertEquals(server.batches, batched.batchCount);
    return batches;
  } finally {
    batched.abort();
  }
}

Deno.test(`BatchedSend delivers dask's traffic jam (${JAM_SENDS} sends of 300 kB at a ${JAM_INTERVAL} ms interval) in as many batches as it counts, ${JAM_ROUNDS} rounds`, async () => {
  const start = performance.now();
  const batches: number[] = [];
  for (let round = 1; round <= JAM_ROUNDS; round++) batches.push(await trafficJam(round));
  console.log(
    `BatchedSend traffic jam: ${JAM_ROUNDS} rounds (seeds 1–${JAM_ROUNDS}) of ${JAM_SENDS} × ${
      count(JAM_BYTES)
    } bytes at ${JAM_INTERVAL} ms: ${batches.join(", ")} batches; ${
      count(JAM_ROUNDS * JAM_SENDS)
    } messages sent and received, in ${seconds(performance.now() - start)}`,
  );
});

// ---------------------------------------------------------------------------
// A pool at its limit.

const POOL_LIMIT = 64;
const POOL_CALLS = soaked(1_000);

Deno.test(`ConnectionPool with limit ${POOL_LIMIT} answers ${count(POOL_CALLS)} concurrent rpc calls each rightly, never with more than ${POOL_LIMIT} comms open at the server`, async () => {
  const random = seededRandom(POOL_LIMIT);
  const gauge: Gauge = { live: 0, max: 0 };
  let accepted = 0;
  await using server = new Server({
    square: async ({ n, ms }) => {
      await delay(ms);
      return { n, square: n * n };
    },
  });
  await using listener = await listen(
    "tcp://127.0.0.1:0",
    counted(gauge, (comm) => {
      accepted++;
      return server.handleComm(comm);
    }),
  );
  await using pool = new ConnectionPool({ limit: POOL_LIMIT });
  const remote = pool.rpc(listener.contactAddress);

  let maxOpen = 0;
  let maxWaiting = 0;
  const sample = () => {
    maxOpen = Math.max(maxOpen, pool.open);
    maxWaiting = Math.max(maxWaiting, pool.waiting);
  };
  const start = performance.now();
  const calls = Array.from({ length: POOL_CALLS }, async (_, n) => {
    const reply = await remote.square({ n, ms: Math.floor(random() * 5) });
    sample();
    return reply;
  });
  sample();
  const replies = await within(
    Promise.all(calls),
    `${count(POOL_CALLS)} calls`,
    HANG_GUARD_MS * SOAK,
  );
  const elapsed = performance.now() - start;
  console.log(
    `ConnectionPool (limit ${POOL_LIMIT}): ${count(POOL_CALLS)} concurrent calls answered in ${
      seconds(elapsed)
    }; at most ${maxOpen} comms open in the pool, ${gauge.max} at the server (${accepted} accepted), ${
      count(maxWaiting)
    } callers waiting`,
  );

  assertEquals(replies, Array.from({ length: POOL_CALLS }, (_, n) => ({ n, square: n * n })));
  assert(gauge.max <= POOL_LIMIT, `the server saw ${gauge.max} comms at once`);
  assert(maxOpen <= POOL_LIMIT, `pool.open reached ${maxOpen}`);
  // The calls did queue, and the pool used all its room.
  assert(maxWaiting > 0, "no caller ever waited");
  assertEquals(maxOpen, POOL_LIMIT);
  // Every comm opened is in the pool, idle, and alive at the server.
  assertEquals(pool.active, 0);
  assertEquals(pool.waiting, 0);
  assertEquals(pool.idle, pool.open);
  assertEquals(pool.open, POOL_LIMIT);
  assertEquals(gauge.live, pool.open);
  assertEquals(accepted, POOL_LIMIT);

  await pool.close();
  assertEquals([pool.open, pool.active, pool.idle, pool.waiting], [0, 0, 0, 0]);
  await until(() => gauge.live === 0, "the server to see the pool's comms end");
});
