/**
 * Benchmarks: @x/comm against a minimal raw-Deno reference with the same
 * framing (`bench/_raw.ts`), and dask's comm where Debian's `python3` has
 * it (`bench/dask_bench.py`), measured side by side in one run: alternating
 * repetitions, medians, reported as ratios. `deno task bench`.
 *
 * Workloads (loopback):
 * - W1 ping-pong: one small message there and back, awaited; in one
 *   process over tcp, unix, tls, ws and wss (against raw WebSockets,
 *   `bench/_raw_ws.ts`), and across two processes over tcp.
 * - W2 one way: `for (...) await comm.write(msg)`, against the coalesced
 *   raw ceiling (and, for reference, raw with one write per message).
 * - W3 bulk: 64 MiB binary messages one way over tcp and unix, received into
 *   fresh buffers and into recycled ones (the `allocate` option); over ws
 *   into fresh ones.
 * - W4 inproc: one way between two tasks, against a bare async queue.
 * - W5 UDP receive: datagrams/s received from a sender process sending
 *   unpaced 512-byte datagrams, by our `DatagramSocket` on each
 *   implementation against the bare `Deno.listenDatagram` loop; beside them
 *   that loop into a reused buffer, and bare `node:dgram`, the node path's
 *   own ceiling (`bench/_udp.ts`).
 * - RPC: calls per second of `remote.add({x, y})` on a `Server` through
 *   `pool.rpc(address)` of a `ConnectionPool` of 4 comms, from 1 and from 64
 *   concurrent callers, over tcp, in one process and with the server in a
 *   child process; against dask's own `rpc` (`ConnectionPool(limit=4)`),
 *   with no raw reference.
 * - Memory: peak resident memory while moving 2 GiB in 64 MiB messages.
 *
 * Prints one table and writes it as JSON to `bench/results/latest.json`.
 * `BENCH_REPEATS` sets the repetitions (default 5); `BENCH_ONLY` a
 * comma-separated list of row keys to run (and `dask` for dask's
 * counterparts of those rows; `W5` or `udp` for both W5 rows).
 *
 * @module
 */

import { type Comm, connect, ConnectionPool, listen, type ListenOptions, Server } from "../mod.ts";
import * as raw from "./_raw.ts";
import * as rawWs from "./_raw_ws.ts";
import * as udp from "./_udp.ts";

const REPEATS = Number(Deno.env.get("BENCH_REPEATS") ?? 5);
const ONLY = Deno.env.get("BENCH_ONLY")?.split(",");
const W1_COUNT = 5_000;
const W2_COUNT = 200_000;
const W3_BYTES = 64 * 1024 * 1024;
const W3_MESSAGES = 4;
const W4_COUNT = 500_000;
/** Calls per RPC repetition (a multiple of 64); fewer for one caller across processes. */
const RPC_COUNT = 25_600;
const RPC_1_2PROC_COUNT = 12_800;
const RPC_POOL_LIMIT = 4;

interface Row {
  key: string;
  workload: string;
  unit: string;
  ours: number;
  /** The raw-Deno reference measured in the same run. */
  raw?: number;
  /** What `ours / raw` (or `ours` for absolute targets) must reach. */
  target?: string;
  pass?: boolean;
  /** What `ours / dask` must reach, once dask's figure is in. */
  daskTarget?: number;
  dask?: number;
  /** Another reference that bounds `ours` (W5 node path: bare `node:dgram`). */
  ceiling?: number;
  note?: string;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Runs `ours` and `reference` alternately, REPEATS times each, each going
 * first half of the time (so that neither always pays the other's garbage
 * collection); medians.
 */
async function sideBySide(
  ours: () => Promise<number>,
  reference: () => Promise<number>,
): Promise<[number, number]> {
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    if (i % 2 === 0) {
      b.push(await reference());
      a.push(await ours());
    } else {
      a.push(await ours());
      b.push(await reference());
    }
  }
  return [median(a), median(b)];
}

/**
 * Runs each of `runs` once per repetition, REPEATS times, repetition i
 * starting with run i (mod their number) and going round; every result.
 */
async function rotated<T>(runs: (() => Promise<T>)[]): Promise<T[][]> {
  const results: T[][] = runs.map(() => []);
  for (let i = 0; i < REPEATS; i++) {
    for (let j = 0; j < runs.length; j++) {
      const k = (i + j) % runs.length;
      results[k].push(await runs[k]());
    }
  }
  return results;
}

// ---- ours ----

interface Setup {
  address: string;
  listen?: ListenOptions;
  connect?: Parameters<typeof connect>[1];
}

async function setups(): Promise<Record<raw.Transport | rawWs.WsTransport, Setup>> {
  const { cert, key, ca } = await raw.tlsMaterial();
  return {
    tcp: { address: "tcp://127.0.0.1:0" },
    unix: { address: "unix://" },
    tls: { address: "tls://127.0.0.1:0", listen: { cert, key }, connect: { caCerts: [ca] } },
    ws: { address: "ws://127.0.0.1:0" },
    wss: { address: "wss://127.0.0.1:0", listen: { cert, key }, connect: { caCerts: [ca] } },
  };
}

/** A connected pair of our comms over `setup`. */
async function ourPair(
  setup: Setup,
  options: { listen?: ListenOptions } = {},
): Promise<{ client: Comm; server: Comm; close: () => Promise<void> }> {
  const listener = await listen(setup.address, { ...setup.listen, ...options.listen });
  const accepting = listener[Symbol.asyncIterator]().next();
  const address = setup.address.startsWith("tls:")
    ? listener.contactAddress.replace("127.0.0.1", "localhost")
    : listener.contactAddress;
  const client = await connect(address, setup.connect);
  const server = (await accepting).value as Comm;
  return {
    client,
    server,
    async close() {
      await client.close();
      await server.close();
      await listener.close();
    },
  };
}

async function ourPingPong(client: Comm, count: number): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    await client.write({ op: "ping", i });
    await client.read();
  }
  return count / ((performance.now() - start) / 1000);
}

async function ourEcho(comm: Comm): Promise<void> {
  try {
    for await (const message of comm) await comm.write(message);
  } catch {
    // Closed under us at the end.
  }
}

async function ourOneWay(client: Comm, server: Comm, count: number): Promise<number> {
  const start = performance.now();
  const receiving = (async () => {
    for (let i = 0; i < count; i++) await server.read();
  })();
  for (let i = 0; i < count; i++) await client.write({ op: "data", i });
  await receiving;
  return count / ((performance.now() - start) / 1000);
}

/** A one-buffer pool for `allocate`: what a program that recycles does. */
function recycler(): { allocate: (size: number) => Uint8Array; release: (b: Uint8Array) => void } {
  let spare: Uint8Array | undefined;
  return {
    allocate(size) {
      const buffer = spare && spare.length >= size ? spare : new Uint8Array(size);
      spare = undefined;
      return buffer.subarray(0, size);
    },
    release(bytes) {
      spare = new Uint8Array(bytes.buffer, 0, bytes.buffer.byteLength);
    },
  };
}

async function ourBulk(
  client: Comm,
  server: Comm,
  count: number,
  release?: (bytes: Uint8Array) => void,
): Promise<number> {
  const payload = new Uint8Array(W3_BYTES);
  const start = performance.now();
  const receiving = (async () => {
    for (let i = 0; i < count; i++) {
      const body = await server.read() as Uint8Array;
      if (body.length !== W3_BYTES) throw new Error("bulk truncated");
      release?.(body);
    }
  })();
  for (let i = 0; i < count; i++) await client.write(payload);
  await receiving;
  return (W3_BYTES * count) / 1e9 / ((performance.now() - start) / 1000);
}

/**
 * Calls/s of `callers` concurrent loops of `remote.add()`, `count` calls in
 * all, through a fresh pool of RPC_POOL_LIMIT comms (opened untimed).
 */
async function ourRpcCalls(address: string, callers: number, count: number): Promise<number> {
  await using pool = new ConnectionPool({ limit: RPC_POOL_LIMIT });
  const remote = pool.rpc(address);
  await Promise.all(
    Array.from({ length: Math.min(callers, RPC_POOL_LIMIT) }, () => remote.add({ x: 0, y: 1 })),
  );
  const each = count / callers;
  const start = performance.now();
  await Promise.all(Array.from({ length: callers }, async () => {
    for (let i = 0; i < each; i++) {
      if (await remote.add({ x: i, y: 1 }) !== i + 1) throw new Error("wrong sum");
    }
  }));
  return count / ((performance.now() - start) / 1000);
}

// ---- processes ----

/** Starts `bench/_peer.ts` in `mode`; its address and a stop function. */
async function startPeer(
  mode: "ours" | "raw" | "rpc",
): Promise<{ address: string; stop: () => Promise<void> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", new URL("./_peer.ts", import.meta.url).pathname, mode],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  const timer = setTimeout(() => child.kill(), 30_000);
  try {
    while (!line.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`bench peer (${mode}) exited before printing its address`);
      line += value;
    }
  } finally {
    clearTimeout(timer);
  }
  return {
    address: line.trim(),
    async stop() {
      await child.stdin.close();
      await reader.cancel();
      await child.status;
    },
  };
}

async function memoryPeak(who: "ours" | "raw", mode: "fresh" | "recycled"): Promise<number> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", new URL("./_memory.ts", import.meta.url).pathname, who, mode],
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error(`memory bench (${who} ${mode}) failed`);
  return JSON.parse(new TextDecoder().decode(output.stdout)).peakRss / (1024 * 1024);
}

interface DaskResults {
  results?: Record<string, number>;
  error?: string;
  distributed?: string;
}

/** Runs `dask_bench.py`: all its workloads, or those of `only`. */
async function daskFigures(only?: string[]): Promise<DaskResults> {
  const script = new URL("./dask_bench.py", import.meta.url).pathname;
  try {
    const output = await new Deno.Command("/usr/bin/python3", {
      args: [script, "--repeats", String(REPEATS), ...(only ? ["--only", only.join(",")] : [])],
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(output.stdout).trim();
    // It prints its JSON even when a workload failed (and then exits 1).
    if (!text.startsWith("{")) return { error: `dask_bench.py exited with ${output.code}` };
    return JSON.parse(text);
  } catch (error) {
    return { error: `no /usr/bin/python3 (${(error as Error).message})` };
  }
}

// ---- the run ----

const rows: Row[] = [];
const wanted = (key: string) => !ONLY || ONLY.includes(key);
function ratioRow(row: Row, minimum: number): Row {
  row.target = `>= ${minimum}x raw`;
  row.pass = row.ours / row.raw! >= minimum;
  return row;
}
function progress(key: string) {
  console.error(`  ${key}...`);
}

console.error(`Measuring (${REPEATS} alternating repetitions each, medians)...`);
const ourSetups = await setups();

/** The raw reference of W1 on `transport`: bare sockets, or bare WebSockets. */
async function rawPingPong(
  transport: raw.Transport | rawWs.WsTransport,
): Promise<{ run: () => Promise<number>; close: () => Promise<void> }> {
  if (transport === "ws" || transport === "wss") {
    const pair = await rawWs.rawWsPair(transport);
    rawWs.echo(pair.server);
    return { run: () => rawWs.pingPong(pair.client, W1_COUNT), close: () => pair.close() };
  }
  const pair = await raw.rawPair(transport);
  const echoing = raw.echo(pair.server);
  return {
    run: () => raw.pingPong(pair.client, W1_COUNT),
    close: async () => {
      pair.close();
      await echoing;
    },
  };
}

for (const transport of ["tcp", "unix", "tls", "ws", "wss"] as const) {
  const key = `W1-${transport}`;
  if (!wanted(key)) continue;
  progress(key);
  const ours = await ourPair(ourSetups[transport]);
  const echoing = ourEcho(ours.server);
  const reference = await rawPingPong(transport);
  const [o, r] = await sideBySide(
    () => ourPingPong(ours.client, W1_COUNT),
    reference.run,
  );
  await ours.close();
  await echoing;
  await reference.close();
  rows.push(ratioRow({
    key,
    workload: `W1 ping-pong, one process, ${transport}`,
    unit: "round trips/s",
    ours: o,
    raw: r,
  }, 0.8));
}

if (wanted("W1-2proc")) {
  progress("W1-2proc");
  const ourPeer = await startPeer("ours");
  const rawPeer = await startPeer("raw");
  const client = await connect(ourPeer.address);
  const port = Number(new URL(rawPeer.address.replace("tcp:", "http:")).port);
  const rawClient = await Deno.connect({ hostname: "127.0.0.1", port });
  rawClient.setNoDelay(true);
  const [o, r] = await sideBySide(
    () => ourPingPong(client, W1_COUNT),
    () => raw.pingPong(rawClient, W1_COUNT),
  );
  await client.close();
  rawClient.close();
  await ourPeer.stop();
  await rawPeer.stop();
  rows.push(ratioRow({
    key: "W1-2proc",
    workload: "W1 ping-pong, two processes, tcp",
    unit: "round trips/s",
    ours: o,
    raw: r,
  }, 0.9));
}

if (wanted("W2")) {
  progress("W2");
  const ours = await ourPair(ourSetups.tcp);
  const rawPair = await raw.rawPair("tcp");
  const [o, r] = await sideBySide(
    () => ourOneWay(ours.client, ours.server, W2_COUNT),
    () => raw.oneWayCoalesced(rawPair.client, rawPair.server, W2_COUNT),
  );
  const eachRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    eachRuns.push(await raw.oneWayEachWrite(rawPair.client, rawPair.server, W2_COUNT / 4));
  }
  const each = median(eachRuns);
  await ours.close();
  rawPair.close();
  rows.push(ratioRow({
    key: "W2",
    workload: "W2 small messages one way, await each write, tcp",
    unit: "msgs/s",
    ours: o,
    raw: r,
    note: `raw is the coalesced ceiling; raw with one write per message: ${format(each)}`,
  }, 0.6));
}

for (const transport of ["tcp", "unix"] as const) {
  for (const mode of ["fresh", "recycled"] as const) {
    const key = `W3-${transport}-${mode}`;
    if (!wanted(key)) continue;
    progress(key);
    const pool = mode === "recycled" ? recycler() : undefined;
    const ours = await ourPair(ourSetups[transport], {
      listen: pool ? { allocate: pool.allocate } : {},
    });
    const rawPair = await raw.rawPair(transport);
    const rawReader = new raw.RawReader(rawPair.server, mode === "recycled");
    const [o, r] = await sideBySide(
      () => ourBulk(ours.client, ours.server, W3_MESSAGES, pool?.release),
      () => raw.bulk(rawPair.client, rawReader, W3_BYTES, W3_MESSAGES),
    );
    await ours.close();
    rawPair.close();
    const row: Row = {
      key,
      workload: `W3 64 MiB binary, ${transport}, ${mode} receive buffers`,
      unit: "GB/s",
      ours: o,
      raw: r,
    };
    rows.push(mode === "recycled" ? ratioRow(row, 0.8) : row);
  }
}

if (wanted("W3-ws-fresh")) {
  progress("W3-ws-fresh");
  const ours = await ourPair(ourSetups.ws);
  const rawPair = await rawWs.rawWsPair("ws");
  const [o, r, small] = (await rotated([
    () => ourBulk(ours.client, ours.server, W3_MESSAGES),
    () => rawWs.bulk(rawPair.client, rawPair.server, W3_BYTES, W3_MESSAGES),
    () => rawWs.bulk(rawPair.client, rawPair.server, W3_BYTES, W3_MESSAGES, 1024 * 1024),
  ])).map(median);
  await ours.close();
  await rawPair.close();
  rows.push({
    key: "W3-ws-fresh",
    workload: "W3 64 MiB binary, ws, fresh receive buffers",
    unit: "GB/s",
    ours: o,
    raw: r,
    note: "raw sends a header message, then the payload in messages of 64 MiB - 1 bytes " +
      `(the most Deno receives) and less; in messages of 1 MiB: ${format(small)}`,
  });
}

if (wanted("W4")) {
  progress("W4");
  const [o, r] = await sideBySide(async () => {
    await using listener = await listen("inproc://");
    const accepting = listener[Symbol.asyncIterator]().next();
    await using client = await connect(listener.contactAddress);
    await using server = (await accepting).value as Comm;
    return await ourOneWay(client, server, W4_COUNT);
  }, async () => {
    const queue = new raw.BareQueue<unknown>();
    const start = performance.now();
    const receiving = (async () => {
      for (let i = 0; i < W4_COUNT; i++) await queue.read();
    })();
    for (let i = 0; i < W4_COUNT; i++) await queue.write({ op: "data", i });
    await receiving;
    return W4_COUNT / ((performance.now() - start) / 1000);
  });
  rows.push({
    key: "W4",
    workload: "W4 inproc one way, await each write",
    unit: "msgs/s",
    ours: o,
    raw: r,
    target: ">= 3,000,000 msgs/s",
    pass: o >= 3_000_000,
    note: "raw is a bare async queue",
  });
}

// W5: one sender process per measurement. The runs of both rows, of the bare
// Deno loop they share, and of each row's further reference (the bare loop
// into a reused buffer; bare node:dgram) go round together.
const w5Paths = (["deno", "node"] as const).filter((path) =>
  wanted(`W5-${path}`) || ONLY?.includes("W5") || ONLY?.includes("udp")
);
if (w5Paths.length > 0) {
  progress(w5Paths.map((path) => `W5-${path}`).join(", "));
  const runners: Record<string, () => Promise<udp.UdpRate>> = { raw: () => udp.raw() };
  for (const path of w5Paths) runners[path] = () => udp.ours(path);
  if (w5Paths.includes("deno")) runners.rawReused = () => udp.raw(true);
  if (w5Paths.includes("node")) runners.dgram = udp.nodeDgram;
  const names = Object.keys(runners);
  const results = await rotated(names.map((name) => runners[name]));
  /** The median received rate of a runner, and the median share of what was sent it received. */
  const figures = (name: string) => {
    const runs = results[names.indexOf(name)];
    const share = median(runs.map((run) => run.received / run.sent));
    return {
      rate: median(runs.map((run) => run.received)),
      share: `${Math.round(share * 100)}% received`,
    };
  };
  const bare = figures("raw");
  for (const path of w5Paths) {
    const ours = figures(path);
    const row = ratioRow({
      key: `W5-${path}`,
      workload: `W5 UDP receive, ${path} path`,
      unit: "datagrams/s",
      ours: ours.rate,
      raw: bare.rate,
      note: `${udp.W5_BYTES}-byte datagrams sent unpaced for ${udp.W5_SEND_MS / 1000} s a run ` +
        `by another process; ours ${ours.share}, raw ${bare.share}`,
    }, 0.9);
    if (path === "deno") {
      const reused = figures("rawReused");
      row.note += `; raw reading into one reused buffer: ${format(reused.rate)} (${reused.share})`;
    } else {
      const dgram = figures("dgram");
      row.ceiling = dgram.rate;
      row.note += `; node:dgram's own ceiling, a bare 'message' listener: ${
        format(dgram.rate)
      } (${dgram.share}), ours is ${(ours.rate / dgram.rate).toFixed(2)}x that`;
    }
    rows.push(row);
  }
}

for (const processes of ["one", "two"] as const) {
  for (const callers of [1, 64]) {
    const key = `RPC-${callers}${processes === "two" ? "-2proc" : ""}`;
    if (!wanted(key)) continue;
    progress(key);
    let server: { address: string; stop: () => Promise<void> };
    if (processes === "two") {
      server = await startPeer("rpc");
    } else {
      const local = new Server({ add: ({ x, y }) => x + y });
      await local.listen("tcp://127.0.0.1:0");
      server = { address: local.address, stop: () => local.close() };
    }
    const runs: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      const count = processes === "two" && callers === 1 ? RPC_1_2PROC_COUNT : RPC_COUNT;
      runs.push(await ourRpcCalls(server.address, callers, count));
    }
    await server.stop();
    rows.push({
      key,
      workload: `RPC add, ${callers} caller${
        callers === 1 ? "" : "s"
      }, pool of ${RPC_POOL_LIMIT}, ${processes === "two" ? "two processes" : "one process"}, tcp`,
      unit: "calls/s",
      ours: median(runs),
      target: ">= 3x dask",
      daskTarget: 3,
    });
  }
}

for (const mode of ["fresh", "recycled"] as const) {
  const key = `memory-${mode}`;
  if (!wanted(key)) continue;
  progress(key);
  const [o, r] = await sideBySide(
    () => memoryPeak("ours", mode),
    () => memoryPeak("raw", mode),
  );
  rows.push({
    key,
    workload: `Memory: 2 GiB in 64 MiB messages, tcp, ${mode} buffers`,
    unit: "peak RSS MiB",
    ours: o,
    raw: r,
    target: "< 256 MiB (4 messages)",
    pass: o < 256,
  });
}

// dask's figures, from its own run after ours (never at the same time: two
// cores), set beside ours. With BENCH_ONLY, only the counterparts of the rows
// run.
const daskKeys: Record<string, string> = {
  "W1-tcp": "W1_one_process",
  "W1-2proc": "W1_two_processes",
  "W2": "W2_one_write_each",
  "W3-tcp-fresh": "W3_64MiB_tcp_GBps",
  "W4": "W4_inproc",
  "RPC-1": "RPC_1_one_process",
  "RPC-64": "RPC_64_one_process",
  "RPC-1-2proc": "RPC_1_two_processes",
  "RPC-64-2proc": "RPC_64_two_processes",
};
const daskOnly = ONLY && rows.map((row) => daskKeys[row.key]).filter((name) => name);
const runDask = wanted("dask") && (!daskOnly || daskOnly.length > 0);
if (runDask) progress("dask");
const dask = runDask ? await daskFigures(daskOnly) : {};
for (const row of rows) {
  const figure = dask.results?.[daskKeys[row.key]];
  if (figure !== undefined && figure !== null) row.dask = figure;
  if (row.daskTarget !== undefined && row.dask !== undefined) {
    row.pass = row.ours / row.dask >= row.daskTarget;
  }
}
// One caller across processes waits for the loopback round trip between two
// processes each call; raw Deno's ping-pong over it is the ceiling.
const oneCaller = rows.find((row) => row.key === "RPC-1-2proc");
const pingPong = rows.find((row) => row.key === "W1-2proc");
if (oneCaller?.dask !== undefined && pingPong?.raw !== undefined) {
  oneCaller.note = `ceiling: raw Deno ping-pong between two processes in this run, ${
    format(pingPong.raw)
  } round trips/s, is ${(pingPong.raw / oneCaller.dask).toFixed(1)}x dask; ours is ${
    (oneCaller.ours / pingPong.raw).toFixed(2)
  }x that`;
}

function format(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);
}

const columns = ["workload", "unit", "@x/comm", "raw Deno", "ratio", "target", "dask", "vs dask"];
const table = rows.map((r) => [
  r.workload,
  r.unit,
  format(r.ours),
  r.raw === undefined ? "" : format(r.raw),
  r.raw === undefined ? "" : `${(r.ours / r.raw).toFixed(2)}x`,
  r.target === undefined
    ? ""
    : `${r.target} ${r.pass === undefined ? "unmeasured" : r.pass ? "ok" : "MISSED"}`,
  r.dask === undefined ? "" : format(r.dask),
  r.dask === undefined ? "" : `${(r.ours / r.dask).toFixed(1)}x`,
]);
const widths = columns.map((c, i) => Math.max(c.length, ...table.map((t) => t[i].length)));
const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
console.log(line(columns));
console.log(line(widths.map((w) => "-".repeat(w))));
for (const cells of table) console.log(line(cells));
for (const r of rows) if (r.note) console.log(`  ${r.key}: ${r.note}`);
if (dask.error) console.log(`  dask: not measured (${dask.error})`);
else if (dask.distributed) console.log(`  dask: distributed ${dask.distributed}, /usr/bin/python3`);

await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./results/latest.json", import.meta.url),
  JSON.stringify(
    {
      date: new Date().toISOString(),
      deno: Deno.version.deno,
      cpus: navigator.hardwareConcurrency,
      repeats: REPEATS,
      rows,
      dask,
    },
    null,
    2,
  ) + "\n",
);
console.log("\nWritten to bench/results/latest.json");
