/**
 * A short tour: round-trips messages over every built-in transport (tcp,
 * tls, unix, inproc, ws and wss), and as UDP datagrams, and prints a table
 * of round trips per second. This is `deno task demo`.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-write examples/tour.ts
 * ```
 *
 * The tls and wss rows use the test certificates under `tests/testdata/`.
 *
 * @module
 */

import { connect, type ConnectOptions, listen, type ListenOptions } from "@x/comm";
import { bind } from "@x/comm/datagram";

const ROUND_TRIPS = 5_000;

interface Row {
  transport: string;
  address: string;
  messages: number;
  roundTripsPerSecond: number;
  megabytesPerSecond: number;
}

async function tour(
  transport: string,
  address: string,
  listenOptions: ListenOptions = {},
  connectOptions: ConnectOptions = {},
): Promise<Row> {
  await using listener = await listen(address, async (comm) => {
    for await (const message of comm) await comm.write(message);
  }, listenOptions);
  await using comm = await connect(listener.contactAddress, connectOptions);

  // Check a structured message and a binary survive the trip.
  const probe = { op: "probe", list: [1, "two", null], bytes: new Uint8Array([1, 2, 3]) };
  await comm.write(probe);
  const echoed = await comm.read() as typeof probe;
  if (echoed.list[1] !== "two" || echoed.bytes[2] !== 3) {
    throw new Error(`${transport}: the probe came back changed`);
  }

  const start = performance.now();
  for (let i = 0; i < ROUND_TRIPS; i++) {
    await comm.write({ op: "ping", i });
    await comm.read();
  }
  const seconds = (performance.now() - start) / 1000;

  const payload = new Uint8Array(16 * 1024 * 1024);
  const bulkStart = performance.now();
  await comm.write(payload);
  const back = await comm.read() as Uint8Array;
  const bulkSeconds = (performance.now() - bulkStart) / 1000;
  if (back.length !== payload.length) throw new Error(`${transport}: payload truncated`);

  return {
    transport,
    address: listener.contactAddress,
    messages: ROUND_TRIPS * 2 + 4,
    roundTripsPerSecond: Math.round(ROUND_TRIPS / seconds),
    megabytesPerSecond: Math.round((2 * payload.length) / 1e6 / bulkSeconds),
  };
}

/** The same round trips as datagrams: one message each way, no connection. */
async function tourUdp(): Promise<Row> {
  await using server = await bind("udp://127.0.0.1:0");
  const serving = (async () => {
    for await (const { data, from } of server) await server.send(data, from);
  })();
  await using client = await bind("udp://127.0.0.1:0");

  // Datagrams may be lost. On loopback, in lockstep, they are not; should
  // one be, the tour stops with an error instead of waiting forever.
  const signal = AbortSignal.timeout(30_000);
  const roundTrip = async (message: unknown) => {
    await client.sendMessage(message, server.address);
    return (await client.receiveMessage({ signal })).message;
  };
  const probe = { op: "probe", list: [1, "two", null], bytes: new Uint8Array([1, 2, 3]) };
  const echoed = await roundTrip(probe) as typeof probe;
  if (echoed.list[1] !== "two" || echoed.bytes[2] !== 3) {
    throw new Error("udp: the probe came back changed");
  }
  const start = performance.now();
  for (let i = 0; i < ROUND_TRIPS; i++) await roundTrip({ op: "ping", i });
  const seconds = (performance.now() - start) / 1000;

  await server.close();
  await serving;
  return {
    transport: "udp",
    address: server.address,
    messages: ROUND_TRIPS * 2 + 2,
    roundTripsPerSecond: Math.round(ROUND_TRIPS / seconds),
    megabytesPerSecond: 0,
  };
}

async function readCertificates(): Promise<{ cert: string; key: string; ca: string } | null> {
  const dir = new URL("../tests/testdata/", import.meta.url);
  try {
    return {
      cert: await Deno.readTextFile(new URL("server.pem", dir)),
      key: await Deno.readTextFile(new URL("server-key.pem", dir)),
      ca: await Deno.readTextFile(new URL("ca.pem", dir)),
    };
  } catch {
    return null;
  }
}

const rows: Row[] = [];
rows.push(await tour("inproc", "inproc://"));
rows.push(await tour("tcp", "tcp://127.0.0.1:0"));
const certificates = await readCertificates();
if (certificates) {
  rows.push(
    await tour("tls", "tls://127.0.0.1:0", certificates, { caCerts: [certificates.ca] }),
  );
} else {
  console.log("(tls skipped: tests/testdata/ certificates not found)");
}
rows.push(await tour("unix", "unix://"));
rows.push(await tour("ws", "ws://127.0.0.1:0/comm"));
if (certificates) {
  rows.push(
    await tour("wss", "wss://127.0.0.1:0/comm", certificates, { caCerts: [certificates.ca] }),
  );
}
rows.push(await tourUdp());

console.log("\nRound trips of one small message (echo), then a 16 MiB binary there and back:\n");
console.log(
  ["transport", "messages", "round trips/s", "16 MiB echo MB/s", "address"]
    .map((h, i) => i < 4 ? h.padEnd(i === 0 ? 10 : 18) : h).join(""),
);
for (const row of rows) {
  console.log(
    row.transport.padEnd(10) + String(row.messages).padEnd(18) +
      row.roundTripsPerSecond.toLocaleString("en-US").padEnd(18) +
      (row.transport === "inproc"
        ? "(by reference)"
        : row.transport === "udp"
        ? "(64 KiB at most)"
        : row.megabytesPerSecond.toLocaleString("en-US")).padEnd(18) +
      row.address,
  );
}
