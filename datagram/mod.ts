/**
 * Datagram sockets: UDP send-to and receive-from over `udp://host:port`
 * addresses, IPv4 and IPv6, with broadcast and IPv4 multicast.
 *
 * {@linkcode bind} gives a {@linkcode DatagramSocket}: `send(data, to)` and
 * `receive()` move bytes, `sendMessage()` and `receiveMessage()` one msgpack
 * value per datagram, and iterating it yields what arrives. It runs under
 * plain `deno run --allow-net`, on `node:dgram`, and on
 * `Deno.listenDatagram` where `--unstable-net` offers it (IPv4 sockets also
 * need `--allow-sys=networkInterfaces` there, to refuse broadcasts), with the
 * same behaviour on both.
 *
 * ```ts
 * import { bind } from "@x/comm/datagram";
 * import { assertEquals } from "@std/assert";
 *
 * await using receiver = await bind("udp://127.0.0.1:0");
 * await using sender = await bind("udp://127.0.0.1:0");
 * await sender.sendMessage({ temperature: 21.5 }, receiver.address);
 * const { message, from } = await receiver.receiveMessage();
 * assertEquals(message, { temperature: 21.5 });
 * assertEquals(from, sender.address);
 * ```
 *
 * @module
 */

export * from "./udp.ts";
export * from "./socket.ts";
export * from "./errors.ts";
export { AddressError, CommClosedError } from "../comm/errors.ts";
