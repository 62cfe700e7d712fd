// `udp://host:port` addresses: parsing, formatting, name resolution and the
// broadcast addresses of this host. Only siblings import this file.

import { lookup } from "node:dns/promises";
import { parseAddress, parseHostPort, unparseHostPort } from "../comm/addressing.ts";
import { AddressError } from "../comm/errors.ts";
import { describe, messageOf } from "../comm/_util.ts";

/** An IP version, or 0 for a host name that is not resolved yet. */
export type Family = 0 | 4 | 6;

/** A parsed `udp://` address. */
export interface Endpoint {
  hostname: string;
  port: number;
  family: Family;
}

const OCTET = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
/** Dotted decimal, each octet without leading zeros (which resolvers may read as octal). */
const IPV4_PATTERN = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
/**
 * What a resolver (inet_aton) would read as an IPv4 address in another form:
 * 127.1, 010.0.0.1, 0x7f.0.0.1, 2130706433.
 */
const NUMERIC_HOST_PATTERN = /^((0x[0-9a-f]*|\d+)\.){0,3}(0x[0-9a-f]*|\d+)\.?$/i;
const HOST_NAME_PATTERN =
  /^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;

/** The four octets of an IPv4 literal, or undefined if `host` is not one. */
export function ipv4Octets(host: string): number[] | undefined {
  const match = IPV4_PATTERN.exec(host);
  return match ? match.slice(1).map(Number) : undefined;
}

/** Whether `host` is an IPv6 literal (with an optional `%zone`). */
function isIPv6(host: string): boolean {
  if (!host.includes(":")) return false;
  const zone = host.indexOf("%");
  const address = zone === -1 ? host : host.slice(0, zone);
  if (zone !== -1 && zone === host.length - 1) return false;
  try {
    new URL(`http://[${address}]/`);
    return true;
  } catch {
    return false;
  }
}

/** The IP version of a literal, or 0 for a host name. */
export function familyOf(host: string): Family {
  if (ipv4Octets(host)) return 4;
  return isIPv6(host) ? 6 : 0;
}

/**
 * Parses a `udp://host:port` address. For binding, an empty host means every
 * IPv4 interface and port 0 any free port; a destination needs both.
 */
export function parseUdpAddress(address: string, role: "bind" | "send"): Endpoint {
  const what = role === "bind" ? "bind" : "send to";
  if (typeof address !== "string") {
    throw new AddressError(
      `Cannot ${what} ${describe(address)}: expected an address such as "udp://127.0.0.1:5000"`,
    );
  }
  if (!address.startsWith("udp://")) {
    let scheme: string | undefined;
    try {
      scheme = parseAddress(address, { strict: true })[0];
    } catch {
      // No scheme, or a malformed one: say what the address should look like.
    }
    throw new AddressError(
      scheme === undefined
        ? `Cannot ${what} "${address}": expected a "udp://host:port" address`
        : `Cannot ${what} "${address}": a datagram socket takes "udp://" addresses, not "${scheme}://"`,
    );
  }
  const [host, port] = parseHostPort(address);
  let hostname = host;
  if (hostname === "") {
    if (role === "send") {
      throw new AddressError(`Cannot send to "${address}": the host is missing`);
    }
    hostname = "0.0.0.0";
  }
  const family = familyOf(hostname);
  if (family === 0 && NUMERIC_HOST_PATTERN.test(hostname)) {
    throw new AddressError(
      `Cannot ${what} "${address}": "${hostname}" is not an IPv4 address in dotted decimal (four numbers from 0 to 255, without leading zeros)`,
    );
  }
  if (family === 0 && (hostname.includes(":") || !HOST_NAME_PATTERN.test(hostname))) {
    throw new AddressError(
      `Cannot ${what} "${address}": "${hostname}" is neither an IP address nor a host name`,
    );
  }
  if (role === "send" && port === 0) {
    throw new AddressError(`Cannot send to "${address}": port 0 is not a destination`);
  }
  return { hostname, port, family };
}

/** The `udp://` address of a host and port. */
export function formatUdpAddress(hostname: string, port: number): string {
  return `udp://${unparseHostPort(hostname, port)}`;
}

/**
 * Formats senders' addresses, building the string once for a run of
 * datagrams from the same sender.
 */
export class SenderAddresses {
  #hostname = "";
  #port = -1;
  #address = "";

  /** The `udp://` address of a sender. */
  format(hostname: string, port: number): string {
    if (port !== this.#port || hostname !== this.#hostname) {
      this.#hostname = hostname;
      this.#port = port;
      this.#address = formatUdpAddress(hostname, port);
    }
    return this.#address;
  }
}

/**
 * Resolves a host name to an address of the given family (any family for 0).
 * `localhost` is the loopback address without asking the resolver.
 */
export async function resolveHost(
  hostname: string,
  family: Family,
  address: string,
): Promise<{ hostname: string; family: 4 | 6 }> {
  if (hostname.toLowerCase() === "localhost" || hostname.toLowerCase() === "localhost.") {
    return family === 6 ? { hostname: "::1", family: 6 } : { hostname: "127.0.0.1", family: 4 };
  }
  try {
    const found = await lookup(hostname, { family });
    return { hostname: found.address, family: found.family === 6 ? 6 : 4 };
  } catch (error) {
    const kind = family === 0 ? "an IP address" : `an IPv${family} address`;
    throw new AddressError(
      `Cannot resolve "${hostname}" in "${address}" to ${kind}: ${messageOf(error)}`,
      { cause: error },
    );
  }
}

/**
 * The IPv4 address a datagram to this IP literal goes to: the literal itself,
 * or the address inside an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`), which a
 * dual-stack socket sends over IPv4.
 */
export function ipv4Of(hostname: string, family: 4 | 6): string | undefined {
  if (family === 4) return hostname;
  let normalized: string;
  try {
    normalized = new URL(`http://[${hostname}]/`).hostname;
  } catch {
    return undefined;
  }
  const mapped = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/.exec(normalized);
  if (!mapped) return undefined;
  const [high, low] = [parseInt(mapped[1], 16), parseInt(mapped[2], 16)];
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join(".");
}

/** Whether an IPv6 literal is the unspecified address `::` (every interface). */
export function isUnspecifiedV6(hostname: string): boolean {
  try {
    return new URL(`http://[${hostname}]/`).hostname === "[::]";
  } catch {
    return false;
  }
}

/** Whether an IPv4 literal is a multicast group (224.0.0.0/4). */
export function isMulticastV4(host: string): boolean {
  const octets = ipv4Octets(host);
  return octets !== undefined && octets[0] >= 224 && octets[0] <= 239;
}

const LIMITED_BROADCAST = "255.255.255.255";
/** How long the interfaces' broadcast addresses are trusted before they are read again. */
const INTERFACES_TTL_MS = 1_000;
let interfaces: { readAt: number; broadcasts: Set<string> } | undefined;

/**
 * Whether this process may read the host's network interfaces, which the
 * broadcast check needs (`--allow-sys` or `--allow-sys=networkInterfaces`).
 */
export function canReadInterfaces(): boolean {
  try {
    return Deno.permissions.querySync({ name: "sys", kind: "networkInterfaces" }).state ===
      "granted";
  } catch {
    return false;
  }
}

/**
 * Whether sending to this IPv4 literal is a broadcast: the limited broadcast
 * address, or the directed broadcast address of one of this host's
 * interfaces (read at most once a second; undefined when they cannot be
 * read).
 */
export function isBroadcast(hostname: string): boolean | undefined {
  if (hostname === LIMITED_BROADCAST) return true;
  const now = performance.now();
  if (interfaces === undefined || now - interfaces.readAt > INTERFACES_TTL_MS) {
    if (!canReadInterfaces()) return undefined;
    interfaces = { readAt: now, broadcasts: directedBroadcasts() };
  }
  return interfaces.broadcasts.has(hostname);
}

function directedBroadcasts(): Set<string> {
  const broadcasts = new Set<string>();
  for (const { family, address, netmask } of Deno.networkInterfaces()) {
    if (family !== "IPv4") continue;
    const host = ipv4Octets(address);
    const mask = ipv4Octets(netmask);
    if (!host || !mask) continue;
    const prefix = mask.reduce((bits, octet) => bits + popCount(octet), 0);
    // /31 and /32 networks have no broadcast address (RFC 3021).
    if (prefix >= 31) continue;
    broadcasts.add(host.map((octet, i) => (octet | ~mask[i]) & 0xff).join("."));
  }
  return broadcasts;
}

function popCount(octet: number): number {
  let bits = 0;
  for (let value = octet; value; value >>= 1) bits += value & 1;
  return bits;
}

/** Checks an interface option: an IPv4 address. */
export function checkInterface(context: string, value: unknown): void {
  if (typeof value !== "string" || familyOf(value) !== 4 || ipv4Octets(value) === undefined) {
    throw new AddressError(
      `${context}: the interface ${
        describe(value)
      } is not an IPv4 address (on loopback, "127.0.0.1")`,
    );
  }
}
