// Bounded waiting for the tests: they fail a case that hangs, and never
// judge speed.

import { delay } from "@std/async/delay";

/** How long a case may wait for something before it fails as hung. */
export const HANG_GUARD_MS = 10_000;

/** Rejects if `promise` takes over `ms`; clears its timer either way. */
export async function within<T>(
  promise: Promise<T>,
  what: string,
  ms = HANG_GUARD_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `condition()` holds, checking every few ms, for at most `ms`. */
export async function until(
  condition: () => boolean,
  what: string,
  ms = HANG_GUARD_MS,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await delay(2);
  }
}
