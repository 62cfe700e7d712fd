// Host-and-port helpers shared by the tcp and tls backends.

import { parseHostPort, unparseHostPort } from "./addressing.ts";
import { concreteHost, ConnListener, firstInterface, isLoopback } from "./_conn_listener.ts";
import { AddressError } from "./errors.ts";
import type { Backend, BackendListener } from "./registry.ts";
import type { ListenOptions, TlsOptions } from "./types.ts";

/** The client certificate to present (tls, wss), if `cert` and `key` ask for one. */
export function clientCertificate(
  address: string,
  { cert, key }: TlsOptions,
): { cert: string; key: string } | Record<never, never> {
  if ((cert === undefined) !== (key === undefined)) {
    throw new TypeError(
      `Cannot connect to "${address}": a client certificate needs both "cert" and "key"`,
    );
  }
  return cert !== undefined && key !== undefined ? { cert, key } : {};
}

/**
 * What a failed TLS handshake (tls, wss) means, put before the words of
 * Deno's TLS library (rustls), which name the problem in its own terms
 * ("invalid peer certificate: UnknownIssuer"). Returns `error`, its message
 * rewritten if it is one of these problems.
 *
 * @param error What the handshake rejected with.
 * @param host The host dialled, which the server's certificate must name.
 */
export function explainTlsError(error: unknown, host: string): unknown {
  if (!(error instanceof Error)) return error;
  const words = error.message;
  let meaning: string | undefined;
  if (/\bUnknownIssuer\b/.test(words)) {
    meaning =
      `the server's certificate is not signed by a trusted CA: pass the CA that signed it in "caCerts"`;
  } else if (/certificate expired|invalid peer certificate: Expired\b/.test(words)) {
    const until = /not valid after (\d+)/.exec(words);
    meaning = `the server's certificate has expired${
      until ? `: it was valid until ${isoDate(until[1])}` : ""
    }`;
  } else if (/certificate not valid yet|invalid peer certificate: NotValidYet\b/.test(words)) {
    const from = /not valid before (\d+)/.exec(words);
    meaning = `the server's certificate is not valid yet${
      from ? `: it is valid from ${isoDate(from[1])}` : ""
    }`;
  } else if (/not valid for name|\bNotValidForName\b/.test(words)) {
    meaning =
      `the server's certificate is not valid for "${host}": connect by a name it was issued for`;
  } else if (/fatal alert: CertificateRequired\b/.test(words)) {
    meaning = `the server requires a client certificate: pass "cert" and "key"`;
  }
  if (meaning !== undefined) error.message = `${meaning} (${words})`;
  return error;
}

/** A time in seconds since 1970 as an ISO 8601 date without milliseconds. */
function isoDate(seconds: string): string {
  return new Date(Number(seconds) * 1000).toISOString().replace(".000Z", "Z");
}

/** The certificate and key a TLS listener (tls, wss) cannot do without. */
export function serverCertificate(
  scheme: string,
  location: string,
  { cert, key }: TlsOptions,
): { cert: string; key: string } {
  if (typeof cert !== "string" || typeof key !== "string") {
    throw new TypeError(
      `Cannot listen on "${scheme}://${location}": the ${scheme} backend needs "cert" and "key" options (PEM strings)`,
    );
  }
  return { cert, key };
}

/** The port of an address that must name a real host and port. */
export function connectHostPort(scheme: string, location: string): [string, number] {
  const [host, port] = parseHostPort(`${scheme}://${location}`);
  if (host === "") {
    throw new AddressError(
      `Cannot connect to "${scheme}://${location}": the address has no host`,
    );
  }
  if (port === 0) {
    throw new AddressError(
      `Cannot connect to "${scheme}://${location}": port 0 means "any port" and only makes sense to listen on`,
    );
  }
  return [host, port];
}

/** `scheme://host:port` of one end of a connection. */
export function netAddress(scheme: string, addr: Deno.Addr): string {
  const net = addr as Deno.NetAddr;
  return `${scheme}://${unparseHostPort(net.hostname, net.port)}`;
}

/** Host and port to bind: an empty host means every IPv4 interface. */
export function listenHostPort(scheme: string, location: string): [string, number] {
  const [host, port] = parseHostPort(`${scheme}://${location}`, 0);
  return [host === "" ? "0.0.0.0" : host, port];
}

/** The address helpers shared by the tcp and tls backends. */
export function hostPortHelpers(scheme: string): Pick<
  Backend,
  "getAddressHost" | "getAddressHostPort" | "resolveAddress" | "getLocalAddressFor"
> {
  return {
    getAddressHost(location) {
      return parseHostPort(`${scheme}://${location}`, 0)[0];
    },
    getAddressHostPort(location) {
      return parseHostPort(`${scheme}://${location}`);
    },
    async resolveAddress(location) {
      const [host, port] = parseHostPort(`${scheme}://${location}`, 0);
      if (host === "" || /^[0-9.]+$/.test(host) || host.includes(":")) {
        return location;
      }
      let lookup: typeof import("node:dns/promises").lookup;
      try {
        // Loaded here, not above, so that a browser build never asks for it.
        ({ lookup } = await import("node:dns/promises"));
      } catch (error) {
        throw new AddressError(
          `Cannot resolve "${scheme}://${location}": looking up host names needs node:dns, which this runtime lacks`,
          { cause: error },
        );
      }
      try {
        const { address } = await lookup(host);
        return unparseHostPort(address, port);
      } catch (error) {
        throw new AddressError(
          `Cannot resolve "${scheme}://${location}": host "${host}" was not found`,
          { cause: error },
        );
      }
    },
    getLocalAddressFor(location) {
      const host = parseHostPort(`${scheme}://${location}`, 0)[0];
      if (isLoopback(host)) return host.includes(":") ? "[::1]" : "127.0.0.1";
      const ipv6 = host.includes(":");
      return unparseHostPort(firstInterface(ipv6) ?? (ipv6 ? "::" : "0.0.0.0"));
    },
  };
}

/** A listener of stream comms over a bound TCP or TLS Deno listener. */
export function netListener(
  scheme: string,
  listener: Deno.Listener<Deno.Conn, Deno.NetAddr>,
  options: ListenOptions,
  onConn?: (conn: Deno.Conn) => void,
): BackendListener {
  const bound = listener.addr;
  const host = concreteHost(bound.hostname, options.contactHost);
  return new ConnListener(listener, {
    listenAddress: netAddress(scheme, bound),
    contactAddress: `${scheme}://${unparseHostPort(host, bound.port)}`,
    addresses: (conn) => ({
      localAddress: netAddress(scheme, conn.localAddr),
      peerAddress: netAddress(scheme, conn.remoteAddr),
    }),
    options,
    onConn,
  });
}
