// Interop with Python's multiprocessing.connection (3.11, 3.12, 3.13): our
// comms with `framing: "multiprocessing"` and `authkey` against CPython's
// Listener and Client, driven by tests/testdata/mp_peer.py. Each Python
// version that cannot be found is skipped.
//
// Python 3.11 speaks the legacy challenge (a 20-byte challenge, bare
// HMAC-MD5 answers); 3.12 and later send `{sha256}` challenges and answers.
// The tests that authenticate relay the connection through a recorder and
// check which form crossed the wire, so that they prove the exchange they
// name.

import { Buffer } from "node:buffer";
import { createHash, createHmac } from "node:crypto";
import { fromFileUrl, join } from "@std/path";
import { assert, assertEquals, assertInstanceOf, assertMatch } from "@std/assert";
import { AuthenticationError, type Comm, connect, listen } from "../mod.ts";
import { answerChallenge, deliverChallenge } from "../auth/mod.ts";
import { asBytes, messageOf, pattern, PythonPeer, WAIT_MS, within } from "./_python_peer.ts";

const PEER_SCRIPT = fromFileUrl(new URL("./testdata/mp_peer.py", import.meta.url));
const KiB = 1024;
const MiB = 1024 * KiB;
/** What mp_peer.py's connect mode sends, and what our tests send. */
const SIZES = [0, 1, 64 * KiB, 16 * MiB];
const MINORS = [11, 12, 13];
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------
// Finding the Pythons

interface Python {
  /** The interpreter to run. */
  path: string;
  /** Its full version, such as 3.12.1. */
  version: string;
  minor: number;
}

/** The version `path` reports, if it runs and has multiprocessing.connection. */
function probe(path: string): string | undefined {
  try {
    const output = new Deno.Command(path, {
      args: [
        "-c",
        "import sys, multiprocessing.connection; print('%d.%d.%d' % sys.version_info[:3])",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    if (!output.success) return undefined;
    return new TextDecoder().decode(output.stdout).trim();
  } catch {
    return undefined; // Not installed, or not runnable.
  }
}

function pyenvRoot(): string | undefined {
  try {
    const root = Deno.env.get("PYENV_ROOT");
    if (root) return root;
    const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
    return home ? join(home, ".pyenv") : undefined;
  } catch {
    return undefined; // No env permission.
  }
}

/** pyenv's interpreters of 3.`minor`, newest first. */
function pyenvCandidates(minor: number): string[] {
  const root = pyenvRoot();
  if (root === undefined) return [];
  const found: [number, string][] = [];
  try {
    for (const entry of Deno.readDirSync(join(root, "versions"))) {
      const match = /^3\.(\d+)\.(\d+)$/.exec(entry.name);
      if (match && Number(match[1]) === minor) {
        found.push([Number(match[2]), join(root, "versions", entry.name, "bin", "python3")]);
      }
    }
  } catch {
    return []; // No pyenv.
  }
  return found.sort((a, b) => b[0] - a[0]).map(([, path]) => path);
}

/** The newest 3.`minor` from pyenv, else python3.`minor` or python3 on PATH. */
function findPython(minor: number): Python | undefined {
  for (const path of [...pyenvCandidates(minor), `python3.${minor}`, "python3"]) {
    const version = probe(path);
    if (version?.startsWith(`3.${minor}.`)) return { path, version, minor };
  }
  return undefined;
}

const pythons = MINORS.map((minor) => ({ minor, python: findPython(minor) }));
const missing = pythons.filter(({ python }) => python === undefined).map(({ minor }) => minor);
if (missing.length > 0) {
  const versions = missing.map((minor) => `3.${minor}`);
  const root = join(pyenvRoot() ?? "$HOME/.pyenv", "versions");
  console.warn(
    `multiprocessing interop tests skipped for Python ${versions.join(", ")}: ` +
      `not found in ${root}, nor as python3.X or python3 on PATH. To run them, install ` +
      versions.map((version) => `\`pyenv install ${version}\``).join(", ") +
      " (or your system's python3.X packages).",
  );
}

// ---------------------------------------------------------------------------
// Helpers

/** What mp_peer.py's connect mode sends: shake_256(b"mp_peer <size>"). */
const pythonPatterns = new Map<number, Uint8Array>();
function pythonPattern(size: number): Uint8Array {
  let bytes = pythonPatterns.get(size);
  if (bytes === undefined) {
    bytes = size === 0 ? new Uint8Array(0) : new Uint8Array(
      createHash("shake256", { outputLength: size }).update(`mp_peer ${size}`).digest(),
    );
    pythonPatterns.set(size, bytes);
  }
  return bytes;
}

function reversed(bytes: Uint8Array): Uint8Array {
  return bytes.slice().reverse();
}

/** Compares large byte arrays quickly, and says where they differ. */
function assertSameBytes(actual: unknown, expected: Uint8Array, what: string): void {
  const bytes = asBytes(actual, what);
  const same = bytes.length === expected.length &&
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).equals(
      Buffer.from(expected.buffer, expected.byteOffset, expected.length),
    );
  if (same) return;
  let at = 0;
  while (at < bytes.length && at < expected.length && bytes[at] === expected[at]) at++;
  throw new Error(
    `${what}: got ${bytes.length} bytes, expected ${expected.length}; first difference at byte ${at}`,
  );
}

/** Reads one message, giving up after WAIT_MS. */
async function readWithin(comm: Comm, what: () => string): Promise<unknown> {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`${what()} (waited ${WAIT_MS} ms)`)),
    WAIT_MS,
  );
  try {
    return await comm.read({ signal: controller.signal });
  } finally {
    clearTimeout(timer);
  }
}

/** tests/testdata/mp_peer.py running under one Python. */
class MpPeer extends PythonPeer {
  constructor(python: Python, args: string[]) {
    super({ python: python.path, script: PEER_SCRIPT, args });
  }

  /** The listen mode's port, from its first line. */
  async port(): Promise<number> {
    const line = await this.firstLine({
      exited: "mp_peer.py exited without printing its port",
      timeout: "No port from mp_peer.py",
    });
    assertMatch(line, /^\d+$/, `mp_peer.py's first line is not a port`);
    return Number(line);
  }
}

/** Runs `body` with `peer`, adding Python's output to any failure. */
async function withPeer<T>(peer: PythonPeer, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    throw await peer.explain(error);
  }
}

/** The port of a `tcp://127.0.0.1:PORT` address. */
function portOf(address: string): string {
  const match = /^tcp:\/\/127\.0\.0\.1:(\d+)$/.exec(address);
  if (!match) throw new Error(`Unexpected listener address ${address}`);
  return match[1];
}

// ---------------------------------------------------------------------------
// A relay that records what crosses the wire

/** The first bytes that went one way. */
class Recording {
  static readonly LIMIT = 4 * KiB;
  #bytes = new Uint8Array(Recording.LIMIT);
  #length = 0;

  add(chunk: Uint8Array): void {
    const n = Math.min(chunk.length, Recording.LIMIT - this.#length);
    this.#bytes.set(chunk.subarray(0, n), this.#length);
    this.#length += n;
  }

  /** The multiprocessing-framed messages wholly recorded. */
  messages(): Uint8Array[] {
    const bytes = this.#bytes.subarray(0, this.#length);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const messages: Uint8Array[] = [];
    let at = 0;
    while (at + 4 <= bytes.length) {
      const length = view.getInt32(at, false);
      if (length < 0 || at + 4 + length > bytes.length) break;
      messages.push(bytes.slice(at + 4, at + 4 + length));
      at += 4 + length;
    }
    return messages;
  }
}

/**
 * Accepts one connection on 127.0.0.1 and relays it to `targetPort`,
 * recording the first bytes each way. The client is on the accepting side.
 */
class Relay implements AsyncDisposable {
  readonly port: number;
  /** From the client to the listener. */
  readonly fromClient = new Recording();
  /** From the listener to the client. */
  readonly fromListener = new Recording();
  readonly #listener: Deno.TcpListener;
  readonly #conns: Deno.Conn[] = [];
  readonly #done: Promise<void>;
  #error: unknown;

  constructor(targetPort: number) {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = this.#listener.addr.port;
    this.#done = this.#run(targetPort);
  }

  /** Waits until both directions ended; throws what went wrong relaying. */
  async finished(): Promise<void> {
    await within(this.#done, () => "The relay did not finish");
    if (this.#error !== undefined) throw new Error("Relaying failed", { cause: this.#error });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#closeAll();
    await this.#done;
  }

  async #run(targetPort: number): Promise<void> {
    let client: Deno.Conn;
    try {
      client = await this.#listener.accept();
    } catch {
      return; // Closed before anyone connected.
    } finally {
      this.#closeListener();
    }
    this.#conns.push(client);
    let listener: Deno.Conn;
    try {
      listener = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
    } catch (error) {
      this.#error = error;
      this.#closeAll();
      return;
    }
    this.#conns.push(listener);
    const forward = async (from: Deno.Conn, to: Deno.Conn, recording: Recording) => {
      const buffer = new Uint8Array(256 * KiB);
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        recording.add(buffer.subarray(0, n));
        for (let written = 0; written < n;) {
          written += await to.write(buffer.subarray(written, n));
        }
      }
      await to.closeWrite();
    };
    const failed = (error: unknown) => {
      this.#error ??= error;
      this.#closeAll();
    };
    await Promise.all([
      forward(client, listener, this.fromClient).catch(failed),
      forward(listener, client, this.fromListener).catch(failed),
    ]);
    this.#closeAll();
  }

  #closeListener(): void {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
  }

  #closeAll(): void {
    this.#closeListener();
    for (const conn of this.#conns.splice(0)) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }
}

const CHALLENGE = encoder.encode("#CHALLENGE#");
const WELCOME = encoder.encode("#WELCOME#");
const SHA256_PREFIX = encoder.encode("{sha256}");

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function hmac(digest: "md5" | "sha256", key: Uint8Array, message: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac(digest, key).update(message).digest());
}

/** The random part of a challenge message, after checking its form. */
function challengeOf(message: Uint8Array, legacy: boolean, who: string): Uint8Array {
  assertEquals(message.subarray(0, CHALLENGE.length), CHALLENGE, `${who} sent no #CHALLENGE#`);
  const challenge = message.subarray(CHALLENGE.length);
  if (legacy) {
    assertEquals(challenge.length, 20, `${who}'s challenge is not the legacy 20 bytes`);
  } else {
    assertEquals(
      challenge.subarray(0, SHA256_PREFIX.length),
      SHA256_PREFIX,
      `${who}'s challenge has no {sha256} prefix`,
    );
    assertEquals(challenge.length, SHA256_PREFIX.length + 40, `${who}'s challenge length`);
  }
  return challenge;
}

/** Checks that `answer` is the bare HMAC-MD5 (legacy) or `{sha256}` HMAC of `challenge`. */
function checkAnswer(
  answer: Uint8Array,
  key: Uint8Array,
  challenge: Uint8Array,
  legacy: boolean,
  who: string,
): void {
  const expected = legacy
    ? hmac("md5", key, challenge)
    : concat(SHA256_PREFIX, hmac("sha256", key, challenge));
  assertEquals(
    answer,
    expected,
    `${who}'s answer is not the ${legacy ? "bare HMAC-MD5" : "{sha256} HMAC"} expected`,
  );
}

/**
 * Checks the challenge exchange a relay recorded between our side and
 * `python`: the listener challenges and the client answers, then the other
 * way round. We always challenge with `{sha256}`; Python 3.11 challenges
 * with 20 bytes and answers anything with bare HMAC-MD5, and we answer its
 * 20-byte challenge with bare HMAC-MD5 too.
 */
function checkExchange(
  relay: Relay,
  key: Uint8Array,
  python: Python,
  pythonIs: "listener" | "client",
): void {
  const legacy = python.minor <= 11;
  const name = (side: string) =>
    side === pythonIs ? `Python ${python.version}'s ${side}` : `our ${side}`;
  const fromListener = relay.fromListener.messages();
  const fromClient = relay.fromClient.messages();
  assert(
    fromListener.length >= 3,
    `the relay saw ${fromListener.length} messages from the listener`,
  );
  assert(fromClient.length >= 3, `the relay saw ${fromClient.length} messages from the client`);

  // The listener challenges, the client answers, the listener welcomes.
  const listenerChallenge = challengeOf(
    fromListener[0],
    pythonIs === "listener" && legacy,
    name("listener"),
  );
  checkAnswer(fromClient[0], key, listenerChallenge, legacy, name("client"));
  assertEquals(fromListener[1], WELCOME, `${name("listener")} did not welcome`);

  // The client challenges, the listener answers, the client welcomes.
  const clientChallenge = challengeOf(
    fromClient[1],
    pythonIs === "client" && legacy,
    name("client"),
  );
  checkAnswer(fromListener[2], key, clientChallenge, legacy, name("listener"));
  assertEquals(fromClient[2], WELCOME, `${name("client")} did not welcome`);
}

// ---------------------------------------------------------------------------
// The tests, for each Python

const AUTHKEY = "clé partagée 🔑";
const WRONG_AUTHKEY = "clé partagée 🔒";
const MP = "multiprocessing" as const;

/** Sends each of SIZES to a Python listener (which echoes reversed) and checks the echoes. */
async function exchangeWithListener(comm: Comm, python: Python): Promise<void> {
  for (const [i, size] of SIZES.entries()) {
    const message = pattern(size, i + 1);
    await within(comm.write(message), () => `Writing ${size} bytes to Python did not finish`);
    const echo = await readWithin(comm, () => `No echo of ${size} bytes from Python`);
    assertSameBytes(echo, reversed(message), `Python ${python.version}'s echo of ${size} bytes`);
  }
}

/** Checks the listen mode's exit once our client closed. */
async function checkListenerDone(peer: PythonPeer): Promise<void> {
  const { code, stdout } = await peer.finish();
  assertEquals(code, 0, "mp_peer.py listen failed");
  assertMatch(stdout, new RegExp(`^EOF ${SIZES.length}$`, "m"));
}

/** An echoing handler that keeps what it received. */
function echoHandler(received: Uint8Array[]) {
  return async (comm: Comm) => {
    for await (const message of comm) {
      received.push(asBytes(message, "a message from Python").slice());
      await comm.write(message);
    }
  };
}

/** Runs mp_peer.py's connect mode against `port`; returns its exit code and stdout. */
async function runClient(python: Python, port: string, authkey: string) {
  await using peer = new MpPeer(python, ["connect", port, authkey]);
  return await withPeer(peer, async () => {
    const result = await peer.finish();
    return { ...result, report: peer.report };
  });
}

/** Checks what our listener got from mp_peer.py's connect mode. */
function checkReceivedFromClient(received: Uint8Array[]): void {
  assertEquals(received.map((message) => message.length), SIZES);
  for (const [i, size] of SIZES.entries()) {
    assertSameBytes(received[i], pythonPattern(size), `message ${i} from Python`);
  }
}

for (const { minor, python } of pythons) {
  const subject = `Python 3.${minor} multiprocessing.connection`;
  const ignore = python === undefined;
  const py = () => python!;
  const legacy = minor <= 11;

  Deno.test({
    name: legacy
      ? `${subject}: connect() with an authkey passes Listener's legacy exchange (20-byte challenge, bare HMAC-MD5 answers) and messages of 0 B to 16 MiB cross both ways intact`
      : `${subject}: connect() with an authkey passes Listener's {sha256} challenges and messages of 0 B to 16 MiB cross both ways intact`,
    ignore,
    async fn() {
      await using peer = new MpPeer(py(), ["listen", AUTHKEY]);
      await withPeer(peer, async () => {
        await using relay = new Relay(await peer.port());
        {
          await using comm = await connect(`tcp://127.0.0.1:${relay.port}`, {
            framing: MP,
            authkey: AUTHKEY,
            timeout: WAIT_MS,
          });
          await exchangeWithListener(comm, py());
        }
        await checkListenerDone(peer);
        await relay.finished();
        checkExchange(relay, encoder.encode(AUTHKEY), py(), "listener");
      });
    },
  });

  Deno.test({
    name:
      `${subject}: connect() without an authkey exchanges messages of 0 B to 16 MiB with Listener intact`,
    ignore,
    async fn() {
      await using peer = new MpPeer(py(), ["listen", "-"]);
      await withPeer(peer, async () => {
        const port = await peer.port();
        {
          await using comm = await connect(`tcp://127.0.0.1:${port}`, {
            framing: MP,
            timeout: WAIT_MS,
          });
          await exchangeWithListener(comm, py());
        }
        await checkListenerDone(peer);
      });
    },
  });

  Deno.test({
    name:
      `${subject}: connect() with the wrong authkey rejects with AuthenticationError and Listener raises AuthenticationError`,
    ignore,
    async fn() {
      await using peer = new MpPeer(py(), ["listen", AUTHKEY]);
      await withPeer(peer, async () => {
        const port = await peer.port();
        let error: unknown;
        try {
          const comm = await connect(`tcp://127.0.0.1:${port}`, {
            framing: MP,
            authkey: WRONG_AUTHKEY,
            timeout: WAIT_MS,
          });
          await comm.close();
        } catch (caught) {
          error = caught;
        }
        assertInstanceOf(error, AuthenticationError);
        assertMatch(messageOf(error), /digest sent was rejected/);
        const { code, stdout } = await peer.finish();
        assertMatch(stdout, /^AUTH_FAILED digest received was wrong$/m);
        assertEquals(code, 3);
      });
    },
  });

  Deno.test({
    name: legacy
      ? `${subject}: listen() with an authkey accepts Client's bare HMAC-MD5 answer, answers its legacy 20-byte challenge, and echoes 0 B to 16 MiB intact`
      : `${subject}: listen() with an authkey authenticates Client with {sha256} challenges both ways and echoes 0 B to 16 MiB intact`,
    ignore,
    async fn() {
      const key = encoder.encode(AUTHKEY); // as bytes this time
      const received: Uint8Array[] = [];
      const errors: unknown[] = [];
      await using listener = await listen("tcp://127.0.0.1:0", echoHandler(received), {
        framing: MP,
        authkey: key,
        onError: (error) => errors.push(error),
        handshakeTimeout: WAIT_MS,
      });
      await using relay = new Relay(Number(portOf(listener.contactAddress)));
      const { code, stdout, report } = await runClient(py(), String(relay.port), AUTHKEY);
      assertEquals(code, 0, `mp_peer.py connect failed\n${report}`);
      assertMatch(stdout, /^OK$/m);
      await relay.finished();
      checkExchange(relay, key, py(), "client");
      assertEquals(errors, []);
      checkReceivedFromClient(received);
    },
  });

  Deno.test({
    name:
      `${subject}: listen() reports a Client with the wrong authkey to onError as AuthenticationError and then serves a Client with the right one`,
    ignore,
    async fn() {
      const received: Uint8Array[] = [];
      const errors: unknown[] = [];
      let wake: (() => void) | undefined;
      await using listener = await listen("tcp://127.0.0.1:0", echoHandler(received), {
        framing: MP,
        authkey: AUTHKEY,
        onError: (error) => {
          errors.push(error);
          wake?.();
        },
        handshakeTimeout: WAIT_MS,
      });
      const port = portOf(listener.contactAddress);

      const wrong = await runClient(py(), port, WRONG_AUTHKEY);
      assertMatch(wrong.stdout, /^AUTH_FAILED digest sent was rejected$/m, wrong.report);
      assertEquals(wrong.code, 3, wrong.report);
      // onError is called once our side has closed the comm.
      await within(
        (async () => {
          while (errors.length === 0) await new Promise<void>((resolve) => wake = resolve);
        })(),
        () => "onError was not called",
      );
      assertEquals(errors.length, 1, `onError got ${Deno.inspect(errors)}`);
      assertInstanceOf(errors[0], AuthenticationError);
      assertMatch(
        messageOf(errors[0]),
        /digest received from "tcp:\/\/127\.0\.0\.1:\d+" was wrong/,
      );
      assertEquals(received, [], "the handler got messages from a client that failed");
      assertEquals(listener.lastAccepted, undefined);

      const right = await runClient(py(), port, AUTHKEY);
      assertEquals(right.code, 0, `mp_peer.py connect failed\n${right.report}`);
      assertMatch(right.stdout, /^OK$/m);
      assertMatch(listener.lastAccepted ?? "", /^tcp:\/\/127\.0\.0\.1:\d+$/);
      assertEquals(errors.length, 1, `onError got ${Deno.inspect(errors)}`);
      checkReceivedFromClient(received);
    },
  });

  Deno.test({
    name: `${subject}: listen() without an authkey echoes 0 B to 16 MiB to Client intact`,
    ignore,
    async fn() {
      const received: Uint8Array[] = [];
      const errors: unknown[] = [];
      await using listener = await listen("tcp://127.0.0.1:0", echoHandler(received), {
        framing: MP,
        onError: (error) => errors.push(error),
      });
      const { code, stdout, report } = await runClient(py(), portOf(listener.contactAddress), "-");
      assertEquals(code, 0, `mp_peer.py connect failed\n${report}`);
      assertMatch(stdout, /^OK$/m);
      assertEquals(errors, []);
      checkReceivedFromClient(received);
    },
  });

  Deno.test({
    name:
      `${subject}: answerChallenge() then deliverChallenge() by hand on a plain comm pass Listener's authkey check`,
    ignore,
    async fn() {
      await using peer = new MpPeer(py(), ["listen", AUTHKEY]);
      await withPeer(peer, async () => {
        const port = await peer.port();
        {
          await using comm = await connect(`tcp://127.0.0.1:${port}`, {
            framing: MP,
            timeout: WAIT_MS,
          });
          await within(answerChallenge(comm, AUTHKEY), () => "answerChallenge() did not finish");
          await within(deliverChallenge(comm, AUTHKEY), () => "deliverChallenge() did not finish");
          await exchangeWithListener(comm, py());
        }
        await checkListenerDone(peer);
      });
    },
  });

  Deno.test({
    name:
      `${subject}: deliverChallenge() then answerChallenge() by hand in a handler authenticate Client`,
    ignore,
    async fn() {
      const received: Uint8Array[] = [];
      const echo = echoHandler(received);
      const errors: unknown[] = [];
      await using listener = await listen("tcp://127.0.0.1:0", async (comm) => {
        await within(deliverChallenge(comm, AUTHKEY), () => "deliverChallenge() did not finish");
        await within(answerChallenge(comm, AUTHKEY), () => "answerChallenge() did not finish");
        await echo(comm);
      }, { framing: MP, onError: (error) => errors.push(error) });
      const { code, stdout, report } = await runClient(
        py(),
        portOf(listener.contactAddress),
        AUTHKEY,
      );
      assertEquals(code, 0, `mp_peer.py connect failed\n${report}`);
      assertMatch(stdout, /^OK$/m);
      assertEquals(errors, []);
      checkReceivedFromClient(received);
    },
  });
}
