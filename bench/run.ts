/**
 * Benchmarks: @x/comm against a minimal raw-Deno reference with the same
 * framing, measured side by side in one run (alternating repetitions,
 * medians), reported as ratios. `deno task bench`.
 *
 * Workloads (one process, loopback):
 * - W1 ping-pong: one small message there and back, awaited.
 * - W2 one way: `for (...) await comm.write(msg)`, reader counts.
 * - W3 bulk: one 64 MiB binary message one way.
 *
 * Writes the table as JSON to `bench/results/latest.json` too.
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";
import { connect, listen } from "../mod.ts";

const REPEATS = Number(Deno.env.get("BENCH_REPEATS") ?? 5);
const W1_COUNT = 5_000;
const W2_COUNT = 200_000;
const W3_BYTES = 64 * 1024 * 1024;

interface Result {
  workload: string;
  transport: string;
  unit: string;
  ours: number;
  raw: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// ---- the raw reference: Deno.Conn, dask framing, msgpack, no library ----

function rawFrame(encoder: Encoder, message: unknown): Uint8Array {
  const body = encoder.encode(message);
  const out = new Uint8Array(24 + body.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(16 + body.length), true);
  view.setBigUint64(8, 1n, true);
  view.setBigUint64(16, BigInt(body.length), true);
  out.set(body, 24);
  return out;
}

class RawReader {
  #conn: Deno.Conn;
  #buffer = new Uint8Array(256 * 1024);
  #start = 0;
  #end = 0;
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }
  /** Reads one message's frames (each a copy-free view). */
  async next(): Promise<Uint8Array[]> {
    while (true) {
      const available = this.#end - this.#start;
      if (available >= 16) {
        const view = new DataView(this.#buffer.buffer, this.#start);
        const count = Number(view.getBigUint64(8, true));
        const prelude = 16 + 8 * count;
        if (available >= prelude) {
          let size = prelude;
          for (let i = 0; i < count; i++) size += Number(view.getBigUint64(16 + 8 * i, true));
          if (available >= size) {
            const frames: Uint8Array[] = [];
            let at = this.#start + prelude;
            for (let i = 0; i < count; i++) {
              const length = Number(view.getBigUint64(16 + 8 * i, true));
              frames.push(this.#buffer.subarray(at, at + length));
              at += length;
            }
            this.#start += size;
            return frames;
          }
          if (this.#start + size > this.#buffer.length) this.#grow(size);
        }
      }
      if (this.#buffer.length - this.#end < 16 * 1024) this.#grow(256 * 1024);
      const n = await this.#conn.read(this.#buffer.subarray(this.#end));
      if (n === null) throw new Error("raw peer closed");
      this.#end += n;
    }
  }
  #grow(size: number) {
    const fresh = new Uint8Array(Math.max(size, 256 * 1024));
    fresh.set(this.#buffer.subarray(this.#start, this.#end));
    this.#end -= this.#start;
    this.#start = 0;
    this.#buffer = fresh;
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array) {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

async function rawPair(): Promise<[Deno.Conn, Deno.Conn, () => void]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = listener.accept();
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await accepting;
  client.setNoDelay(true);
  (server as Deno.TcpConn).setNoDelay(true);
  return [client, server, () => {
    client.close();
    server.close();
    listener.close();
  }];
}

async function rawPingPong(): Promise<number> {
  const [client, server, close] = await rawPair();
  const encoder = new Encoder();
  const decoder = new Decoder();
  const serverReader = new RawReader(server);
  const echo = (async () => {
    for (let i = 0; i < W1_COUNT; i++) {
      const [body] = await serverReader.next();
      await writeAll(server, rawFrame(encoder, decoder.decode(body)));
    }
  })();
  const reader = new RawReader(client);
  const start = performance.now();
  for (let i = 0; i < W1_COUNT; i++) {
    await writeAll(client, rawFrame(encoder, { op: "ping", i }));
    decoder.decode((await reader.next())[0]);
  }
  const seconds = (performance.now() - start) / 1000;
  await echo;
  close();
  return W1_COUNT / seconds;
}

async function rawOneWay(): Promise<number> {
  const [client, server, close] = await rawPair();
  const encoder = new Encoder();
  const decoder = new Decoder();
  const reader = new RawReader(server);
  const start = performance.now();
  const receiving = (async () => {
    for (let i = 0; i < W2_COUNT; i++) decoder.decode((await reader.next())[0]);
  })();
  // The coalesced ceiling: encode into one buffer, write in 64 KiB batches.
  let batch: Uint8Array[] = [];
  let size = 0;
  for (let i = 0; i < W2_COUNT; i++) {
    const frame = rawFrame(encoder, { op: "data", i });
    batch.push(frame);
    size += frame.length;
    if (size >= 64 * 1024 || i === W2_COUNT - 1) {
      const joined = new Uint8Array(size);
      let at = 0;
      for (const f of batch) {
        joined.set(f, at);
        at += f.length;
      }
      await writeAll(client, joined);
      batch = [];
      size = 0;
    }
  }
  await receiving;
  const seconds = (performance.now() - start) / 1000;
  close();
  return W2_COUNT / seconds;
}

async function rawBulk(): Promise<number> {
  const [client, server, close] = await rawPair();
  const payload = new Uint8Array(W3_BYTES);
  const reader = new RawReader(server);
  const start = performance.now();
  const receiving = reader.next();
  const header = new Uint8Array(24);
  const view = new DataView(header.buffer);
  view.setBigUint64(0, BigInt(16 + W3_BYTES), true);
  view.setBigUint64(8, 1n, true);
  view.setBigUint64(16, BigInt(W3_BYTES), true);
  await writeAll(client, header);
  await writeAll(client, payload);
  const [frame] = await receiving;
  const seconds = (performance.now() - start) / 1000;
  if (frame.length !== W3_BYTES) throw new Error("raw bulk truncated");
  close();
  return W3_BYTES / 1e9 / seconds;
}

// ---- ours ----

async function oursPingPong(address: string): Promise<number> {
  await using listener = await listen(address, async (comm) => {
    for await (const message of comm) await comm.write(message);
  });
  await using comm = await connect(listener.contactAddress);
  const start = performance.now();
  for (let i = 0; i < W1_COUNT; i++) {
    await comm.write({ op: "ping", i });
    await comm.read();
  }
  return W1_COUNT / ((performance.now() - start) / 1000);
}

async function oursOneWay(address: string): Promise<number> {
  let done!: () => void;
  const finished = new Promise<void>((resolve) => done = resolve);
  await using listener = await listen(address, async (comm) => {
    for (let i = 0; i < W2_COUNT; i++) await comm.read();
    done();
  });
  await using comm = await connect(listener.contactAddress);
  const start = performance.now();
  for (let i = 0; i < W2_COUNT; i++) await comm.write({ op: "data", i });
  await finished;
  return W2_COUNT / ((performance.now() - start) / 1000);
}

async function oursBulk(address: string): Promise<number> {
  let received!: (n: number) => void;
  const got = new Promise<number>((resolve) => received = resolve);
  await using listener = await listen(address, async (comm) => {
    received(((await comm.read()) as Uint8Array).length);
  });
  await using comm = await connect(listener.contactAddress);
  const payload = new Uint8Array(W3_BYTES);
  const start = performance.now();
  await comm.write(payload);
  const length = await got;
  const seconds = (performance.now() - start) / 1000;
  if (length !== W3_BYTES) throw new Error("bulk truncated");
  return W3_BYTES / 1e9 / seconds;
}

async function measure(
  workload: string,
  unit: string,
  ours: () => Promise<number>,
  raw: () => Promise<number>,
): Promise<Result> {
  const oursRuns: number[] = [];
  const rawRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    rawRuns.push(await raw());
    oursRuns.push(await ours());
  }
  return { workload, transport: "tcp", unit, ours: median(oursRuns), raw: median(rawRuns) };
}

const results: Result[] = [];
console.log(`Measuring (${REPEATS} alternating repetitions each, medians)...`);
const tcp = "tcp://127.0.0.1:0";
results.push(
  await measure("W1 ping-pong, one process", "round trips/s", () => oursPingPong(tcp), rawPingPong),
);
results.push(
  await measure(
    "W2 small messages one way",
    "msgs/s",
    () => oursOneWay(tcp),
    rawOneWay,
  ),
);
results.push(await measure("W3 64 MiB binary", "GB/s", () => oursBulk(tcp), rawBulk));

const format = (n: number) => n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);
console.log("");
console.log(
  "workload".padEnd(30) + "unit".padEnd(15) + "@x/comm".padEnd(14) + "raw Deno".padEnd(14) +
    "ratio",
);
for (const r of results) {
  console.log(
    r.workload.padEnd(30) + r.unit.padEnd(15) + format(r.ours).padEnd(14) +
      format(r.raw).padEnd(14) + (r.ours / r.raw).toFixed(2) + "x",
  );
}
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./results/latest.json", import.meta.url),
  JSON.stringify({ date: new Date().toISOString(), repeats: REPEATS, results }, null, 2) + "\n",
);
console.log("\nWritten to bench/results/latest.json");
