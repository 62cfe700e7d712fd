/**
 * Backends by scheme, and the address helpers that need one.
 *
 * A {@linkcode Backend} turns the location part of an address into comms and
 * listeners. Four are built in (`inproc`, `tcp`, `tls`, `unix`);
 * {@linkcode registerBackend} adds more, as dask's entry points do.
 *
 * @module
 */

import { unparseAddress } from "./addressing.ts";
import { backends, knownSchemes, lookupAddress } from "./_backends.ts";
import { AddressError } from "./errors.ts";
import type { Comm, ConnectOptions, ListenOptions } from "./types.ts";

/** Options a backend's `connect` gets: the caller's, plus a signal.
 * @example A backend that counts connection attempts
 * ```ts
 * import { type BackendConnectOptions, connect, getBackend, listen, registerBackend } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const tcp = getBackend("tcp");
 * const attempts: string[] = [];
 * registerBackend("counted", {
 *   ...tcp,
 *   connect(location: string, options: BackendConnectOptions) {
 *     attempts.push(location);
 *     return tcp.connect(location, options);
 *   },
 * });
 * await using listener = await listen("counted://127.0.0.1:0");
 * await using _comm = await connect(listener.contactAddress);
 * assertEquals(attempts.length, 1);
 * ```
 */
export interface BackendConnectOptions extends Omit<ConnectOptions, "signal"> {
  /**
   * Aborted when this attempt must stop (the caller aborted, or the attempt
   * or the overall timeout ran out). Close anything opened for the attempt.
   */
  signal: AbortSignal;
}

/** A backend's listener: accepts raw comms, before the handshake.
 * @example A backend listener that counts what it accepts
 * ```ts
 * import { type BackendListener, connect, getBackend, listen, registerBackend } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const tcp = getBackend("tcp");
 * let accepted = 0;
 * registerBackend("watched", {
 *   ...tcp,
 *   async listen(location, options): Promise<BackendListener> {
 *     const inner = await tcp.listen(location, options);
 *     return {
 *       listenAddress: inner.listenAddress,
 *       contactAddress: inner.contactAddress,
 *       async accept() {
 *         const comm = await inner.accept();
 *         if (comm) accepted++;
 *         return comm;
 *       },
 *       close: () => inner.close(),
 *     };
 *   },
 * });
 * await using listener = await listen("watched://127.0.0.1:0", async (comm) => {
 *   await comm.write("hello");
 * });
 * await using comm = await connect(listener.contactAddress);
 * assertEquals(await comm.read(), "hello");
 * assertEquals(accepted, 1);
 * ```
 */
export interface BackendListener {
  /** The address bound, as `scheme://location`. */
  readonly listenAddress: string;
  /** An address peers can connect to, as `scheme://location`. */
  readonly contactAddress: string;
  /**
   * Waits for the next incoming comm; resolves with `null` once closed.
   * Other rejections are reported and accepting goes on after a pause.
   */
  accept(): Promise<Comm | null>;
  /**
   * Stops accepting and releases the address. The comms accepted stay
   * open: `listen()`'s listener closes them next.
   */
  close(): Promise<void>;
  /**
   * Releases what the listener still holds once the comms it accepted are
   * closed, if anything: the ws listener's HTTP server, whose stopping would
   * cut its WebSockets, is stopped here rather than in `close()` (until
   * then it answers upgrades with 503). Optional.
   */
  release?(): Promise<void>;
}

/**
 * A transport, registered under a scheme.
 *
 * Backends see only the location (the part after `scheme://`) and return
 * raw comms: `connect()` and `listen()` add retries and the handshake. A
 * listener's addresses are reported under the scheme `listen()` was called
 * with, so one backend can serve several schemes; the addresses of comms
 * are the backend's to set.
 * `connect()` retries errors whose `name` is `ConnectionRefused`,
 * `ConnectionReset`, `ConnectionAborted`, `NotFound` or `TimedOut`, so a
 * backend should throw `Deno.errors` of those kinds where retrying helps.
 *
 * @example A backend that forwards to tcp under another scheme
 * ```ts
 * import { type Backend, connect, getBackend, listen, registerBackend } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const tcp = getBackend("tcp");
 * const mine: Backend = {
 *   connect: (location, options) => tcp.connect(location, options),
 *   listen: (location, options) => tcp.listen(location, options),
 *   getAddressHost: (location) => tcp.getAddressHost(location),
 *   getAddressHostPort: (location) => tcp.getAddressHostPort(location),
 *   resolveAddress: (location) => tcp.resolveAddress(location),
 *   getLocalAddressFor: (location) => tcp.getLocalAddressFor(location),
 * };
 * registerBackend("mytcp", mine);
 *
 * await using listener = await listen("mytcp://127.0.0.1:0", async (comm) => {
 *   await comm.write(await comm.read());
 * });
 * await using comm = await connect(listener.contactAddress);
 * await comm.write("ping");
 * assertEquals(await comm.read(), "ping");
 * ```
 */
export interface Backend {
  /**
   * Opens a comm to `location`.
   *
   * @param location The address without its scheme.
   * @param options The caller's options and the attempt's signal.
   * @returns A comm, before the handshake.
   */
  connect(location: string, options: BackendConnectOptions): Promise<Comm>;
  /**
   * Starts listening on `location`.
   *
   * @param location The address without its scheme.
   * @param options The caller's options.
   * @returns A listener of raw comms.
   */
  listen(location: string, options: ListenOptions): Promise<BackendListener>;
  /**
   * The host (name or IP) that identifies the machine of `location`.
   *
   * @param location The address without its scheme.
   * @returns The host.
   */
  getAddressHost(location: string): string;
  /**
   * The host and port of `location`.
   *
   * @param location The address without its scheme.
   * @returns The host and port.
   * @throws {AddressError} If the scheme has no ports.
   */
  getAddressHostPort(location: string): [host: string, port: number];
  /**
   * Resolves host names in `location` to IP addresses.
   *
   * @param location The address without its scheme.
   * @returns The resolved location.
   */
  resolveAddress(location: string): Promise<string>;
  /**
   * A local location (without port) from which `location` is reachable,
   * suitable to listen on.
   *
   * @param location The address without its scheme.
   * @returns The local location.
   */
  getLocalAddressFor(location: string): string;
}

/**
 * Registers `backend` for `scheme`, replacing any backend registered there
 * before (built-in ones included).
 *
 * @example
 * ```ts
 * import { getBackend, registerBackend } from "@x/comm";
 * import { assertStrictEquals } from "@std/assert";
 *
 * registerBackend("plain", getBackend("tcp"));
 * assertStrictEquals(getBackend("plain"), getBackend("tcp"));
 * ```
 *
 * @param scheme The scheme, such as `quic`.
 * @param backend The backend.
 * @throws {AddressError} If the scheme is malformed.
 */
export function registerBackend(scheme: string, backend: Backend): void {
  unparseAddress(scheme, "");
  backends.set(scheme, backend);
}

/**
 * Returns the backend registered for `scheme`.
 *
 * @example
 * ```ts
 * import { AddressError, getBackend } from "@x/comm";
 * import { assertThrows } from "@std/assert";
 *
 * getBackend("tcp");
 * assertThrows(() => getBackend("carrier-pigeon"), AddressError, "known schemes");
 * ```
 *
 * @param scheme The scheme, such as `tcp`.
 * @returns The backend.
 * @throws {AddressError} If no backend is registered for the scheme; the
 * message lists the known schemes.
 */
export function getBackend(scheme: string): Backend {
  const backend = backends.get(scheme);
  if (backend) return backend;
  throw new AddressError(
    `Unknown scheme "${scheme}" (known schemes: ${knownSchemes()})`,
  );
}

/**
 * The host (name or IP) of the machine an address is on.
 *
 * @example
 * ```ts
 * import { getAddressHost } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(getAddressHost("tcp://127.0.0.1:8786"), "127.0.0.1");
 * assertEquals(getAddressHost("tcp://[::1]:8786"), "::1");
 * ```
 *
 * @param address The address.
 * @returns The host.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 */
export function getAddressHost(address: string): string {
  const [backend, location] = lookupAddress(address, "get the host of");
  return backend.getAddressHost(location);
}

/**
 * The host and port of an address.
 *
 * @example
 * ```ts
 * import { getAddressHostPort } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(getAddressHostPort("tcp://[::1]:8786"), ["::1", 8786]);
 * ```
 *
 * @param address The address.
 * @returns The host and port.
 * @throws {AddressError} If the address is malformed, its scheme unknown, or
 * its scheme has no ports (`inproc`, `unix`).
 */
export function getAddressHostPort(address: string): [host: string, port: number] {
  const [backend, location] = lookupAddress(address, "get the host and port of");
  return backend.getAddressHostPort(location);
}

/**
 * Resolves the host name in an address to an IP address, through the
 * address's backend (the system resolver for tcp and tls, so `/etc/hosts`
 * counts).
 *
 * @example
 * ```ts
 * import { resolveAddress } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(await resolveAddress("tcp://127.0.0.1:8786"), "tcp://127.0.0.1:8786");
 * ```
 *
 * @param address The address.
 * @returns The same address with an IP address for its host.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 */
export async function resolveAddress(address: string): Promise<string> {
  const [backend, location, scheme] = lookupAddress(address, "resolve");
  return unparseAddress(scheme, await backend.resolveAddress(location));
}

/**
 * A local address, without port, from which `address` can be reached:
 * where to listen so that the peer at `address` can connect back.
 *
 * @example
 * ```ts
 * import { getLocalAddressFor } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(getLocalAddressFor("tcp://127.0.0.1:8786"), "tcp://127.0.0.1");
 * ```
 *
 * @param address The peer's address.
 * @returns A local address of the same scheme.
 * @throws {AddressError} If the address is malformed or its scheme unknown.
 */
export function getLocalAddressFor(address: string): string {
  const [backend, location, scheme] = lookupAddress(address, "find a local address for");
  return unparseAddress(scheme, backend.getLocalAddressFor(location));
}
