/// <reference lib="deno.unstable" />
/**
 * W5, UDP receive: `bench/_udp_sender.ts` in a process of its own sends
 * unpaced datagrams at a socket of this process for a fixed time, then 1-byte
 * end markers; the receiver counts the data datagrams it got and divides by
 * the time from the first of them to the first marker. An unpaced sender
 * outruns every receiver, and the kernel drops what overflows the socket's
 * buffer, so the figure is received datagrams/s.
 *
 * Receivers: our `DatagramSocket` (either implementation), the idiomatic
 * bare `Deno.listenDatagram` loop (`for await (const [data] of conn)`) and
 * that loop reading into one reused buffer, and a bare `node:dgram`
 * `'message'` listener, the ceiling of our node path.
 *
 * @module
 */

import dgram from "node:dgram";
import { bind, type DatagramImplementation } from "../datagram/mod.ts";

/** The size of W5's data datagrams. */
export const W5_BYTES = 512;
/** How long the sender sends, per measurement. */
export const W5_SEND_MS = 2_000;
/** How long after the sender exits a receiver that saw no end marker gives up. */
const MARKER_TIMEOUT_MS = 3_000;

const SENDER = new URL("./_udp_sender.ts", import.meta.url).pathname;

/** One measurement: datagrams/s received, and sent by the sender. */
export interface UdpRate {
  received: number;
  sent: number;
}

/** What a receiver under test does: counts data datagrams until the first end marker. */
interface Receiver {
  port: number;
  /** Resolves once the first marker came, or the receiver was stopped. */
  done: Promise<void>;
  /** Stops receiving (at the end, or when no marker came). */
  close: () => void | Promise<void>;
  /** Data datagrams received. */
  count: () => number;
  /** When the first data datagram came, and the first end marker (0 if none did). */
  span: () => [start: number, end: number];
}

/** Runs the sender at `receiver`; the rates once it is done. */
async function measure(receiver: Receiver): Promise<UdpRate> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--unstable-net",
      "--allow-net",
      SENDER,
      String(receiver.port),
      String(W5_SEND_MS),
      String(W5_BYTES),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const output = child.output().then((output) => {
    timer = setTimeout(() => receiver.close(), MARKER_TIMEOUT_MS);
    return output;
  });
  await receiver.done;
  clearTimeout(timer);
  await receiver.close();
  const { success, stdout } = await output;
  clearTimeout(timer);
  if (!success) throw new Error("bench/_udp_sender.ts failed");
  const { sent, seconds } = JSON.parse(new TextDecoder().decode(stdout));
  const [start, end] = receiver.span();
  if (receiver.count() === 0) throw new Error("W5: no datagram arrived");
  if (end === 0) throw new Error("W5: no end marker arrived");
  return { received: receiver.count() / ((end - start) / 1000), sent: sent / seconds };
}

/** Our socket, iterated: `for await (const { data } of socket)`. */
export async function ours(implementation: DatagramImplementation): Promise<UdpRate> {
  const socket = await bind("udp://127.0.0.1:0", { implementation });
  let count = 0;
  let start = 0;
  let end = 0;
  const done = (async () => {
    for await (const { data } of socket) {
      if (data.byteLength === 1) {
        end = performance.now();
        break;
      }
      if (count++ === 0) start = performance.now();
    }
  })();
  return await measure({
    port: Number(socket.address.split(":").at(-1)),
    done,
    close: () => socket.close(),
    count: () => count,
    span: () => [start, end],
  });
}

/**
 * The bare `Deno.listenDatagram` loop: `for await (const [data] of conn)`,
 * whose every datagram comes in a fresh 65,507-byte buffer. With `reuse`,
 * `await conn.receive(buffer)` into one buffer instead: the least a Deno
 * receiver can do.
 */
export async function raw(reuse = false): Promise<UdpRate> {
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let count = 0;
  let start = 0;
  let end = 0;
  let closed = false;
  const done = reuse
    ? (async () => {
      const buffer = new Uint8Array(65_536);
      try {
        while (true) {
          const [data] = await conn.receive(buffer);
          if (data.byteLength === 1) {
            end = performance.now();
            break;
          }
          if (count++ === 0) start = performance.now();
        }
      } catch (error) {
        if (!closed) throw error;
      }
    })()
    : (async () => {
      for await (const [data] of conn) {
        if (data.byteLength === 1) {
          end = performance.now();
          break;
        }
        if (count++ === 0) start = performance.now();
      }
    })();
  return await measure({
    port: (conn.addr as Deno.NetAddr).port,
    done,
    close() {
      if (!closed) conn.close();
      closed = true;
    },
    count: () => count,
    span: () => [start, end],
  });
}

/** A bare `node:dgram` socket's `'message'` listener: the ceiling of our node path. */
export async function nodeDgram(): Promise<UdpRate> {
  const socket = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  let count = 0;
  let start = 0;
  let end = 0;
  let closed = false;
  let stop!: () => void;
  const done = new Promise<void>((resolve) => stop = resolve);
  socket.on("message", (data: Uint8Array) => {
    if (end !== 0 || closed) return;
    if (data.byteLength === 1) {
      end = performance.now();
      stop();
    } else if (count++ === 0) {
      start = performance.now();
    }
  });
  let closing: Promise<void> | undefined;
  return await measure({
    port: socket.address().port,
    done,
    close() {
      closed = true;
      stop();
      return closing ??= new Promise((resolve) => socket.close(() => resolve()));
    },
    count: () => count,
    span: () => [start, end],
  });
}
