/**
 * The memory benchmark, in a process of its own: moves 2 GiB in 64 MiB
 * binary messages over tcp (both ends in this process) and prints the peak
 * resident memory seen and the process's resident memory before it, as
 * JSON: `{ "peakRss": bytes, "baselineRss": bytes }`.
 *
 * `deno run --allow-net bench/_memory.ts ours|raw fresh|recycled`
 *
 * @module
 */

import { type Comm, connect, listen } from "../mod.ts";
import { rawPair, RawReader, writeAll } from "./_raw.ts";

const MESSAGE = 64 * 1024 * 1024;
const TOTAL = 2 * 1024 * 1024 * 1024;
const ours = Deno.args[0] === "ours";
const recycled = Deno.args[1] === "recycled";

let spare: Uint8Array | undefined;
const allocate = (size: number) => {
  const buffer = spare && spare.length >= size ? spare : new Uint8Array(size);
  spare = undefined;
  return buffer.subarray(0, size);
};

const baseline = Deno.memoryUsage().rss;
let peak = 0;
const sample = () => peak = Math.max(peak, Deno.memoryUsage().rss);
const timer = setInterval(sample, 2);
const payload = new Uint8Array(MESSAGE).fill(7);
const check = (body: Uint8Array) => {
  if (body.length !== MESSAGE || body[MESSAGE - 1] !== 7) throw new Error("corrupt message");
  sample();
};

if (ours) {
  await using listener = await listen("tcp://127.0.0.1:0", recycled ? { allocate } : {});
  const accepting = listener[Symbol.asyncIterator]().next();
  await using client = await connect(listener.contactAddress);
  await using server = (await accepting).value as Comm;
  const receiving = (async () => {
    for (let moved = 0; moved < TOTAL; moved += MESSAGE) {
      const body = await server.read() as Uint8Array;
      check(body);
      if (recycled) spare = body;
    }
  })();
  for (let sent = 0; sent < TOTAL; sent += MESSAGE) await client.write(payload);
  await receiving;
} else {
  const { client, server, close } = await rawPair("tcp");
  const reader = new RawReader(server, recycled);
  const header = new Uint8Array(24);
  const view = new DataView(header.buffer);
  view.setUint32(0, 16 + MESSAGE, true);
  view.setUint32(8, 1, true);
  view.setUint32(16, MESSAGE, true);
  const receiving = (async () => {
    for (let moved = 0; moved < TOTAL; moved += MESSAGE) check((await reader.next())[0]);
  })();
  for (let sent = 0; sent < TOTAL; sent += MESSAGE) {
    await writeAll(client, header);
    await writeAll(client, payload);
  }
  await receiving;
  close();
}
clearInterval(timer);
sample();
console.log(JSON.stringify({ peakRss: peak, baselineRss: baseline }));
