/**
 * Prints a dask scheduler's identity as JSON: its type, id, address and
 * workers, as dask's own `rpc(address).identity()` returns them.
 *
 * ```sh
 * dask scheduler --host 127.0.0.1 --port 8786 &      # or any dask scheduler
 * deno run --allow-net examples/dask_identity.ts tcp://127.0.0.1:8786
 * ```
 *
 * It works with any dask `Server` (a worker, a nanny) and with this
 * library's own `Server`.
 *
 * @module
 */

import { rpc } from "@x/comm";

const address = Deno.args[0];
if (address === undefined || Deno.args.length > 1) {
  console.error("Usage: deno run --allow-net examples/dask_identity.ts SCHEDULER_ADDRESS");
  console.error("For example: deno run --allow-net examples/dask_identity.ts tcp://127.0.0.1:8786");
  Deno.exit(2);
}

try {
  await using scheduler = rpc(address, { timeout: 10_000, callTimeout: 10_000 });
  const identity = await scheduler.identity();
  console.log(JSON.stringify(identity, jsonable, 2));
} catch (error) {
  console.error(`Cannot get the identity of "${address}": ${(error as Error).message}`);
  Deno.exit(1);
}

/** JSON for what msgpack has and JSON has not: bytes, big integers, sets. */
function jsonable(_key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: btoa(String.fromCharCode(...value)) };
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Set) return [...value];
  return value;
}
