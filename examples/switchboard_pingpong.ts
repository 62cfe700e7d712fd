/**
 * Ping-pong across processes over a {@linkcode Switchboard}. Every node makes
 * an mpsc channel and broadcasts its sender; node 0 then pings node 1, which
 * answers each ping with a pong on node 0's channel, and node 0 prints the
 * round trips per second. Node 0 then tells every node to stop, and each
 * closes its senders: a node's receiver ends once every node has closed its
 * sender to it, so no node leaves while another still needs it.
 *
 * In two terminals:
 *
 * ```sh
 * deno run --allow-net examples/switchboard_pingpong.ts \
 *   --nodes tcp://127.0.0.1:9100,tcp://127.0.0.1:9101 --id 0
 * deno run --allow-net examples/switchboard_pingpong.ts \
 *   --nodes tcp://127.0.0.1:9100,tcp://127.0.0.1:9101 --id 1
 * ```
 *
 * Options: `--rounds N` (default 1000) on node 0, and `--timeout MS` (default
 * 30000) for the rendezvous. More nodes may join (`--nodes a,b,c`); those
 * past node 1 only wait for the stop.
 *
 * @module
 */

import { type Sender, Switchboard } from "@x/comm";

type Message = { ping: number } | { pong: number } | { stop: true };
interface Mail {
  from: number;
  tx: Sender<Message>;
}

const options = parseArgs(Deno.args);
await using board = await Switchboard.create({ nodes: options.nodes, id: options.id });
await board.rendezvous({ timeout: options.timeout });
console.log(`Node ${board.id} of ${board.size}: every node is up`);

// Every node's sender, by node id, this node's own included.
const [own, inbox] = board.mpsc<Message>();
const mailRx = board.broadcastRx<Mail>("senders");
const mailTx = board.broadcastTx<Mail>("senders");
await mailTx.send({ from: board.id, tx: own });
await mailTx.close();
const peers = new Map<number, Sender<Message>>([[board.id, own]]);
while (peers.size < board.size) {
  const { from, tx } = await mailRx.receive();
  peers.set(from, tx);
}

if (board.id === 0) {
  const ponger = peers.get(1);
  if (!ponger) throw new TypeError("Ping-pong needs at least two nodes");
  const started = performance.now();
  for (let round = 0; round < options.rounds; round++) {
    await ponger.send({ ping: round });
    const reply = await inbox.receive();
    if (!("pong" in reply) || reply.pong !== round) {
      throw new Error(`Expected pong ${round}, got ${JSON.stringify(reply)}`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `${options.rounds} round trips in ${seconds.toFixed(3)} s: ${
      Math.round(options.rounds / seconds)
    } round trips/s`,
  );
  for (const [node, tx] of peers) if (node !== 0) await tx.send({ stop: true });
  await closeAll();
  for await (const message of inbox) throw new Error(`Unexpected ${JSON.stringify(message)}`);
} else {
  const pinger = peers.get(0)!;
  let pongs = 0;
  for (;;) {
    const message = await inbox.receive();
    if ("stop" in message) break;
    if ("ping" in message) {
      await pinger.send({ pong: message.ping });
      pongs++;
    }
  }
  await closeAll();
  for await (const message of inbox) throw new Error(`Unexpected ${JSON.stringify(message)}`);
  console.log(`Node ${board.id} answered ${pongs} pings`);
}

/** Closes every sender this node holds, its own included. */
async function closeAll(): Promise<void> {
  await Promise.all([...peers.values()].map((tx) => tx.close()));
}

function parseArgs(args: string[]) {
  const values = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    if (!args[i].startsWith("--") || args[i + 1] === undefined) {
      throw new TypeError(`Unexpected argument ${JSON.stringify(args[i])}`);
    }
    values.set(args[i].slice(2), args[i + 1]);
  }
  const nodes = (values.get("nodes") ?? "").split(",").filter((node) => node !== "");
  const id = Number(values.get("id"));
  const rounds = Number(values.get("rounds") ?? 1000);
  const timeout = Number(values.get("timeout") ?? 30_000);
  if (nodes.length < 2) throw new TypeError("--nodes takes two or more addresses, comma-separated");
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new TypeError("--rounds takes a positive whole number");
  }
  return { nodes, id, rounds, timeout };
}
