// What TLS refuses, over tls:// and wss://: a server certificate from a CA
// the client does not trust, one for another host name, one that has
// expired, and a client without a certificate where the server requires
// one. A refusal rejects connect() at once (not after retrying until the
// timeout) with ConnectError naming the problem, and the listener goes on
// serving. The certificates are made by tests/testdata/make_certs.sh.
//
// Our listeners cannot require a client certificate: Deno.listenTls (tls)
// and Deno.serve (wss) have no option to request or verify one
// (denoland/deno#26825). Deno's node:tls server can (requestCert and
// rejectUnauthorized), so it stands in below for a server that requires
// one, as dask's TLS listeners do.

import {
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import * as nodeTls from "node:tls";
import type { Socket } from "node:net";
import {
  type Comm,
  CommClosedError,
  connect,
  ConnectError,
  type ConnectOptions,
  ConnectTimeoutError,
  getAddressHostPort,
  listen,
  unparseHostPort,
} from "../mod.ts";
import { until } from "./_wait.ts";
import {
  CA,
  CLIENT_CERT,
  CLIENT_KEY,
  EXPIRED_CERT,
  EXPIRED_KEY,
  OTHER_CA,
  OTHER_HOST_CERT,
  OTHER_HOST_KEY,
  REFUSALS_CA,
  SERVER_CERT,
  SERVER_KEY,
} from "./_certs.ts";

/** So long that a refusal retried until the timeout cannot pass for a quick one. */
const CONNECT_TIMEOUT_MS = 20_000;

async function echo(comm: Comm): Promise<void> {
  for await (const message of comm) await comm.write(message);
}

/**
 * Connects to `address`, which must refuse at once: with ConnectError, not
 * with ConnectTimeoutError after retrying until the timeout.
 */
async function refused(address: string, options: ConnectOptions): Promise<Error> {
  const error = await assertRejects(
    () => connect(address, { timeout: CONNECT_TIMEOUT_MS, ...options }),
    ConnectError,
  ) as Error;
  assertFalse(
    error instanceof ConnectTimeoutError,
    `the refusal was retried until the timeout: ${error.message}`,
  );
  assertStringIncludes(error.message, `Cannot connect to "${address}": `);
  return error;
}

/** Connects with `options`, and checks that messages go both ways. */
async function assertServes(address: string, options: ConnectOptions): Promise<void> {
  await using comm = await connect(address, { timeout: CONNECT_TIMEOUT_MS, ...options });
  await comm.write("still serving");
  assertEquals(await comm.read(), "still serving");
}

// -- The server's certificate ----------------------------------------------------

/** A server certificate that the client refuses, and why. */
interface Refusal {
  /** The test name's end: what is wrong. */
  when: string;
  /** What the error names, for the test name. */
  naming: string;
  cert: string;
  key: string;
  /** The host the client dials, on the listener's port (which is bound to 127.0.0.1). */
  host: string;
  /** What the client trusts. */
  caCerts: string[];
  /** Our words for the problem, in the tls error. */
  meaning: string;
  /** rustls's words for it, after ours (tls) or alone (wss). */
  words: string;
  /** The TLS alert the refusing client sends, which a tls listener reports. */
  alert: string;
  /** A client that takes this certificate, if any can, to show that the listener still serves. */
  taker?: ConnectOptions;
}

const REFUSALS: Refusal[] = [
  {
    when: "the server's certificate is from a CA the client does not trust",
    naming: "the unknown issuer",
    cert: SERVER_CERT,
    key: SERVER_KEY,
    host: "127.0.0.1",
    caCerts: [OTHER_CA],
    meaning:
      `the server's certificate is not signed by a trusted CA: pass the CA that signed it in "caCerts"`,
    words: "invalid peer certificate: UnknownIssuer",
    alert: "UnknownCA",
    taker: { caCerts: [CA] },
  },
  {
    when: "the server's certificate has expired",
    naming: "the expiry",
    cert: EXPIRED_CERT,
    key: EXPIRED_KEY,
    host: "127.0.0.1",
    caCerts: [REFUSALS_CA],
    meaning: "the server's certificate has expired: it was valid until 2020-01-02T00:00:00Z",
    words: "invalid peer certificate: certificate expired",
    alert: "CertificateExpired",
  },
  {
    when: "the server's certificate is for another host and the client dials an IP address",
    naming: "the address",
    cert: OTHER_HOST_CERT,
    key: OTHER_HOST_KEY,
    host: "127.0.0.1",
    caCerts: [REFUSALS_CA],
    meaning:
      `the server's certificate is not valid for "127.0.0.1": connect by a name it was issued for`,
    words: `certificate not valid for name "127.0.0.1"`,
    alert: "BadCertificate",
  },
  {
    when: "the server's certificate is for another host name than the one dialled",
    naming: "the host name",
    cert: OTHER_HOST_CERT,
    key: OTHER_HOST_KEY,
    host: "localhost",
    caCerts: [REFUSALS_CA],
    meaning:
      `the server's certificate is not valid for "localhost": connect by a name it was issued for`,
    words: `certificate not valid for name "localhost"`,
    alert: "BadCertificate",
  },
];

for (const scheme of ["tls", "wss"]) {
  for (const refusal of REFUSALS) {
    Deno.test(`connect() to ${scheme} rejects with ConnectError naming ${refusal.naming} when ${refusal.when}`, async () => {
      const reported: unknown[] = [];
      await using listener = await listen(`${scheme}://127.0.0.1:0`, echo, {
        cert: refusal.cert,
        key: refusal.key,
        onError: (error) => reported.push(error),
      });
      const port = getAddressHostPort(listener.contactAddress)[1];
      const address = `${scheme}://${unparseHostPort(refusal.host, port)}`;
      const error = await refused(address, { caCerts: refusal.caCerts });
      assertStringIncludes(error.message, refusal.words);
      // Over wss the words are rustls's alone: see the ignored test below.
      if (scheme === "tls") {
        assertStringIncludes(error.message, `"${address}": ${refusal.meaning} (`);
      }

      // The listener goes on serving: a client that takes its certificate
      // connects, and where none can, the next one is refused the same way
      // (not with a refused connection, retried until the timeout).
      if (refusal.taker) {
        await assertServes(listener.contactAddress, refusal.taker);
      } else {
        const again = await refused(address, { caCerts: refusal.caCerts });
        assertStringIncludes(again.message, refusal.words);
      }

      // The tls listener reports each failed handshake to onError; Deno.serve
      // (wss) drops them unseen.
      if (scheme === "tls") {
        await until(() => reported.length > 0, "the failed handshake reported to onError");
      }
      for (const failure of reported) {
        assertInstanceOf(failure, CommClosedError);
        assertStringIncludes((failure as Error).message, refusal.alert);
      }
    });
  }
}

// Over wss, the TLS library's words come after "the WebSocket did not open".
Deno.test({
  name: "connect() to wss names the server's certificate problem in our words, as tls does",
  fn: async () => {
    for (const refusal of REFUSALS) {
      await using listener = await listen("wss://127.0.0.1:0", echo, {
        cert: refusal.cert,
        key: refusal.key,
      });
      const port = getAddressHostPort(listener.contactAddress)[1];
      const address = `wss://${unparseHostPort(refusal.host, port)}`;
      const error = await refused(address, { caCerts: refusal.caCerts });
      assertStringIncludes(error.message, refusal.meaning);
    }
  },
});

for (const scheme of ["tls", "wss"]) {
  Deno.test(`listen() on ${scheme} without onError quietly drops a client that refuses its certificate`, async () => {
    const logged: unknown[][] = [];
    const consoleError = console.error;
    console.error = (...data: unknown[]) => logged.push(data);
    try {
      await using listener = await listen(`${scheme}://127.0.0.1:0`, echo, {
        cert: SERVER_CERT,
        key: SERVER_KEY,
      });
      await refused(listener.contactAddress, { caCerts: [OTHER_CA] });
      await assertServes(listener.contactAddress, { caCerts: [CA] });
    } finally {
      console.error = consoleError;
    }
    assertEquals(logged, []);
  });
}

// -- The client's certificate ----------------------------------------------------

/**
 * A node:tls server that requires a client certificate signed by `ca`, and
 * echoes bytes: a client's dask handshake comes back as the server's.
 */
async function requiringServer(ca: string) {
  const refusals: Error[] = [];
  const sockets = new Set<Socket>();
  const server = nodeTls.createServer({
    cert: SERVER_CERT,
    key: SERVER_KEY,
    ca: [ca],
    requestCert: true,
    rejectUnauthorized: true,
  }, (socket) => {
    socket.on("error", () => {});
    socket.pipe(socket);
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.on("tlsClientError", (error: Error) => refusals.push(error));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    address: `tls://127.0.0.1:${port}`,
    /** What the server said of each client it refused. */
    refusals,
    async [Symbol.asyncDispose]() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

Deno.test("connect() to tls presents its client certificate to a server that requires one", async () => {
  await using server = await requiringServer(CA);
  await assertServes(server.address, { caCerts: [CA], cert: CLIENT_CERT, key: CLIENT_KEY });
  assertEquals(server.refusals, []);
});

// In TLS 1.3 the client's handshake is done before the server checks its
// certificate: the refusal, the alert "CertificateRequired", comes at the
// first read, and is a refusal, not a peer hanging up to be dialled again.
Deno.test({
  name:
    "connect() to tls rejects with ConnectError naming the missing certificate when the server requires a client certificate",
  fn: async () => {
    await using server = await requiringServer(CA);
    const error = await refused(server.address, { caCerts: [CA] });
    assertStringIncludes(error.message, "CertificateRequired");
    assertStringIncludes(
      error.message,
      'the server requires a client certificate: pass "cert" and "key"',
    );
    await until(() => server.refusals.length > 0, "the server to refuse the client");
    assertEquals(server.refusals.map((refusal) => refusal.message), [
      "peer sent no certificates",
    ]);
  },
});
