/**
 * WebSockets from Deno to Deno: an echo listener on `ws://` that also serves
 * plain HTTP on the same port, and a client that round-trips messages over
 * it with the same `connect()` as on tcp.
 *
 * ```sh
 * deno run --allow-net examples/ws_echo.ts                       # ws://127.0.0.1:0/comm
 * deno run --allow-net examples/ws_echo.ts ws://127.0.0.1:8788/comm
 * ```
 *
 * The argument is the address to listen on; the path is where WebSocket
 * upgrades are taken. It prints
 *
 * ```text
 * Listening on ws://127.0.0.1:41234/comm
 * GET http://127.0.0.1:41234/: 200 "Comms are at /comm"
 * Connected from ws://127.0.0.1:50712 to ws://127.0.0.1:41234/comm
 * sent "hello" got "hello"
 * sent {"op":"add","numbers":[1,2,3]} got {"op":"add","numbers":[1,2,3]}
 * sent <1048576 bytes> got <1048576 bytes>
 * ```
 *
 * A web page reaches the same listener with `@x/comm/browser`: see
 * `examples/browser/`.
 *
 * @module
 */

import { connect, listen } from "@x/comm";

const address = Deno.args[0] ?? "ws://127.0.0.1:0/comm";
const path = new URL(address.replace(/^ws/, "http")).pathname;

// WebSocket upgrades at the address's path become comms; other requests go
// to `httpHandler`.
await using listener = await listen(address, async (comm) => {
  for await (const message of comm) await comm.write(message);
}, {
  httpHandler: () => new Response(`Comms are at ${path}`),
});
console.log(`Listening on ${listener.contactAddress}`);

const page = new URL("/", listener.contactAddress.replace(/^ws/, "http"));
const response = await fetch(page);
console.log(`GET ${page}: ${response.status} ${JSON.stringify(await response.text())}`);

await using comm = await connect(listener.contactAddress);
console.log(`Connected from ${comm.localAddress} to ${comm.peerAddress}`);
const messages = ["hello", { op: "add", numbers: [1, 2, 3] }, new Uint8Array(1024 * 1024)];
for (const message of messages) {
  await comm.write(message);
  console.log(`sent ${summarize(message)} got ${summarize(await comm.read())}`);
}

function summarize(value: unknown): string {
  return value instanceof Uint8Array ? `<${value.length} bytes>` : JSON.stringify(value);
}
