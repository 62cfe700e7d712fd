/// <reference lib="deno.unstable" />
/**
 * W5's sender, a process of its own: sends `bytes`-long datagrams to
 * 127.0.0.1:`port` as fast as `Deno.listenDatagram` takes them (unpaced, one
 * awaited send after another) for `ms` milliseconds, then a few 1-byte end
 * markers a little apart (one may be dropped by a full receive buffer).
 * Prints `{"sent": n, "seconds": s}` for the data datagrams on stdout.
 *
 * `deno run --unstable-net --allow-net bench/_udp_sender.ts port ms bytes`
 *
 * @module
 */

const [port, ms, bytes] = Deno.args.map(Number);
if (!(port > 0 && ms > 0 && bytes > 1)) {
  console.error("usage: _udp_sender.ts port ms bytes (bytes > 1: 1-byte datagrams end the run)");
  Deno.exit(2);
}
const MARKERS = 5;
const MARKER_GAP_MS = 5;

const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
const to: Deno.NetAddr = { transport: "udp", hostname: "127.0.0.1", port };
const payload = new Uint8Array(bytes).fill(0x5a);
const start = performance.now();
const end = start + ms;
let sent = 0;
do {
  // Look at the clock every 64 sends only.
  for (let i = 0; i < 64; i++) await conn.send(payload, to);
  sent += 64;
} while (performance.now() < end);
const seconds = (performance.now() - start) / 1000;

const marker = new Uint8Array(1);
for (let i = 0; i < MARKERS; i++) {
  if (i > 0) await new Promise((resolve) => setTimeout(resolve, MARKER_GAP_MS));
  try {
    await conn.send(marker, to);
  } catch {
    // The receiver may be gone once it saw the first marker.
  }
}
conn.close();
console.log(JSON.stringify({ sent, seconds }));
