/**
 * An echo server: every message a client sends comes back to it.
 *
 * ```sh
 * deno run --allow-net examples/echo_server.ts                 # tcp://127.0.0.1:8786
 * deno run --allow-net examples/echo_server.ts tcp://127.0.0.1:0
 * deno run --allow-net --allow-read --allow-write examples/echo_server.ts unix:///tmp/echo.sock
 * ```
 *
 * Stop it with Ctrl-C. Try it with `examples/echo_client.ts`.
 *
 * @module
 */

import { listen } from "@x/comm";

const address = Deno.args[0] ?? "tcp://127.0.0.1:8786";

const listener = await listen(address, async (comm) => {
  console.log(`+ ${comm.peerAddress}`);
  for await (const message of comm) {
    console.log(`  ${comm.peerAddress}:`, message);
    await comm.write(message);
  }
  console.log(`- ${comm.peerAddress}`);
});
console.log(`Echo server listening on ${listener.listenAddress}`);
console.log(`Connect to ${listener.contactAddress}`);

Deno.addSignalListener("SIGINT", async () => {
  await listener.close();
  Deno.exit(0);
});
