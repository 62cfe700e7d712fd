// Run by tests/backpressure_test.ts in a process of its own, so that nothing
// else is in its resident memory:
//
//   deno run -A tests/testdata/memory_probe.ts SCENARIO TOTAL_MIB
//
// A writer sends TOTAL_MIB messages of 1 MiB, each a fresh buffer with every
// page touched, to a reader in the same process. First the reader takes
// 64 MiB as fast as it can, which measures the pair's speed; then it reads
// at a tenth of that speed, sleeping between messages, while the writer goes
// flat out. Resident memory is sampled every 10 ms. Prints one JSON line.
//
// SCENARIO: inproc (pipe()), tcp (a comm over loopback), batched (a
// BatchedSend over tcp, its send() awaited), switchboard (an mpsc channel
// between two switchboards over tcp, the sender on the other node).

import { delay } from "@std/async/delay";
import {
  BatchedSend,
  type Comm,
  connect,
  listen,
  type Listener,
  pipe,
  type Sender,
  Switchboard,
} from "../../mod.ts";

const MIB = 1024 * 1024;
const MEASURE_MIB = 64;
const [scenario, totalArg] = Deno.args;
const total = Number(totalArg);

/** Where the messages go, and where they are read one at a time. */
interface Pair {
  send(message: Uint8Array): Promise<void>;
  /** Resolves with the next message's payloads (a batch may hold several). */
  receive(): Promise<Uint8Array[]>;
  close(): Promise<void>;
}

async function tcpComms(): Promise<{ listener: Listener; client: Comm; server: Comm }> {
  const accepted = Promise.withResolvers<Comm>();
  const listener = await listen("tcp://127.0.0.1:0");
  (async () => {
    for await (const comm of listener) {
      accepted.resolve(comm);
      break;
    }
  })();
  const client = await connect(listener.contactAddress);
  return { listener, client, server: await accepted.promise };
}

async function makePair(): Promise<Pair> {
  switch (scenario) {
    case "inproc": {
      const [a, b] = pipe();
      return {
        send: (message) => a.write(message),
        receive: async () => [await b.read() as Uint8Array],
        close: async () => {
          await a.close();
          await b.close();
        },
      };
    }
    case "tcp": {
      const { listener, client, server } = await tcpComms();
      return {
        send: (message) => client.write(message),
        receive: async () => [await server.read() as Uint8Array],
        close: async () => {
          await client.close();
          await server.close();
          await listener.close();
        },
      };
    }
    case "batched": {
      const { listener, client, server } = await tcpComms();
      const batched = new BatchedSend(client);
      return {
        send: (message) => batched.send(message),
        receive: async () => await server.read() as Uint8Array[],
        close: async () => {
          await batched.close();
          await server.close();
          await listener.close();
        },
      };
    }
    case "switchboard": {
      const listeners: Listener[] = [];
      const boards: Switchboard[] = [];
      for (let id = 0; id < 2; id++) {
        listeners.push(await listen("tcp://127.0.0.1:0", (comm) => boards[id].handleComm(comm)));
      }
      const nodes = listeners.map((listener) => listener.contactAddress);
      for (let id = 0; id < 2; id++) boards.push(new Switchboard({ nodes, id }));
      await Promise.all(boards.map((board) => board.rendezvous()));
      // The receiver on node 1, its sender handed to node 0.
      const [tx, rx] = boards[1].mpsc<Uint8Array>();
      const mail = boards[0].broadcastRx<{ tx: Sender<Uint8Array> }>("mail");
      {
        await using post = boards[1].broadcastTx<{ tx: Sender<Uint8Array> }>("mail");
        await post.send({ tx });
      }
      await tx.close();
      const remote = (await mail.receive()).tx;
      return {
        send: (message) => remote.send(message),
        receive: async () => [await rx.receive()],
        close: async () => {
          await remote.close();
          for (const board of boards) await board.close();
          for (const listener of listeners) await listener.close();
        },
      };
    }
    default:
      throw new TypeError(`Unknown scenario "${scenario}"`);
  }
}

const pair = await makePair();
const baseline = Deno.memoryUsage().rss;
let peak = baseline;
const sampler = setInterval(() => {
  peak = Math.max(peak, Deno.memoryUsage().rss);
}, 10);

let sent = 0;
const writing = (async () => {
  for (; sent < total; sent++) {
    const message = new Uint8Array(MIB);
    message.fill(sent & 0xff); // every page touched, so that it counts in resident memory
    await pair.send(message);
  }
})();

let received = 0;
let corrupt = 0;
const start = performance.now();
let slowStart = 0;
let rate = 0; // MiB per ms, measured
while (received < total) {
  for (const message of await pair.receive()) {
    if (message.length !== MIB || message[0] !== (received & 0xff)) corrupt++;
    received++;
  }
  if (rate === 0 && received >= MEASURE_MIB) {
    rate = received / (performance.now() - start);
    slowStart = performance.now();
  } else if (rate > 0) {
    // A tenth of the measured speed: ahead of schedule, sleep.
    const due = slowStart + (received - MEASURE_MIB) / (rate / 10);
    const ahead = due - performance.now();
    if (ahead > 1) await delay(ahead);
  }
}
await writing;
clearInterval(sampler);
peak = Math.max(peak, Deno.memoryUsage().rss);
await pair.close();
console.log(JSON.stringify({
  scenario,
  sentMiB: sent,
  receivedMiB: received,
  corrupt,
  fastMiBps: Math.round(rate * 1000),
  slowSeconds: Math.round((performance.now() - slowStart) / 100) / 10,
  baselineMiB: Math.round(baseline / MIB),
  peakMiB: Math.round(peak / MIB),
}));
