// One node of a switchboard cluster, run as its own process by
// tests/switchboard_test.ts:
//
//   deno run --allow-net tests/testdata/switchboard_node.ts \
//     --nodes tcp://127.0.0.1:P0,tcp://127.0.0.1:P1,tcp://127.0.0.1:P2 --id N \
//     [--delay MS] [--scenario rendezvous|mpsc|broadcast|maxProducers] [--timeout MS]
//
// It waits `delay`, listens on nodes[id], runs rendezvous (with `timeout`),
// then the scenario, and prints what happened as JSON lines on stdout:
//
//   {"event":"rendezvous","ok":true}
//   {"event":"rendezvous","ok":false,"message":"…","missing":[2]}
//
// Exit codes: 0 done; 2 rendezvous failed; 3 the port was taken (the test
// picks another); 1 anything else. Every wait is bounded by `timeout`, so a
// node never outlives a broken cluster for long.

import {
  type BroadcastSender,
  ChannelClosedError,
  RendezvousError,
  type Sender,
  Switchboard,
} from "../../mod.ts";

const MESSAGES_PER_SENDER = 10_000;

interface Args {
  nodes: string[];
  id: number;
  delay: number;
  scenario: string;
  timeout: number;
}

function parseArgs(args: string[]): Args {
  const values = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    if (!args[i].startsWith("--") || args[i + 1] === undefined) {
      throw new TypeError(`Unexpected argument ${JSON.stringify(args[i])}`);
    }
    values.set(args[i].slice(2), args[i + 1]);
  }
  const nodes = (values.get("nodes") ?? "").split(",").filter((node) => node !== "");
  return {
    nodes,
    id: Number(values.get("id") ?? NaN),
    delay: Number(values.get("delay") ?? 0),
    scenario: values.get("scenario") ?? "rendezvous",
    timeout: Number(values.get("timeout") ?? 10_000),
  };
}

function print(record: Record<string, unknown>): void {
  console.log(JSON.stringify(record));
}

function isAddrInUse(error: unknown): boolean {
  for (let e = error; e instanceof Error; e = e.cause) {
    if (e instanceof Deno.errors.AddrInUse || /address already in use/i.test(e.message)) {
      return true;
    }
  }
  return false;
}

const args = parseArgs(Deno.args);
const { nodes, id, timeout } = args;

if (args.delay > 0) await new Promise((resolve) => setTimeout(resolve, args.delay));

let board: Switchboard;
try {
  board = await Switchboard.create({ nodes, id });
} catch (error) {
  print({ event: "listen", ok: false, addrInUse: isAddrInUse(error), message: String(error) });
  Deno.exit(isAddrInUse(error) ? 3 : 1);
}

try {
  await board.rendezvous({ timeout });
  print({ event: "rendezvous", ok: true });
} catch (error) {
  if (!(error instanceof RendezvousError)) throw error;
  print({ event: "rendezvous", ok: false, message: error.message, missing: error.missing });
  await board.close();
  Deno.exit(2);
}

/** Every wait after the rendezvous gives up at this signal. */
const deadline = AbortSignal.timeout(timeout);
try {
  switch (args.scenario) {
    case "rendezvous":
      break;
    case "mpsc":
      await mpscScenario(board);
      break;
    case "broadcast":
      await broadcastScenario(board);
      break;
    case "maxProducers":
      await maxProducersScenario(board);
      break;
    default:
      throw new TypeError(`Unknown scenario ${JSON.stringify(args.scenario)}`);
  }
  await barrier(board);
} finally {
  await board.close();
}

/**
 * Every node tells the others it is done and waits to hear the same from
 * them, so that none closes (and stops listening) while another still needs it.
 */
async function barrier(board: Switchboard): Promise<void> {
  const rx = board.broadcastRx<number>("done");
  const tx = board.broadcastTx<number>("done");
  try {
    await tx.send(board.id);
    const heard = new Set<number>();
    while (heard.size < board.size - 1) heard.add(await rx.receive({ signal: deadline }));
    print({ event: "barrier", heard: [...heard].sort() });
  } finally {
    await tx.close();
  }
}

/**
 * Node 0 hands a sender to every other node; each sends 10,000 `[id, i]` on
 * it and closes it; node 0 reads until the receiver ends.
 */
async function mpscScenario(board: Switchboard): Promise<void> {
  if (board.id === 0) {
    const [tx, rx] = board.mpsc<[number, number]>();
    const post = board.broadcastTx<{ tx: Sender<[number, number]> }>("mail");
    try {
      await post.send({ tx });
    } finally {
      await post.close();
      await tx.close();
    }
    const next = new Map<number, number>();
    let received = 0;
    let inOrder = true;
    await withDeadline(async () => {
      for await (const [from, i] of rx) {
        received++;
        if (i !== (next.get(from) ?? 0)) inOrder = false;
        next.set(from, i + 1);
      }
    });
    print({
      event: "mpsc",
      received,
      inOrder,
      perSender: Object.fromEntries([...next].sort(([a], [b]) => a - b)),
      ended: rx.ended,
    });
  } else {
    const mail = board.broadcastRx<{ tx: Sender<[number, number]> }>("mail");
    const { tx } = await mail.receive({ signal: deadline });
    try {
      for (let i = 0; i < MESSAGES_PER_SENDER; i++) await tx.send([board.id, i]);
    } finally {
      await tx.close();
    }
    print({ event: "mpsc", sent: MESSAGES_PER_SENDER });
  }
}

/** Every node broadcasts its id to every node, itself included. */
async function broadcastScenario(board: Switchboard): Promise<void> {
  const rx = board.broadcastRx<number>("hello");
  const tx: BroadcastSender<number> = board.broadcastTx<number>("hello", { includeSelf: true });
  try {
    await tx.send(board.id);
    const heard: number[] = [];
    while (heard.length < board.size) heard.push(await rx.receive({ signal: deadline }));
    print({ event: "broadcast", heard: heard.sort() });
  } finally {
    await tx.close();
  }
}

/**
 * Node 0 makes a channel of at most 2 producers, keeps its own sender open
 * and hands one to each other node: 1 + 2 > 2, so exactly one remote sender
 * is refused on its first send. Each other node reports its try on "tried";
 * only then does node 0 close its sender and read until the receiver ends.
 */
async function maxProducersScenario(board: Switchboard): Promise<void> {
  const triedRx = board.broadcastRx<{ id: number; ok: boolean }>("tried");
  if (board.id === 0) {
    const [tx, rx] = board.mpsc<[number, string]>({ maxProducers: 2 });
    const post = board.broadcastTx<{ tx: Sender<[number, string]> }>("mail");
    const tried: { id: number; ok: boolean }[] = [];
    try {
      await post.send({ tx });
      while (tried.length < board.size - 1) tried.push(await triedRx.receive({ signal: deadline }));
    } finally {
      await post.close();
      await tx.close();
    }
    const received: [number, string][] = [];
    await withDeadline(async () => {
      for await (const message of rx) received.push(message);
    });
    print({ event: "maxProducers", received, ended: rx.ended });
  } else {
    const mail = board.broadcastRx<{ tx: Sender<[number, string]> }>("mail");
    const { tx } = await mail.receive({ signal: deadline });
    const tried = board.broadcastTx<{ id: number; ok: boolean }>("tried");
    try {
      await tx.send([board.id, "hello"]);
      print({ event: "maxProducers", ok: true });
      await tried.send({ id: board.id, ok: true });
    } catch (error) {
      print({
        event: "maxProducers",
        ok: false,
        error: (error as Error).name,
        isChannelClosed: error instanceof ChannelClosedError,
        message: (error as Error).message,
      });
      await tried.send({ id: board.id, ok: false });
    } finally {
      await tried.close();
      await tx.close();
    }
  }
}

/** Runs `body`, failing once the deadline passes. */
async function withDeadline(body: () => Promise<void>): Promise<void> {
  let onAbort: (() => void) | undefined;
  const expired = new Promise<never>((_, reject) => {
    onAbort = () => reject(new Error(`Node ${id} timed out after ${timeout} ms`));
    if (deadline.aborted) onAbort();
    deadline.addEventListener("abort", onAbort, { once: true });
  });
  try {
    await Promise.race([body(), expired]);
  } finally {
    deadline.removeEventListener("abort", onAbort!);
  }
}
