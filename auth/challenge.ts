/**
 * HMAC challenge-response authentication, as Python's
 * `multiprocessing.connection` does it (`deliver_challenge` and
 * `answer_challenge` in CPython's `Lib/multiprocessing/connection.py`).
 *
 * The side that delivers sends `#CHALLENGE#` and a random message; the
 * other answers with an HMAC of it keyed with the shared key, and gets
 * `#WELCOME#` or `#FAILURE#` back. The key itself never travels.
 *
 * Digests as in CPython 3.12+: we challenge with a `{sha256}`-prefixed
 * message of 40 random bytes, and accept a `{digest}`-prefixed answer
 * (md5, sha256, sha384, sha3_256, sha3_384) or the bare 16-byte HMAC-MD5
 * that Python 3.11 and older send. Answering, we match what we were sent:
 * a bare HMAC-MD5 to a legacy 20-byte challenge, a prefixed HMAC otherwise.
 * The `digests` option narrows what is accepted both ways (leaving out MD5
 * refuses legacy peers).
 * Every message of the exchange is at most 256 bytes; digests are compared
 * in constant time.
 *
 * @module
 */

import { AuthenticationError, CommClosedError, ProtocolError } from "../comm/errors.ts";
import { type RawChannel, rawChannel } from "../comm/stream_comm.ts";
import type { AuthDigest, Comm } from "../comm/types.ts";
import { describe, messageOf } from "../comm/_util.ts";

const encoder = new TextEncoder();
const CHALLENGE = encoder.encode("#CHALLENGE#");
const WELCOME = encoder.encode("#WELCOME#");
const FAILURE = encoder.encode("#FAILURE#");
/** Random bytes in our challenge (CPython 3.12+: 40; it must be over 20). */
const MESSAGE_LENGTH = 40;
/** A challenge of this length, or an answer of 16 bytes, is the legacy MD5 form. */
const MD5ONLY_MESSAGE_LENGTH = 20;
const MD5_DIGEST_LENGTH = 16;
/** Every message of the exchange is at most this long (CPython reads 256). */
const MAX_MESSAGE_BYTES = 256;
/** Python's digest names, and node:crypto's. */
const DIGESTS = new Map([
  ["md5", "md5"],
  ["sha256", "sha256"],
  ["sha384", "sha384"],
  ["sha3_256", "sha3-256"],
  ["sha3_384", "sha3-384"],
]);
const ALL_DIGESTS: ReadonlySet<string> = new Set(DIGESTS.keys());
/** node:crypto, once loaded: not imported above, so that a browser build can leave it out. */
let nodeCrypto: typeof import("node:crypto") | undefined;
const MAX_DIGEST_NAME = Math.max(...[...DIGESTS.keys()].map((name) => name.length));
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

/** Options of {@linkcode deliverChallenge} and {@linkcode answerChallenge}.
 * @example Giving up after a second
 * ```ts
 * import { answerChallenge, type ChallengeOptions } from "@x/comm/auth";
 * import { pipe } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * const [a, b] = pipe();
 * const options: ChallengeOptions = { signal: AbortSignal.timeout(1_000) };
 * // Nobody challenges us on `a`: the wait ends with the signal.
 * await assertRejects(() => answerChallenge(a, "key", options), DOMException);
 * await a.close();
 * await b.close();
 * ```
 */
export interface ChallengeOptions {
  /** Stops waiting for the peer: the call rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * The digests accepted: in the peer's answer to our challenge, and in
   * the challenge we answer. Leave out `"md5"` to refuse legacy peers
   * (Python 3.11 and older answer only in HMAC-MD5), so that nobody can
   * talk the exchange down to MD5. Our challenge names `sha256` when it is
   * allowed, else the first digest given.
   *
   * @default {["md5", "sha256", "sha384", "sha3_256", "sha3_384"]}
   */
  digests?: readonly AuthDigest[];
}

/**
 * Challenges the peer to prove it knows `authkey`, as
 * `multiprocessing.connection.deliver_challenge()` does; the peer runs
 * {@linkcode answerChallenge} (or Python's `answer_challenge`).
 *
 * On a comm from `connect()` or `listen()` with the `multiprocessing`
 * framing, or any stream comm not yet read from, the challenge travels as
 * raw messages of at most 256 bytes and nothing else is decoded. On other
 * comms, it travels as `Uint8Array` messages.
 *
 * @example Both sides of the challenge over an in-process pipe
 * ```ts
 * import { answerChallenge, deliverChallenge } from "@x/comm/auth";
 * import { pipe } from "@x/comm";
 *
 * const [server, client] = pipe();
 * await Promise.all([
 *   deliverChallenge(server, "shared key"),
 *   answerChallenge(client, "shared key"),
 * ]);
 * await server.close();
 * await client.close();
 * ```
 *
 * @param comm The comm to the peer.
 * @param authkey The shared key: a string (UTF-8) or bytes.
 * @param options A signal to stop waiting.
 * @throws {AuthenticationError} If the peer's answer is wrong, malformed or
 * too long, or the comm closed during the exchange; the peer is sent
 * `#FAILURE#` when its answer was read and found wrong.
 * @throws {TypeError} If `authkey` is not a string or a Uint8Array, or
 * `digests` names a digest Python does not offer.
 * @throws {RangeError} If `authkey` or `digests` is empty.
 */
export async function deliverChallenge(
  comm: Comm,
  authkey: string | Uint8Array,
  options: ChallengeOptions = {},
): Promise<void> {
  const key = authkeyBytes(authkey);
  const allowed = checkDigests(options.digests);
  const channel = channelOf(comm);
  await loadCrypto();
  const ours = allowed.has("sha256") ? "sha256" : allowed.values().next().value!;
  const message = concat(
    encoder.encode(`{${ours}}`),
    crypto.getRandomValues(new Uint8Array(MESSAGE_LENGTH)),
  );
  await exchange(comm, async () => {
    await channel.send(concat(CHALLENGE, message));
    const response = await channel.receive(MAX_MESSAGE_BYTES, options.signal);
    try {
      verify(key, message, response, allowed, comm.peerAddress);
    } catch (error) {
      await channel.send(FAILURE).catch(() => {});
      throw error;
    }
    await channel.send(WELCOME);
  });
}

/**
 * Proves to the peer that we know `authkey`, as
 * `multiprocessing.connection.answer_challenge()` does: answers the
 * challenge the peer delivers with {@linkcode deliverChallenge} (or
 * Python's `deliver_challenge`), in the digest it asked for.
 *
 * @example A wrong key fails on both sides
 * ```ts
 * import { answerChallenge, AuthenticationError, deliverChallenge } from "@x/comm/auth";
 * import { pipe } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * const [server, client] = pipe();
 * const delivering = deliverChallenge(server, "right");
 * await assertRejects(() => answerChallenge(client, "wrong"), AuthenticationError);
 * await assertRejects(() => delivering, AuthenticationError, "was wrong");
 * await server.close();
 * await client.close();
 * ```
 *
 * @param comm The comm to the peer.
 * @param authkey The shared key: a string (UTF-8) or bytes.
 * @param options A signal to stop waiting.
 * @throws {AuthenticationError} If the peer sends something other than a
 * challenge, a challenge too short or in a digest `digests` leaves out, or
 * rejects our answer, or the comm closed during the exchange.
 * @throws {TypeError} If `authkey` is not a string or a Uint8Array, or
 * `digests` names a digest Python does not offer.
 * @throws {RangeError} If `authkey` or `digests` is empty.
 */
export async function answerChallenge(
  comm: Comm,
  authkey: string | Uint8Array,
  options: ChallengeOptions = {},
): Promise<void> {
  const key = authkeyBytes(authkey);
  const allowed = checkDigests(options.digests);
  const channel = channelOf(comm);
  await loadCrypto();
  await exchange(comm, async () => {
    const message = await channel.receive(MAX_MESSAGE_BYTES, options.signal);
    if (!startsWith(message, CHALLENGE)) {
      throw new AuthenticationError(
        `Protocol error: expected a challenge from "${comm.peerAddress}", got ${preview(message)}`,
      );
    }
    const challenge = message.subarray(CHALLENGE.length);
    if (challenge.length < MD5ONLY_MESSAGE_LENGTH) {
      throw new AuthenticationError(
        `Challenge from "${comm.peerAddress}" too short: ${challenge.length} bytes`,
      );
    }
    await channel.send(respond(key, challenge, allowed, comm.peerAddress));
    const reply = await channel.receive(MAX_MESSAGE_BYTES, options.signal);
    if (!equalBytes(reply, WELCOME)) {
      throw new AuthenticationError(`The digest sent was rejected by "${comm.peerAddress}"`);
    }
  });
}

/**
 * Runs `comm`'s challenge as the side that accepted it (deliver, then
 * answer) or that connected (answer, then deliver), as Python's `Listener`
 * and `Client` do.
 */
export async function authenticate(
  comm: Comm,
  authkey: string | Uint8Array,
  side: "listener" | "client",
  options: ChallengeOptions,
): Promise<void> {
  if (side === "listener") {
    await deliverChallenge(comm, authkey, options);
    await answerChallenge(comm, authkey, options);
  } else {
    await answerChallenge(comm, authkey, options);
    await deliverChallenge(comm, authkey, options);
  }
}

/** Checks a `digests` option; returns the digests allowed. */
export function checkDigests(digests: unknown): ReadonlySet<string> {
  if (digests === undefined) return ALL_DIGESTS;
  if (!Array.isArray(digests)) {
    throw new TypeError(
      `Invalid digests ${describe(digests)}: expected an array of ${
        [...DIGESTS.keys()].join(", ")
      }`,
    );
  }
  for (const name of digests) {
    if (typeof name !== "string" || !DIGESTS.has(name)) {
      throw new TypeError(
        `Invalid digest ${describe(name)}: expected one of ${[...DIGESTS.keys()].join(", ")}`,
      );
    }
  }
  if (digests.length === 0) {
    throw new RangeError("Invalid digests: the list is empty, so no peer could authenticate");
  }
  return new Set(digests);
}

/** Checks an `authkey` option; returns its bytes. */
export function authkeyBytes(authkey: unknown): Uint8Array {
  let key: Uint8Array;
  if (typeof authkey === "string") key = encoder.encode(authkey);
  else if (authkey instanceof Uint8Array) key = authkey;
  else {
    throw new TypeError(`Invalid authkey ${describe(authkey)}: expected a string or a Uint8Array`);
  }
  // Python's Listener takes an empty key as no key, its Client as a key:
  // neither reading is safe to guess.
  if (key.length === 0) {
    throw new RangeError("Invalid authkey: it is empty; give a key, or no authkey for none");
  }
  return key;
}

/** Runs one side of the exchange; what goes wrong on the wire is an AuthenticationError. */
async function exchange(comm: Comm, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    if (error instanceof AuthenticationError) throw error;
    if (error instanceof ProtocolError || error instanceof CommClosedError) {
      throw new AuthenticationError(
        `Authentication with "${comm.peerAddress}" failed: ${messageOf(error)}`,
        { cause: error },
      );
    }
    throw error;
  }
}

function channelOf(comm: Comm): RawChannel {
  return rawChannel(comm) ?? {
    send: (bytes) => comm.write(bytes),
    async receive(maxBytes, signal) {
      const message = await comm.read({ signal });
      if (!(message instanceof Uint8Array) || message.length > maxBytes) {
        throw new AuthenticationError(
          `Peer "${comm.peerAddress}" sent ${
            message instanceof Uint8Array ? `${message.length} bytes` : describe(message)
          } during the challenge, where at most ${maxBytes} bytes were expected`,
        );
      }
      return message;
    },
  };
}

/** The digest named by a challenge or an answer, and the rest of it; "" for legacy MD5. */
function digestOf(message: Uint8Array, peerAddress: string): [string, Uint8Array] {
  if (message.length === MD5ONLY_MESSAGE_LENGTH || message.length === MD5_DIGEST_LENGTH) {
    return ["", message];
  }
  if (message[0] === OPEN_BRACE) {
    const close = message.subarray(0, MAX_DIGEST_NAME + 2).indexOf(CLOSE_BRACE, 1);
    if (close > 0) {
      const name = String.fromCharCode(...message.subarray(1, close));
      if (DIGESTS.has(name)) return [name, message.subarray(close + 1)];
    }
  }
  throw new AuthenticationError(
    `Unsupported message length, missing digest prefix, or unsupported digest from "${peerAddress}" (a peer without the authkey?): ${
      preview(message)
    }`,
  );
}

/**
 * Loads node:crypto: Python's digests include MD5 and SHA-3, which Web
 * Crypto lacks.
 */
async function loadCrypto(): Promise<void> {
  try {
    nodeCrypto ??= await import("node:crypto");
  } catch (error) {
    throw new TypeError(
      `The authkey challenge needs node:crypto (Python's digests include MD5 and SHA-3, which Web Crypto lacks), and this runtime has none: ${
        messageOf(error)
      }`,
      { cause: error },
    );
  }
}

function hmac(digest: string, key: Uint8Array, message: Uint8Array): Uint8Array {
  return new Uint8Array(nodeCrypto!.createHmac(DIGESTS.get(digest)!, key).update(message).digest());
}

/** Our answer to `challenge`: in the digest it names, or bare HMAC-MD5 to a legacy one. */
function respond(
  key: Uint8Array,
  challenge: Uint8Array,
  allowed: ReadonlySet<string>,
  peerAddress: string,
): Uint8Array {
  const [digest] = digestOf(challenge, peerAddress);
  refuseUnless(allowed, digest || "md5", `challenged us in`, peerAddress);
  if (digest === "") return hmac("md5", key, challenge);
  return concat(encoder.encode(`{${digest}}`), hmac(digest, key, challenge));
}

/** Checks the peer's answer to our challenge `message`, in constant time. */
function verify(
  key: Uint8Array,
  message: Uint8Array,
  response: Uint8Array,
  allowed: ReadonlySet<string>,
  peerAddress: string,
): void {
  const [named, mac] = digestOf(response, peerAddress);
  const digest = named || "md5";
  refuseUnless(allowed, digest, "answered in", peerAddress);
  const expected = hmac(digest, key, message);
  if (expected.length !== mac.length) {
    throw new AuthenticationError(
      `Expected a ${digest} digest of ${expected.length} bytes from "${peerAddress}", got ${mac.length}`,
    );
  }
  if (!nodeCrypto!.timingSafeEqual(expected, mac)) {
    throw new AuthenticationError(`The digest received from "${peerAddress}" was wrong`);
  }
}

/** Refuses a digest the `digests` option leaves out, before any HMAC is made or compared. */
function refuseUnless(
  allowed: ReadonlySet<string>,
  digest: string,
  what: string,
  peerAddress: string,
): void {
  if (allowed.has(digest)) return;
  throw new AuthenticationError(
    `Peer "${peerAddress}" ${what} ${digest}${
      digest === "md5" ? " (a legacy peer, or an attempt to downgrade)" : ""
    }, which this side refuses (allowed: ${[...allowed].join(", ")})`,
  );
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && equalBytes(bytes.subarray(0, prefix.length), prefix);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A short printable view of bytes from the peer, for error messages. */
function preview(bytes: Uint8Array): string {
  const shown = bytes.subarray(0, 40);
  let text = "";
  for (const byte of shown) {
    text += byte >= 0x20 && byte < 0x7f && byte !== 0x5c
      ? String.fromCharCode(byte)
      : `\\x${byte.toString(16).padStart(2, "0")}`;
  }
  return `${bytes.length} bytes b"${text}${bytes.length > shown.length ? "…" : ""}"`;
}
