// Counting comms on the server side, for the tests of the pool's limit: a
// server's own count is the one a pool cannot get wrong about itself.

import type { Comm } from "@x/comm";

/** Comms alive on the server side, and the most alive at once. */
export interface Gauge {
  live: number;
  max: number;
}

/**
 * Wraps a listener's comm handler so that `gauge` counts each comm from the
 * moment it is accepted until its handler is done with it (the comm ended).
 * Handlers may share one gauge.
 */
export function counted(
  gauge: Gauge,
  handler: (comm: Comm) => Promise<void>,
): (comm: Comm) => Promise<void> {
  return async (comm) => {
    gauge.max = Math.max(gauge.max, ++gauge.live);
    try {
      await handler(comm);
    } finally {
      gauge.live--;
    }
  };
}
