// Nobody stalls the door: a listener keeps accepting and serving while
// hundreds of peers connect and never finish the handshake (silent ones,
// slow-loris ones that trickle a plausible first message one byte a second,
// and garbage ones that come and go), and it hangs up on each within its
// handshakeTimeout plus 10 %.
//
// Raw Deno.Conn peers play the attackers, on loopback; a good client
// connects and round-trips through the whole attack. A raw peer's close time
// runs from when its TCP connection was open (before any TLS handshake or
// WebSocket upgrade) to when it read the end of the stream or a reset (over
// ws: the listener's close frame). COMM_SOAK scales the counts; the sockets
// open at once stay well under the descriptor limit.
//
// Peers that stall below our code, in the TLS handshake or the HTTP upgrade,
// and ws peers that never answer the close frame, are held open by Deno: the
// cases marked BUG below.

import { assert, assertEquals } from "@std/assert";
import { delay } from "@std/async/delay";
import { encode } from "@msgpack/msgpack";
import {
  type Comm,
  connect,
  type ConnectOptions,
  getAddressHostPort,
  listen,
  type Listener,
  type ListenOptions,
  ProtocolError,
} from "../mod.ts";
import { soaked } from "./_soak.ts";
import { within } from "./_wait.ts";
import { daskMessage } from "./_wire.ts";
import { CA, SERVER_CERT, SERVER_KEY } from "./_certs.ts";

/**
 * Long enough that its 10 % (300 ms) covers hundreds of deadlines expiring
 * together on a loaded 2-core machine.
 */
const HANDSHAKE_TIMEOUT_MS = 3_000;
/** handshakeTimeout of the cases that check one peer of a kind. */
const SHORT_TIMEOUT_MS = 1_000;
/** How long those cases wait for a hang-up before they fail. */
const SHORT_GUARD = { guardMs: SHORT_TIMEOUT_MS * 1.1 + 4_000 };
/** Every raw peer that waits must be hung up on by this long after it opened. */
const CLOSE_DEADLINE_MS = Math.round(HANDSHAKE_TIMEOUT_MS * 1.1);
const SILENT = soaked(200);
const SLOW_LORIS = soaked(200);
const GARBAGE = soaked(1_000);
/** Garbage peers open at once. */
const GARBAGE_IN_FLIGHT = 50;
/** Silent and slow-loris peers are opened this many at a time. */
const OPEN_BATCH = 50;
/** A peer still open this long after it opened has hung the case. */
const HANG_MS = CLOSE_DEADLINE_MS + 5_000;
/**
 * The good client's pause between rounds: it keeps coming, but does not
 * flood the process whose timers the measurements depend on.
 */
const GOOD_PAUSE_MS = 5;
/** Good rounds a listener must serve while the attack lasts (not a speed). */
const MIN_GOOD_ROUNDS = 5;
const MAX_GOOD_ROUNDS = 100_000;
const KEY = "the door key";
const WS_PATH = "/door";
const CERT = { cert: SERVER_CERT, key: SERVER_KEY };
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** How a raw peer opens its connection before it misbehaves. */
type Opening = "tcp" | "tls" | "ws";

/** A transport to attack. */
interface Door {
  name: string;
  address: string;
  listenOptions: ListenOptions;
  connectOptions: ConnectOptions;
  /** What silent and slow-loris peers do before they stall. */
  opening: Opening;
  /** What a slow-loris peer trickles once open: the start of a plausible first message. */
  trickle: Uint8Array;
}

const DASK_HANDSHAKE = daskMessage(encode({
  compression: null,
  python: [3, 11, 0],
  "pickle-protocol": 5,
}));
/** An answer to the challenge of the right shape, with a wrong digest. */
const CHALLENGE_ANSWER = daskMessage(
  concat(encoder.encode("{sha256}"), new Uint8Array(32).fill(7)),
);

/**
 * The start of a TLS ClientHello: the record header (handshake, 200 bytes),
 * the handshake header (ClientHello, 196 bytes), TLS 1.2, then the random.
 */
const CLIENT_HELLO = concat(fromHex("16030100c8010000c40303"), new Uint8Array(32).fill(0x5a));

const DOORS: Door[] = [
  {
    name: "tcp",
    address: "tcp://127.0.0.1:0",
    listenOptions: {},
    connectOptions: {},
    opening: "tcp",
    trickle: DASK_HANDSHAKE,
  },
  {
    name: "tcp with authkey",
    address: "tcp://127.0.0.1:0",
    listenOptions: { authkey: KEY },
    connectOptions: { authkey: KEY },
    opening: "tcp",
    trickle: CHALLENGE_ANSWER,
  },
  {
    name: "tls",
    address: "tls://127.0.0.1:0",
    listenOptions: CERT,
    connectOptions: { caCerts: [CA] },
    opening: "tls",
    trickle: DASK_HANDSHAKE,
  },
  {
    name: "ws",
    address: `ws://127.0.0.1:0${WS_PATH}`,
    listenOptions: {},
    connectOptions: {},
    opening: "ws",
    trickle: maskedFrame(DASK_HANDSHAKE),
  },
];

for (const door of DOORS) {
  Deno.test(
    `listen() over ${door.name} keeps serving while ${SILENT} silent, ${SLOW_LORIS} slow-loris and ${GARBAGE} garbage connections come, closing each at handshakeTimeout`,
    async () => {
      checkDescriptors(2 * (SILENT + SLOW_LORIS + GARBAGE_IN_FLIGHT) + 100);
      await attack(door);
    },
  );
}

// BUG: a tls listener never hangs up on a peer that connects and sends no
// ClientHello (or trickles one): the comm is aborted at handshakeTimeout and
// reported, but the TCP connection stays open, holding a descriptor, until
// the peer leaves. Deno.listenTls runs each TLS handshake in a task of its
// own that owns the socket (rustls-tokio-stream's TlsStream); closing the
// TlsConn while that handshake is pending, with or without a read pending,
// waits for the handshake instead of ending it. A node:tls server
// (tls.createServer) in the same Deno does hang up at socket.destroy().
Deno.test({
  name:
    "listen() over tls hangs up at handshakeTimeout on a peer that never finishes its ClientHello",
  ignore: true,
  async fn() {
    await using listener = await listen("tls://127.0.0.1:0", echo, {
      ...CERT,
      handshakeTimeout: SHORT_TIMEOUT_MS,
      onError() {},
    });
    const [, port] = getAddressHostPort(listener.contactAddress);
    await assertSilentAndSlowHungUp(port, CLIENT_HELLO);
  },
});

// BUG: a ws listener sends its close frame at handshakeTimeout, but the TCP
// connection stays open until the peer answers the close frame: a peer that
// never does holds a descriptor of the listener's process (seen open after
// 120 s). Deno's server-side WebSocket waits for the closing handshake with no
// timeout, and its idleTimeout sends no pings once the socket is closing; the
// standard WebSocket API has no way to drop the connection.
Deno.test({
  name:
    "listen() over ws hangs up at handshakeTimeout on an upgraded peer that never answers the close frame",
  ignore: true,
  async fn() {
    await using listener = await listen(`ws://127.0.0.1:0${WS_PATH}`, echo, {
      handshakeTimeout: SHORT_TIMEOUT_MS,
      onError() {},
    });
    const [, port] = getAddressHostPort(listener.contactAddress);
    using peer = await RawPeer.dial(port, "ws");
    const time = await peer.hungUp({ ...SHORT_GUARD, closeFrame: false });
    // The comm may take CLOSE_GRACE_MS (2 s) to close, as any comm does.
    assert(time <= SHORT_TIMEOUT_MS * 1.1 + 2_000, `hung up on after ${time.toFixed(0)} ms`);
  },
});

// BUG: a ws listener never hangs up on a peer that sends nothing, or trickles
// its HTTP upgrade request one byte a second: Deno.serve has no deadline for
// request headers (both were still open after 100 s, with no answer), and the
// listener's handshakeTimeout starts only once the upgrade is done. hyper's
// header_read_timeout is inert without a timer, which Deno does not set
// (denoland/deno#3515 asks for HTTP read timeouts).
Deno.test({
  name: "listen() over ws hangs up at handshakeTimeout on a peer that trickles its upgrade request",
  ignore: true,
  async fn() {
    await using listener = await listen(`ws://127.0.0.1:0${WS_PATH}`, echo, {
      handshakeTimeout: SHORT_TIMEOUT_MS,
      onError() {},
    });
    const [, port] = getAddressHostPort(listener.contactAddress);
    await assertSilentAndSlowHungUp(port, upgradeRequest);
  },
});

/**
 * Opens a silent raw peer and one that trickles `bytes` one a second, and
 * asserts that the listener hangs up on both within SHORT_TIMEOUT_MS + 10 %.
 */
async function assertSilentAndSlowHungUp(
  port: number,
  bytes: Uint8Array | ((port: number) => Uint8Array),
): Promise<void> {
  using silent = await RawPeer.dial(port, "tcp");
  using slow = await RawPeer.dial(port, "tcp");
  const slowLoris = new Set([slow]);
  const ticker = trickle(slowLoris, typeof bytes === "function" ? bytes(port) : bytes);
  try {
    const times = await Promise.all([silent.hungUp(SHORT_GUARD), slow.hungUp(SHORT_GUARD)]);
    assert(
      Math.max(...times) <= SHORT_TIMEOUT_MS * 1.1,
      `hung up on after ${times.map((t) => t.toFixed(0)).join(" and ")} ms`,
    );
  } finally {
    slowLoris.clear();
    ticker.stop();
    await ticker.done;
  }
}

/** What one attack saw. Times are ms from a peer's open to its hang-up. */
interface Outcome {
  silent: number[];
  slowLoris: number[];
  garbage: number[];
  garbageDone: number;
  goodRounds: number;
  goodRoundsDuringAttack: number;
  errors: Map<string, number>;
  timeouts: number;
  /** The longest a timer of this process fired late during the attack, in ms. */
  maxLag: number;
  seconds: number;
}

async function attack(door: Door): Promise<void> {
  const errors = new Map<string, number>();
  let timeouts = 0;
  const onError = (error: unknown) => {
    const name = error instanceof Error ? error.constructor.name : typeof error;
    errors.set(name, (errors.get(name) ?? 0) + 1);
    if (error instanceof ProtocolError && error.message.includes("did not complete")) timeouts++;
  };
  const started = performance.now();
  await using listener = await listen(door.address, echo, {
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    onError,
    ...door.listenOptions,
  });
  const [, port] = getAddressHostPort(listener.contactAddress);

  const lag = lagMonitor();
  const good = goodClient(listener, door);
  const slowLoris = new Set<RawPeer>();
  const ticker = trickle(slowLoris, door.trickle);
  let attackEnded = Infinity;
  let maxLag = 0;
  let rounds: Awaited<ReturnType<typeof good.stop>>;

  // Garbage: a quarter each of random bytes on the bare connection or after
  // the opening (inside TLS, after the upgrade), left at once or waited on.
  let garbageDone = 0;
  const garbageTimes: number[] = [];
  const garbage = (async () => {
    let next = 0;
    const lane = async () => {
      while (next < GARBAGE) {
        const i = next++;
        const waits = i % 2 === 1;
        using peer = await RawPeer.dial(port, i % 4 < 2 ? "tcp" : door.opening);
        // At least 16 bytes to a peer that waits: fewer may be the start of
        // a valid header, which only the deadline ends.
        const size = (waits ? 16 : 1) + Math.floor(Math.random() * 500);
        await peer.send(crypto.getRandomValues(new Uint8Array(size))).catch(() => {
          // Hung up on already.
        });
        if (waits) garbageTimes.push(await peer.hungUp());
        garbageDone++;
      }
    };
    await Promise.all(Array.from({ length: GARBAGE_IN_FLIGHT }, lane));
  })();

  const silentTimes: number[] = [];
  const slowTimes: number[] = [];
  const waiting: Promise<void>[] = [garbage];
  const kinds = [
    ...Array<"silent">(SILENT).fill("silent"),
    ...Array<"slow">(SLOW_LORIS).fill("slow"),
  ];
  try {
    for (let at = 0; at < kinds.length; at += OPEN_BATCH) {
      const batch = kinds.slice(at, at + OPEN_BATCH);
      const peers = await Promise.all(batch.map(() => RawPeer.dial(port, door.opening)));
      for (const [i, peer] of peers.entries()) {
        const slow = batch[i] === "slow";
        if (slow) slowLoris.add(peer);
        waiting.push((async () => {
          using _ = peer;
          const time = await peer.hungUp();
          slowLoris.delete(peer);
          (slow ? slowTimes : silentTimes).push(time);
        })());
      }
    }
    await within(Promise.all(waiting), "the attack to end", HANG_MS + 60_000);
    attackEnded = performance.now();
  } finally {
    ticker.stop();
    maxLag = lag.stop();
    rounds = await good.stop();
    await ticker.done;
  }

  const outcome: Outcome = {
    silent: silentTimes,
    slowLoris: slowTimes,
    garbage: garbageTimes,
    garbageDone,
    goodRounds: rounds.total,
    goodRoundsDuringAttack: rounds.before(attackEnded),
    errors,
    timeouts,
    maxLag,
    seconds: (performance.now() - started) / 1_000,
  };
  console.log(summary(door, outcome));

  assertEquals(garbageDone, GARBAGE);
  const worst = Math.max(...silentTimes, ...slowTimes, ...garbageTimes);
  assert(
    worst <= CLOSE_DEADLINE_MS,
    `a peer was hung up on ${
      worst.toFixed(0)
    } ms after it opened, over ${CLOSE_DEADLINE_MS} ms (timers of this process fired up to ${
      maxLag.toFixed(0)
    } ms late)`,
  );
  assert(
    outcome.goodRoundsDuringAttack >= MIN_GOOD_ROUNDS,
    `only ${outcome.goodRoundsDuringAttack} good rounds were served during the attack`,
  );
  // Each silent and slow-loris peer is reported as a handshake timeout.
  assert(timeouts >= SILENT + SLOW_LORIS, `${timeouts} handshake timeouts reported`);
  // A peer that leaves mid-handshake, or breaks the TLS or WebSocket framing,
  // is a CommClosedError; every other report is one of the other two.
  const typed = new Set(["ProtocolError", "AuthenticationError", "CommClosedError"]);
  for (const name of errors.keys()) {
    assert(typed.has(name), `the listener reported a ${name}: ${[...errors]}`);
  }
}

/** One line per attack, for the README. */
function summary(door: Door, o: Outcome): string {
  const range = (times: number[]) =>
    times.length === 0
      ? "none"
      : `${times.length} hung up on in ${Math.min(...times).toFixed(0)}–${
        Math.max(...times).toFixed(0)
      } ms`;
  const worst = Math.max(...o.silent, ...o.slowLoris, ...o.garbage);
  const errors = [...o.errors].map(([name, n]) => `${n} ${name}`).join(", ");
  const percent = (100 * worst / HANDSHAKE_TIMEOUT_MS).toFixed(1);
  return [
    `door ${door.name}: handshakeTimeout ${HANDSHAKE_TIMEOUT_MS} ms`,
    `silent: ${range(o.silent)}`,
    `slow-loris: ${range(o.slowLoris)}`,
    `garbage: ${o.garbageDone} done, of those that waited ${range(o.garbage)}`,
    `worst ${worst.toFixed(0)} ms = ${percent} % of handshakeTimeout (bound 110 %)`,
    `good round trips: ${o.goodRoundsDuringAttack} during the attack, ${o.goodRounds} in all`,
    `onError: ${errors} (${o.timeouts} handshake timeouts)`,
    `timers up to ${o.maxLag.toFixed(0)} ms late`,
    `${o.seconds.toFixed(1)} s`,
  ].join("; ");
}

async function echo(comm: Comm): Promise<void> {
  for await (const message of comm) await comm.write(message);
}

/** A good client connecting and round-tripping, one comm per round, until stopped. */
function goodClient(listener: Listener, door: Door) {
  let stopped = false;
  const finishedAt: number[] = [];
  const running = (async () => {
    for (let i = 0; !stopped && i < MAX_GOOD_ROUNDS; i++) {
      await within(
        (async () => {
          await using comm = await connect(listener.contactAddress, {
            timeout: 10_000,
            ...door.connectOptions,
          });
          await comm.write({ round: i, door: door.name });
          assertEquals(await comm.read(), { round: i, door: door.name });
        })(),
        `good round ${i}`,
        20_000,
      );
      finishedAt.push(performance.now());
      await delay(GOOD_PAUSE_MS);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await running;
      return {
        total: finishedAt.length,
        before: (time: number) => finishedAt.filter((t) => t <= time).length,
      };
    },
  };
}

/** Sends the next byte of `bytes` to each slow-loris peer every second. */
function trickle(peers: Set<RawPeer>, bytes: Uint8Array) {
  const sent = new Map<RawPeer, number>();
  const stop = new AbortController();
  const done = (async () => {
    const deadline = performance.now() + HANG_MS + 60_000;
    while (!stop.signal.aborted && performance.now() < deadline) {
      for (const peer of peers) {
        const at = sent.get(peer) ?? 0;
        if (at >= bytes.length) continue;
        sent.set(peer, at + 1);
        // A write to a peer hung up on fails: its watcher records the hang-up.
        peer.send(bytes.subarray(at, at + 1)).catch(() => {});
      }
      await delay(1_000, { signal: stop.signal }).catch(() => {});
    }
  })();
  return { done, stop: () => stop.abort() };
}

/** A raw connection, as an attacker opens it. */
class RawPeer implements Disposable {
  readonly conn: Deno.Conn;
  /** When the TCP connection was open. */
  readonly openedAt: number;
  /** Over ws: bytes of WebSocket frames read after the upgrade. */
  #frames: Uint8Array | undefined;
  #closed = false;

  private constructor(conn: Deno.Conn, openedAt: number) {
    this.conn = conn;
    this.openedAt = openedAt;
  }

  /** Connects over TCP, then does the TLS handshake or the WebSocket upgrade. */
  static async dial(port: number, opening: Opening): Promise<RawPeer> {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
    const openedAt = performance.now();
    tcp.setNoDelay(true);
    if (opening === "tls") {
      const tls = await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [CA] })
        .catch((error) => {
          tcp.close();
          throw error;
        });
      const peer = new RawPeer(tls, openedAt);
      await peer.#or(tls.handshake());
      return peer;
    }
    const peer = new RawPeer(tcp, openedAt);
    if (opening === "ws") await peer.#or(peer.#upgrade(port));
    return peer;
  }

  /** Closes the connection if `step` fails. */
  async #or<T>(step: Promise<T>): Promise<T> {
    try {
      return await step;
    } catch (error) {
      this.close();
      throw error;
    }
  }

  async #upgrade(port: number): Promise<void> {
    await this.send(upgradeRequest(port));
    let head: Uint8Array<ArrayBuffer> = new Uint8Array(0);
    const buffer = new Uint8Array(4_096);
    for (let reads = 0; reads < 64; reads++) {
      const n = await this.conn.read(buffer);
      if (n === null) break;
      head = concat(head, buffer.subarray(0, n));
      const end = decoder.decode(head).indexOf("\r\n\r\n");
      if (end === -1) continue;
      const status = decoder.decode(head.subarray(0, end)).split("\r\n")[0];
      assert(status.startsWith("HTTP/1.1 101"), `the upgrade was answered ${status}`);
      this.#frames = head.slice(end + 4);
      return;
    }
    throw new Error(`No answer to the upgrade: ${JSON.stringify(decoder.decode(head))}`);
  }

  async send(bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length;) at += await this.conn.write(bytes.subarray(at));
  }

  /**
   * Reads (and drops) what the listener sends until it hangs up: the end of
   * the stream, a reset or, after an upgrade and unless `closeFrame` is
   * false, a close frame. Resolves with the ms from open to then, or
   * Infinity if still open after `guardMs`.
   */
  async hungUp({ closeFrame = true, guardMs = HANG_MS } = {}): Promise<number> {
    const buffer = new Uint8Array(4_096);
    let hung = false;
    const guard = setTimeout(() => {
      hung = true;
      this.close();
    }, guardMs);
    try {
      while (!(closeFrame && this.#closeFrameRead())) {
        const n = await this.conn.read(buffer);
        if (n === null) break;
        if (this.#frames) this.#frames = concat(this.#frames, buffer.subarray(0, n));
      }
    } catch {
      // A reset is a hang-up too.
    } finally {
      clearTimeout(guard);
    }
    return hung ? Infinity : performance.now() - this.openedAt;
  }

  /** Whether the WebSocket frames read so far hold a close frame (unmasked, from a server). */
  #closeFrameRead(): boolean {
    const frames = this.#frames;
    if (frames === undefined) return false;
    const view = new DataView(frames.buffer, frames.byteOffset, frames.byteLength);
    let at = 0;
    while (at + 2 <= frames.length) {
      if ((frames[at] & 0x0f) === 0x8) return true;
      let length = frames[at + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (at + 4 > frames.length) break;
        length = view.getUint16(at + 2);
        header = 4;
      } else if (length === 127) {
        if (at + 10 > frames.length) break;
        length = Number(view.getBigUint64(at + 2));
        header = 10;
      }
      at += header + length;
    }
    return false;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Closed already.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A WebSocket upgrade request for the listener's path, offering our subprotocol. */
function upgradeRequest(port: number): Uint8Array {
  return encoder.encode(
    `GET ${WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: x-comm\r\n\r\n",
  );
}

/** `payload` as one masked binary WebSocket frame, as a client sends it. */
function maskedFrame(payload: Uint8Array): Uint8Array {
  assert(payload.length < 126);
  const mask = [0x12, 0x34, 0x56, 0x78];
  const frame = new Uint8Array(6 + payload.length);
  frame.set([0x82, 0x80 | payload.length, ...mask]);
  payload.forEach((byte, i) => frame[6 + i] = byte ^ mask[i % 4]);
  return frame;
}

/**
 * Watches how late this process's timers fire: the event loop's lag, which
 * load adds to every hang-up measured here.
 */
function lagMonitor(): { stop(): number } {
  const every = 20;
  let max = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    max = Math.max(max, now - last - every);
    last = now;
  }, every);
  return {
    stop() {
      clearInterval(timer);
      return max;
    },
  };
}

/** Fails early if `needed` descriptors would come near the process's limit. */
function checkDescriptors(needed: number): void {
  let limit = Infinity;
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const soft = limits.match(/^Max open files\s+(\d+)/m)?.[1];
    if (soft !== undefined) limit = Number(soft);
  } catch {
    // Not Linux: trust the platform.
  }
  assert(
    needed <= limit / 2,
    `the attack needs about ${needed} descriptors, over half the limit of ${limit}`,
  );
}

function fromHex(hex: string): Uint8Array {
  return new Uint8Array(hex.match(/../g)!.map((pair) => parseInt(pair, 16)));
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
