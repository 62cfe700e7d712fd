/**
 * Authentication and Python interop: a listener that only lets in peers that
 * know a shared key (the HMAC challenge of Python's
 * `multiprocessing.connection`), speaking Python's framing, so that Python's
 * own `Client` can call it.
 *
 * ```sh
 * deno run --allow-net examples/authkey.ts                                # self-contained
 * deno run --allow-net examples/authkey.ts serve tcp://127.0.0.1:6000    # until Ctrl-C
 * ```
 *
 * Without arguments it listens on a free port, connects with the right key
 * (and gets its message back in upper case) and with a wrong one (and is
 * refused), and exits. It prints
 *
 * ```text
 * Listening on tcp://127.0.0.1:41234 (authkey "secret", multiprocessing framing)
 * Right key: sent "hello", got "HELLO"
 * Refused a peer: The digest received from "tcp://127.0.0.1:50712" was wrong
 * Wrong key: refused (AuthenticationError: The digest sent was rejected by …)
 * ```
 *
 * With `serve ADDRESS` it serves until Ctrl-C, printing what each peer sends.
 * A Python 3.8+ client for it (`python3 client.py 6000`):
 *
 * ```python
 * import sys
 * from multiprocessing.connection import Client
 *
 * port = int(sys.argv[1]) if len(sys.argv) > 1 else 6000
 * with Client(("127.0.0.1", port), authkey=b"secret") as conn:
 *     conn.send_bytes(b"hello from python")
 *     print(conn.recv_bytes().decode())  # HELLO FROM PYTHON
 * ```
 *
 * Python's `send()`/`recv()` pickle objects; with this framing we exchange
 * bytes only (`send_bytes`/`recv_bytes`).
 *
 * @module
 */

import { type Comm, connect, listen, type ListenOptions } from "@x/comm";
import { AuthenticationError } from "@x/comm/auth";

const AUTHKEY = "secret";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const [mode = "demo", address = "tcp://127.0.0.1:0"] = Deno.args;
if (!["demo", "serve"].includes(mode) || Deno.args.length > 2) {
  console.error("Usage: deno run --allow-net examples/authkey.ts [serve ADDRESS]");
  Deno.exit(2);
}

// Both ends need the same `authkey`; `framing: "multiprocessing"` is what
// Python's Listener and Client speak (messages are raw bytes).
const options: ListenOptions = {
  authkey: AUTHKEY,
  framing: "multiprocessing",
  // A peer with the wrong key never reaches the handler: it lands here.
  onError: (error) => console.log(`Refused a peer: ${(error as Error).message}`),
};

/** Answers every message with its upper case. */
async function shout(comm: Comm): Promise<void> {
  for await (const message of comm) {
    const text = decoder.decode(message as Uint8Array);
    if (mode === "serve") console.log(`${comm.peerAddress}: ${JSON.stringify(text)}`);
    await comm.write(encoder.encode(text.toUpperCase()));
  }
}

await using listener = await listen(address, shout, options);
console.log(
  `Listening on ${listener.contactAddress} (authkey "${AUTHKEY}", multiprocessing framing)`,
);

if (mode === "serve") {
  const stopped = Promise.withResolvers<void>();
  Deno.addSignalListener("SIGINT", stopped.resolve);
  Deno.addSignalListener("SIGTERM", stopped.resolve);
  await stopped.promise;
  console.log("Stopping");
  Deno.exit(0); // the listener closes on the way out
}

{
  await using comm = await connect(listener.contactAddress, {
    authkey: AUTHKEY,
    framing: "multiprocessing",
  });
  await comm.write(encoder.encode("hello"));
  const reply = decoder.decode(await comm.read() as Uint8Array);
  console.log(`Right key: sent "hello", got ${JSON.stringify(reply)}`);
}

try {
  await using _comm = await connect(listener.contactAddress, {
    authkey: "guess",
    framing: "multiprocessing",
  });
  console.log("Wrong key: let in, which it should not have been");
  Deno.exitCode = 1;
} catch (error) {
  if (!(error instanceof AuthenticationError)) throw error;
  console.log(`Wrong key: refused (${error.name}: ${error.message})`);
}
