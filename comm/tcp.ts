/**
 * The `tcp` backend: `Deno.connect` and `Deno.listen`, with `TCP_NODELAY`.
 *
 * @module
 */

import { unparseHostPort } from "./addressing.ts";
import {
  connectHostPort,
  hostPortHelpers,
  listenHostPort,
  netAddress,
  netListener,
} from "./_net.ts";
import { streamCommOver } from "./_conn_listener.ts";
import { backends } from "./_backends.ts";
import type { Backend, BackendConnectOptions, BackendListener } from "./registry.ts";
import type { Comm, ListenOptions } from "./types.ts";

/**
 * The `tcp` backend, registered under `tcp`.
 *
 * @example
 * ```ts
 * import { getBackend, tcpBackend } from "@x/comm";
 * import { assertStrictEquals } from "@std/assert";
 *
 * assertStrictEquals(getBackend("tcp"), tcpBackend);
 * ```
 */
export const tcpBackend: Backend = {
  async connect(location: string, options: BackendConnectOptions): Promise<Comm> {
    const [hostname, port] = connectHostPort("tcp", location);
    const conn = await Deno.connect({ hostname, port, signal: options.signal });
    return streamCommOver(conn, {
      ...options,
      localAddress: netAddress("tcp", conn.localAddr),
      peerAddress: `tcp://${unparseHostPort(hostname, port)}`,
    }, setNoDelay);
  },

  listen(location: string, options: ListenOptions): Promise<BackendListener> {
    const [hostname, port] = listenHostPort("tcp", location);
    const listener = Deno.listen({ hostname, port });
    return Promise.resolve(netListener("tcp", listener, options, setNoDelay));
  },

  ...hostPortHelpers("tcp"),
};

function setNoDelay(conn: Deno.Conn): void {
  (conn as Deno.TcpConn).setNoDelay(true);
}

backends.set("tcp", tcpBackend);
