/**
 * Remote calls, dask's way: a `Server` with handlers by operation name,
 * called through `rpc()`, through a `ConnectionPool` by many callers at once,
 * and fed a stream of messages with a `BatchedSend`.
 *
 * ```sh
 * deno run --allow-net examples/rpc.ts                        # tcp://127.0.0.1:0
 * deno run --allow-net --allow-read --allow-write examples/rpc.ts unix://
 * ```
 *
 * The argument is the address the server listens on. It prints
 *
 * ```text
 * Server Server-… on tcp://127.0.0.1:41234
 * rpc: add(1, 2) = 3
 * rpc: divide(1, 0) failed remotely: RangeError: Division by zero
 * pool: 100 calls over 4 comms (limit 4), sum 5050
 * batched: 1000 messages in 1 write(s), the server handled 1000
 * ```
 *
 * @module
 */

import { BatchedSend, connect, ConnectionPool, RemoteError, rpc, Server } from "@x/comm";

const address = Deno.args[0] ?? "tcp://127.0.0.1:0";

const BATCHED_MESSAGES = 1000;
let logged = 0;
const allLogged = Promise.withResolvers<void>();
// Handlers by operation name: the message {op: "add", x, y, reply: true}
// calls add({x, y}), and what it returns is the reply.
await using server = new Server({
  add: ({ x, y }: { x: number; y: number }) => x + y,
  divide: ({ a, b }: { a: number; b: number }) => {
    if (b === 0) throw new RangeError("Division by zero");
    return a / b;
  },
}, {
  // Messages of a stream want no reply: BatchedSend below sends these.
  streamHandlers: {
    log: () => {
      if (++logged === BATCHED_MESSAGES) allLogged.resolve();
    },
  },
});
await server.listen(address);
console.log(`Server ${server.id} on ${server.address}`);

// rpc(): properties are operations; comms open as calls need them and are kept.
{
  await using remote = rpc(server.address, { callTimeout: 5_000 });
  console.log(`rpc: add(1, 2) = ${await remote.add({ x: 1, y: 2 })}`);
  try {
    await remote.divide({ a: 1, b: 0 });
  } catch (error) {
    // A handler's error comes back as a RemoteError; the server keeps serving.
    if (!(error instanceof RemoteError)) throw error;
    console.log(`rpc: divide(1, 0) failed remotely: ${error.remoteName}: ${error.remoteMessage}`);
  }
}

// ConnectionPool: many concurrent callers share at most `limit` comms.
{
  await using pool = new ConnectionPool({ limit: 4 });
  const results = await Promise.all(
    Array.from({ length: 100 }, (_, i) => pool.rpc(server.address).add({ x: i, y: 1 })),
  );
  const sum = (results as number[]).reduce((a, b) => a + b, 0);
  console.log(
    `pool: ${results.length} calls over ${pool.open} comms (limit ${pool.limit}), sum ${sum}`,
  );
}

// BatchedSend: many small messages go out as few list messages, one write
// per `interval` ms at most, on a comm turned into a stream.
{
  const comm = await connect(server.address);
  await comm.write({ op: "connection_stream", reply: false });
  const batched = new BatchedSend(comm, { interval: 10 });
  for (let i = 0; i < BATCHED_MESSAGES; i++) batched.send({ op: "log", line: `line ${i}` });
  await batched.close(); // writes what is queued, then closes the comm
  await allLogged.promise;
  console.log(
    `batched: ${batched.messageCount} messages in ${batched.batchCount} write(s), ` +
      `the server handled ${logged}`,
  );
}
