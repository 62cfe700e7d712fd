// A tcp proxy that injects faults between a client and a server: delay,
// drop (a black hole), half-close and reset, at a chosen byte of either
// direction. Built on node:net, which can reset a connection
// (`resetAndDestroy()`, an RST), where a Deno.Conn can only close it.

import net from "node:net";

/** Which way bytes flow: from the client to the server, or back. */
export type Direction = "up" | "down";

/** What the proxy does to a connection. */
export type Fault =
  /** Forwards everything. */
  | { kind: "none" }
  /** Holds every chunk, both ways, for `ms` before forwarding it; order is kept. */
  | { kind: "delay"; ms: number }
  /**
   * Forwards `afterBytes` bytes of `direction` once armed, then forwards
   * nothing more either way while both connections stay open. A close on
   * one side still reaches the other.
   */
  | { kind: "drop"; direction: Direction; afterBytes: number }
  /**
   * Forwards `afterBytes` bytes of `direction` once armed, then ends that
   * direction (a FIN to its receiver); the other direction goes on.
   */
  | { kind: "halfClose"; direction: Direction; afterBytes: number }
  /** Forwards `afterBytes` bytes of `direction` once armed, then resets both connections. */
  | { kind: "reset"; direction: Direction; afterBytes: number }
  /** Resets the client's connection as soon as it is accepted, connecting nowhere. */
  | { kind: "refuse" };

/** One proxied connection. */
export interface ProxiedConnection {
  /** Bytes forwarded each way. */
  readonly forwarded: Record<Direction, number>;
  /** When the fault took effect (performance.now()), once it has. */
  readonly faultAt: number | undefined;
  /** Applies `fault` from now on; byte counts start from here. */
  arm(fault: Fault): void;
  /** Settles once both sockets are closed. */
  readonly closed: Promise<void>;
}

/**
 * A proxy on 127.0.0.1, port 0, to `target`. `plan` picks the fault of each
 * new connection (by its index, from 0); `arm()` changes it later.
 */
export class FaultProxy implements AsyncDisposable {
  readonly connections: ProxiedConnection[] = [];
  #server: net.Server;
  #sockets = new Set<net.Socket>();
  #port = 0;

  private constructor(server: net.Server) {
    this.#server = server;
  }

  static async start(
    targetPort: number,
    plan: (index: number) => Fault = () => ({ kind: "none" }),
  ): Promise<FaultProxy> {
    const server = net.createServer({ pauseOnConnect: true });
    const proxy = new FaultProxy(server);
    server.on("connection", (client: net.Socket) => {
      proxy.#accept(client, targetPort, plan(proxy.connections.length));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    proxy.#port = (server.address() as net.AddressInfo).port;
    return proxy;
  }

  /** The proxy's tcp:// address. */
  get address(): string {
    return `tcp://127.0.0.1:${this.#port}`;
  }

  /** Stops accepting and resets whatever is still open. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    await Promise.all(this.connections.map((c) => c.closed));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #track(socket: net.Socket): Promise<void> {
    this.#sockets.add(socket);
    return new Promise((resolve) =>
      socket.once("close", () => {
        this.#sockets.delete(socket);
        resolve();
      })
    );
  }

  #accept(client: net.Socket, targetPort: number, initial: Fault): void {
    const clientClosed = this.#track(client);
    client.on("error", () => {});
    if (initial.kind === "refuse") {
      const connection: ProxiedConnection = {
        forwarded: { up: 0, down: 0 },
        faultAt: performance.now(),
        arm: () => {},
        closed: clientClosed,
      };
      this.connections.push(connection);
      client.resetAndDestroy();
      return;
    }
    const server = net.connect({ host: "127.0.0.1", port: targetPort });
    server.on("error", () => {});
    const serverClosed = this.#track(server);
    const state = new Connection(
      client,
      server,
      initial,
      Promise.all([clientClosed, serverClosed]),
    );
    this.connections.push(state);
    server.once("connect", () => client.resume());
  }
}

class Connection implements ProxiedConnection {
  forwarded: Record<Direction, number> = { up: 0, down: 0 };
  faultAt: number | undefined;
  closed: Promise<void>;
  #fault: Fault;
  #armedAt: Record<Direction, number> = { up: 0, down: 0 };
  #sockets: Record<Direction, [from: net.Socket, to: net.Socket]>;
  /** Delayed chunks go out in order: each waits for the one before. */
  #chain: Record<Direction, Promise<void>> = { up: Promise.resolve(), down: Promise.resolve() };
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #dead = false;

  constructor(client: net.Socket, server: net.Socket, fault: Fault, closed: Promise<unknown>) {
    this.#fault = fault;
    this.#sockets = { up: [client, server], down: [server, client] };
    this.closed = closed.then(() => {
      for (const timer of this.#timers) clearTimeout(timer);
    });
    for (const direction of ["up", "down"] as const) {
      const [from, to] = this.#sockets[direction];
      from.on("data", (chunk: Uint8Array) => this.#onData(direction, chunk));
      from.once("end", () => this.#after(direction, () => to.end()));
      from.once("close", (hadError: boolean) => {
        // A reset (or an error) on one side is passed on as a reset.
        if (hadError && !to.destroyed) this.#after(direction, () => to.resetAndDestroy());
        else this.#after(direction, () => to.destroyed || to.end());
      });
    }
  }

  arm(fault: Fault): void {
    this.#fault = fault;
    this.#armedAt = { ...this.forwarded };
  }

  #onData(direction: Direction, chunk: Uint8Array): void {
    if (this.#dead) return;
    const fault = this.#fault;
    if (fault.kind === "drop" && this.faultAt !== undefined) return; // a black hole, both ways
    const [, to] = this.#sockets[direction];
    if (fault.kind === "delay") {
      this.faultAt ??= performance.now();
      this.#after(direction, () => this.#send(direction, to, chunk), fault.ms);
      return;
    }
    if (fault.kind === "none" || fault.kind === "refuse" || fault.direction !== direction) {
      this.#send(direction, to, chunk);
      return;
    }
    // After a half-close, what comes this way has nowhere to go.
    if (this.faultAt !== undefined) return;
    const left = fault.afterBytes - (this.forwarded[direction] - this.#armedAt[direction]);
    if (left > chunk.length) {
      this.#send(direction, to, chunk);
      return;
    }
    this.faultAt = performance.now();
    if (fault.kind === "reset") {
      this.#dead = true;
      const reset = () => {
        for (const socket of this.#sockets.up) if (!socket.destroyed) socket.resetAndDestroy();
      };
      // The part of the frame before the fault leaves first.
      if (left > 0) this.#send(direction, to, chunk.subarray(0, left), reset);
      else reset();
      return;
    }
    if (left > 0) this.#send(direction, to, chunk.subarray(0, left));
    if (fault.kind === "halfClose") to.end();
  }

  #send(direction: Direction, to: net.Socket, chunk: Uint8Array, then?: () => void): void {
    if (to.destroyed || to.writableEnded) return then?.();
    this.forwarded[direction] += chunk.length;
    to.write(chunk, then);
  }

  /** Runs `step` after the chunks of `direction` still delayed, `ms` later. */
  #after(direction: Direction, step: () => void, ms = 0): void {
    const previous = this.#chain[direction];
    this.#chain[direction] = (async () => {
      const due = new Promise<void>((resolve) => {
        if (ms === 0) return resolve();
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          resolve();
        }, ms);
        this.#timers.add(timer);
      });
      await previous;
      await due;
      step();
    })();
  }
}
