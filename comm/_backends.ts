// The scheme -> backend table, with the four built-in backends. registry.ts
// is its public face; core.ts and registry.ts look addresses up here.

import { parseAddress } from "./addressing.ts";
import { AddressError } from "./errors.ts";
import { inprocBackend } from "./inproc.ts";
import type { Backend } from "./registry.ts";
import { tcpBackend } from "./tcp.ts";
import { tlsBackend } from "./tls.ts";
import { unixBackend } from "./unix.ts";

/** Backends by scheme. */
export const backends = new Map<string, Backend>([
  ["inproc", inprocBackend],
  ["tcp", tcpBackend],
  ["tls", tlsBackend],
  ["unix", unixBackend],
]);

/** The known schemes, sorted, for error messages. */
export function knownSchemes(): string {
  return [...backends.keys()].sort().join(", ");
}

/**
 * Splits `address` and finds its backend, or throws an error that says what
 * was being done.
 */
export function lookupAddress(
  address: string,
  action: string,
): [backend: Backend, location: string, scheme: string] {
  const [scheme, location] = parseAddress(address);
  const backend = backends.get(scheme);
  if (!backend) {
    throw new AddressError(
      `Cannot ${action} "${address}": unknown scheme "${scheme}" (known schemes: ${knownSchemes()})`,
    );
  }
  return [backend, location, scheme];
}
