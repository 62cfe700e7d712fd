// A BackendListener over a Deno.Listener, shared by the tcp, tls and unix
// backends: each accepted Deno.Conn becomes a StreamComm.

import type { BackendListener } from "./registry.ts";
import { DEFER_READING, StreamComm } from "./stream_comm.ts";
import type { Comm, CommOptions } from "./types.ts";
import type { StreamCommOptions } from "./stream_comm.ts";

/** Turns an accepted connection into the addresses of its two ends. */
export type ConnAddresses = (conn: Deno.Conn) => {
  localAddress: string;
  peerAddress: string;
};

/** Accepts Deno connections as stream comms. */
export class ConnListener implements BackendListener {
  #listener: Deno.Listener;
  #addresses: ConnAddresses;
  #options: CommOptions;
  #onConn: ((conn: Deno.Conn) => void) | undefined;
  #onClose: (() => void) | undefined;
  #closed = false;
  readonly listenAddress: string;
  readonly contactAddress: string;

  constructor(
    listener: Deno.Listener,
    init: {
      listenAddress: string;
      contactAddress: string;
      addresses: ConnAddresses;
      options: CommOptions;
      onConn?: (conn: Deno.Conn) => void;
      onClose?: () => void;
    },
  ) {
    this.#listener = listener;
    this.listenAddress = init.listenAddress;
    this.contactAddress = init.contactAddress;
    this.#addresses = init.addresses;
    this.#options = init.options;
    this.#onConn = init.onConn;
    this.#onClose = init.onClose;
  }

  async accept(): Promise<Comm | null> {
    if (this.#closed) return null;
    let conn: Deno.Conn;
    try {
      conn = await this.#listener.accept();
    } catch (error) {
      if (this.#closed || error instanceof Deno.errors.BadResource) return null;
      throw error;
    }
    if (this.#closed) {
      conn.close();
      return null;
    }
    return streamCommOver(conn, { ...this.#options, ...this.#addresses(conn) }, this.#onConn);
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#listener.close();
      } catch {
        // Already closed.
      }
      this.#onClose?.();
    }
    return Promise.resolve();
  }
}

/**
 * Wraps a fresh connection in a StreamComm, after `prepare` (such as
 * setting TCP_NODELAY); the connection is closed if either fails.
 */
export function streamCommOver(
  conn: Deno.Conn,
  options: StreamCommOptions,
  prepare?: (conn: Deno.Conn) => void,
): StreamComm {
  try {
    prepare?.(conn);
    // connect() and listen() start reading once any authkey challenge is done.
    return new StreamComm(conn, { ...options, [DEFER_READING]: true } as StreamCommOptions);
  } catch (error) {
    conn.close();
    throw error;
  }
}

/** Host to put in a contact address when bound to every interface. */
export function concreteHost(bound: string, contactHost?: string): string {
  const wildcard = bound === "0.0.0.0" || bound === "::" || bound === "";
  if (!wildcard) return bound;
  if (contactHost) return contactHost;
  const ipv6 = bound === "::";
  return firstInterface(ipv6) ?? (ipv6 ? "::1" : "127.0.0.1");
}

/**
 * The first non-loopback, non-link-local interface address of a family, if
 * the `sys` permission lets us list interfaces (never prompting for it).
 */
export function firstInterface(ipv6: boolean): string | undefined {
  try {
    const status = Deno.permissions.querySync({
      name: "sys",
      kind: "networkInterfaces",
    });
    if (status.state !== "granted") return undefined;
    for (const info of Deno.networkInterfaces()) {
      if (info.family !== (ipv6 ? "IPv6" : "IPv4")) continue;
      if (isLoopback(info.address) || info.address.startsWith("fe80:")) continue;
      return info.address;
    }
  } catch {
    // No permission API or no interfaces: fall back to loopback.
  }
  return undefined;
}

/** Whether an IP address is a loopback address. */
export function isLoopback(host: string): boolean {
  return host.startsWith("127.") || host === "::1" || host === "localhost";
}
