/**
 * A UDP sender: sends numbered heartbeats to a receiver and waits up to
 * 500 ms for each acknowledgement, then says how many were lost. UDP makes no
 * promise of delivery: this is how an application finds out.
 *
 * ```sh
 * deno run --allow-net examples/udp_sender.ts                   # to udp://127.0.0.1:9999
 * deno run --allow-net examples/udp_sender.ts udp://[::1]:9999 10
 * ```
 *
 * Start `examples/udp_receiver.ts` first.
 *
 * @module
 */

import { bind, DatagramDecodeError } from "@x/comm/datagram";

const to = Deno.args[0] ?? "udp://127.0.0.1:9999";
const count = Number(Deno.args[1] ?? 5);
if (!Number.isInteger(count) || count < 1) {
  throw new TypeError("The count must be a positive whole number");
}
const ACK_WAIT_MS = 500;

// Bind the same IP version as the destination, on any free port.
await using socket = await bind(to.startsWith("udp://[") ? "udp://[::]:0" : "udp://0.0.0.0:0");
let acknowledged = 0;
for (let seq = 1; seq <= count; seq++) {
  await socket.sendMessage({ seq, at: new Date().toISOString() }, to);
  if (await waitForAck(seq)) acknowledged++;
  else console.log(`heartbeat ${seq}: no acknowledgement within ${ACK_WAIT_MS} ms`);
}
console.log(`Sent ${count} heartbeat(s) to ${to}; ${acknowledged} acknowledged`);

/** Receives until the acknowledgement of `seq` arrives or the wait is over. */
async function waitForAck(seq: number): Promise<boolean> {
  const signal = AbortSignal.timeout(ACK_WAIT_MS);
  try {
    for (;;) {
      try {
        const { message } = await socket.receiveMessage<{ ack?: number }>({ signal });
        if (message?.ack === seq) return true;
      } catch (error) {
        // Anyone can send us a datagram: skip what is not a message.
        if (!(error instanceof DatagramDecodeError)) throw error;
        console.log(`skipped: ${error.message}`);
      }
    }
  } catch (error) {
    if (signal.aborted) return false;
    throw error;
  }
}
