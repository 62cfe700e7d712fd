// The datagram transport over `Deno.listenDatagram`, which Deno offers only
// with `--unstable-net` (or `"unstable": ["net"]`). Only siblings import this.

import { SenderAddresses } from "./_address.ts";
import {
  Inbox,
  type ReceivedDatagram,
  receiveError,
  Slab,
  type Transport,
  type TransportOptions,
} from "./_transport.ts";

// The part of Deno's unstable UDP API used here, declared locally so that
// type checking does not need the unstable flag.
interface UdpAddr {
  transport: "udp";
  hostname: string;
  port: number;
}
interface MulticastMembership {
  leave(): Promise<void>;
}
interface DenoDatagramConn {
  readonly addr: UdpAddr;
  receive(buffer?: Uint8Array): Promise<[Uint8Array, UdpAddr]>;
  send(data: Uint8Array, to: UdpAddr): Promise<number>;
  joinMulticastV4(group: string, networkInterface: string): Promise<MulticastMembership>;
  close(): void;
}
type ListenDatagram = (options: {
  transport: "udp";
  hostname: string;
  port: number;
  reuseAddress?: boolean;
}) => DenoDatagramConn;

/** Receives are read into one buffer this large, then copied out. */
const RECEIVE_BUFFER_BYTES = 65_536;

/** Deno's `listenDatagram`, or undefined where the runtime does not offer it. */
export function denoListenDatagram(): ListenDatagram | undefined {
  const listen = (Deno as unknown as { listenDatagram?: ListenDatagram }).listenDatagram;
  return typeof listen === "function" ? listen : undefined;
}

/**
 * Why the Deno transport cannot honour these options, or undefined if it can.
 * Deno turns `SO_BROADCAST` on for every UDP socket and offers no multicast
 * interface, TTL or loopback setting on a socket that has not joined a group.
 */
export function denoUnsupported(
  options: TransportOptions,
  broadcastsKnown: boolean,
): string | undefined {
  if (!options.broadcast && !broadcastsKnown) {
    return "it cannot refuse broadcasts without reading the network interfaces " +
      "(grant --allow-sys=networkInterfaces, or bind with { broadcast: true })";
  }
  if (
    options.multicastInterface !== undefined &&
    (options.multicastInterface !== options.hostname || Deno.build.os !== "linux")
  ) {
    return "it cannot set the multicast interface (only Linux sends by the bound address's " +
      `interface, so bind to ${options.multicastInterface} itself there)`;
  }
  if (options.multicastTTL !== undefined && options.multicastTTL !== 1) {
    return "it cannot set the multicast TTL";
  }
  if (options.multicastLoopback === false) {
    return "it cannot turn multicast loopback off";
  }
  return undefined;
}

/** Binds a socket with `Deno.listenDatagram`; throws the runtime's error. */
export function bindDeno(listen: ListenDatagram, options: TransportOptions): Transport {
  const conn = listen({
    transport: "udp",
    hostname: options.hostname,
    port: options.port,
    reuseAddress: options.reuseAddress,
  });
  return new DenoTransport(conn, options.maxQueuedBytes);
}

class DenoTransport implements Transport {
  readonly implementation = "deno";
  readonly hostname: string;
  readonly port: number;
  #conn: DenoDatagramConn;
  #inbox: Inbox;
  #buffer = new Uint8Array(RECEIVE_BUFFER_BYTES);
  #closed = false;
  #reading: Promise<void>;
  #memberships = new Map<string, MulticastMembership>();
  #senders = new SenderAddresses();
  #slab = new Slab();

  constructor(conn: DenoDatagramConn, maxQueuedBytes: number) {
    this.#conn = conn;
    this.hostname = conn.addr.hostname;
    this.port = conn.addr.port;
    this.#inbox = new Inbox(maxQueuedBytes);
    this.#reading = this.#read();
  }

  get dropped(): number {
    return this.#inbox.dropped;
  }

  async send(data: Uint8Array, hostname: string, port: number): Promise<void> {
    await this.#conn.send(data, { transport: "udp", hostname, port });
  }

  receive(signal?: AbortSignal): Promise<ReceivedDatagram> {
    return this.#inbox.take(signal);
  }

  /**
   * Reads until the socket closes, as node:dgram does: what arrives while
   * nobody receives waits in the inbox (up to its limit), not in the
   * kernel's smaller buffer, and both implementations lose the same.
   */
  async #read(): Promise<void> {
    for (;;) {
      try {
        const [view, from] = await this.#conn.receive(this.#buffer);
        this.#inbox.deliver({
          data: this.#slab.copy(view),
          from: this.#senders.format(from.hostname, from.port),
        });
      } catch (error) {
        if (this.#closed) return;
        // Windows reports an earlier send's ICMP "port unreachable" on the
        // next receive; the socket is fine (libuv, under node:dgram, ignores it too).
        if (error instanceof Deno.errors.ConnectionReset) continue;
        this.#inbox.fail(receiveError(this, error));
        return;
      }
    }
  }

  async join(group: string, networkInterface: string): Promise<void> {
    const key = `${group}%${networkInterface}`;
    this.#memberships.set(key, await this.#conn.joinMulticastV4(group, networkInterface));
  }

  async leave(group: string, networkInterface: string): Promise<void> {
    const key = `${group}%${networkInterface}`;
    const membership = this.#memberships.get(key);
    this.#memberships.delete(key);
    await membership?.leave();
  }

  /** Resolves once the read in flight has ended, which releases the port. */
  close(reason: Error): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#inbox.fail(reason);
      this.#memberships.clear();
      this.#conn.close();
    }
    return this.#reading;
  }
}
