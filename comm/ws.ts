/**
 * The `ws` and `wss` backends: comms over WebSocket, through proxies and
 * from browsers.
 *
 * The connector is the standard `WebSocket` class, so it runs in Deno and in
 * browsers (see the `@x/comm/browser` entry point); the listener serves
 * WebSocket upgrades with `Deno.serve`, at the address's path, and can share
 * its server with the user's own HTTP routes (`httpHandler`). Addresses are
 * `ws://host:port/path` (the path is optional; a client may add a
 * `?query`); without a port, a client dials 80 for `ws` and 443 for `wss`.
 * `wss` takes the `tls` options: `cert` and `key` to listen, `caCerts` (and
 * a client certificate) to connect, which in a browser are the browser's.
 *
 * Between two @x/comm ends (agreed as the `x-comm` subprotocol) each comm
 * message is one binary WebSocket message holding dask's framing; a message
 * of 64 MiB or more, too large for Deno to receive in one, goes on in
 * further ones.
 * With any other peer, such as dask's own `ws://` comm, messages are laid
 * out as dask does: a WebSocket message with the frame count, then one for
 * each frame.
 *
 * A WebSocket cannot stop reading, so between @x/comm ends the reader gives
 * the writer credit as its comm reads (8 MiB ahead): a slow reader slows the
 * writer down, as on a socket. A peer without flow control (dask) may get
 * `maxMessageSize` plus 64 MiB ahead of the reader before its comm is closed.
 *
 * Browsers let any page open a WebSocket anywhere: a listener accepts
 * upgrades from its own pages and from clients that are not browsers, and
 * refuses other pages' origins unless `allowedOrigins` names them. Closing
 * a listener stops it accepting (upgrades get 503); its HTTP server stops
 * once the comms it accepted are closed.
 *
 * @module
 */

import { unparseHostPort } from "./addressing.ts";
import { parseHostPort } from "./addressing.ts";
import { backends } from "./_backends.ts";
import { concreteHost } from "./_conn_listener.ts";
import { clientCertificate, explainTlsError, hostPortHelpers, serverCertificate } from "./_net.ts";
import { Queue } from "./_queue.ts";
import { abortable, type Deferred, deferred, messageOf } from "./_util.ts";
import { AddressError } from "./errors.ts";
import type { Backend, BackendConnectOptions, BackendListener } from "./registry.ts";
import {
  DEFAULT_MAX_MESSAGE_SIZE,
  DEFER_READING,
  STREAM_CLOSED,
  StreamComm,
  type StreamCommOptions,
  WHOLE_WRITES,
} from "./stream_comm.ts";
import type { Comm, ListenOptions } from "./types.ts";
import {
  MAX_WEBSOCKET_MESSAGE_BYTES,
  WEBSOCKET_PROTOCOL,
  WebSocketByteStream,
} from "./_ws_stream.ts";

export { MAX_WEBSOCKET_MESSAGE_BYTES, WEBSOCKET_PROTOCOL } from "./_ws_stream.ts";

/** Comms opened but not yet taken by the listener: more are refused with 503. */
const MAX_WAITING_COMMS = 256;
/** Characters allowed in a path and a query, unencoded (RFC 3986). */
const PATH_PATTERN = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/;
const QUERY_PATTERN = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$/;

/**
 * The `ws` backend, registered under `ws`.
 *
 * @example
 * ```ts
 * import { connect, getBackend, listen, wsBackend } from "@x/comm";
 * import { assertEquals, assertStrictEquals } from "@std/assert";
 *
 * assertStrictEquals(getBackend("ws"), wsBackend);
 * await using listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
 *   await comm.write(await comm.read());
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write({ over: "a WebSocket" });
 * assertEquals(await comm.read(), { over: "a WebSocket" });
 * ```
 */
export const wsBackend: Backend = webSocketBackend("ws");

/**
 * The `wss` backend (WebSocket over TLS), registered under `wss`.
 *
 * @example
 * ```ts
 * import { connect, getBackend, listen, wssBackend } from "@x/comm";
 * import { assertEquals, assertStrictEquals } from "@std/assert";
 *
 * assertStrictEquals(getBackend("wss"), wssBackend);
 * const read = (name: string) => Deno.readTextFile(`tests/testdata/${name}`);
 * await using listener = await listen("wss://127.0.0.1:0", async (comm) => {
 *   await comm.write(await comm.read());
 * }, { cert: await read("server.pem"), key: await read("server-key.pem") });
 * await using comm = await connect(listener.contactAddress, {
 *   caCerts: [await read("ca.pem")],
 * });
 * await comm.write("secret");
 * assertEquals(await comm.read(), "secret");
 * ```
 */
export const wssBackend: Backend = webSocketBackend("wss");

backends.set("ws", wsBackend);
backends.set("wss", wssBackend);

/** A ws or wss location cut into its parts. */
interface WebSocketLocation {
  host: string;
  port: number;
  /** The path, "/" at least. */
  path: string;
  /** The query with its "?", or "". */
  query: string;
}

function webSocketBackend(scheme: "ws" | "wss"): Backend {
  const helpers = hostPortHelpers(scheme);
  const hostPortOf = (location: string) => parseLocation(scheme, location, "use").hostPort;
  return {
    connect: (location, options) => connectWebSocket(scheme, location, options),
    listen: (location, options) =>
      Promise.resolve(new WebSocketListener(scheme, location, options)),
    getAddressHost: (location) => helpers.getAddressHost(hostPortOf(location)),
    getAddressHostPort: (location) => {
      const { host, port } = parseLocation(scheme, location, "use").parts;
      return [host, port];
    },
    async resolveAddress(location) {
      const { hostPort, parts } = parseLocation(scheme, location, "resolve");
      try {
        return (await helpers.resolveAddress(hostPort)) + suffix(parts);
      } catch (error) {
        // Quote the whole address, path included.
        if (error instanceof AddressError) {
          error.message = error.message.replace(
            `"${scheme}://${hostPort}"`,
            `"${scheme}://${location}"`,
          );
        }
        throw error;
      }
    },
    getLocalAddressFor: (location) => helpers.getLocalAddressFor(hostPortOf(location)),
  };
}

async function connectWebSocket(
  scheme: "ws" | "wss",
  location: string,
  options: BackendConnectOptions,
): Promise<Comm> {
  const { parts } = parseLocation(scheme, location, "connect to");
  const { host, port } = parts;
  if (host === "") {
    throw new AddressError(`Cannot connect to "${scheme}://${location}": the address has no host`);
  }
  if (port === 0) {
    throw new AddressError(
      `Cannot connect to "${scheme}://${location}": port 0 means "any port" and only makes sense to listen on`,
    );
  }
  if (typeof WebSocket !== "function") {
    throw new TypeError(
      `Cannot connect to "${scheme}://${location}": this runtime has no WebSocket`,
    );
  }
  const peerAddress = `${scheme}://${unparseHostPort(host, port)}${suffix(parts)}`;
  const client = scheme === "wss" ? tlsClient(peerAddress, options) : undefined;
  const url = `${scheme}://${unparseHostPort(host, port)}${parts.path}${parts.query}`;
  let socket: WebSocket;
  try {
    socket = client
      ? new WebSocket(url, { protocols: [WEBSOCKET_PROTOCOL], client })
      : new WebSocket(url, [WEBSOCKET_PROTOCOL]);
  } catch (error) {
    client?.close();
    throw new AddressError(`Cannot connect to "${peerAddress}": ${messageOf(error)}`, {
      cause: error,
    });
  }
  const stream = new WebSocketByteStream(socket, {
    peerAddress,
    maxMessageSize: options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE,
  });
  if (client) stream[STREAM_CLOSED].then(() => client.close());
  let localAddress: string | undefined;
  try {
    localAddress = await abortable(stream.opened, options.signal);
    if (options.framing === "multiprocessing" && stream.layout !== "x-comm") {
      throw new Error(
        `the multiprocessing framing needs an @x/comm listener (one that agrees to the "${WEBSOCKET_PROTOCOL}" subprotocol)`,
      );
    }
  } catch (error) {
    stream.close();
    throw client ? explainTlsError(error, host) : error;
  }
  return commOver(stream, {
    ...options,
    // A WebSocket does not tell its own address; an @x/comm listener does.
    localAddress: localAddress ?? `${scheme}://0.0.0.0:0`,
    peerAddress,
  });
}

/** A Deno HTTP client trusting `caCerts` and showing a client certificate, if asked. */
function tlsClient(address: string, options: BackendConnectOptions): Deno.HttpClient | undefined {
  const { caCerts, cert, key } = options;
  if (caCerts === undefined && cert === undefined && key === undefined) return undefined;
  const certificate = clientCertificate(address, options);
  const deno = (globalThis as { Deno?: typeof Deno }).Deno;
  if (typeof deno?.createHttpClient !== "function") {
    throw new TypeError(
      `Cannot connect to "${address}": "caCerts", "cert" and "key" need Deno; a browser uses its own certificates`,
    );
  }
  return deno.createHttpClient({ caCerts, ...certificate });
}

/** A StreamComm over a WebSocket stream; the socket is closed if that fails. */
function commOver(stream: WebSocketByteStream, options: StreamCommOptions): StreamComm {
  try {
    return new StreamComm(stream, {
      ...options,
      [DEFER_READING]: true,
      // dask's layout needs every message whole, to cut it into frames.
      [WHOLE_WRITES]: stream.layout === "dask" ? Infinity : MAX_WEBSOCKET_MESSAGE_BYTES,
    } as StreamCommOptions);
  } catch (error) {
    stream.close();
    throw error;
  }
}

/** Accepts WebSocket upgrades at one path of a `Deno.serve` server. */
class WebSocketListener implements BackendListener {
  #scheme: "ws" | "wss";
  #path: string;
  #options: ListenOptions;
  #server: Deno.HttpServer<Deno.NetAddr>;
  #abort = new AbortController();
  #ready = new Queue<Comm>();
  #waiters = new Queue<Deferred<Comm | null>>();
  #opening = 0;
  #closed = false;
  #released: Promise<void> | undefined;
  readonly listenAddress: string;
  readonly contactAddress: string;

  constructor(scheme: "ws" | "wss", location: string, options: ListenOptions) {
    const { parts } = parseLocation(scheme, location, "listen on", 0);
    if (parts.query !== "") {
      throw new AddressError(
        `Cannot listen on "${scheme}://${location}": a listener's address has no query`,
      );
    }
    const deno = (globalThis as { Deno?: typeof Deno }).Deno;
    if (typeof deno?.serve !== "function") {
      throw new TypeError(
        `Cannot listen on "${scheme}://${location}": listening needs Deno.serve; this runtime can only connect`,
      );
    }
    const tls = scheme === "wss" ? serverCertificate(scheme, location, options) : {};
    const { httpHandler } = options;
    if (httpHandler !== undefined && typeof httpHandler !== "function") {
      throw new TypeError(
        `Cannot listen on "${scheme}://${location}": "httpHandler" must be a function`,
      );
    }
    const { allowedOrigins } = options;
    if (
      allowedOrigins !== undefined && typeof allowedOrigins !== "function" &&
      !(Array.isArray(allowedOrigins) && allowedOrigins.every((o) => typeof o === "string"))
    ) {
      throw new TypeError(
        `Cannot listen on "${scheme}://${location}": "allowedOrigins" must be an array of origins (such as "https://app.example.com", or "*") or a function`,
      );
    }
    this.#scheme = scheme;
    this.#path = parts.path;
    this.#options = options;
    const hostname = parts.host === "" ? "0.0.0.0" : parts.host;
    this.#server = deno.serve({
      hostname,
      port: parts.port,
      signal: this.#abort.signal,
      onListen() {},
      onError: (error) => {
        this.#report(error);
        return new Response("Internal Server Error\n", { status: 500 });
      },
      ...tls,
    }, (request, info) => this.#handle(request, info));
    const bound = this.#server.addr;
    const path = parts.path === "/" ? "" : parts.path;
    this.listenAddress = `${scheme}://${unparseHostPort(bound.hostname, bound.port)}${path}`;
    const host = concreteHost(bound.hostname, options.contactHost);
    this.contactAddress = `${scheme}://${unparseHostPort(host, bound.port)}${path}`;
  }

  accept(): Promise<Comm | null> {
    const comm = this.#ready.shift();
    if (comm) return Promise.resolve(comm);
    if (this.#closed) return Promise.resolve(null);
    const waiter = deferred<Comm | null>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  /**
   * Stops accepting: upgrades get 503 from now on. The server goes on until
   * release(), since stopping it would cut the WebSockets it upgraded.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of this.#waiters.drain()) waiter.resolve(null);
    await Promise.all(
      this.#ready.drain().map((comm) => {
        comm.abort();
        return comm.close();
      }),
    );
  }

  /** Stops the server, cutting any WebSocket still open. */
  release(): Promise<void> {
    return this.#released ??= (async () => {
      await this.close();
      this.#abort.abort();
      await this.#server.finished;
    })();
  }

  #handle(
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Response | Promise<Response> {
    const url = new URL(request.url);
    const upgrade = request.headers.get("upgrade")?.toLowerCase() === "websocket";
    if (url.pathname !== this.#path || !upgrade) {
      if (this.#options.httpHandler) return this.#userResponse(request, info);
      return url.pathname === this.#path
        ? plain(
          426,
          `This address takes WebSocket connections (${this.listenAddress}), not plain HTTP requests`,
          { upgrade: "websocket" },
        )
        : plain(404, "Not Found");
    }
    if (this.#closed) return plain(503, "The listener is closing");
    const origin = request.headers.get("origin");
    if (origin !== null && !this.#allows(origin, request)) {
      return plain(
        403,
        `Origin ${
          JSON.stringify(origin)
        } may not open WebSockets here: add it to the listener's allowedOrigins`,
      );
    }
    if (this.#ready.length + this.#opening >= MAX_WAITING_COMMS) {
      return plain(503, "Too many connections are waiting to be accepted; try again later");
    }
    const offered = (request.headers.get("sec-websocket-protocol") ?? "").split(",");
    const ours = offered.some((protocol) => protocol.trim() === WEBSOCKET_PROTOCOL);
    if (this.#options.framing === "multiprocessing" && !ours) {
      return plain(
        400,
        `This listener speaks the multiprocessing framing, which needs an @x/comm client (the "${WEBSOCKET_PROTOCOL}" subprotocol)`,
      );
    }
    const remote = info.remoteAddr;
    const peerAddress = `${this.#scheme}://${unparseHostPort(remote.hostname, remote.port)}`;
    let upgraded: Deno.WebSocketUpgrade;
    try {
      upgraded = Deno.upgradeWebSocket(request, ours ? { protocol: WEBSOCKET_PROTOCOL } : {});
    } catch (error) {
      return plain(400, `Cannot upgrade to a WebSocket: ${messageOf(error)}`);
    }
    const stream = new WebSocketByteStream(upgraded.socket, {
      peerAddress,
      maxMessageSize: this.#options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE,
      layout: ours ? "x-comm" : "dask",
      hello: ours ? peerAddress : undefined,
    });
    this.#opening++;
    stream.opened.then(
      () => {
        this.#opening--;
        if (this.#closed) {
          stream.close();
          return;
        }
        let comm: StreamComm;
        try {
          comm = commOver(stream, {
            ...this.#options,
            localAddress: this.listenAddress,
            peerAddress,
          });
        } catch (error) {
          this.#report(error);
          return;
        }
        const waiter = this.#waiters.shift();
        if (waiter) waiter.resolve(comm);
        else this.#ready.push(comm);
      },
      () => this.#opening--,
    );
    return upgraded.response;
  }

  /** Whether a page of `origin` may open a WebSocket. */
  #allows(origin: string, request: Request): boolean {
    const allowed = this.#options.allowedOrigins;
    if (typeof allowed === "function") return allowed(origin);
    if (allowed !== undefined) return allowed.includes("*") || allowed.includes(origin);
    // By default, the listener's own pages only.
    try {
      return new URL(origin).host === request.headers.get("host");
    } catch {
      return false;
    }
  }

  async #userResponse(
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Promise<Response> {
    try {
      return await this.#options.httpHandler!(request, info);
    } catch (error) {
      this.#report(error);
      return plain(500, "Internal Server Error");
    }
  }

  #report(error: unknown): void {
    try {
      (this.#options.onError ?? console.error)(error);
    } catch {
      // A reporter that throws has nowhere to go.
    }
  }
}

/** A plain-text response. */
function plain(status: number, text: string, headers: Record<string, string> = {}): Response {
  return new Response(`${text}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** The path and query to put after host:port in an address ("" for "/"). */
function suffix(parts: WebSocketLocation): string {
  return (parts.path === "/" ? "" : parts.path) + parts.query;
}

/**
 * Cuts `location` into host, port, path and query, or throws an
 * AddressError quoting the address.
 */
function parseLocation(
  scheme: "ws" | "wss",
  location: string,
  action: string,
  defaultPort: number = scheme === "wss" ? 443 : 80,
): { hostPort: string; parts: WebSocketLocation } {
  const address = `${scheme}://${location}`;
  const fail = (why: string) => new AddressError(`Cannot ${action} "${address}": ${why}`);
  const cut = location.search(/[/?#]/);
  const hostPort = cut === -1 ? location : location.slice(0, cut);
  const rest = cut === -1 ? "" : location.slice(cut);
  if (rest.includes("#")) throw fail("a WebSocket address has no #fragment");
  const q = rest.indexOf("?");
  const path = (q === -1 ? rest : rest.slice(0, q)) || "/";
  const query = q === -1 ? "" : rest.slice(q);
  if (!PATH_PATTERN.test(path)) {
    throw fail(`the path "${path}" has characters that must be percent-encoded`);
  }
  if (/\/\.\.?(\/|$)/.test(path)) {
    throw fail(`the path "${path}" has "." or ".." segments, which URLs resolve away`);
  }
  if (!QUERY_PATTERN.test(query.slice(1))) {
    throw fail(`the query "${query}" has characters that must be percent-encoded`);
  }
  let host: string;
  let port: number;
  try {
    [host, port] = parseHostPort(`${scheme}://${hostPort}`, defaultPort);
  } catch (error) {
    throw fail(messageOf(error).replace(/^Invalid address "[^"]*": /, ""));
  }
  return { hostPort: unparseHostPort(host, port), parts: { host, port, path, query } };
}
