/**
 * The `tls` backend: TCP with `Deno.connectTls` and `Deno.listenTls`.
 *
 * Certificates and keys are PEM strings (`caCerts`, `cert`, `key`). A
 * client can present a certificate; a Deno listener cannot request or
 * verify client certificates, so mutual TLS is one-sided here.
 *
 * @module
 */

import { unparseHostPort } from "./addressing.ts";
import { abortable } from "./_util.ts";
import { backends } from "./_backends.ts";
import type { Backend, BackendConnectOptions, BackendListener } from "./registry.ts";
import {
  clientCertificate,
  connectHostPort,
  explainTlsError,
  hostPortHelpers,
  listenHostPort,
  netAddress,
  netListener,
  serverCertificate,
} from "./_net.ts";
import { streamCommOver } from "./_conn_listener.ts";
import type { Comm, ListenOptions } from "./types.ts";

/**
 * The `tls` backend, registered under `tls`.
 *
 * @example
 * ```ts
 * import { getBackend, tlsBackend } from "@x/comm";
 * import { assertStrictEquals } from "@std/assert";
 *
 * assertStrictEquals(getBackend("tls"), tlsBackend);
 * ```
 */
export const tlsBackend: Backend = {
  async connect(location: string, options: BackendConnectOptions): Promise<Comm> {
    const [hostname, port] = connectHostPort("tls", location);
    const { caCerts, signal } = options;
    const certificate = clientCertificate(`tls://${location}`, options);
    // Deno.connectTls takes no signal: race it, and close a late connection.
    // Without a client certificate, TLS starts on a tcp connection with
    // Nagle's algorithm off (a TlsConn cannot turn it off), else the first
    // message after the TLS handshake waits ~40 ms for a delayed ACK.
    const opening = !("cert" in certificate)
      ? Deno.connect({ hostname, port }).then((tcp) => {
        tcp.setNoDelay(true);
        return Deno.startTls(tcp, { hostname, caCerts });
      })
      : Deno.connectTls({ hostname, port, caCerts, ...certificate });
    let conn: Deno.TlsConn;
    try {
      conn = await abortable(opening, signal);
      await abortable(conn.handshake(), signal);
    } catch (error) {
      opening.then((late) => {
        try {
          late.close();
        } catch {
          // Already closed.
        }
      }, () => {});
      throw explainTlsError(error, hostname);
    }
    return streamCommOver(conn, {
      ...options,
      localAddress: netAddress("tls", conn.localAddr),
      peerAddress: `tls://${unparseHostPort(hostname, port)}`,
    });
  },

  listen(location: string, options: ListenOptions): Promise<BackendListener> {
    const { cert, key } = serverCertificate("tls", location, options);
    const [hostname, port] = listenHostPort("tls", location);
    const listener = Deno.listenTls({ hostname, port, cert, key });
    return Promise.resolve(netListener("tls", listener, options));
  },

  ...hostPortHelpers("tls"),
};

backends.set("tls", tlsBackend);
