/**
 * The other process of the two-process benchmarks: an echo server, ours or
 * raw, or our RPC `Server` with an `add` handler, on loopback. Prints its
 * address on the first line of stdout and runs until its stdin closes.
 *
 * `deno run --allow-net bench/_peer.ts ours|raw|rpc`
 *
 * @module
 */

import { listen, Server } from "../mod.ts";
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
} else if (mode === "rpc") {
  await using server = new Server({ add: ({ x, y }) => x + y });
  await server.listen("tcp://127.0.0.1:0");
  console.log(server.address);
  await stdinClosed;
} else {
  console.error("usage: _peer.ts ours|raw|rpc");
  Deno.exit(2);
}
