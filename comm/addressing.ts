/**
 * Address strings: `scheme://location`, split once and joined back.
 *
 * Pure string work, as in dask's `distributed.comm.addressing`; the helpers
 * that need a backend (`getAddressHost`, `resolveAddress`, …) live in
 * `registry.ts`.
 *
 * @module
 */

import { AddressError } from "./errors.ts";
import { describe } from "./_util.ts";

/** The scheme used when an address has none. */
const DEFAULT_SCHEME = "tcp";

const SCHEME_SEPARATOR = "://";
const SCHEME_PATTERN = /^[A-Za-z][A-Za-z0-9+.-]*$/;
const PORT_PATTERN = /^[0-9]{1,5}$/;
const MAX_PORT = 65535;

/** Options for {@linkcode parseAddress}.
 * @example
 * ```ts
 * import { AddressError, parseAddress } from "@x/comm";
 * import { assertThrows } from "@std/assert";
 *
 * assertThrows(() => parseAddress("127.0.0.1:8786", { strict: true }), AddressError);
 * ```
 */
export interface ParseAddressOptions {
  /**
   * Refuse an address without a scheme instead of assuming
   * {@linkcode DEFAULT_SCHEME}.
   *
   * @default {false}
   */
  strict?: boolean;
}

/**
 * Splits an address into its scheme and location.
 *
 * An address without `://` gets the `tcp` scheme, unless `strict` is set.
 * Only the syntax is checked here: whether a backend serves the scheme is
 * checked by `connect()`, `listen()` and the other backend helpers.
 *
 * @example
 * ```ts
 * import { parseAddress } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(parseAddress("tcp://127.0.0.1:8786"), ["tcp", "127.0.0.1:8786"]);
 * assertEquals(parseAddress("unix:///tmp/app.sock"), ["unix", "/tmp/app.sock"]);
 * assertEquals(parseAddress("127.0.0.1:8786"), ["tcp", "127.0.0.1:8786"]);
 * ```
 *
 * @param address The address, such as `tcp://127.0.0.1:8786`.
 * @param options Whether a missing scheme is an error.
 * @returns The scheme and the location.
 * @throws {AddressError} If the address is not a string, has a malformed
 * scheme, or has no scheme while `strict` is set.
 */
export function parseAddress(
  address: string,
  options: ParseAddressOptions = {},
): [scheme: string, location: string] {
  if (typeof address !== "string") {
    throw new AddressError(
      `Cannot parse address ${describe(address)}: expected a string such as "tcp://127.0.0.1:8786"`,
    );
  }
  const at = address.indexOf(SCHEME_SEPARATOR);
  if (at === -1) {
    if (options.strict) {
      throw new AddressError(
        `Cannot parse address "${address}": it has no scheme (expected "scheme://location", such as "tcp://${address}")`,
      );
    }
    checkLocationText(address, address);
    return [DEFAULT_SCHEME, address];
  }
  const scheme = address.slice(0, at);
  const location = address.slice(at + SCHEME_SEPARATOR.length);
  if (!SCHEME_PATTERN.test(scheme)) {
    throw new AddressError(
      `Cannot parse address "${address}": malformed scheme "${scheme}" (expected letters, such as "tcp")`,
    );
  }
  checkLocationText(address, location);
  return [scheme, location];
}

/**
 * Joins a scheme and a location into an address; the inverse of
 * {@linkcode parseAddress}.
 *
 * @example
 * ```ts
 * import { unparseAddress } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(unparseAddress("tcp", "127.0.0.1:8786"), "tcp://127.0.0.1:8786");
 * ```
 *
 * @param scheme The scheme, such as `tcp`.
 * @param location The location, such as `127.0.0.1:8786`.
 * @returns The address.
 * @throws {AddressError} If the scheme is malformed.
 */
export function unparseAddress(scheme: string, location: string): string {
  if (typeof scheme !== "string" || !SCHEME_PATTERN.test(scheme)) {
    throw new AddressError(
      `Cannot build an address from scheme ${describe(scheme)}: expected letters, such as "tcp"`,
    );
  }
  return `${scheme}${SCHEME_SEPARATOR}${location}`;
}

/**
 * Returns the address with its scheme made explicit.
 *
 * @example
 * ```ts
 * import { normalizeAddress } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(normalizeAddress("127.0.0.1:8786"), "tcp://127.0.0.1:8786");
 * ```
 *
 * @param address The address, with or without a scheme.
 * @returns The same address with its scheme.
 * @throws {AddressError} If the address is malformed.
 */
export function normalizeAddress(address: string): string {
  return unparseAddress(...parseAddress(address));
}

/**
 * Splits a `host:port` location. IPv6 hosts go in brackets
 * (`[::1]:8786`); an empty host (`:0`) means every interface.
 *
 * @example
 * ```ts
 * import { parseHostPort } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(parseHostPort("127.0.0.1:8786"), ["127.0.0.1", 8786]);
 * assertEquals(parseHostPort("[::1]:8786"), ["::1", 8786]);
 * assertEquals(parseHostPort("localhost", 80), ["localhost", 80]);
 * ```
 *
 * @param location The location, such as `127.0.0.1:8786`. A leading
 * `scheme://` is ignored.
 * @param defaultPort The port to use when the location has none.
 * @returns The host (without brackets) and the port.
 * @throws {AddressError} If the port is missing and there is no default, is
 * not a number, or is outside 0–65535, or if an IPv6 host is not in brackets.
 */
export function parseHostPort(
  location: string,
  defaultPort?: number,
): [host: string, port: number] {
  if (typeof location !== "string") {
    throw new AddressError(
      `Cannot parse host and port from ${
        describe(location)
      }: expected a string such as "127.0.0.1:8786"`,
    );
  }
  const original = location;
  const at = location.indexOf(SCHEME_SEPARATOR);
  if (at !== -1) location = location.slice(at + SCHEME_SEPARATOR.length);

  let host: string;
  let portText: string | undefined;
  if (location.startsWith("[")) {
    const close = location.indexOf("]");
    if (close === -1) {
      throw new AddressError(
        `Invalid address "${original}": "[" opens an IPv6 host that is never closed with "]"`,
      );
    }
    host = location.slice(1, close);
    const tail = location.slice(close + 1);
    if (tail !== "") {
      if (!tail.startsWith(":")) {
        throw new AddressError(
          `Invalid address "${original}": expected ":port" after the bracketed host, found "${tail}"`,
        );
      }
      portText = tail.slice(1);
    }
  } else {
    const colon = location.lastIndexOf(":");
    if (colon === -1) {
      host = location;
    } else {
      host = location.slice(0, colon);
      portText = location.slice(colon + 1);
      if (host.includes(":")) {
        throw new AddressError(
          `Invalid address "${original}": an IPv6 host must be in brackets, as in "[::1]:8786"`,
        );
      }
    }
  }

  if (/\s/.test(host)) {
    throw new AddressError(
      `Invalid address "${original}": the host "${host}" contains white space`,
    );
  }
  let port: number;
  if (portText === undefined) {
    if (defaultPort === undefined) {
      throw new AddressError(
        `Invalid address "${original}": missing port number (expected "host:port")`,
      );
    }
    port = checkPort(original, String(defaultPort));
  } else {
    port = checkPort(original, portText);
  }
  return [host, port];
}

/**
 * Joins a host and an optional port into a location, putting IPv6 hosts in
 * brackets; the inverse of {@linkcode parseHostPort}.
 *
 * @example
 * ```ts
 * import { unparseHostPort } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(unparseHostPort("::1", 8786), "[::1]:8786");
 * assertEquals(unparseHostPort("127.0.0.1", 8786), "127.0.0.1:8786");
 * assertEquals(unparseHostPort("localhost"), "localhost");
 * ```
 *
 * @param host The host name or IP address.
 * @param port The port, if any.
 * @returns The location.
 * @throws {AddressError} If the port is not an integer in 0–65535.
 */
export function unparseHostPort(host: string, port?: number): string {
  if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
  if (port === undefined) return host;
  if (!Number.isInteger(port) || port < 0 || port > MAX_PORT) {
    throw new AddressError(
      `Invalid port ${describe(port)} for host "${host}": expected an integer from 0 to 65535`,
    );
  }
  return `${host}:${port}`;
}

function checkPort(address: string, text: string): number {
  if (!PORT_PATTERN.test(text)) {
    throw new AddressError(
      `Invalid address "${address}": port "${text}" is not a number from 0 to 65535`,
    );
  }
  const port = Number(text);
  if (port > MAX_PORT) {
    throw new AddressError(
      `Invalid address "${address}": port ${port} is out of range (expected 0 to 65535)`,
    );
  }
  return port;
}

function checkLocationText(address: string, location: string): void {
  // Control characters never belong in an address; catching them here turns
  // pasted garbage into a clear error instead of a DNS miss. (Spaces may:
  // a unix socket path can have them; hosts are checked in parseHostPort.)
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(location)) {
    throw new AddressError(
      `Cannot parse address ${JSON.stringify(address)}: it contains control characters`,
    );
  }
}
