// The RPC layer against real dask.distributed (2022.12, Debian's
// python3-distributed): our rpc() and BatchedSend against a real
// `dask scheduler`, dask's rpc and ConnectionPool against our Server, and our
// rpc() and BatchedSend against dask's Server (tests/testdata/dask_rpc_peer.py).
// Skipped when /usr/bin/python3 has no dask.

import { fromFileUrl } from "@std/path";
import { assert, assertEquals, assertMatch } from "@std/assert";
import {
  BatchedSend,
  type Comm,
  connect,
  ConnectionPool,
  RemoteError,
  rpc,
  Server,
} from "../mod.ts";
import { PythonPeer, WAIT_MS, within } from "./_python_peer.ts";
import { DaskScheduler, daskUnavailable, PYTHON } from "./_dask.ts";

const PEER_SCRIPT = fromFileUrl(new URL("./testdata/dask_rpc_peer.py", import.meta.url));

const unavailable = daskUnavailable();
if (unavailable !== undefined) {
  console.warn(
    `dask RPC interop skipped (apt-get install python3-distributed): ${unavailable}`,
  );
}
const ignore = unavailable !== undefined;

/** Reads the next message within WAIT_MS. */
async function readWithin(comm: Comm, what: string, ms = WAIT_MS): Promise<unknown> {
  const signal = AbortSignal.timeout(ms);
  try {
    return await comm.read({ signal });
  } catch (error) {
    if (signal.aborted) throw new Error(`${what}: no message within ${ms} ms`);
    throw error;
  }
}

function record(value: unknown): Record<string, unknown> {
  assert(
    typeof value === "object" && value !== null && !Array.isArray(value),
    `expected a map, got ${Deno.inspect(value)}`,
  );
  return value as Record<string, unknown>;
}

// Topics and client names unique to this run: a scheduler keeps events.
const RUN = crypto.randomUUID().slice(0, 8);

Deno.test({
  name: "rpc() and BatchedSend work with a real dask scheduler",
  ignore,
  async fn(t) {
    await using scheduler = await DaskScheduler.start();

    await t.step("rpc().identity() returns the scheduler's identity", async () => {
      await using remote = rpc(scheduler.address, { callTimeout: WAIT_MS });
      const identity = record(await remote.identity());
      assertEquals(identity.type, "Scheduler");
      assertEquals(identity.id, scheduler.id);
      assertMatch(identity.id as string, /^Scheduler-/);
      assertEquals(identity.address, scheduler.address);
      assertEquals(identity.workers, {});
    });

    await t.step("a pool's rpc() calls the scheduler, and its errors reject", async () => {
      await using pool = new ConnectionPool({ limit: 2, callTimeout: WAIT_MS });
      const remote = pool.rpc(scheduler.address);
      const calls = await Promise.all(
        Array.from({ length: 8 }, () => remote.identity()),
      );
      for (const identity of calls) assertEquals(record(identity).id, scheduler.id);
      assert(pool.open <= 2);
      const versions = record(await remote.versions());
      assertMatch(record(versions.packages).distributed as string, /^\d{4}\./);
      // A handler that raises there: dask's error reply, read as RemoteError.
      const error = await remote.events({ unexpected: 1 }).then(
        () => undefined,
        (error) => error,
      );
      assert(error instanceof RemoteError, `expected a RemoteError, got ${error}`);
      assertEquals(error.remoteName, "TypeError");
      assertMatch(error.remoteMessage, /unexpected/);
      assertMatch(error.remoteStack, /File "/);
      // The comm that carried the error is still good.
      assertEquals(record(await remote.identity()).id, scheduler.id);
    });

    await t.step("BatchedSend writes a client stream the scheduler reads", async () => {
      const comm = await connect(scheduler.address);
      const client = `x-comm-test-${RUN}`;
      await comm.write({ op: "register-client", client, versions: {}, reply: false });
      const first = await readWithin(comm, "stream-start");
      assert(Array.isArray(first), `expected a batch, got ${Deno.inspect(first)}`);
      assertEquals(record((first as unknown[])[0]).op, "stream-start");

      const batched = new BatchedSend(comm, { interval: 5 });
      const topics = [`${RUN}-a`, `${RUN}-b`, `${RUN}-c`];
      batched.send(...topics.map((topic) => ({ op: "subscribe-topic", topic })));
      batched.send({ op: "heartbeat-client" });

      await using remote = rpc(scheduler.address, { callTimeout: WAIT_MS });
      // The subscriptions and log_event travel on different comms: log until
      // the events come back on the stream (bounded).
      const events = new Map<string, unknown>();
      for (let attempt = 0; attempt < 20 && events.size < topics.length; attempt++) {
        await remote.log_event({ topic: topics, msg: { attempt } });
        const deadline = Date.now() + 1_000;
        while (events.size < topics.length && Date.now() < deadline) {
          let batch: unknown;
          try {
            batch = await readWithin(comm, "events", Math.max(1, deadline - Date.now()));
          } catch {
            break;
          }
          for (const message of batch as unknown[]) {
            const m = record(message);
            if (m.op === "event") events.set(m.topic as string, m.event);
          }
        }
      }
      assertEquals([...events.keys()].sort(), topics);
      const [time, msg] = events.get(topics[0]) as [number, unknown];
      assertEquals(typeof time, "number");
      assertEquals(record(msg).attempt, 0);
      const logged = await remote.events({ topic: topics[1] }) as unknown[];
      assert(logged.length >= 1);

      // close-client ends the stream on the scheduler's side too.
      batched.send({ op: "close-client" });
      await batched.close();
      assert(comm.closed);
    });
  },
});

Deno.test({
  name: "dask's rpc and ConnectionPool call our Server",
  ignore,
  async fn() {
    await using server = new Server({
      add: ({ x, y }) => x + y,
      fail: () => {
        throw new RangeError("boom");
      },
    });
    await server.listen("tcp://127.0.0.1:0");
    await using peer = new PythonPeer({
      python: PYTHON,
      script: PEER_SCRIPT,
      args: ["call", server.address],
      report: "stderr",
    });
    const { code, stdout, stderr } = await peer.finish();
    assertEquals(code, 0, `dask_rpc_peer.py call failed:\n${stderr}`);
    const lines = stdout.trim().split("\n").map((line) => JSON.parse(line));
    const x10 = btoa("x".repeat(10));
    for (const client of ["rpc", "pool"]) {
      const of = (op: string) => lines.find((line) => line.client === client && line.op === op);
      assertEquals(of("identity").result, { type: "Server", id: server.id });
      assertEquals(of("echo"), { client, op: "echo", type: "bytes", result: { $bytes: x10 } });
      assertEquals(of("add").result, 3);
      // A RangeError is a ValueError to Python, with the same message.
      assertEquals(of("fail"), { client, op: "fail", error_type: "ValueError", error: "boom" });
      assertEquals(of("add_after_fail").result, 7);
    }
    assertEquals(
      lines.find((line) => line.op === "add_concurrent").result,
      [0, 11, 22, 33, 44],
    );
  },
});

Deno.test({
  name: "rpc() and BatchedSend work with dask's Server",
  ignore,
  async fn() {
    await using peer = new PythonPeer({
      python: PYTHON,
      script: PEER_SCRIPT,
      args: ["serve"],
      pipeStdin: true,
      report: "stderr",
    });
    const line = await peer.firstLine();
    assertMatch(line, /^ADDRESS tcp:\/\/127\.0\.0\.1:\d+$/);
    const address = line.slice("ADDRESS ".length);

    await using remote = rpc(address, { callTimeout: WAIT_MS });
    assertEquals(record(await remote.identity()).type, "Server");
    assertEquals(await remote.add({ x: 20, y: 22 }), 42);
    assertEquals(await remote.echo({ data: new Uint8Array([1, 2, 3]) }), new Uint8Array([1, 2, 3]));
    const error = await remote.fail().then(() => undefined, (error) => error);
    assert(error instanceof RemoteError, `expected a RemoteError, got ${error}`);
    assertEquals(error.op, "fail");
    assertEquals(error.remoteName, "ValueError");
    assertEquals(error.remoteMessage, "boom");
    assertMatch(error.remoteStack, /raise ValueError\("boom"\)/);
    assertEquals(await remote.add({ x: 1, y: 1 }), 2);

    // Our batched stream, read by dask's handle_stream.
    const comm = await connect(address);
    await comm.write({ op: "connection_stream", reply: false });
    const batched = new BatchedSend(comm, { interval: 2 });
    const count = 500;
    for (let i = 0; i < count; i++) {
      batched.send({ op: "record", i });
      if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await batched.close();
    assert(batched.batchCount < count, `${batched.batchCount} batches for ${count} messages`);

    let recorded: unknown[] = [];
    await within(
      (async () => {
        while (recorded.length < count) {
          recorded = await remote.recorded() as unknown[];
          if (recorded.length < count) await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })(),
      () => `dask recorded ${recorded.length} of ${count} messages\n${peer.report}`,
    );
    assertEquals(recorded, Array.from({ length: count }, (_, i) => ({ i })));
    const { code } = await peer.finish();
    assertEquals(code, 0, peer.report);
  },
});
