/**
 * The `unix` backend: unix domain sockets, `unix:///path/to/app.sock`.
 *
 * The socket file is created readable and writable by its owner only, and
 * is removed when the listener closes. `unix://` (no path) listens on a
 * fresh socket in a private temporary directory.
 *
 * Needs `--allow-read` and `--allow-write` besides `--allow-net`.
 *
 * @module
 */

import { dirname, join } from "@std/path";
import { ConnListener, streamCommOver } from "./_conn_listener.ts";
import { AddressError } from "./errors.ts";
import { backends } from "./_backends.ts";
import type { Backend, BackendConnectOptions, BackendListener } from "./registry.ts";
import type { Comm, ListenOptions } from "./types.ts";

const SOCKET_NAME = "comm.sock";
/** The name of the unnamed end of a unix connection. */
const UNNAMED = "unix://";

function socketPath(location: string, action: string): string {
  if (location === "") {
    throw new AddressError(
      `Cannot ${action} "unix://": the address has no socket path (expected "unix:///path/to/app.sock")`,
    );
  }
  return location;
}

/**
 * The `unix` backend, registered under `unix`.
 *
 * @example
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using listener = await listen("unix://", async (comm) => {
 *   await comm.write(await comm.read());
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write("over a socket file");
 * assertEquals(await comm.read(), "over a socket file");
 * ```
 */
export const unixBackend: Backend = {
  async connect(location: string, options: BackendConnectOptions): Promise<Comm> {
    const path = socketPath(location, "connect to");
    options.signal.throwIfAborted();
    const conn = await Deno.connect({ transport: "unix", path });
    if (options.signal.aborted) {
      conn.close();
      options.signal.throwIfAborted();
    }
    return streamCommOver(conn, {
      ...options,
      localAddress: UNNAMED,
      peerAddress: `unix://${path}`,
    });
  },

  async listen(location: string, options: ListenOptions): Promise<BackendListener> {
    let path: string;
    let privateDir: string | undefined;
    if (location === "") {
      privateDir = await Deno.makeTempDir({ prefix: "x-comm-" });
      path = join(privateDir, SOCKET_NAME);
    } else {
      path = location;
    }
    let listener: Deno.Listener;
    try {
      listener = privateDir ? bindPrivate(path) : bindAtomically(path);
    } catch (error) {
      if (privateDir) await Deno.remove(privateDir, { recursive: true }).catch(() => {});
      throw error;
    }
    const { ino } = Deno.lstatSync(path);
    const address = `unix://${path}`;
    return new ConnListener(listener, {
      listenAddress: address,
      contactAddress: address,
      addresses: () => ({ localAddress: address, peerAddress: UNNAMED }),
      options,
      onClose() {
        // Remove the file only if it is still ours, not a socket that
        // another process bound at the same path since.
        try {
          if (Deno.lstatSync(path).ino === ino) Deno.removeSync(path);
        } catch {
          // Already removed.
        }
        if (privateDir) {
          try {
            Deno.removeSync(privateDir, { recursive: true });
          } catch {
            // Already removed.
          }
        }
      },
    });
  },

  getAddressHost(): string {
    return "localhost";
  },

  getAddressHostPort(location: string): [string, number] {
    throw new AddressError(
      `Cannot get the host and port of "unix://${location}": unix socket addresses have no port`,
    );
  },

  resolveAddress(location: string): Promise<string> {
    return Promise.resolve(location);
  },

  getLocalAddressFor(): string {
    return "";
  },
};

/** Binds in a directory that only we can enter, then restricts the file. */
function bindPrivate(path: string): Deno.Listener {
  const listener = Deno.listen({ transport: "unix", path });
  Deno.chmodSync(path, 0o600);
  return listener;
}

/**
 * Binds at `path` so that the socket is never reachable by other users:
 * bind in a fresh private directory beside it, make the file owner-only,
 * then hard-link it into place. The link fails if `path` exists, so a
 * socket or file already there is never replaced.
 */
function bindAtomically(path: string): Deno.Listener {
  const staging = Deno.makeTempDirSync({ dir: dirname(path), prefix: ".x-comm-" });
  const staged = join(staging, SOCKET_NAME);
  let listener: Deno.Listener | undefined;
  try {
    listener = bindPrivate(staged);
    Deno.linkSync(staged, path);
    return listener;
  } catch (error) {
    listener?.close();
    if (error instanceof Deno.errors.AlreadyExists) {
      throw new Deno.errors.AddrInUse(
        `socket path "${path}" already exists: remove it if no process is listening there`,
        { cause: error },
      );
    }
    throw error;
  } finally {
    Deno.removeSync(staging, { recursive: true });
  }
}

backends.set("unix", unixBackend);
