// Binds "udp://127.0.0.1:0" with the options given as JSON in the first
// argument, sends one byte to the address in the second, and prints, as one
// JSON line, the implementation and how the send ended: {sent: true}, or the
// error's name, message and whether it is an AddressError. The datagram tests
// run this without --allow-sys, where broadcast addresses cannot be listed.

import { AddressError, bind, type BindOptions } from "../../datagram/mod.ts";

const options = JSON.parse(Deno.args[0] ?? "{}") as BindOptions;
const to = Deno.args[1];
await using socket = await bind("udp://127.0.0.1:0", options);
try {
  await socket.send(new Uint8Array([1]), to);
  console.log(JSON.stringify({ implementation: socket.implementation, sent: true }));
} catch (error) {
  const { name, message } = error as Error;
  console.log(JSON.stringify({
    implementation: socket.implementation,
    error: name,
    message,
    addressError: error instanceof AddressError,
  }));
}
