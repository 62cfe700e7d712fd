/**
 * TLS: an echo listener on `tls://` with a certificate, a client that trusts
 * its CA and round-trips a message, and a client that trusts another CA and
 * is refused.
 *
 * ```sh
 * deno run --allow-net --allow-read examples/tls_echo.ts       # the test certificates
 * deno run --allow-net --allow-read examples/tls_echo.ts \
 *   --cert server.pem --key server-key.pem --ca ca.pem --address tls://127.0.0.1:0
 * ```
 *
 * `--cert` and `--key` are the listener's PEM certificate (for 127.0.0.1) and
 * key, `--ca` the PEM CA the client trusts; they default to
 * `tests/testdata/server.pem`, `server-key.pem` and `ca.pem` (made by
 * `tests/testdata/make_certs.sh`). `--untrusted-ca` (default
 * `tests/testdata/other-ca.pem`) is the CA of the client that must be refused.
 * Reading the files is what needs `--allow-read`. It prints
 *
 * ```text
 * Listening on tls://127.0.0.1:41234
 * Trusting ca.pem: sent "hello over TLS", got back "hello over TLS"
 * Trusting other-ca.pem: refused (ConnectError: …)
 * ```
 *
 * @module
 */

import { connect, ConnectError, listen } from "@x/comm";

const TESTDATA = new URL("../tests/testdata/", import.meta.url);
const options = parseArgs(Deno.args);

const cert = await Deno.readTextFile(options.cert);
const key = await Deno.readTextFile(options.key);
const ca = await Deno.readTextFile(options.ca);
const untrustedCa = await Deno.readTextFile(options.untrustedCa);

// A tls listener takes the certificate and key; everything else is as on tcp.
await using listener = await listen(options.address, async (comm) => {
  for await (const message of comm) await comm.write(message);
}, { cert, key, onError: () => {} }); // the refused client's failed handshake is expected
console.log(`Listening on ${listener.contactAddress}`);

// A client trusts the CAs in `caCerts` (else the system's).
{
  await using comm = await connect(listener.contactAddress, { caCerts: [ca] });
  await comm.write("hello over TLS");
  const reply = await comm.read();
  console.log(
    `Trusting ${name(options.ca)}: sent "hello over TLS", got back ${JSON.stringify(reply)}`,
  );
}

// A certificate that does not verify is not retried: ConnectError at once.
try {
  await using _comm = await connect(listener.contactAddress, { caCerts: [untrustedCa] });
  console.log(`Trusting ${name(options.untrustedCa)}: connected, which it should not have`);
  Deno.exitCode = 1;
} catch (error) {
  if (!(error instanceof ConnectError)) throw error;
  console.log(`Trusting ${name(options.untrustedCa)}: refused (${error.name}: ${error.message})`);
}

function name(path: string | URL): string {
  return String(path).split("/").at(-1)!;
}

function parseArgs(args: string[]) {
  const values = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    if (!args[i].startsWith("--") || args[i + 1] === undefined) {
      throw new TypeError(`Unexpected argument ${JSON.stringify(args[i])}`);
    }
    values.set(args[i].slice(2), args[i + 1]);
  }
  const known = ["address", "cert", "key", "ca", "untrusted-ca"];
  for (const option of values.keys()) {
    if (!known.includes(option)) {
      throw new TypeError(`Unknown option "--${option}" (known: --${known.join(", --")})`);
    }
  }
  return {
    address: values.get("address") ?? "tls://127.0.0.1:0",
    cert: values.get("cert") ?? new URL("server.pem", TESTDATA),
    key: values.get("key") ?? new URL("server-key.pem", TESTDATA),
    ca: values.get("ca") ?? new URL("ca.pem", TESTDATA),
    untrustedCa: values.get("untrusted-ca") ?? new URL("other-ca.pem", TESTDATA),
  };
}
