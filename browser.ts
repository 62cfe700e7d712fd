/**
 * @x/comm for web pages: {@linkcode connect} over `ws://` and `wss://` (and
 * `inproc://` within the page), the same messages, errors and RPC proxies
 * as in Deno. Build it into one ES module with Deno's bundler:
 *
 * ```sh
 * deno bundle --platform browser -o comm.js jsr:@x/comm/browser
 * ```
 *
 * The tcp, tls and unix backends and listening on WebSockets need Deno, so
 * they are not here: their schemes are unknown to `connect()`.
 *
 * @example Talking to a Deno listener over a WebSocket
 * ```ts
 * import { connect } from "@x/comm/browser";
 * import { listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * // A Deno service (in a page, only the connect side runs).
 * await using listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
 *   for await (const message of comm) await comm.write({ reply: message });
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write("hello from the page");
 * assertEquals(await comm.read(), { reply: "hello from the page" });
 * ```
 *
 * @module
 */

export * from "./comm/addressing.ts";
export * from "./comm/batched.ts";
export * from "./comm/core.ts";
export * from "./comm/errors.ts";
export * from "./comm/inproc.ts";
export * from "./comm/pool.ts";
export * from "./comm/registry.ts";
export * from "./comm/rpc.ts";
export * from "./comm/serialized.ts";
export { type ByteStream, StreamComm, type StreamCommOptions } from "./comm/stream_comm.ts";
export * from "./comm/types.ts";
export * from "./comm/ws.ts";
