/**
 * The memory benchmark, in a process of its own: moves 2 GiB in 64 MiB
 * binary messages over tcp (both ends in this process) and prints the peak
 * resident memory seen and the process's resident memory before it, as
 * JSON: `{ "peakRss": bytes, "baselineRss": bytes }`.
 *
 * `deno run --allow-net bench/_memory.ts fresh|recycled`
 *
 * @module
 */

import { type Comm, connect, listen } from "../mod.ts";

const MESSAGE = 64 * 1024 * 1024;
const TOTAL = 2 * 1024 * 1024 * 1024;
const recycled = Deno.args[0] === "recycled";

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

{
  await using listener = await listen("tcp://127.0.0.1:0", recycled ? { allocate } : {});
  const accepting = listener[Symbol.asyncIterator]().next();
  await using client = await connect(listener.contactAddress);
  await using server = (await accepting).value as Comm;
  const payload = new Uint8Array(MESSAGE).fill(7);
  const receiving = (async () => {
    for (let moved = 0; moved < TOTAL; moved += MESSAGE) {
      const body = await server.read() as Uint8Array;
      if (body.length !== MESSAGE || body[MESSAGE - 1] !== 7) throw new Error("corrupt message");
      sample();
      if (recycled) spare = body;
    }
  })();
  for (let sent = 0; sent < TOTAL; sent += MESSAGE) await client.write(payload);
  await receiving;
}
clearInterval(timer);
sample();
console.log(JSON.stringify({ peakRss: peak, baselineRss: baseline }));
