/**
 * Comms and addresses in one file: listens and connects over inproc, tcp and
 * unix, sends a message each way, and shows how an address splits.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-write examples/hello.ts
 * deno run --allow-net examples/hello.ts inproc:// tcp://127.0.0.1:0   # no unix socket
 * ```
 *
 * The arguments are the addresses to listen on (default: `inproc://`,
 * `tcp://127.0.0.1:0` and `unix://`, a fresh socket in a private temporary
 * directory, which is why unix needs `--allow-read --allow-write`). For each
 * it prints
 *
 * ```text
 * tcp: listening on tcp://127.0.0.1:41234, contact tcp://127.0.0.1:41234
 * tcp: scheme "tcp", location "127.0.0.1:41234", host "127.0.0.1", port 41234
 * tcp: server got "hello from tcp://127.0.0.1:50712"
 * tcp: client got {"reply":"hi","bytes":3}
 * ```
 *
 * @module
 */

import { connect, listen, parseAddress, parseHostPort } from "@x/comm";

const addresses = Deno.args.length > 0 ? Deno.args : ["inproc://", "tcp://127.0.0.1:0", "unix://"];

for (const address of addresses) {
  // The handler gets each accepted comm; the comm closes when it returns.
  await using listener = await listen(address, async (comm) => {
    const greeting = await comm.read();
    console.log(`${scheme(address)}: server got ${JSON.stringify(greeting)}`);
    await comm.write({ reply: "hi", bytes: new Uint8Array([1, 2, 3]) });
  });
  // `listenAddress` is what was bound (port 0 became a real port);
  // `contactAddress` is what a peer should dial.
  const contact = listener.contactAddress;
  console.log(`${scheme(address)}: listening on ${listener.listenAddress}, contact ${contact}`);
  describe(contact);

  await using comm = await connect(contact);
  await comm.write(`hello from ${comm.localAddress}`);
  const { reply, bytes } = await comm.read() as { reply: string; bytes: Uint8Array };
  console.log(`${scheme(address)}: client got ${JSON.stringify({ reply, bytes: bytes.length })}`);
}

/** Prints the parts of an address: scheme and location, and host and port where it has them. */
function describe(address: string): void {
  const [name, location] = parseAddress(address);
  let parts = `scheme "${name}", location "${location}"`;
  if (name === "tcp" || name === "tls") {
    const [host, port] = parseHostPort(location);
    parts += `, host "${host}", port ${port}`;
  }
  console.log(`${name}: ${parts}`);
}

function scheme(address: string): string {
  return parseAddress(address)[0];
}
