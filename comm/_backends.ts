// The scheme -> backend table. registry.ts is its public face; core.ts and
// registry.ts look addresses up here. Each built-in backend's module adds
// itself when it is loaded, so that an entry point that leaves a backend out
// (the browser build has no tcp, tls or unix) leaves its scheme unknown.

import { parseAddress } from "./addressing.ts";
import { AddressError } from "./errors.ts";
import type { Backend } from "./registry.ts";

/** Backends by scheme. */
export const backends = new Map<string, Backend>();

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
