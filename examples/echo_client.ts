/**
 * An echo client: sends a few messages and prints what comes back.
 *
 * ```sh
 * deno run --allow-net examples/echo_client.ts                 # tcp://127.0.0.1:8786
 * deno run --allow-net examples/echo_client.ts tcp://127.0.0.1:9000
 * ```
 *
 * Start `examples/echo_server.ts` first (connecting retries for 10 s).
 *
 * @module
 */

import { connect } from "@x/comm";

const address = Deno.args[0] ?? "tcp://127.0.0.1:8786";

await using comm = await connect(address, { timeout: 10_000 });
console.log(`Connected to ${comm.peerAddress} from ${comm.localAddress}`);

const messages = [
  "hello",
  { op: "add", numbers: [1, 2, 3] },
  { bytes: new Uint8Array([0xde, 0xad, 0xbe, 0xef]) },
  { big: new Uint8Array(1024 * 1024), note: "1 MiB travels as its own frame" },
];
for (const message of messages) {
  await comm.write(message);
  const reply = await comm.read();
  console.log("sent", summarize(message), "got", summarize(reply));
}

function summarize(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, item) => item instanceof Uint8Array ? `<${item.length} bytes>` : item,
  );
}
