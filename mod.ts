/**
 * Typed message passing between tasks, processes and machines, over
 * `tcp://`, `tls://`, `unix://` and `inproc://` addresses, wire-compatible
 * with dask.distributed's comm layer.
 *
 * - {@linkcode connect} opens a {@linkcode Comm} to an address and
 *   {@linkcode listen} accepts them; a comm reads and writes whole messages
 *   (any msgpack value; large binaries travel as separate frames).
 * - Addresses are strings, split and joined by {@linkcode parseAddress} and
 *   friends; each scheme has a {@linkcode Backend}, and
 *   {@linkcode registerBackend} adds your own.
 *
 * ```ts
 * import { connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * // A server that answers every message with its double.
 * await using listener = await listen("inproc://", async (comm) => {
 *   for await (const n of comm) await comm.write((n as number) * 2);
 * });
 *
 * await using comm = await connect(listener.contactAddress);
 * await comm.write(21);
 * assertEquals(await comm.read(), 42);
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
export * from "./comm/server.ts";
export * from "./comm/switchboard.ts";
export { type ByteStream, StreamComm, type StreamCommOptions } from "./comm/stream_comm.ts";
export * from "./comm/tcp.ts";
export * from "./comm/tls.ts";
export * from "./comm/types.ts";
export * from "./comm/unix.ts";
export * from "./comm/ws.ts";
