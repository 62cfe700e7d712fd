/**
 * The raw-Deno WebSocket reference of the benchmarks: `Deno.serve` with
 * `Deno.upgradeWebSocket` on one end, the standard `WebSocket` class on the
 * other, each message dask-framed as by `bench/_raw.ts` (the same reused
 * msgpack `Encoder`) and sent as binary WebSocket messages; no library.
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";
import { bulkHeader, frame, tlsMaterial } from "./_raw.ts";

export type WsTransport = "ws" | "wss";

/** The most Deno receives in one WebSocket message. */
const MAX_WS_MESSAGE = 64 * 1024 * 1024 - 1;
/** Sending waits while more than this is unsent, until this little is. */
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

const opened = (socket: WebSocket) =>
  new Promise<void>((resolve, reject) => {
    if (socket.readyState === WebSocket.OPEN) return resolve();
    socket.onopen = () => resolve();
    socket.onerror = (event) => reject(new Error((event as ErrorEvent).message));
  });

/** A connected pair of raw WebSockets, and a function that closes both. */
export async function rawWsPair(
  transport: WsTransport,
): Promise<{ client: WebSocket; server: WebSocket; close: () => Promise<void> }> {
  const tls = transport === "wss" ? await tlsMaterial() : undefined;
  const abort = new AbortController();
  let accepted!: (socket: WebSocket) => void;
  const accepting = new Promise<WebSocket>((resolve) => accepted = resolve);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    signal: abort.signal,
    onListen() {},
    ...(tls ? { cert: tls.cert, key: tls.key } : {}),
  }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    accepted(socket);
    return response;
  });
  const httpClient = tls ? Deno.createHttpClient({ caCerts: [tls.ca] }) : undefined;
  const url = `${transport}://127.0.0.1:${server.addr.port}/`;
  const client = httpClient ? new WebSocket(url, { client: httpClient }) : new WebSocket(url);
  await opened(client);
  const peer = await accepting;
  await opened(peer);
  for (const socket of [client, peer]) socket.binaryType = "arraybuffer";
  return {
    client,
    server: peer,
    async close() {
      const closed = new Promise((resolve) => client.onclose = resolve);
      client.close();
      await closed;
      abort.abort();
      await server.finished;
      httpClient?.close();
    },
  };
}

/** The frames of one dask-framed message held in `bytes`. */
function unframe(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(8, true);
  const frames: Uint8Array[] = [];
  let at = 16 + 8 * count;
  for (let i = 0; i < count; i++) {
    const length = view.getUint32(16 + 8 * i, true);
    frames.push(bytes.subarray(at, at + length));
    at += length;
  }
  return frames;
}

/** Echoes every message back, decoded and encoded again, until closed. */
export function echo(socket: WebSocket): void {
  const encoder = new Encoder();
  const decoder = new Decoder();
  socket.onmessage = (event) => {
    const [body] = unframe(new Uint8Array(event.data));
    socket.send(frame(encoder, decoder.decode(body)));
  };
}

/** W1: `count` round trips of a small message, each reply awaited; round trips/s. */
export async function pingPong(socket: WebSocket, count: number): Promise<number> {
  const encoder = new Encoder();
  const decoder = new Decoder();
  let reply!: (data: ArrayBuffer) => void;
  socket.onmessage = (event) => reply(event.data);
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    const replied = new Promise<ArrayBuffer>((resolve) => reply = resolve);
    socket.send(frame(encoder, { op: "ping", i }));
    decoder.decode(unframe(new Uint8Array(await replied))[0]);
  }
  return count / ((performance.now() - start) / 1000);
}

/** Waits while `socket` has much unsent, polling every millisecond. */
async function drain(socket: WebSocket): Promise<void> {
  if (socket.bufferedAmount <= HIGH_WATER) return;
  while (socket.bufferedAmount > LOW_WATER) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/**
 * W3: `count` messages of one `bytes`-long binary frame one way, each a
 * header message then the payload in messages of at most `chunk` bytes
 * (by default 64 MiB - 1, the most Deno receives in one), copied by the
 * receiver into a fresh buffer per message; GB/s. Sending waits while over
 * 1 MiB is unsent, until 256 KiB or less is, as our ws comm does.
 */
export async function bulk(
  client: WebSocket,
  server: WebSocket,
  bytes: number,
  count: number,
  chunk = MAX_WS_MESSAGE,
): Promise<number> {
  const payload = new Uint8Array(bytes);
  const header = bulkHeader(bytes);
  let done!: () => void;
  const received = new Promise<void>((resolve) => done = resolve);
  let messages = 0;
  let body: Uint8Array | undefined;
  let at = 0;
  server.onmessage = (event) => {
    const data = new Uint8Array(event.data);
    if (!body) {
      body = new Uint8Array(new DataView(event.data).getUint32(16, true));
      at = 0;
      return;
    }
    body.set(data, at);
    at += data.length;
    if (at < body.length) return;
    if (at !== bytes) throw new Error("raw ws bulk truncated");
    body = undefined;
    if (++messages === count) done();
  };
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    client.send(header);
    for (let sent = 0; sent < bytes; sent += chunk) {
      client.send(payload.subarray(sent, Math.min(bytes, sent + chunk)));
      await drain(client);
    }
  }
  await received;
  return (bytes * count) / 1e9 / ((performance.now() - start) / 1000);
}
