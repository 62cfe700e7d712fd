// Hand-built dask frames, for tests that play a raw peer.

/** The dask prelude: total, frame count, and frame lengths, little-endian. */
export function prelude(total: bigint, lengths: bigint[]): Uint8Array {
  const bytes = new Uint8Array(16 + 8 * lengths.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, total, true);
  view.setBigUint64(8, BigInt(lengths.length), true);
  lengths.forEach((length, i) => view.setBigUint64(16 + 8 * i, length, true));
  return bytes;
}

/** One message of one frame, framed as dask does. */
export function daskMessage(body: Uint8Array): Uint8Array {
  const head = prelude(BigInt(16 + body.length), [BigInt(body.length)]);
  const bytes = new Uint8Array(head.length + body.length);
  bytes.set(head);
  bytes.set(body, head.length);
  return bytes;
}
