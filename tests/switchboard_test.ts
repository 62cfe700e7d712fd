// Switchboard: rendezvous, mpsc channels whose senders travel in messages,
// broadcast channels, maxProducers and close(). Clusters of real processes
// (tests/testdata/switchboard_node.ts, examples/switchboard_pingpong.ts) and
// clusters in this process, over tcp and inproc. Everything binds to
// loopback; every wait is bounded; no case judges speed.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertMatch,
  assertRejects,
  assertStrictEquals,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { delay } from "@std/async/delay";
import { fromFileUrl } from "@std/path";
import {
  ChannelClosedError,
  listen,
  type Listener,
  Receiver,
  RendezvousError,
  Sender,
  Switchboard,
} from "@x/comm";
import { HANG_GUARD_MS, within } from "./_wait.ts";

const ROOT = fromFileUrl(new URL("..", import.meta.url));
const NODE_SCRIPT = fromFileUrl(new URL("testdata/switchboard_node.ts", import.meta.url));
const PINGPONG = fromFileUrl(new URL("../examples/switchboard_pingpong.ts", import.meta.url));
/** How long a whole cluster of processes may take before it is killed. */
const CLUSTER_GUARD_MS = 3 * HANG_GUARD_MS;
/** Attempts at a cluster whose free port another process took meanwhile. */
const PORT_ATTEMPTS = 3;

// ---------------------------------------------------------------------------
// Processes

/** Ports that were free a moment ago on 127.0.0.1 (another process may take one). */
function freePorts(count: number): number[] {
  const listeners = Array.from(
    { length: count },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((listener) => (listener.addr as Deno.NetAddr).port);
  for (const listener of listeners) listener.close();
  return ports;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** The JSON lines of stdout. */
  events: Record<string, unknown>[];
}

/** A `deno run` child; disposing of it kills it if it still runs. */
class Process implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly done: Promise<Run>;

  constructor(script: string, args: string[]) {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--allow-net", script, ...args],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.done = this.#child.output().then(({ code, stdout, stderr }) => {
      const text = new TextDecoder().decode(stdout);
      const events = text.split("\n").filter((line) => line.startsWith("{")).map((line) =>
        JSON.parse(line)
      );
      return { code, stdout: text, stderr: new TextDecoder().decode(stderr), events };
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // It has exited already.
    }
    await this.done.catch(() => {});
  }
}

/** Whether a run failed because its port was taken between freePorts() and listening. */
function portTaken(run: Run): boolean {
  return run.code === 3 || /AddrInUse|address already in use/i.test(run.stderr);
}

/**
 * Starts one process per spec (on fresh ports, `size` nodes in all) and
 * waits for all of them; kills every one still running when it gives up.
 * Retries on fresh ports if a port was taken meanwhile.
 */
async function runCluster(
  size: number,
  specs: { id: number; args: string[]; script?: string }[],
): Promise<{ nodes: string[]; runs: Run[] }> {
  for (let attempt = 1;; attempt++) {
    const nodes = freePorts(size).map((port) => `tcp://127.0.0.1:${port}`);
    const processes = specs.map(({ id, args, script }) =>
      new Process(script ?? NODE_SCRIPT, ["--nodes", nodes.join(","), "--id", `${id}`, ...args])
    );
    try {
      const runs = await within(
        Promise.all(processes.map((process) => process.done)),
        `a cluster of ${specs.length} processes`,
        CLUSTER_GUARD_MS,
      );
      if (attempt < PORT_ATTEMPTS && runs.some(portTaken)) continue;
      return { nodes, runs };
    } finally {
      for (const process of processes) await process[Symbol.asyncDispose]();
    }
  }
}

/** The one event named `event` in a run. */
function eventOf(run: Run, event: string): Record<string, unknown> {
  const found = run.events.filter((record) => record.event === event);
  assertEquals(found.length, 1, `expected one "${event}" event in:\n${run.stdout}\n${run.stderr}`);
  return found[0];
}

function assertSucceeded(run: Run, id: number): void {
  assertEquals(run.code, 0, `node ${id} failed:\n${run.stdout}\n${run.stderr}`);
  assertEquals(eventOf(run, "rendezvous"), { event: "rendezvous", ok: true });
  assertEquals(
    eventOf(run, "barrier").heard,
    [0, 1, 2].filter((node) => node !== id),
    `node ${id} did not hear from every other node`,
  );
}

Deno.test("Three processes started together all rendezvous", async () => {
  const { runs } = await runCluster(3, [0, 1, 2].map((id) => ({ id, args: [] })));
  runs.forEach(assertSucceeded);
});

Deno.test("Three processes started out of order, with delays, all rendezvous", async () => {
  const { runs } = await runCluster(3, [
    { id: 2, args: [] },
    { id: 0, args: ["--delay", "300"] },
    { id: 1, args: ["--delay", "600"] },
  ]);
  runs.forEach((run, i) => assertSucceeded(run, [2, 0, 1][i]));
});

Deno.test("Rendezvous without node 2 fails on nodes 0 and 1, naming node 2 and its address", async () => {
  const { nodes, runs } = await runCluster(3, [
    { id: 0, args: ["--timeout", "1500"] },
    { id: 1, args: ["--timeout", "1500"] },
  ]);
  for (const [id, run] of runs.entries()) {
    assertEquals(run.code, 2, `node ${id}:\n${run.stdout}\n${run.stderr}`);
    const result = eventOf(run, "rendezvous");
    assertEquals(result.ok, false);
    assertEquals(result.missing, [2]);
    assertStringIncludes(String(result.message), `node ${id} failed`);
    assertStringIncludes(String(result.message), `node 2 (${nodes[2]})`);
    assertFalse(String(result.message).includes(`(${nodes[1 - id]})`));
  }
});

Deno.test("mpsc across processes: node 0 receives all 20,000, each sender's in order, then the end", async () => {
  const { runs } = await runCluster(
    3,
    [0, 1, 2].map((id) => ({ id, args: ["--scenario", "mpsc", "--timeout", "20000"] })),
  );
  runs.forEach(assertSucceeded);
  assertEquals(eventOf(runs[0], "mpsc"), {
    event: "mpsc",
    received: 20_000,
    inOrder: true,
    perSender: { 1: 10_000, 2: 10_000 },
    ended: true,
  });
  assertEquals(eventOf(runs[1], "mpsc").sent, 10_000);
  assertEquals(eventOf(runs[2], "mpsc").sent, 10_000);
});

Deno.test("A broadcast across processes reaches every node, the sender included", async () => {
  const { runs } = await runCluster(
    3,
    [0, 1, 2].map((id) => ({ id, args: ["--scenario", "broadcast"] })),
  );
  runs.forEach(assertSucceeded);
  for (const run of runs) assertEquals(eventOf(run, "broadcast").heard, [0, 1, 2]);
});

Deno.test("maxProducers across processes: of two remote senders past one local, exactly one is refused", async () => {
  const { runs } = await runCluster(
    3,
    [0, 1, 2].map((id) => ({ id, args: ["--scenario", "maxProducers"] })),
  );
  runs.forEach(assertSucceeded);
  const tries = [eventOf(runs[1], "maxProducers"), eventOf(runs[2], "maxProducers")];
  const accepted = tries.findIndex((result) => result.ok) + 1;
  const refused = tries.filter((result) => !result.ok);
  assert(accepted > 0, `no remote sender was accepted: ${JSON.stringify(tries)}`);
  assertEquals(refused.length, 1, JSON.stringify(tries));
  assertEquals(refused[0].error, "ChannelClosedError");
  assertEquals(refused[0].isChannelClosed, true);
  assertStringIncludes(String(refused[0].message), "at most 2 producers");
  assertEquals(eventOf(runs[0], "maxProducers"), {
    event: "maxProducers",
    received: [[accepted, "hello"]],
    ended: true,
  });
});

Deno.test("examples/switchboard_pingpong.ts plays ping-pong between two processes", async () => {
  const { runs } = await runCluster(
    2,
    [0, 1].map((id) => ({ id, script: PINGPONG, args: ["--rounds", "200", "--timeout", "10000"] })),
  );
  for (const [id, run] of runs.entries()) {
    assertEquals(run.code, 0, `node ${id}:\n${run.stdout}\n${run.stderr}`);
    assertStringIncludes(run.stdout, `Node ${id} of 2: every node is up`);
  }
  assertMatch(runs[0].stdout, /^200 round trips in \d+\.\d+ s: \d+ round trips\/s$/m);
  assertStringIncludes(runs[1].stdout, "Node 1 answered 200 pings");
});

// ---------------------------------------------------------------------------
// Clusters in this process

/** Switchboards in this process, each behind its own listener; disposing closes all. */
interface Cluster extends AsyncDisposable {
  boards: Switchboard[];
  nodes: string[];
}

/**
 * A cluster of `new Switchboard()`s fed by listeners bound first (tcp on
 * port 0, so no port can be taken meanwhile; or inproc), rendezvoused.
 */
async function cluster(schemes: ("tcp" | "inproc")[]): Promise<Cluster> {
  const boards: Switchboard[] = [];
  const listeners: Listener[] = [];
  const dispose = async () => {
    for (const board of boards) await board.close();
    for (const listener of listeners) await listener.close();
  };
  try {
    for (const [id, scheme] of schemes.entries()) {
      const address = scheme === "tcp" ? "tcp://127.0.0.1:0" : `inproc://sb-${crypto.randomUUID()}`;
      listeners.push(await listen(address, (comm) => boards[id].handleComm(comm)));
    }
    const nodes = listeners.map((listener) => listener.contactAddress);
    for (const id of schemes.keys()) boards.push(new Switchboard({ nodes, id }));
    await within(Promise.all(boards.map((board) => board.rendezvous())), "rendezvous");
    return { boards, nodes, [Symbol.asyncDispose]: dispose };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/** Every message until the receiver ends (bounded). */
function drain<T>(rx: Receiver<T>, what = "the receiver to end"): Promise<T[]> {
  return within(Array.fromAsync(rx), what);
}

/** Hands `tx` from node `from` to node `to` inside a broadcast message; returns what arrived. */
async function handOver<T>(
  boards: Switchboard[],
  from: number,
  to: number,
  tx: Sender<T>,
  token = `mail-${crypto.randomUUID()}`,
): Promise<Sender<T>> {
  const inbox = boards[to].broadcastRx<{ tx: Sender<T> }>(token);
  // Every other node gets a copy (a ticket each): take theirs and close it.
  const others = boards.filter((board) => board.id !== from && board.id !== to).map((board) =>
    board.broadcastRx<{ tx: Sender<T> }>(token)
  );
  await using post = boards[from].broadcastTx<{ tx: Sender<T> }>(token);
  await post.send({ tx });
  for (const other of others) await (await within(other.receive(), "a copy")).tx.close();
  return (await within(inbox.receive(), "the mail")).tx;
}

Deno.test("Bad options are TypeErrors (RangeErrors for sizes)", async () => {
  const nodes = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"];
  assertThrows(() => new Switchboard({ nodes: [], id: 0 }), TypeError, "non-empty array");
  assertThrows(
    () => new Switchboard({ nodes: "tcp://127.0.0.1:1" as unknown as string[], id: 0 }),
    TypeError,
  );
  assertThrows(() => new Switchboard({ nodes: [1 as unknown as string], id: 0 }), TypeError);
  for (const id of [-1, 3, 1.5, NaN]) {
    assertThrows(() => new Switchboard({ nodes, id }), TypeError, "from 0 to 2");
  }
  await assertRejects(() => Switchboard.create({ nodes: [], id: 0 }), TypeError);
  await assertRejects(() => Switchboard.create({ nodes, id: 3 }), TypeError, "Invalid id 3");

  await using board = await Switchboard.local();
  assertThrows(() => board.mpsc({ maxProducers: 0 }), RangeError);
  assertThrows(() => board.mpsc({ capacity: 0 }), RangeError);
  assertThrows(() => board.broadcastTx(""), TypeError);
  assertThrows(() => board.broadcastRx(""), TypeError);
  await assertRejects(() => board.rendezvous({ timeout: -1 }), RangeError);
});

Deno.test("broadcastRx of the same token twice is a TypeError", async () => {
  await using board = await Switchboard.local();
  board.broadcastRx("news");
  assertThrows(() => board.broadcastRx("news"), TypeError, `"news" twice`);
  board.broadcastRx("other");
});

Deno.test("Rendezvous with no other node up times out with RendezvousError naming it", async () => {
  const [port] = freePorts(1);
  const self = `inproc://sb-${crypto.randomUUID()}`;
  const later = `tcp://127.0.0.1:${port}`;
  // Node 0 cannot reach node 1, a later node: the connect error is the cause.
  await using first = await Switchboard.create({ nodes: [self, later], id: 0 });
  const error = await assertRejects(() => first.rendezvous({ timeout: 300 }), RendezvousError);
  assertEquals(error.missing, [1]);
  assertStringIncludes(error.message, `node 1 (${later}) not reached`);
  assertStringIncludes(error.message, "after 300 ms");
  assert(error.cause !== undefined);

  // Node 1 waits in vain for node 0, an earlier node, to greet it.
  const earlier = `inproc://sb-${crypto.randomUUID()}`;
  const own = `inproc://sb-${crypto.randomUUID()}`;
  await using second = await Switchboard.create({ nodes: [earlier, own], id: 1 });
  const waited = await assertRejects(() => second.rendezvous({ timeout: 200 }), RendezvousError);
  assertEquals(waited.missing, [0]);
  assertStringIncludes(waited.message, `node 0 (${earlier}) not reached`);

  // A single node has nobody to wait for.
  await using alone = await Switchboard.local();
  await within(alone.rendezvous({ timeout: 0 }), "a single node's rendezvous");
});

Deno.test("Rendezvous stops at its signal with the signal's reason", async () => {
  const nodes = [`inproc://sb-${crypto.randomUUID()}`, `inproc://sb-${crypto.randomUUID()}`];
  await using board = await Switchboard.create({ nodes, id: 1 });
  const reason = new Error("stop waiting");
  await assertRejects(
    () => board.rendezvous({ signal: AbortSignal.abort(reason) }),
    Error,
    "stop waiting",
  );
  const controller = new AbortController();
  const waiting = board.rendezvous({ timeout: HANG_GUARD_MS, signal: controller.signal });
  setTimeout(() => controller.abort(reason), 20);
  const error = await within(assertRejects(() => waiting), "rendezvous to stop");
  assertStrictEquals(error, reason);
});

Deno.test("A Sender inside a message over tcp arrives as a working Sender, nested too", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [a, b] = c.boards;
  const [tx, rx] = a.mpsc<string>();
  const inbox = b.broadcastRx<{ list: { tx: Sender<string> }[] }>("mail");
  {
    await using post = a.broadcastTx<{ list: { tx: Sender<string> }[] }>("mail");
    await post.send({ list: [{ tx }] });
  }
  await tx.close();
  const { list } = await within(inbox.receive(), "the mail");
  const got = list[0].tx;
  assertInstanceOf(got, Sender);
  assertEquals(got.node, 0);
  assertFalse(got.closed);
  await got.send("one");
  await got.send("two");
  assertEquals(await within(rx.receive(), "a message"), "one");
  assertFalse(rx.ended);
  await got.close();
  assertEquals(await drain(rx), ["two"]);
});

Deno.test("The receiver ends only after every sender, remote clones included, has closed", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [a, b] = c.boards;
  const [tx, rx] = a.mpsc<string>();
  const got = await handOver(c.boards, 0, 1, tx);
  await tx.close();
  await got.send("original");
  const clone = got.clone();
  await got.close();
  // The clone still feeds the receiver, after both earlier senders closed.
  await clone.send("clone");
  assertEquals(await within(rx.receive(), "a message"), "original");
  assertEquals(await within(rx.receive(), "a message"), "clone");
  assertFalse(rx.ended);
  // A local clone too.
  const [tx2, rx2] = b.mpsc<number>();
  const second = tx2.clone();
  await tx2.close();
  await second.send(2);
  assertFalse(rx2.ended);
  await second.close();
  assertEquals(await drain(rx2), [2]);

  await clone.close();
  assertEquals(await drain(rx), []);
  assert(rx.ended);
});

Deno.test({
  name: "The receiver ends after a clone of a never-used remote sender closes",
  fn: async () => {
    await using c = await cluster(["tcp", "tcp"]);
    const [tx, rx] = c.boards[0].mpsc<string>();
    const got = await handOver(c.boards, 0, 1, tx);
    await tx.close();
    const clone = got.clone();
    await clone.send("clone");
    await clone.close();
    await got.close();
    assertEquals(await drain(rx), ["clone"]);
  },
});

Deno.test("A sender sent home to its receiver's node works there", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [a] = c.boards;
  const [tx, rx] = a.mpsc<string>();
  const got = await handOver(c.boards, 0, 1, tx);
  await tx.close();
  await got.send("from b");
  const home = await handOver(c.boards, 1, 0, got);
  await got.close();
  assertInstanceOf(home, Sender);
  assertEquals(home.node, a.id);
  await home.send("home");
  assertEquals(await within(rx.receive(), "a message"), "from b");
  assertEquals(await within(rx.receive(), "a message"), "home");
  await home.close();
});

Deno.test({
  name: "The receiver ends after a sender that came home closes",
  fn: async () => {
    await using c = await cluster(["tcp", "tcp"]);
    const [tx, rx] = c.boards[0].mpsc<string>();
    const got = await handOver(c.boards, 0, 1, tx);
    await tx.close();
    const home = await handOver(c.boards, 1, 0, got);
    await got.close();
    await home.send("home");
    await home.close();
    assertEquals(await drain(rx), ["home"]);
  },
});

Deno.test("A sender forwarded from one remote node to another works, and the receiver ends", async () => {
  await using c = await cluster(["tcp", "tcp", "tcp"]);
  const [a, , d] = c.boards;
  const [tx, rx] = a.mpsc<string>();
  const got = await handOver(c.boards, 0, 1, tx);
  await tx.close();
  // Node 2's channel carries node 1's sender on to node 2.
  const [dtx, drx] = d.mpsc<{ tx: Sender<string> }>();
  const toD = await handOver(c.boards, 2, 1, dtx);
  await dtx.close();
  await got.send("from 1");
  await toD.send({ tx: got });
  await got.close();
  await toD.close();
  const forwarded = (await within(drx.receive(), "the forwarded sender")).tx;
  assertInstanceOf(forwarded, Sender);
  assertEquals(forwarded.node, 0);
  await forwarded.send("from 2");
  await forwarded.close();
  assertEquals(await drain(rx), ["from 1", "from 2"]);
  assertEquals(await drain(drx), []);
});

Deno.test("Sending on a closed sender rejects with ChannelClosedError, here and remote", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [tx, rx] = c.boards[0].mpsc<number>();
  const got = await handOver(c.boards, 0, 1, tx);
  const spare = tx.clone();
  await tx.close();
  assert(tx.closed);
  await assertRejects(() => tx.send(1), ChannelClosedError, "this sender is closed");
  assertThrows(() => tx.clone(), ChannelClosedError);
  await tx.close(); // again: a no-op
  await got.send(1);
  await got.close();
  assert(got.closed);
  await assertRejects(() => got.send(2), ChannelClosedError, "this sender is closed");
  assertThrows(() => got.clone(), ChannelClosedError);
  // A closed sender cannot travel either (the comm's write wraps the error).
  {
    await using post = c.boards[0].broadcastTx<{ tx: Sender<number> }>("mail");
    const error = await assertRejects(() => post.send({ tx }));
    assertStringIncludes((error as Error).message, "Cannot send a closed sender");
    await post.close();
    await assertRejects(() => post.send({ tx: spare }), ChannelClosedError, "sender is closed");
  }
  await spare.close();
  assertEquals(await drain(rx), [1]);
  // The receiver has ended: receive() rejects, and a send from a sender
  // still open (none here) could not land.
  await assertRejects(() => rx.receive(), ChannelClosedError, "every sender has closed");
});

Deno.test({
  name: "A message that fails to go out does not keep the receiver open",
  fn: async () => {
    await using c = await cluster(["tcp", "tcp"]);
    const [tx, rx] = c.boards[0].mpsc<number>();
    {
      await using post = c.boards[0].broadcastTx<unknown>("mail");
      await assertRejects(() => post.send({ tx, bad: 10n ** 30n }), TypeError);
    }
    await tx.close();
    assertEquals(await drain(rx), []);
  },
});

Deno.test("maxProducers: a local clone past it throws; closing one makes room", async () => {
  await using board = await Switchboard.local();
  const [tx, rx] = board.mpsc<number>({ maxProducers: 2 });
  const second = tx.clone();
  assertThrows(() => tx.clone(), ChannelClosedError, "at most 2 producers");
  assertThrows(() => second.clone(), ChannelClosedError, "at most 2 producers");
  await second.close();
  const third = tx.clone();
  await third.send(3);
  await tx.send(1);
  await tx.close();
  await third.close();
  assertEquals(await drain(rx), [3, 1]);
});

Deno.test("maxProducers: a remote sender past it is refused on its first send", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [tx, rx] = c.boards[0].mpsc<number>({ maxProducers: 1 });
  const got = await handOver(c.boards, 0, 1, tx);
  const error = await assertRejects(() => got.send(1), ChannelClosedError);
  assertStringIncludes(error.message, "at most 1 producers");
  await got.close();
  await tx.send(0);
  assertFalse(rx.ended);
  await tx.close();
  // The refused sender's ticket is spent: the receiver ends.
  assertEquals(await drain(rx), [0]);
});

Deno.test("close() ends the receivers: iteration ends, and the board refuses new channels", async () => {
  const board = await Switchboard.local();
  const [tx, rx] = board.mpsc<number>();
  const news = board.broadcastRx<string>("news");
  const ticks = board.broadcastTx<string>("news", { includeSelf: true });
  await tx.send(1);
  await ticks.send("queued");
  const mail = Array.fromAsync(rx);
  const heard = Array.fromAsync(news);
  await board.close();
  assertEquals(await within(mail, "the mpsc receiver to end"), [1]);
  assertEquals(await within(heard, "the broadcast receiver to end"), ["queued"]);
  assert(rx.ended && news.ended);
  await assertRejects(() => rx.receive(), ChannelClosedError, "the switchboard closed");
  await assertRejects(() => tx.send(2), ChannelClosedError);
  assertThrows(() => board.mpsc(), ChannelClosedError, "switchboard is closed");
  assertThrows(() => board.broadcastTx("news"), ChannelClosedError);
  assertThrows(() => board.broadcastRx("later"), ChannelClosedError);
  await tx.close();
  await ticks.close();
  await board.close(); // again: a no-op
});

Deno.test("close() over tcp ends a receiver whose remote senders are still open", async () => {
  await using c = await cluster(["tcp", "tcp"]);
  const [a] = c.boards;
  const [tx, rx] = a.mpsc<number>();
  const got = await handOver(c.boards, 0, 1, tx);
  await got.send(1);
  // A remote send resolves once written: wait for it to land.
  assertEquals(await within(rx.receive(), "a message"), 1);
  const rest = Array.fromAsync(rx);
  await a.close();
  assertEquals(await within(rest, "the receiver to end"), []);
  await assertRejects(() => rx.receive(), ChannelClosedError, "the switchboard closed");
  await got.close();
  await tx.close();
});

Deno.test("Switchboard.local(): mpsc in order, and broadcast with and without includeSelf", async () => {
  await using board = await Switchboard.local();
  assertEquals(board.id, 0);
  assertEquals(board.size, 1);
  assertMatch(board.nodes[0], /^inproc:\/\//);
  await within(board.rendezvous(), "rendezvous");

  const [tx, rx] = board.mpsc<number>();
  assertInstanceOf(tx, Sender);
  assertInstanceOf(rx, Receiver);
  for (let i = 0; i < 100; i++) await tx.send(i);
  assertEquals(rx.length, 100);
  await tx.close();
  assertEquals(await drain(rx), Array.from({ length: 100 }, (_, i) => i));

  const inbox = board.broadcastRx<string>("news");
  const quiet = board.broadcastTx<string>("news");
  await quiet.send("to nobody"); // no other node, and not to itself
  const loud = board.broadcastTx<string>("news", { includeSelf: true });
  await loud.send("to me");
  assertEquals(inbox.length, 1);
  assertEquals(await inbox.receive(), "to me");
  await quiet.close();
  await loud.close();
  await assertRejects(() => loud.send("late"), ChannelClosedError);
});

Deno.test("A local sender waits while the receiver holds `capacity` messages", async () => {
  await using board = await Switchboard.local();
  const [tx, rx] = board.mpsc<number>({ capacity: 1 });
  await tx.send(1);
  let sent = false;
  const second = tx.send(2).then(() => sent = true);
  await delay(10);
  assertFalse(sent, "the send should wait for room");
  assertEquals(await rx.receive(), 1);
  await within(second, "the waiting send");
  await tx.close();
  assertEquals(await drain(rx), [2]);
});

Deno.test("A cluster of tcp and inproc nodes in one process: broadcast and senders in messages", async () => {
  await using c = await cluster(["tcp", "inproc", "tcp"]);
  const { boards } = c;
  // A broadcast reaches every node.
  const inboxes = boards.map((board) => board.broadcastRx<number>("hello"));
  for (const board of boards) {
    await using tx = board.broadcastTx<number>("hello", { includeSelf: true });
    await tx.send(board.id);
  }
  for (const inbox of inboxes) {
    const heard = [];
    for (let i = 0; i < boards.length; i++) heard.push(await within(inbox.receive(), "hello"));
    assertEquals(heard.sort(), [0, 1, 2]);
  }
  // The inproc node's channel, fed by senders that travelled to the tcp nodes.
  const [tx, rx] = boards[1].mpsc<[number, number]>();
  const inbox0 = boards[0].broadcastRx<{ tx: Sender<[number, number]> }>("mail");
  const inbox2 = boards[2].broadcastRx<{ tx: Sender<[number, number]> }>("mail");
  {
    await using post = boards[1].broadcastTx<{ tx: Sender<[number, number]> }>("mail");
    await post.send({ tx });
  }
  await tx.close();
  const senders = [
    (await within(inbox0.receive(), "mail")).tx,
    (await within(inbox2.receive(), "mail")).tx,
  ];
  await Promise.all(senders.map(async (sender, k) => {
    assertInstanceOf(sender, Sender);
    assertEquals(sender.node, 1);
    for (let i = 0; i < 500; i++) await sender.send([k, i]);
    await sender.close();
  }));
  const got = await drain(rx);
  for (const k of [0, 1]) {
    assertEquals(
      got.filter(([from]) => from === k).map(([, i]) => i),
      Array.from({ length: 500 }, (_, i) => i),
    );
  }
});

Deno.test({
  name: "A Sender inside a message over inproc arrives as a producer of its own",
  fn: async () => {
    await using c = await cluster(["inproc", "inproc"]);
    const [tx, rx] = c.boards[0].mpsc<string>();
    const got = await handOver(c.boards, 0, 1, tx);
    await tx.close();
    assert(got !== tx);
    assertFalse(got.closed);
    await got.send("from b");
    await got.close();
    assertEquals(await drain(rx), ["from b"]);
  },
});

Deno.test("A local sender waits while the receiver holds over 16 MiB, whatever its capacity in messages", async () => {
  await using board = await Switchboard.local();
  const [tx, rx] = board.mpsc<Uint8Array>();
  const MIB = 1024 * 1024;
  for (let i = 0; i < 15; i++) await tx.send(new Uint8Array(MIB));
  let sent = false;
  const sixteenth = tx.send(new Uint8Array(MIB)).then(() => sent = true);
  await delay(10);
  assertFalse(sent, "16 MiB and more queued: the send should wait for room");
  assertEquals((await rx.receive()).length, MIB);
  await within(sixteenth, "the waiting send");
  await tx.close();
  assertEquals((await drain(rx)).length, 15);
});
