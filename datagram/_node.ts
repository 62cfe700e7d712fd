// The datagram transport over `node:dgram`, which Deno offers without any
// unstable flag. Only siblings import this file.

import dgram from "node:dgram";
import { SenderAddresses } from "./_address.ts";
import {
  Inbox,
  type ReceivedDatagram,
  receiveError,
  Slab,
  type Transport,
  type TransportOptions,
} from "./_transport.ts";

/** Node's socket errors name their cause in `code`. */
interface NodeError extends Error {
  code?: string;
}

/** Binds a socket with `node:dgram`; rejects with a `Deno.errors` class where one fits. */
export async function bindNode(options: TransportOptions): Promise<Transport> {
  const socket = dgram.createSocket({
    type: options.family === 6 ? "udp6" : "udp4",
    reuseAddr: options.reuseAddress,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind({ port: options.port, address: options.hostname, exclusive: true }, () => {
        socket.off("error", reject);
        resolve();
      });
    });
    if (options.broadcast) socket.setBroadcast(true);
    if (options.multicastInterface !== undefined) {
      socket.setMulticastInterface(options.multicastInterface);
    }
    if (options.multicastTTL !== undefined) socket.setMulticastTTL(options.multicastTTL);
    if (options.multicastLoopback !== undefined) {
      socket.setMulticastLoopback(options.multicastLoopback);
    }
  } catch (error) {
    await closeQuietly(socket);
    throw denoError(error as NodeError);
  }
  return new NodeTransport(socket, options.maxQueuedBytes);
}

class NodeTransport implements Transport {
  readonly implementation = "node";
  readonly hostname: string;
  readonly port: number;
  #socket: dgram.Socket;
  #inbox: Inbox;
  #closing: Promise<void> | undefined;
  #sending = new Set<(reason: Error) => void>();

  constructor(socket: dgram.Socket, maxQueuedBytes: number) {
    this.#socket = socket;
    const { address, port } = socket.address();
    this.hostname = address;
    this.port = port;
    this.#inbox = new Inbox(maxQueuedBytes);
    const senders = new SenderAddresses();
    const slab = new Slab();
    socket.on("message", (message: Uint8Array, from: dgram.RemoteInfo) => {
      this.#inbox.deliver({
        data: slab.copy(message),
        from: senders.format(from.address, from.port),
      });
    });
    socket.on("error", (error: Error) => {
      this.#inbox.fail(receiveError(this, error));
    });
  }

  get dropped(): number {
    return this.#inbox.dropped;
  }

  send(data: Uint8Array, hostname: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      // node:dgram never calls back a send that close() overtook: close()
      // rejects what is still pending instead.
      this.#sending.add(reject);
      this.#socket.send(data, port, hostname, (error) => {
        this.#sending.delete(reject);
        if (error) reject(error);
        else resolve();
      });
    });
  }

  receive(signal?: AbortSignal): Promise<ReceivedDatagram> {
    return this.#inbox.take(signal);
  }

  join(group: string, networkInterface: string): Promise<void> {
    // node:dgram throws at once; the socket layer expects a rejection.
    return settle(() => this.#socket.addMembership(group, networkInterface));
  }

  leave(group: string, networkInterface: string): Promise<void> {
    return settle(() => this.#socket.dropMembership(group, networkInterface));
  }

  close(reason: Error): Promise<void> {
    if (!this.#closing) {
      this.#inbox.fail(reason);
      for (const reject of this.#sending) reject(reason);
      this.#sending.clear();
      this.#closing = closeQuietly(this.#socket);
    }
    return this.#closing;
  }
}

function settle(action: () => void): Promise<void> {
  try {
    action();
    return Promise.resolve();
  } catch (error) {
    return Promise.reject(error);
  }
}

function closeQuietly(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // Already closed.
    }
  });
}

/** Node's bind errors as the `Deno.errors` class that `Deno.listenDatagram` would throw. */
function denoError(error: NodeError): Error {
  const options = { cause: error };
  switch (error.code) {
    case "EADDRINUSE":
      return new Deno.errors.AddrInUse(error.message, options);
    case "EADDRNOTAVAIL":
      return new Deno.errors.AddrNotAvailable(error.message, options);
    case "EACCES":
      return new Deno.errors.PermissionDenied(error.message, options);
    default:
      return error;
  }
}
