/**
 * {@linkcode bind}: a UDP socket on a `udp://host:port` address, on
 * `Deno.listenDatagram` or `node:dgram`.
 *
 * @module
 */

import { abortable, checkSize, describe } from "../comm/_util.ts";
import {
  canReadInterfaces,
  checkInterface,
  ipv4Of,
  isUnspecifiedV6,
  parseUdpAddress,
  resolveHost,
} from "./_address.ts";
import { bindDeno, denoListenDatagram, denoUnsupported } from "./_deno.ts";
import { bindNode } from "./_node.ts";
import { socketControl } from "./_socket_control.ts";
import {
  type SocketSettings,
  type Transport,
  type TransportOptions,
  withContext,
} from "./_transport.ts";
// socket.ts fills in socketControl when it loads.
import "./socket.ts";
import type { DatagramImplementation, DatagramSocket } from "./socket.ts";

/** What a socket may queue for a reader that falls behind. */
const DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024;
/**
 * Options for {@linkcode bind}.
 *
 * @example A multicast sender on loopback
 * ```ts
 * import { bind, type BindOptions } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * const options: BindOptions = { multicastInterface: "127.0.0.1", multicastTTL: 1 };
 * await using socket = await bind("udp://127.0.0.1:0", options);
 * assertEquals(socket.address.startsWith("udp://127.0.0.1:"), true);
 * ```
 */
export interface BindOptions {
  /**
   * Allow sending to broadcast addresses (`255.255.255.255` and the
   * broadcast address of each interface's network). Without it such a send
   * throws an `AddressError`. IPv4 only.
   *
   * @default {false}
   */
  broadcast?: boolean;
  /**
   * Let other sockets bind the same address and port (`SO_REUSEADDR`), as
   * several multicast receivers on one host do.
   *
   * @default {false}
   */
  reuseAddress?: boolean;
  /**
   * The IPv4 address of the interface that multicast datagrams leave by, and
   * the interface that {@linkcode DatagramSocket.joinMulticast} joins on
   * unless told otherwise. On loopback, `127.0.0.1`.
   *
   * @default {undefined} the system's choice (by the route to the group)
   */
  multicastInterface?: string;
  /**
   * How many hops a multicast datagram may make: 1 keeps it on the local
   * network, each one more lets it cross one more router. From 1 to 255
   * (Deno's `node:dgram` refuses 0).
   *
   * @default {1}
   */
  multicastTTL?: number;
  /**
   * Whether this host's own sockets that joined a group receive what this
   * socket sends to it.
   *
   * @default {true}
   */
  multicastLoopback?: boolean;
  /**
   * A socket reads datagrams as they arrive, whether or not anyone is
   * receiving (as Node's sockets do), into a queue of about this many bytes
   * (each datagram counts its payload and 128 bytes more); datagrams that
   * would overflow it are dropped and counted in
   * {@linkcode DatagramSocket.dropped}, as the kernel drops them when its own
   * (smaller) buffer is full. An empty queue always takes one datagram.
   *
   * @default {4194304} (4 MiB)
   */
  maxQueuedBytes?: number;
  /**
   * Which runtime API to use. `"auto"` takes `Deno.listenDatagram` where the
   * runtime offers it (with `--unstable-net`) and the options are ones it
   * can honour, and `node:dgram` otherwise; both behave the same. Name one
   * to insist on it: `"deno"` throws where it cannot be used.
   *
   * `Deno.listenDatagram` turns broadcast on for every socket, so to refuse
   * broadcasts (the default) it must know this host's broadcast addresses,
   * read with `Deno.networkInterfaces()` (`--allow-sys=networkInterfaces`).
   * It cannot set the multicast interface of a socket bound to another
   * address, a multicast TTL other than 1, or turn multicast loopback off.
   *
   * @default {"auto"}
   */
  implementation?: "auto" | DatagramImplementation;
  /**
   * Stops waiting for the host name to resolve: `bind()` rejects with the
   * signal's reason.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/**
 * Binds a UDP socket to a `udp://host:port` address.
 *
 * Port 0 picks a free port ({@linkcode DatagramSocket.address} says which);
 * `udp://0.0.0.0:0` and `udp://[::]:0` bind every interface. A host name is
 * resolved first (`localhost` is `127.0.0.1`).
 *
 * It works under plain `deno run --allow-net`: see
 * {@linkcode BindOptions.implementation}.
 *
 * @example Sending to yourself
 * ```ts
 * import { bind } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using a = await bind("udp://127.0.0.1:0");
 * await using b = await bind("udp://127.0.0.1:0");
 * await a.sendMessage({ hello: "b" }, b.address);
 * const { message, from } = await b.receiveMessage();
 * assertEquals(message, { hello: "b" });
 * assertEquals(from, a.address);
 * ```
 *
 * @param address The address to bind, such as `udp://127.0.0.1:0` or
 * `udp://[::1]:5000`.
 * @param options Broadcast, multicast and implementation settings.
 * @returns The bound socket.
 * @throws {AddressError} If the address is not a `udp://host:port` address
 * or its host does not resolve.
 * @throws {TypeError} If an option is invalid, or `implementation: "deno"`
 * cannot be honoured here.
 * @throws {RangeError} If `multicastTTL` or `maxQueuedBytes` is out of range.
 * @throws {Deno.errors.AddrInUse} If another socket holds the address.
 * @throws {Deno.errors.AddrNotAvailable} If the host is not this machine's.
 */
export async function bind(address: string, options: BindOptions = {}): Promise<DatagramSocket> {
  const endpoint = parseUdpAddress(address, "bind");
  const settings = checkBindOptions(address, options);
  options.signal?.throwIfAborted();
  const { hostname, family } = endpoint.family === 0
    ? await (options.signal
      ? abortable(resolveHost(endpoint.hostname, 0, address), options.signal)
      : resolveHost(endpoint.hostname, 0, address))
    : endpoint as { hostname: string; family: 4 | 6 };
  if (family === 6 && settings.broadcast) {
    throw new TypeError(`Cannot bind "${address}" with broadcast: IPv6 has no broadcast`);
  }
  if (family === 6 && settings.multicastInterface !== undefined) {
    throw new TypeError(
      `Cannot bind "${address}" with a multicastInterface: only IPv4 multicast is supported`,
    );
  }
  const transportOptions: TransportOptions = {
    ...settings,
    hostname,
    port: endpoint.port,
    family,
  };

  const listen = denoListenDatagram();
  const denoRefusal = listen === undefined
    ? "Deno.listenDatagram is not offered here (run with --unstable-net)"
    : denoUnsupported(
      transportOptions,
      // Only a socket that reaches IPv4 needs the broadcast addresses: an
      // IPv4 one, or an IPv6 one bound to "::" or to ::ffff:a.b.c.d.
      !(family === 4 || isUnspecifiedV6(hostname) || ipv4Of(hostname, family) !== undefined) ||
        canReadInterfaces(),
    );
  if (options.implementation === "deno" && denoRefusal !== undefined) {
    throw new TypeError(
      `Cannot bind "${address}" with implementation "deno": ${denoRefusal}`,
    );
  }
  let transport: Transport;
  try {
    transport = listen !== undefined && denoRefusal === undefined &&
        options.implementation !== "node"
      ? bindDeno(listen, transportOptions)
      : await bindNode(transportOptions);
  } catch (error) {
    throw withContext(error, `Cannot bind "${address}"`);
  }
  return socketControl.open(transport, family, settings);
}

function checkBindOptions(address: string, options: BindOptions): SocketSettings {
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      `Cannot bind "${address}": options must be an object, not ${describe(options)}`,
    );
  }
  const flag = (name: keyof BindOptions, fallback: boolean): boolean => {
    const value = options[name];
    if (value === undefined) return fallback;
    if (typeof value !== "boolean") {
      throw new TypeError(`Invalid ${name} ${describe(value)}: expected true or false`);
    }
    return value;
  };
  const { implementation, multicastInterface, multicastTTL } = options;
  if (
    implementation !== undefined && implementation !== "auto" && implementation !== "deno" &&
    implementation !== "node"
  ) {
    throw new TypeError(
      `Invalid implementation ${describe(implementation)}: expected "auto", "deno" or "node"`,
    );
  }
  if (multicastInterface !== undefined) {
    checkInterface(`Invalid multicastInterface`, multicastInterface);
  }
  if (
    multicastTTL !== undefined &&
    (!Number.isInteger(multicastTTL) || multicastTTL < 1 || multicastTTL > 255)
  ) {
    throw new RangeError(
      `Invalid multicastTTL ${
        describe(multicastTTL)
      }: expected a whole number from 1 to 255 (node:dgram refuses 0 in Deno; bind to 127.0.0.1 to keep datagrams on this host)`,
    );
  }
  return {
    broadcast: flag("broadcast", false),
    reuseAddress: flag("reuseAddress", false),
    multicastInterface,
    multicastTTL,
    multicastLoopback: options.multicastLoopback === undefined
      ? undefined
      : flag("multicastLoopback", true),
    maxQueuedBytes: checkSize("maxQueuedBytes", options.maxQueuedBytes, DEFAULT_MAX_QUEUED_BYTES),
  };
}
