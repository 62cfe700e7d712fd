/**
 * An opaque dask payload: a `{"__Serialized__": n}` or `{"__Pickled__": n}`
 * reference in a message from dask whose sub-frames this library does not
 * decode (a pickled Python object, a NumPy array, compressed data).
 *
 * It carries the decoded sub-header and the raw sub-frames, and is written
 * back out unchanged when it is part of a message this side sends, so a
 * TypeScript program can pass dask data through without understanding it.
 *
 * Plain dask `bytes`, `bytearray` and `memoryview` payloads are not wrapped:
 * they arrive as `Uint8Array`.
 *
 * @example Passing a payload through
 * ```ts
 * import { pipe, Serialized } from "@x/comm";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const payload = new Serialized(
 *   "__Pickled__",
 *   { "pickled-obj": new Uint8Array([0x80, 0x05]) },
 *   [],
 * );
 * const [a, b] = pipe();
 * await a.write({ op: "store", payload });
 * const message = await b.read() as { payload: Serialized };
 * assert(message.payload instanceof Serialized);
 * assertEquals(message.payload.kind, "__Pickled__");
 * await a.close();
 * await b.close();
 * ```
 */
export class Serialized {
  /** Which kind of dask reference this came from. */
  readonly kind: "__Serialized__" | "__Pickled__";
  /** The decoded sub-header (dask's serializer, type and frame layout). */
  readonly header: Readonly<Record<string, unknown>>;
  /** The sub-frames, as received. */
  readonly frames: readonly Uint8Array[];

  /**
   * Constructs a new {@linkcode Serialized} payload.
   *
   * @param kind The dask reference key it travels under.
   * @param header The sub-header; `num-sub-frames` is set when written.
   * @param frames The sub-frames.
   */
  constructor(
    kind: "__Serialized__" | "__Pickled__",
    header: Readonly<Record<string, unknown>>,
    frames: readonly Uint8Array[],
  ) {
    this.kind = kind;
    this.header = header;
    this.frames = frames;
  }
}
