/**
 * A UDP receiver: prints every message that arrives and acknowledges it to
 * its sender. Garbage is reported and skipped; the socket keeps working.
 *
 * ```sh
 * deno run --allow-net examples/udp_receiver.ts                  # udp://127.0.0.1:9999
 * deno run --allow-net examples/udp_receiver.ts udp://[::1]:9999 --count 5
 * ```
 *
 * Then run `examples/udp_sender.ts`. Without `--count` it runs until Ctrl-C.
 *
 * @module
 */

import { bind } from "@x/comm/datagram";

const args = [...Deno.args];
const countAt = args.indexOf("--count");
const count = countAt === -1 ? Infinity : Number(args.splice(countAt, 2)[1]);
if (count !== Infinity && !(Number.isInteger(count) && count > 0)) {
  throw new TypeError("--count takes a positive whole number of messages");
}
const address = args[0] ?? "udp://127.0.0.1:9999";

await using socket = await bind(address);
console.log(`Listening on ${socket.address} (${socket.implementation} implementation)`);
Deno.addSignalListener("SIGINT", () => socket.close());

let received = 0;
const messages = socket.messages({
  onInvalid: (error) => console.log(`skipped: ${error.message}`),
});
for await (const { message, from } of messages) {
  console.log(`from ${from}:`, message);
  const seq = (message as { seq?: unknown })?.seq;
  if (typeof seq === "number") await socket.sendMessage({ ack: seq }, from);
  if (++received >= count) break;
}
console.log(`Received ${received} message(s)`);
