/**
 * The other process of the two-process benchmarks: an echo server, ours or
 * raw, on loopback. Prints its address on the first line of stdout and runs
 * until its stdin closes.
 *
 * `deno run --allow-net bench/_peer.ts ours|raw`
 *
 * @module
 */

import { listen } from "../mod.ts";
import { echo } from "./_raw.ts";

const mode = Deno.args[0];
const stdinClosed = (async () => {
  for await (const _ of Deno.stdin.readable) {
    // Nothing is sent; the parent closes stdin to stop us.
  }
})();

if (mode === "ours") {
  await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
    for await (const message of comm) await comm.write(message);
  });
  console.log(listener.contactAddress);
  await stdinClosed;
} else if (mode === "raw") {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(`tcp://127.0.0.1:${listener.addr.port}`);
  const serving = (async () => {
    for await (const conn of listener) {
      conn.setNoDelay(true);
      echo(conn).finally(() => conn.close());
    }
  })();
  await stdinClosed;
  listener.close();
  await serving.catch(() => {});
} else {
  console.error("usage: _peer.ts ours|raw");
  Deno.exit(2);
}
