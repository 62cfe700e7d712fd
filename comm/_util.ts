// Small helpers shared by the comm modules; not part of the public API.

import type { Comm } from "./types.ts";

/** Quotes a value for an error message, whatever its type. */
export function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol") return value.toString();
  if (value === null || typeof value !== "object") return String(value);
  return Object.prototype.toString.call(value);
}

/** The message of an error, or the value as text. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A promise with its settle functions, as `Promise.withResolvers()`. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (reason: unknown) => void;
}

/** Creates a {@linkcode Deferred}. */
export function deferred<T>(): Deferred<T> {
  return Promise.withResolvers<T>();
}

/**
 * The longest delay `setTimeout` takes (2^31 - 1 ms, about 24.8 days); it
 * fires at once for anything longer, so longer durations mean "no limit".
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * An AbortSignal that fires when `signal` does or after `ms` milliseconds,
 * with a `clear()` that releases the timer (so that no timer outlives the
 * work, which Deno's test sanitizers check).
 */
export function timeoutSignal(
  ms: number,
  signal?: AbortSignal,
  reason: () => unknown = () => new DOMException("The operation timed out", "TimeoutError"),
): { signal: AbortSignal; clear: () => void } {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal!.reason);
  if (signal?.aborted) controller.abort(signal.reason);
  else signal?.addEventListener("abort", onAbort, { once: true });
  const timer = ms < MAX_TIMER_MS
    ? setTimeout(() => controller.abort(reason()), Math.max(0, ms))
    : undefined;
  return {
    signal: controller.signal,
    clear() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    },
  };
}

/**
 * Settles with `promise`, or rejects with the signal's reason as soon as it
 * aborts (the promise itself keeps running).
 */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** Checks a millisecond duration option; `Infinity` means "no limit". */
export function checkDuration(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || Number.isNaN(value) || value < 0) {
    throw new RangeError(
      `Invalid ${name} ${describe(value)}: expected a number of milliseconds, 0 or more`,
    );
  }
  return value;
}

/** Checks a positive integer size option. */
export function checkSize(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(
      `Invalid ${name} ${describe(value)}: expected a positive whole number`,
    );
  }
  return value;
}

/** Checks the `allocate` option: a function, or undefined. */
export function checkAllocate(
  value: ((size: number) => Uint8Array) | undefined,
): ((size: number) => Uint8Array) | undefined {
  if (value !== undefined && typeof value !== "function") {
    throw new TypeError(
      `Invalid allocate ${describe(value)}: expected a function that returns a Uint8Array`,
    );
  }
  return value;
}

/** Checks the `framing` option; returns it, "dask" by default. */
export function checkFraming(value: unknown): "dask" | "multiprocessing" {
  if (value === undefined || value === "dask") return "dask";
  if (value === "multiprocessing") return value;
  throw new TypeError(
    `Invalid framing ${describe(value)}: expected "dask" or "multiprocessing"`,
  );
}

/**
 * How long closing a comm may take to flush what is queued before it is
 * aborted, wherever the library closes comms on its own (listeners, servers,
 * pools, batched streams).
 */
export const CLOSE_GRACE_MS = 2_000;

/** Closes `comm`, aborting it if flushing takes longer than `ms`. */
export async function closeWithin(comm: Comm, ms: number): Promise<void> {
  const timer = setTimeout(
    () => comm.abort(new Error(`flushing took over ${ms} ms`)),
    ms,
  );
  try {
    await comm.close();
  } catch {
    // A comm that fails to close is closed all the same.
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Hands `error` to `onError`, or prints it with `label` when there is no
 * callback or the callback throws: errors with no caller must not vanish,
 * nor become unhandled rejections.
 */
export function reportError(
  onError: ((error: unknown) => void) | undefined,
  label: string,
  error: unknown,
): void {
  if (onError) {
    try {
      onError(error);
      return;
    } catch (failure) {
      console.error(`${label}: onError threw:`, failure);
    }
  }
  console.error(`${label}:`, error);
}

/**
 * An error whose `name` says what kind it is, as `Deno.errors` do (an
 * instance of the `Deno.errors` class where there is one), so that
 * `connect()` knows which failures to retry.
 */
export function namedError(
  name: "ConnectionRefused" | "ConnectionReset" | "AddrInUse",
  message: string,
): Error {
  const errors = (globalThis as unknown as {
    Deno?: { errors?: Record<string, new (message: string) => Error> };
  }).Deno?.errors;
  const Class = errors?.[name];
  if (Class) return new Class(message);
  const error = new Error(message);
  error.name = name;
  return error;
}

/** Objects {@linkcode estimateSize} looks into in one message, at most. */
const ESTIMATE_OBJECTS = 256;
/** Objects the estimate in progress may still look into (estimates are synchronous). */
let objectsLeft = 0;

/**
 * About how much memory a message holds: the bytes of its binaries and
 * strings plus a few bytes a value, looking into at most 256 objects and
 * arrays (so that a huge message costs no more than a small one to
 * estimate). Used to bound queues that pass messages by reference; it runs
 * on every inproc write, so it allocates nothing.
 */
export function estimateSize(message: unknown): number {
  objectsLeft = ESTIMATE_OBJECTS;
  return 16 + sizeOf(message);
}

function sizeOf(value: unknown): number {
  if (typeof value !== "object") return typeof value === "string" ? value.length : 8;
  if (value === null) return 8;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return value.byteLength;
  if (--objectsLeft < 0) return 8;
  if (Array.isArray(value)) {
    let size = 8 * value.length;
    for (let i = 0; i < value.length && objectsLeft >= 0; i++) size += sizeOf(value[i]);
    return size;
  }
  if (value instanceof Map || value instanceof Set) {
    let size = 16 * value.size;
    for (const entry of value) {
      if (objectsLeft < 0) break;
      size += sizeOf(entry);
    }
    return size;
  }
  const keys = Object.keys(value);
  let size = 16 * keys.length;
  for (let i = 0; i < keys.length && objectsLeft >= 0; i++) {
    size += keys[i].length + sizeOf((value as Record<string, unknown>)[keys[i]]);
  }
  return size;
}
