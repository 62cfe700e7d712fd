// Binds a datagram socket with the options given as JSON in the first
// argument (default {}), to the address in the second (default
// "udp://127.0.0.1:0"), sends itself one message and prints, as one JSON
// line, which implementation carried it and the message that came back. A
// failure prints the error's name and message instead. The datagram tests run
// this under different flags, to see which implementation bind() picks.

import { bind, type BindOptions } from "../../datagram/mod.ts";

const options = JSON.parse(Deno.args[0] ?? "{}") as BindOptions;
const address = Deno.args[1] ?? "udp://127.0.0.1:0";
try {
  await using socket = await bind(address, options);
  await socket.sendMessage({ hello: "myself" }, socket.address);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error("no datagram came back")), 5_000);
  try {
    const { message, from } = await socket.receiveMessage({ signal: controller.signal });
    console.log(JSON.stringify({
      implementation: socket.implementation,
      message,
      fromItself: from === socket.address,
    }));
  } finally {
    clearTimeout(timer);
  }
} catch (error) {
  const { name, message } = error as Error;
  console.log(JSON.stringify({ error: name, message }));
}
