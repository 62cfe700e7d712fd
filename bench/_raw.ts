/**
 * The raw-Deno reference of the benchmarks: `Deno.Conn`, dask's framing and
 * a reused msgpack `Encoder`/`Decoder`, no library. Each workload is written
 * the fastest plain way, so that a ratio to it says what the library costs.
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

export type Transport = "tcp" | "unix" | "tls";

const CERTS = new URL("../tests/testdata/", import.meta.url);

/** The server certificate and key, and the CA that signed them. */
export async function tlsMaterial(): Promise<{ cert: string; key: string; ca: string }> {
  const read = (name: string) => Deno.readTextFile(new URL(name, CERTS));
  return {
    cert: await read("server.pem"),
    key: await read("server-key.pem"),
    ca: await read("ca.pem"),
  };
}

/** A connected pair of raw connections, and a function that closes both. */
export async function rawPair(
  transport: Transport,
): Promise<{ client: Deno.Conn; server: Deno.Conn; close: () => void }> {
  let listener: Deno.Listener;
  let connecting: Promise<Deno.Conn>;
  let dir: string | undefined;
  if (transport === "unix") {
    dir = await Deno.makeTempDir();
    const path = `${dir}/raw.sock`;
    listener = Deno.listen({ transport: "unix", path });
    connecting = Deno.connect({ transport: "unix", path });
  } else if (transport === "tls") {
    const { cert, key, ca } = await tlsMaterial();
    const tls = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key });
    listener = tls;
    connecting = Deno.connectTls({
      hostname: "localhost",
      port: tls.addr.port,
      caCerts: [ca],
    });
  } else {
    const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    listener = tcp;
    connecting = Deno.connect({ hostname: "127.0.0.1", port: tcp.addr.port });
  }
  const [server, client] = await Promise.all([listener.accept(), connecting]);
  if (transport === "tls") {
    await Promise.all([(client as Deno.TlsConn).handshake(), (server as Deno.TlsConn).handshake()]);
  }
  if (transport === "tcp") {
    (client as Deno.TcpConn).setNoDelay(true);
    (server as Deno.TcpConn).setNoDelay(true);
  }
  return {
    client,
    server,
    close() {
      client.close();
      server.close();
      listener.close();
      if (dir) Deno.removeSync(dir, { recursive: true });
    },
  };
}

/** Encodes `message` as one dask-framed message of one frame. */
export function frame(encoder: Encoder, message: unknown): Uint8Array {
  const body = encoder.encode(message);
  const out = new Uint8Array(24 + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 16 + body.length, true);
  view.setUint32(8, 1, true);
  view.setUint32(16, body.length, true);
  out.set(body, 24);
  return out;
}

/** Writes all of `bytes`. */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/**
 * Reads dask-framed messages. With `reuse`, the receive buffer is reused
 * once a message was taken, so the caller must be done with its frames
 * before the next call: what a raw program that owns its buffers does, and
 * the ceiling for large messages (fresh 64 MiB buffers cost page faults).
 */
export class RawReader {
  #conn: Deno.Conn;
  #reuse: boolean;
  #buffer = new Uint8Array(256 * 1024);
  #view = new DataView(this.#buffer.buffer);
  #start = 0;
  #end = 0;

  constructor(conn: Deno.Conn, reuse = false) {
    this.#conn = conn;
    this.#reuse = reuse;
  }

  /** The frames of the next message (views into the receive buffer). */
  async next(): Promise<Uint8Array[]> {
    while (true) {
      const frames = this.poll();
      if (frames) return frames;
      const n = await this.#conn.read(this.#buffer.subarray(this.#end));
      if (n === null) throw new Error("raw peer closed");
      this.#end += n;
    }
  }

  /** The frames of the next message if it was all received, else undefined. */
  poll(): Uint8Array[] | undefined {
    const available = this.#end - this.#start;
    // What the buffer must hold from #start: the whole message once its
    // size is known, else room for the next read.
    let want = available + 16 * 1024;
    if (available >= 16) {
      const view = this.#view;
      const count = view.getUint32(this.#start + 8, true);
      const prelude = 16 + 8 * count;
      if (available >= prelude) {
        let size = prelude;
        for (let i = 0; i < count; i++) size += view.getUint32(this.#start + 16 + 8 * i, true);
        if (available >= size) {
          const frames: Uint8Array[] = [];
          let at = this.#start + prelude;
          for (let i = 0; i < count; i++) {
            const length = view.getUint32(this.#start + 16 + 8 * i, true);
            frames.push(this.#buffer.subarray(at, at + length));
            at += length;
          }
          this.#start += size;
          if (this.#reuse && this.#start === this.#end) this.#start = this.#end = 0;
          return frames;
        }
        want = size;
      }
    }
    if (this.#start + want > this.#buffer.length) this.#grow(want);
    return undefined;
  }

  #grow(size: number) {
    const pending = this.#buffer.subarray(this.#start, this.#end);
    if (this.#reuse && this.#buffer.length >= size) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
    } else {
      // Fresh, so that frames handed out before stay intact.
      const fresh = new Uint8Array(Math.max(size, 256 * 1024));
      fresh.set(pending);
      this.#buffer = fresh;
      this.#view = new DataView(fresh.buffer);
    }
    this.#end -= this.#start;
    this.#start = 0;
  }
}

/** W1: `count` round trips of a small message; round trips/s. */
export async function pingPong(client: Deno.Conn, count: number): Promise<number> {
  const encoder = new Encoder();
  const decoder = new Decoder();
  const reader = new RawReader(client);
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    await writeAll(client, frame(encoder, { op: "ping", i }));
    decoder.decode((await reader.next())[0]);
  }
  return count / ((performance.now() - start) / 1000);
}

/** Echoes every message back until the peer closes. */
export async function echo(conn: Deno.Conn): Promise<void> {
  const encoder = new Encoder();
  const decoder = new Decoder();
  const reader = new RawReader(conn);
  try {
    while (true) {
      const [body] = await reader.next();
      await writeAll(conn, frame(encoder, decoder.decode(body)));
    }
  } catch {
    // The peer closed.
  }
}

/** Reads and decodes `count` messages, draining each read synchronously. */
export async function receive(conn: Deno.Conn, count: number): Promise<void> {
  const decoder = new Decoder();
  const reader = new RawReader(conn);
  for (let i = 0; i < count;) {
    decoder.decode((await reader.next())[0]);
    i++;
    for (let frames; i < count && (frames = reader.poll());) {
      decoder.decode(frames[0]);
      i++;
    }
  }
}

/**
 * W2, the coalesced ceiling: every message is framed straight into a
 * 64 KiB buffer, written when full; msgs/s until all were decoded.
 */
export async function oneWayCoalesced(
  client: Deno.Conn,
  server: Deno.Conn,
  count: number,
): Promise<number> {
  const encoder = new Encoder();
  const start = performance.now();
  const receiving = receive(server, count);
  let out = new Uint8Array(64 * 1024);
  let view = new DataView(out.buffer);
  let at = 0;
  for (let i = 0; i < count; i++) {
    const body = encoder.encode({ op: "data", i });
    if (at + 24 + body.length > out.length) {
      await writeAll(client, out.subarray(0, at));
      out = new Uint8Array(64 * 1024);
      view = new DataView(out.buffer);
      at = 0;
    }
    view.setUint32(at, 16 + body.length, true);
    view.setUint32(at + 8, 1, true);
    view.setUint32(at + 16, body.length, true);
    out.set(body, at + 24);
    at += 24 + body.length;
  }
  await writeAll(client, out.subarray(0, at));
  await receiving;
  return count / ((performance.now() - start) / 1000);
}

/** W2 written naively: one awaited write per message; msgs/s. */
export async function oneWayEachWrite(
  client: Deno.Conn,
  server: Deno.Conn,
  count: number,
): Promise<number> {
  const encoder = new Encoder();
  const start = performance.now();
  const receiving = receive(server, count);
  for (let i = 0; i < count; i++) await writeAll(client, frame(encoder, { op: "data", i }));
  await receiving;
  return count / ((performance.now() - start) / 1000);
}

/**
 * W3: `count` messages of one `bytes`-long binary frame one way, header and
 * payload written separately (never joined), received by `reader` (kept
 * from one call to the next, so that a reusing reader keeps its buffer);
 * GB/s.
 */
export async function bulk(
  client: Deno.Conn,
  reader: RawReader,
  bytes: number,
  count: number,
): Promise<number> {
  const payload = new Uint8Array(bytes);
  const header = bulkHeader(bytes);
  const start = performance.now();
  const receiving = (async () => {
    for (let i = 0; i < count; i++) {
      const [body] = await reader.next();
      if (body.length !== bytes) throw new Error("raw bulk truncated");
    }
  })();
  for (let i = 0; i < count; i++) {
    await writeAll(client, header);
    await writeAll(client, payload);
  }
  await receiving;
  return (bytes * count) / 1e9 / ((performance.now() - start) / 1000);
}

/**
 * W4's reference: a bare async queue, the least a one-way channel between
 * two tasks of one process can do; `write` resolves at once.
 */
export class BareQueue<T> {
  #items: T[] = [];
  #head = 0;
  #waiter: ((value: T) => void) | undefined;

  write(value: T): Promise<void> {
    const waiter = this.#waiter;
    if (waiter) {
      this.#waiter = undefined;
      waiter(value);
    } else {
      this.#items.push(value);
    }
    return Promise.resolve();
  }

  read(): Promise<T> {
    if (this.#head < this.#items.length) {
      const value = this.#items[this.#head++];
      if (this.#head === this.#items.length) {
        this.#items = [];
        this.#head = 0;
      }
      return Promise.resolve(value);
    }
    return new Promise((resolve) => this.#waiter = resolve);
  }
}

/** The header of a one-frame message of `bytes` bytes, in dask's framing. */
export function bulkHeader(bytes: number): Uint8Array {
  const header = new Uint8Array(24);
  const view = new DataView(header.buffer);
  view.setUint32(0, 16 + bytes, true);
  view.setUint32(8, 1, true);
  view.setUint32(16, bytes, true);
  return header;
}
