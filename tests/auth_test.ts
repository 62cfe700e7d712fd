// The authkey challenge against peers that misbehave: raw sockets that speak
// the bytes themselves (dask's framing, or multiprocessing's), as a hostile or
// broken peer would, and Python's side of the exchange done by hand. Then the
// public deliverChallenge() and answerChallenge() over in-process pipes.
//
// Everything binds to loopback. Deadlines are short (handshakeTimeout 300 ms)
// so that the whole file runs in a few seconds; no case asserts how long
// something took, beyond a bound that only a hang exceeds.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertNotEquals,
  assertRejects,
  assertStrictEquals,
  assertStringIncludes,
} from "@std/assert";
import { decode, encode } from "@msgpack/msgpack";
import { createHmac } from "node:crypto";
import {
  type Comm,
  CommClosedError,
  connect,
  ConnectError,
  ConnectTimeoutError,
  getAddressHostPort,
  listen,
  type Listener,
  type ListenOptions,
  pipe,
  ProtocolError,
  StreamComm,
} from "../mod.ts";
import { answerChallenge, AuthenticationError, deliverChallenge } from "../auth/mod.ts";
import { daskMessage as daskFrame, prelude } from "./_wire.ts";

const KEY = "the shared key";
const encoder = new TextEncoder();
const CHALLENGE = encoder.encode("#CHALLENGE#");
const WELCOME = encoder.encode("#WELCOME#");
const FAILURE = encoder.encode("#FAILURE#");
/** What the listener's handshakeTimeout is in these cases. */
const DEADLINE_MS = 300;
/** Python's digest names, and node:crypto's. */
const DIGESTS: Record<string, string> = {
  md5: "md5",
  sha256: "sha256",
  sha384: "sha384",
  sha3_256: "sha3-256",
  sha3_384: "sha3-384",
};
const HANDSHAKE = { compression: null, python: [3, 12, 0], "pickle-protocol": 5 };

// -- The listener against hostile peers -----------------------------------------

Deno.test("listen() with authkey first sends a {sha256} challenge of 40 random bytes", async () => {
  await using server = await authListener();
  using first = await RawPeer.dial(server.port);
  using second = await RawPeer.dial(server.port);
  const challenges = [await readChallenge(first), await readChallenge(second)];
  for (const challenge of challenges) {
    assertEquals(challenge.length, 8 + 40);
    assertEquals(text(challenge.subarray(0, 8)), "{sha256}");
  }
  assertNotEquals(challenges[0], challenges[1], "the same challenge twice");
});

Deno.test("listen() with authkey closes a peer that sends garbage and reports AuthenticationError", async () => {
  await using server = await authListener();
  const garbage: [string, Uint8Array][] = [
    ["an HTTP request", encoder.encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")],
    ["all ones", new Uint8Array(64).fill(0xff)],
    ["a header of no frames", prelude(8n, [])],
    ["a message of two frames", concat(prelude(24n + 2n, [1n, 1n]), new Uint8Array([1, 2]))],
    ["a frame longer than its total says", concat(prelude(16n, [100n]), new Uint8Array(100))],
  ];
  for (const [i, [label, bytes]] of garbage.entries()) {
    using peer = await RawPeer.dial(server.port);
    await readChallenge(peer);
    await peer.send(bytes);
    await peer.end(); // the listener hung up
    await server.reports.atLeast(i + 1, label);
    assertInstanceOf(server.reports.errors[i], AuthenticationError, label);
  }
  assertEquals(server.listener.lastAccepted, undefined);
});

Deno.test("listen() with authkey closes a peer that announces a huge message during the challenge", async () => {
  await using server = await authListener();
  const headers: [string, Uint8Array][] = [
    ["a total of 2^40", prelude(2n ** 40n, [2n ** 40n - 16n])],
    ["a total of 2^63", prelude(2n ** 63n, [2n ** 63n - 16n])],
    ["a total of 2^64 - 1", prelude(2n ** 64n - 1n, [2n ** 64n - 17n])],
    ["a small total, a frame of 2^40", prelude(24n, [2n ** 40n])],
    ["a small total, a frame of 2^63", prelude(24n, [2n ** 63n])],
    ["2^32 frames", prelude(24n, []).map((byte, i) => i === 12 ? 1 : byte)],
  ];
  for (const [i, [label, bytes]] of headers.entries()) {
    using peer = await RawPeer.dial(server.port);
    await readChallenge(peer);
    await peer.send(bytes);
    await peer.end();
    await server.reports.atLeast(i + 1, label);
    const error = server.reports.errors[i] as Error;
    assertInstanceOf(error, AuthenticationError, label);
    assertInstanceOf(error.cause, ProtocolError, label);
  }
});

// Before bf2e71d, the error named the reader's limit (320) as "maxMessageSize"
// and advised raising it, which changes nothing.
Deno.test({
  name: "listen() with authkey names the challenge's 256-byte limit when a peer announces more",
  fn: async () => {
    await using server = await authListener();
    using peer = await RawPeer.dial(server.port);
    await readChallenge(peer);
    await peer.send(prelude(2n ** 40n, [2n ** 40n - 16n]));
    await peer.end();
    const [error] = await server.reports.atLeast(1);
    assertInstanceOf(error, AuthenticationError);
    assertStringIncludes(error.message, "256");
    assertFalse(error.message.includes("raise maxMessageSize"), error.message);
  },
});

Deno.test("listen() with authkey refuses a challenge answer over 256 bytes", async () => {
  await using server = await authListener();
  {
    // 257 bytes: refused for its size, before any digest is looked at.
    using peer = await RawPeer.dial(server.port);
    const challenge = await readChallenge(peer);
    const answer = concat(encoder.encode("{sha256}"), hmac("sha256", KEY, challenge));
    await peer.send(daskFrame(concat(answer, new Uint8Array(257 - answer.length))));
    await peer.end();
    const [error] = await server.reports.atLeast(1);
    assertInstanceOf(error, AuthenticationError);
    assertStringIncludes(error.message, "256 bytes");
  }
  {
    // 256 bytes: taken, and refused for its digest's length.
    using peer = await RawPeer.dial(server.port);
    await readChallenge(peer);
    await peer.send(daskFrame(concat(encoder.encode("{sha256}"), new Uint8Array(248))));
    assertEquals(await peer.end(), daskFrame(FAILURE));
    const [, error] = await server.reports.atLeast(2);
    assertInstanceOf(error, AuthenticationError);
    assertStringIncludes(error.message, "got 248");
  }
});

Deno.test("listen() with authkey closes a silent peer after handshakeTimeout", async () => {
  await using server = await authListener();
  using silent = await RawPeer.dial(server.port);
  using halfway = await RawPeer.dial(server.port); // half a header, then nothing
  await readChallenge(halfway);
  await halfway.send(prelude(40n, [24n]).subarray(0, 10));
  await silent.end();
  await halfway.end();
  const errors = await server.reports.atLeast(2);
  for (const error of errors) {
    assertInstanceOf(error, ProtocolError);
    assertStringIncludes(error.message, `within ${DEADLINE_MS} ms`);
    assertStringIncludes(error.message, "authkey challenge");
  }
});

Deno.test("listen() with authkey serves a good client while 20 bad peers are connected", async () => {
  // Longer than the others, so that only a listener that serves one peer at
  // a time makes the good client wait for the silent ones to time out.
  await using server = await authListener({ handshakeTimeout: 1_000 });
  const bad: RawPeer[] = [];
  try {
    const kinds = ["silent", "half a header", "garbage", "huge length"];
    for (let i = 0; i < 20; i++) {
      const peer = await RawPeer.dial(server.port);
      bad.push(peer);
      const kind = kinds[i % kinds.length];
      if (kind === "half a header") await peer.send(new Uint8Array(10));
      if (kind === "garbage") await peer.send(new Uint8Array(100).fill(0x41));
      if (kind === "huge length") await peer.send(prelude(2n ** 62n, [2n ** 62n - 16n]));
    }
    await using comm = await connect(server.listener.contactAddress, { authkey: KEY });
    await comm.write("served among bad peers");
    assertEquals(await comm.read(), "served among bad peers");
    const timedOut = server.reports.errors.filter((error) => error instanceof ProtocolError);
    assertEquals(timedOut.length, 0, "the good client was served only after bad peers timed out");
    assertEquals(server.listener.lastAccepted, comm.localAddress);
    for (const peer of bad) await peer.end();
    const errors = await server.reports.atLeast(20);
    assertEquals(errors.filter((error) => error instanceof AuthenticationError).length, 10);
    assertEquals(errors.filter((error) => error instanceof ProtocolError).length, 10);
    // Still serving, now that they are gone.
    await using again = await connect(server.listener.contactAddress, { authkey: KEY });
    await again.write("after them");
    assertEquals(await again.read(), "after them");
  } finally {
    for (const peer of bad) peer.close();
  }
});

Deno.test("listen() with authkey sends #FAILURE# to an answer whose digest has the wrong length", async () => {
  await using server = await authListener();
  const answers: [string, (challenge: Uint8Array) => Uint8Array][] = [
    ["a sha256 digest of 31 bytes", (c) => prefixed("sha256", hmac("sha256", KEY, c).slice(1))],
    ["a sha256 digest of 33 bytes", (c) => prefixed("sha256", concat(hmac("sha256", KEY, c), [0]))],
    ["a sha256 prefix alone", () => encoder.encode("{sha256}")],
    ["a bare digest of 17 bytes", (c) => concat(hmac("md5", KEY, c), [0])],
    ["a bare digest of 15 bytes", (c) => hmac("md5", KEY, c).slice(1)],
    ["a bare sha256 digest", (c) => hmac("sha256", KEY, c)],
    ["an empty answer", () => new Uint8Array(0)],
  ];
  for (const [i, [label, answer]] of answers.entries()) {
    using peer = await RawPeer.dial(server.port);
    await peer.send(daskFrame(answer(await readChallenge(peer))));
    assertEquals(text(await peer.end()), text(daskFrame(FAILURE)), label);
    await server.reports.atLeast(i + 1, label);
    assertInstanceOf(server.reports.errors[i], AuthenticationError, label);
  }
});

Deno.test("listen() with authkey refuses an answer in an unsupported digest such as {md4}", async () => {
  await using server = await authListener();
  const answers: [string, (challenge: Uint8Array) => Uint8Array][] = [
    ["{md4}", () => prefixed("md4", new Uint8Array(16))],
    ["{sha1}", (c) => prefixed("sha1", hmac("sha1", KEY, c))],
    ["{SHA256}", (c) => prefixed("SHA256", hmac("sha256", KEY, c))],
    ["{sha256 without its brace", (c) => concat(encoder.encode("{sha256"), hmac("sha256", KEY, c))],
  ];
  for (const [i, [label, answer]] of answers.entries()) {
    using peer = await RawPeer.dial(server.port);
    await peer.send(daskFrame(answer(await readChallenge(peer))));
    assertEquals(text(await peer.end()), text(daskFrame(FAILURE)), label);
    await server.reports.atLeast(i + 1, label);
    const error = server.reports.errors[i] as Error;
    assertInstanceOf(error, AuthenticationError, label);
    assertStringIncludes(error.message, "unsupported digest", label);
  }
});

Deno.test("listen() with authkey decodes nothing a peer sends after a wrong answer", async () => {
  await using server = await authListener();
  using peer = await RawPeer.dial(server.port);
  const challenge = await readChallenge(peer);
  // A wrong digest, then a header that would be refused if it were read.
  await peer.send(
    concat(
      daskFrame(prefixed("sha256", hmac("sha256", "wrong key", challenge))),
      prelude(2n ** 40n, [2n ** 40n - 16n]),
      new Uint8Array(1000).fill(0x41),
    ),
  );
  assertEquals(text(await peer.end()), text(daskFrame(FAILURE)));
  const [error] = await server.reports.atLeast(1);
  assertInstanceOf(error, AuthenticationError);
  assertStringIncludes(error.message, "was wrong");
  assertStringIncludes(error.message, "digest received from");
});

Deno.test("listen() with authkey accepts the bare 16-byte HMAC-MD5 answer of Python 3.11", async () => {
  await using server = await authListener();
  using peer = await RawPeer.dial(server.port);
  // Python 3.11's client: a bare MD5 answer, then a legacy 20-byte challenge.
  await authenticateAsPython(peer, KEY, { answerDigest: "", challenge: random(20) });
  await daskHandshake(peer);
  assertEquals(await echoOnce(peer, "legacy"), "legacy");
  assertEquals(server.reports.errors, []);
});

Deno.test("listen() with authkey accepts an answer in every digest CPython 3.12 offers", async () => {
  await using server = await authListener();
  for (const digest of Object.keys(DIGESTS)) {
    using peer = await RawPeer.dial(server.port);
    await authenticateAsPython(peer, KEY, { answerDigest: digest });
    await daskHandshake(peer);
    assertEquals(await echoOnce(peer, digest), digest);
  }
  assertEquals(server.reports.errors, []);
});

Deno.test("listen() with authDigests leaving out md5 refuses an MD5 answer to its {sha256} challenge", async () => {
  const authDigests = ["sha256", "sha384", "sha3_256", "sha3_384"] as const;
  await using server = await authListener({ authDigests: [...authDigests] });
  // A downgrade: the right key, but answered in MD5, bare (Python 3.11) or prefixed.
  for (const [i, digest] of ["", "md5"].entries()) {
    using peer = await RawPeer.dial(server.port);
    const challenge = await readChallenge(peer);
    assertEquals(text(challenge.subarray(0, 8)), "{sha256}");
    await peer.send(daskFrame(answerTo(KEY, challenge, digest)));
    assertEquals(text(await peer.end()), text(daskFrame(FAILURE)), digest || "bare");
    const [error] = (await server.reports.atLeast(i + 1)).slice(i);
    assertInstanceOf(error, AuthenticationError);
    assertStringIncludes(
      error.message,
      "answered in md5 (a legacy peer, or an attempt to downgrade)",
    );
    assertStringIncludes(error.message, "allowed: sha256, sha384, sha3_256, sha3_384");
  }
  // The same listener takes the stronger digests.
  for (const digest of authDigests) {
    using peer = await RawPeer.dial(server.port);
    await authenticateAsPython(peer, KEY, { answerDigest: digest });
    await daskHandshake(peer);
    assertEquals(await echoOnce(peer, digest), digest);
  }
  assertEquals(server.reports.errors.length, 2);
});

Deno.test("listen() with authDigests challenges in the first digest given when sha256 is left out", async () => {
  await using server = await authListener({ authDigests: ["sha3_384", "sha384"] });
  using peer = await RawPeer.dial(server.port);
  const challenge = await readChallenge(peer);
  assertEquals(text(challenge.subarray(0, 10)), "{sha3_384}");
  await peer.send(daskFrame(answerTo(KEY, challenge, "sha3_384")));
  assertEquals(text(await peer.readDask()), "#WELCOME#");
});

Deno.test("connect() with authDigests leaving out md5 refuses a legacy challenge without answering it", async () => {
  let answered: Uint8Array | undefined;
  await using server = rawServer(async (peer) => {
    // A listener, or a man in the middle, asking for the legacy MD5 answer.
    await peer.send(daskFrame(concat(CHALLENGE, random(20))));
    answered = await peer.end();
  });
  const error = await assertRejects(
    () => connect(server.address, { authkey: KEY, authDigests: ["sha256"], timeout: 5_000 }),
    AuthenticationError,
  );
  assertStringIncludes(
    error.message,
    "challenged us in md5 (a legacy peer, or an attempt to downgrade)",
  );
  await server.done;
  assertEquals(answered?.length, 0, "an MD5 answer went out");
});

Deno.test("listen() with authkey refuses a replayed answer: every challenge is fresh", async () => {
  await using server = await authListener();
  // An eavesdropper records a good client's answer...
  let recorded: Uint8Array;
  {
    using peer = await RawPeer.dial(server.port);
    recorded = answerTo(KEY, await readChallenge(peer), "sha256");
    await peer.send(daskFrame(recorded));
    assertEquals(text(await peer.readDask()), "#WELCOME#");
  }
  // ...and plays it back on connections of its own, without the key.
  for (let i = 0; i < 3; i++) {
    using peer = await RawPeer.dial(server.port);
    await readChallenge(peer);
    await peer.send(daskFrame(recorded));
    assertEquals(text(await peer.end()), text(daskFrame(FAILURE)), `replay ${i}`);
  }
  const errors = await server.reports.atLeast(4);
  // The first is the recorded client, which hung up before answering our challenge.
  for (const error of errors.slice(1)) {
    assertInstanceOf(error, AuthenticationError);
    assertStringIncludes(error.message, "was wrong");
  }
});

Deno.test("connect() and listen() refuse authDigests naming no digest or an unknown one", async () => {
  for (
    const [authDigests, Class, included] of [
      [[], RangeError, "the list is empty"],
      [["sha1"], TypeError, 'Invalid digest "sha1": expected one of md5, sha256'],
      [["SHA256"], TypeError, 'Invalid digest "SHA256"'],
      ["sha256", TypeError, "expected an array"],
    ] as const
  ) {
    await assertRejects(
      // @ts-expect-error: what a JavaScript caller could pass
      () => connect("tcp://127.0.0.1:1", { authkey: KEY, authDigests }),
      Class,
      included,
    );
    await assertRejects(
      // @ts-expect-error: what a JavaScript caller could pass
      () => listen("tcp://127.0.0.1:0", echo, { authkey: KEY, authDigests }),
      Class,
      included,
    );
  }
});

Deno.test("listen() with authkey takes a peer's challenge sent together with its answer", async () => {
  await using server = await authListener();
  using peer = await RawPeer.dial(server.port);
  const theirs = await readChallenge(peer);
  const ours = concat(encoder.encode("{sha256}"), random(40));
  await peer.send(
    concat(daskFrame(answerTo(KEY, theirs, "sha256")), daskFrame(concat(CHALLENGE, ours))),
  );
  assertEquals(text(await peer.readDask()), "#WELCOME#");
  assertEquals(await peer.readDask(), answerTo(KEY, ours, "sha256"));
  await peer.send(daskFrame(WELCOME));
  await daskHandshake(peer);
  assertEquals(await echoOnce(peer, "pipelined"), "pipelined");
});

// Bytes that arrive with the peer's #WELCOME# are buffered by the challenge:
// they must be decoded once it is over, before the socket is read again (before
// bf2e71d, the listener waited for more and timed the peer out).
Deno.test({
  name: "listen() with authkey decodes what the peer sent together with its #WELCOME#",
  fn: async () => {
    await using server = await authListener();
    using peer = await RawPeer.dial(server.port);
    await peer.send(daskFrame(answerTo(KEY, await readChallenge(peer), "sha256")));
    assertEquals(text(await peer.readDask()), "#WELCOME#");
    const ours = concat(encoder.encode("{sha256}"), random(40));
    await peer.send(daskFrame(concat(CHALLENGE, ours)));
    assertEquals(await peer.readDask(), answerTo(KEY, ours, "sha256"));
    await peer.send(
      concat(daskFrame(WELCOME), daskFrame(encode(HANDSHAKE)), daskFrame(encode("first"))),
    );
    assertInstanceOf(decode(await peer.readDask()), Object);
    const echoed = await within(peer.readDask(), 2_000, "the echo of the first message");
    assertEquals(decode(echoed), "first");
  },
});

Deno.test("listen() with authkey and the multiprocessing framing speaks Python's framing", async () => {
  await using server = await authListener({ framing: "multiprocessing" }, async (comm) => {
    await comm.write(encoder.encode("hello")); // speaks first: #WELCOME# arrives alone
    for await (const message of comm) await comm.write(message);
  });
  {
    using peer = await RawPeer.dial(server.port);
    await authenticateAsPython(peer, KEY, { framing: MP });
    assertEquals(text(await peer.readMp()), "hello");
    const payload = new Uint8Array(100_000).map((_, i) => i * 7);
    await peer.send(mpFrame(payload));
    assertEquals(await peer.readMp(), payload);
  }
  const hostile: [string, Uint8Array][] = [
    ["a long length of 2^40", concat(int32(-1), u64be(2n ** 40n))],
    ["a long length of 2^63", concat(int32(-1), u64be(2n ** 63n))],
    ["a length of -2", int32(-2)],
    ["a length of 2^31 - 1", int32(2 ** 31 - 1)],
    ["an answer of 257 bytes", mpFrame(new Uint8Array(257))],
  ];
  for (const [i, [label, bytes]] of hostile.entries()) {
    using peer = await RawPeer.dial(server.port);
    assert(startsWith(await peer.readMp(), CHALLENGE), label);
    await peer.send(bytes);
    await peer.end();
    await server.reports.atLeast(i + 1, label);
    assertInstanceOf(server.reports.errors[i], AuthenticationError, label);
  }
});

Deno.test("Listener.close() closes a comm in the middle of its challenge at once", async () => {
  const server = await authListener({ handshakeTimeout: 60_000 });
  using peer = await RawPeer.dial(server.port);
  try {
    await readChallenge(peer);
  } finally {
    await within(server.listener.close(), 5_000, "Listener.close()");
  }
  await peer.end();
  assertEquals(server.reports.errors, [], "a comm closed by Listener.close() was reported");
});

// -- connect() against a raw listener --------------------------------------------

Deno.test("connect() with authkey answers a challenge in the digest it names, legacy MD5 included", async () => {
  for (const digest of [...Object.keys(DIGESTS), ""]) {
    const label = digest || "a legacy 20-byte challenge";
    await using server = rawServer(async (peer) => {
      const challenge = digest === "" ? random(20) : prefixed(digest, random(40));
      await peer.send(daskFrame(concat(CHALLENGE, challenge)));
      const answer = await peer.readDask();
      assertEquals(answer, expectedAnswer(KEY, challenge), label);
      if (digest === "") assertEquals(answer.length, 16, "not a bare MD5 digest");
      await peer.send(daskFrame(WELCOME));
      // Then it challenges us, in CPython 3.12's form.
      const theirs = await readChallenge(peer);
      assertEquals(text(theirs.subarray(0, 8)), "{sha256}");
      assertEquals(theirs.length, 48);
      await peer.send(daskFrame(answerTo(KEY, theirs, "sha256")));
      assertEquals(text(await peer.readDask()), "#WELCOME#");
      await daskHandshake(peer);
    });
    const [connected] = await Promise.allSettled([
      connect(server.address, { authkey: KEY, timeout: 5_000 }),
      server.done,
    ]);
    await server.done;
    if (connected.status === "rejected") throw connected.reason;
    await connected.value.close();
  }
});

Deno.test("connect() with authkey rejects a challenge it cannot answer with AuthenticationError", async () => {
  const challenges: [string, Uint8Array, string][] = [
    ["a challenge of 10 bytes", daskFrame(concat(CHALLENGE, random(10))), "too short"],
    ["a challenge of 19 bytes", daskFrame(concat(CHALLENGE, random(19))), "too short: 19 bytes"],
    ["an empty challenge", daskFrame(CHALLENGE), "too short: 0 bytes"],
    ["a {md4} challenge", daskFrame(concat(CHALLENGE, prefixed("md4", random(40)))), "md4"],
    ["no challenge", daskFrame(WELCOME), "expected a challenge"],
    ["257 bytes", daskFrame(concat(CHALLENGE, random(246))), "256 bytes"],
    ["two frames", concat(prelude(24n + 2n, [1n, 1n]), new Uint8Array(2)), "frames"],
    ["a huge length", prelude(2n ** 63n, [2n ** 63n - 16n]), "Authentication"],
  ];
  for (const [label, bytes, included] of challenges) {
    await using server = rawServer(async (peer) => {
      await peer.send(bytes);
      await peer.end(); // the client hangs up, having sent nothing
    });
    const error = await assertRejects(
      () => connect(server.address, { authkey: KEY, timeout: 5_000 }),
      AuthenticationError,
    );
    assertStringIncludes(error.message, included, label);
    await server.done;
  }
});

Deno.test("connect() with authkey rejects with AuthenticationError when the listener refuses its answer", async () => {
  await using server = rawServer(async (peer) => {
    await peer.send(daskFrame(concat(CHALLENGE, prefixed("sha256", random(40)))));
    await peer.readDask();
    await peer.send(daskFrame(FAILURE));
    await peer.end();
  });
  await assertRejects(
    () => connect(server.address, { authkey: KEY, timeout: 5_000 }),
    AuthenticationError,
    "digest sent was rejected",
  );
  await server.done;
});

Deno.test("connect() with authkey sends #FAILURE# to a listener that answers its challenge wrong", async () => {
  await using server = rawServer(async (peer) => {
    const challenge = prefixed("sha256", random(40));
    await peer.send(daskFrame(concat(CHALLENGE, challenge)));
    assertEquals(await peer.readDask(), expectedAnswer(KEY, challenge));
    await peer.send(daskFrame(WELCOME));
    const theirs = await readChallenge(peer);
    await peer.send(daskFrame(answerTo("not the key", theirs, "sha256")));
    assertEquals(text(await peer.end()), text(daskFrame(FAILURE)));
  });
  const error = await assertRejects(
    () => connect(server.address, { authkey: KEY, timeout: 5_000 }),
    AuthenticationError,
    "was wrong",
  );
  assertStringIncludes(error.message, `"${server.address}"`, "the peer is not named");
  await server.done;
});

Deno.test("connect() with authkey to a listener without one rejects with AuthenticationError", async () => {
  const reports = new Reports();
  await using listener = await listen("tcp://127.0.0.1:0", echo, { onError: reports.onError });
  const error = await assertRejects(
    () => connect(listener.contactAddress, { authkey: KEY, timeout: 5_000 }),
    AuthenticationError,
  );
  // It names the peer and says what it got instead.
  assertStringIncludes(error.message, "expected a challenge");
  assertStringIncludes(error.message, `"${listener.contactAddress}"`);
  const [reported] = await reports.atLeast(1);
  assertInstanceOf(reported, CommClosedError);
});

Deno.test("connect() without authkey to a listener with one rejects with ConnectError at once", async () => {
  await using server = await authListener({ handshakeTimeout: 10_000 });
  const error = await assertRejects(
    () => connect(server.listener.contactAddress, { timeout: 5_000 }),
    ConnectError,
  );
  assertFalse(error instanceof ConnectTimeoutError, `it waited for the timeout: ${error.message}`);
  assertStringIncludes(error.message, "handshake");
  // The listener took the client's handshake for its answer.
  const [reported] = await server.reports.atLeast(1);
  assertInstanceOf(reported, AuthenticationError);
});

Deno.test("connect() with authkey rejects with ConnectTimeoutError when the peer goes silent in the challenge", async () => {
  for (const when of ["before its challenge", "after our answer"]) {
    await using server = rawServer(async (peer) => {
      if (when === "after our answer") {
        await peer.send(daskFrame(concat(CHALLENGE, prefixed("sha256", random(40)))));
        await peer.readDask();
      }
      await peer.end();
    });
    const error = await assertRejects(
      () => connect(server.address, { authkey: KEY, timeout: DEADLINE_MS }),
      ConnectTimeoutError,
    );
    assertStringIncludes(error.message, "authentication", when);
    assertStringIncludes(error.message, `${DEADLINE_MS} ms`, when);
    await server.done;
  }
});

// -- deliverChallenge() and answerChallenge() over pipes ---------------------------

Deno.test("deliverChallenge() and answerChallenge() authenticate a pipe with a string or Uint8Array key", async () => {
  const text = "clé 🔑";
  const bytes = encoder.encode(text);
  const keys: [string | Uint8Array, string | Uint8Array][] = [
    [text, text],
    [bytes, bytes],
    [text, bytes],
    [bytes, text],
    [new Uint8Array([0]), "\0"],
  ];
  for (const [i, [deliverKey, answerKey]] of keys.entries()) {
    const [a, b] = pipe();
    try {
      await Promise.all([deliverChallenge(a, deliverKey), answerChallenge(b, answerKey)]);
      // And the other way, as connect() and listen() do both.
      await Promise.all([answerChallenge(a, deliverKey), deliverChallenge(b, answerKey)]);
      await a.write(`pair ${i}`);
      assertEquals(await b.read(), `pair ${i}`, "the pipe is not usable after the challenge");
      assertEquals(await b.poll(), false, "a challenge message was left unread");
    } finally {
      await a.close();
      await b.close();
    }
  }
});

Deno.test("deliverChallenge() rejects a wrong key with AuthenticationError on both sides", async () => {
  for (const [right, wrong] of [["right", "wrong"], [encoder.encode("right"), "righ"]] as const) {
    const [a, b] = pipe();
    try {
      const delivering = handled(deliverChallenge(a, right));
      const answering = handled(answerChallenge(b, wrong));
      const error = await assertRejects(() => delivering, AuthenticationError, "was wrong");
      assertStringIncludes(error.message, `"${a.peerAddress}"`, "the peer is not named");
      await assertRejects(() => answering, AuthenticationError, "digest sent was rejected");
    } finally {
      await a.close();
      await b.close();
    }
  }
});

Deno.test("answerChallenge() rejects with the signal's reason and leaves a pipe usable", async () => {
  const [a, b] = pipe();
  try {
    const controller = new AbortController();
    const answering = answerChallenge(b, KEY, { signal: controller.signal });
    const reason = new Error("gave up waiting for a challenge");
    controller.abort(reason);
    assertStrictEquals(await settled(answering), reason);
    const early = await settled(answerChallenge(b, KEY, { signal: AbortSignal.abort(reason) }));
    assertStrictEquals(early, reason);
    // Nothing was lost: the challenge can still be run.
    await Promise.all([deliverChallenge(a, KEY), answerChallenge(b, KEY)]);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("deliverChallenge() rejects with the signal's reason when no answer comes", async () => {
  const [a, b] = pipe();
  try {
    const reason = new Error("no answer");
    const signal = AbortSignal.timeout(50);
    const error = await settled(deliverChallenge(a, KEY, { signal }));
    assertInstanceOf(error, DOMException);
    assertEquals((error as DOMException).name, "TimeoutError");
    const challenge = await b.read() as Uint8Array;
    assert(startsWith(challenge, CHALLENGE), "no challenge was sent");
    const controller = new AbortController();
    const delivering = deliverChallenge(a, KEY, { signal: controller.signal });
    controller.abort(reason);
    assertStrictEquals(await settled(delivering), reason);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("answerChallenge() rejects what is not a challenge with AuthenticationError", async () => {
  const messages: [string, unknown, string][] = [
    ["a string", "#CHALLENGE#", "during the challenge"],
    ["a map", { challenge: true }, "during the challenge"],
    ["bytes without the prefix", encoder.encode("#WELCOME#"), "expected a challenge"],
    ["a challenge of 19 bytes", concat(CHALLENGE, random(19)), "too short"],
    ["257 bytes", concat(CHALLENGE, random(246)), "at most 256 bytes"],
    ["an unsupported digest", concat(CHALLENGE, prefixed("md4", random(40))), "unsupported"],
  ];
  for (const [label, message, included] of messages) {
    const [a, b] = pipe();
    try {
      await a.write(message);
      const error = await assertRejects(() => answerChallenge(b, KEY), AuthenticationError);
      assertStringIncludes(error.message, included, label);
    } finally {
      await a.close();
      await b.close();
    }
  }
});

Deno.test("deliverChallenge() rejects an answer that is not bytes with AuthenticationError", async () => {
  const [a, b] = pipe();
  try {
    const delivering = deliverChallenge(a, KEY);
    await b.read();
    await b.write({ digest: "in a map" });
    await assertRejects(() => delivering, AuthenticationError, "during the challenge");
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("answerChallenge() rejects with AuthenticationError when the peer closes mid-challenge", async () => {
  const [a, b] = pipe();
  const answering = answerChallenge(b, KEY);
  await a.close();
  const error = await assertRejects(() => answering, AuthenticationError);
  assertInstanceOf(error.cause, CommClosedError);
  await b.close();
});

Deno.test("deliverChallenge() rejects an authkey that is neither a string nor a Uint8Array with TypeError", async () => {
  const [a, b] = pipe();
  try {
    const keys = [42, null, undefined, new ArrayBuffer(4), [1, 2], new Uint16Array(2)];
    for (const key of keys) {
      if (key !== undefined) {
        // undefined is no authkey at all to listen().
        await assertRejects(
          () => listen("inproc://", { authkey: key as unknown as string }),
          TypeError,
          "Invalid authkey",
        );
      }
      await assertRejects(
        () => deliverChallenge(a, key as unknown as string),
        TypeError,
        "Invalid authkey",
      );
      await assertRejects(
        () => answerChallenge(a, key as unknown as string),
        TypeError,
        "Invalid authkey",
      );
    }
    assertEquals(await b.poll(), false, "something was sent with an invalid key");
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("deliverChallenge() rejects an empty authkey with RangeError", async () => {
  const [a, b] = pipe();
  try {
    for (const key of ["", new Uint8Array(0)]) {
      await assertRejects(() => deliverChallenge(a, key), RangeError, "empty");
      await assertRejects(() => answerChallenge(a, key), RangeError, "empty");
      await assertRejects(() => listen("inproc://", { authkey: key }), RangeError, "empty");
      await assertRejects(
        () => connect("inproc://nobody", { authkey: key, timeout: 1_000 }),
        RangeError,
        "empty",
      );
    }
    assertEquals(await b.poll(), false, "something was sent with an empty key");
  } finally {
    await a.close();
    await b.close();
  }
});

// A challenge aborted by its signal must not leave a read of the socket
// pending that takes the next bytes where nothing decodes them (before
// bf2e71d, the next message was lost and a later read or challenge hung).
Deno.test("answerChallenge() with a signal that aborts leaves a StreamComm readable", async () => {
  using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [near, far] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: server.addr.port }),
    server.accept(),
  ]);
  await using comm = new StreamComm(near, { localAddress: "raw://a", peerAddress: "raw://b" });
  await using peer = new StreamComm(far, { localAddress: "raw://b", peerAddress: "raw://a" });
  const reason = new Error("gave up");
  const controller = new AbortController();
  const answering = answerChallenge(comm, KEY, { signal: controller.signal });
  setTimeout(() => controller.abort(reason), 20); // once the wait is under way
  assertStrictEquals(await settled(answering), reason);
  await peer.write("after the aborted challenge");
  assertEquals(
    await within(comm.read(), 2_000, "the message after the aborted challenge"),
    "after the aborted challenge",
  );
  // And the challenge can be run again.
  await within(
    Promise.all([deliverChallenge(peer, KEY), answerChallenge(comm, KEY)]),
    2_000,
    "a second challenge",
  );
});

// -- Helpers ----------------------------------------------------------------------

async function echo(comm: Comm): Promise<void> {
  for await (const message of comm) await comm.write(message);
}

/** Marks a promise as handled at once, so that an early rejection is not reported as unhandled. */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  return promise;
}

/** Errors passed to a listener's onError, with a bounded wait for more. */
class Reports {
  readonly errors: unknown[] = [];
  #waiters: (() => void)[] = [];

  onError = (error: unknown): void => {
    this.errors.push(error);
    for (const wake of this.#waiters.splice(0)) wake();
  };

  /** The first `count` errors, once reported; fails after `ms`. */
  async atLeast(count: number, what = "", ms = 5_000): Promise<Error[]> {
    const deadline = performance.now() + ms;
    while (this.errors.length < count) {
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(
          `onError got ${this.errors.length} errors, expected ${count}${what && ` (${what})`}: ${
            this.errors.map(String).join("; ")
          }`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.errors.slice(0, count) as Error[];
  }
}

/** A tcp listener with the authkey KEY and a short handshakeTimeout. */
async function authListener(
  options: ListenOptions = {},
  handler: (comm: Comm) => Promise<void> = echo,
): Promise<{ listener: Listener; port: number; reports: Reports } & AsyncDisposable> {
  const reports = new Reports();
  const listener = await listen("tcp://127.0.0.1:0", handler, {
    authkey: KEY,
    handshakeTimeout: DEADLINE_MS,
    onError: reports.onError,
    ...options,
  });
  const [, port] = getAddressHostPort(listener.contactAddress);
  return { listener, port, reports, [Symbol.asyncDispose]: () => listener.close() };
}

/** A raw tcp listener that serves one connection with `serve`. */
function rawServer(
  serve: (peer: RawPeer) => Promise<void>,
): { address: string; done: Promise<void> } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    using peer = new RawPeer(await listener.accept());
    await serve(peer);
  })();
  done.catch(() => {}); // awaited by the case; not unhandled meanwhile
  return {
    address: `tcp://127.0.0.1:${listener.addr.port}`,
    done,
    async [Symbol.asyncDispose]() {
      listener.close();
      await done.catch(() => {});
    },
  };
}

/** A socket that speaks bytes built by hand, with a buffer for reading whole messages. */
class RawPeer implements Disposable {
  readonly conn: Deno.Conn;
  #pending: Uint8Array = new Uint8Array(0);
  #closed = false;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  static async dial(port: number): Promise<RawPeer> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new RawPeer(conn);
  }

  async send(bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length;) at += await this.conn.write(bytes.subarray(at));
  }

  /** Reads more; false at the end of the stream. */
  async #more(): Promise<boolean> {
    const buffer = new Uint8Array(64 * 1024);
    const n = await this.conn.read(buffer);
    if (n === null) return false;
    this.#pending = concat(this.#pending, buffer.subarray(0, n));
    return true;
  }

  async take(n: number): Promise<Uint8Array> {
    while (this.#pending.length < n) {
      if (!await this.#more()) {
        throw new Error(`The peer hung up after ${this.#pending.length} of ${n} bytes`);
      }
    }
    const bytes = this.#pending.slice(0, n);
    this.#pending = this.#pending.subarray(n);
    return bytes;
  }

  /** The one frame of the next dask message. */
  async readDask(): Promise<Uint8Array> {
    const head = new DataView((await this.take(16)).buffer);
    const count = head.getBigUint64(8, true);
    assertEquals(count, 1n, "a challenge message of more than one frame");
    const length = new DataView((await this.take(8)).buffer).getBigUint64(0, true);
    assert(length <= 256n, `a challenge message of ${length} bytes`);
    return await this.take(Number(length));
  }

  /** The next multiprocessing message. */
  async readMp(): Promise<Uint8Array> {
    const length = new DataView((await this.take(4)).buffer).getInt32(0, false);
    assert(length >= 0, `a long multiprocessing length (${length})`);
    return await this.take(length);
  }

  /**
   * Reads until the other end hangs up (end of stream or reset); resolves
   * with what was left to read. Fails if it is still open after `ms`.
   */
  async end(ms = 5_000): Promise<Uint8Array> {
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      this.close();
    }, ms);
    try {
      while (await this.#more());
      return this.#pending;
    } catch (error) {
      if (late) throw new Error(`The other end was still open after ${ms} ms`);
      if (error instanceof Deno.errors.ConnectionReset) return this.#pending;
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** How a raw peer frames its messages. */
interface RawFraming {
  frame(body: Uint8Array): Uint8Array;
  read(peer: RawPeer): Promise<Uint8Array>;
}

const DASK: RawFraming = { frame: daskFrame, read: (peer) => peer.readDask() };
const MP: RawFraming = { frame: mpFrame, read: (peer) => peer.readMp() };

/** Reads the listener's challenge; returns it without `#CHALLENGE#`. */
async function readChallenge(peer: RawPeer, framing = DASK): Promise<Uint8Array> {
  const message = await framing.read(peer);
  assert(startsWith(message, CHALLENGE), `expected a challenge, got "${text(message)}"`);
  return message.subarray(CHALLENGE.length);
}

/**
 * Python's Client side of the challenge against our listener: answers its
 * challenge in `answerDigest` ("" for Python 3.11's bare MD5), then
 * delivers `challenge` and checks the answer.
 */
async function authenticateAsPython(
  peer: RawPeer,
  key: string,
  { framing = DASK, answerDigest = "sha256", challenge = prefixed("sha256", random(40)) } = {},
): Promise<void> {
  const theirs = await readChallenge(peer, framing);
  await peer.send(framing.frame(answerTo(key, theirs, answerDigest)));
  assertEquals(text(await framing.read(peer)), "#WELCOME#", "our answer was refused");
  await peer.send(framing.frame(concat(CHALLENGE, challenge)));
  assertEquals(await framing.read(peer), expectedAnswer(key, challenge));
  await peer.send(framing.frame(WELCOME));
}

/**
 * Reads the other end's handshake, then sends ours: so that nothing we send
 * after the challenge arrives with our last challenge message.
 */
async function daskHandshake(peer: RawPeer): Promise<void> {
  const theirs = decode(await peer.readDask()) as Record<string, unknown>;
  assertEquals(theirs["pickle-protocol"], 5, "not dask's handshake");
  await peer.send(daskFrame(encode(HANDSHAKE)));
}

async function echoOnce(peer: RawPeer, message: unknown): Promise<unknown> {
  await peer.send(daskFrame(encode(message)));
  return decode(await peer.readDask());
}

/** An answer to `challenge` in the digest `digest` (Python's name), or bare MD5 for "". */
function answerTo(key: string, challenge: Uint8Array, digest: string): Uint8Array {
  const mac = hmac(DIGESTS[digest] ?? "md5", key, challenge);
  return digest === "" ? mac : prefixed(digest, mac);
}

/** The answer CPython gives to `challenge`: in the digest it names, bare MD5 to a legacy one. */
function expectedAnswer(key: string, challenge: Uint8Array): Uint8Array {
  if (challenge.length === 20) return hmac("md5", key, challenge);
  const name = text(challenge).match(/^\{([a-z0-9_]+)\}/)?.[1] ?? "";
  return prefixed(name, hmac(DIGESTS[name], key, challenge));
}

function hmac(digest: string, key: string | Uint8Array, message: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac(digest, key).update(message).digest());
}

function prefixed(digest: string, bytes: Uint8Array): Uint8Array {
  return concat(encoder.encode(`{${digest}}`), bytes);
}

/** One message, framed as multiprocessing.connection does (under 2 GiB). */
function mpFrame(body: Uint8Array): Uint8Array {
  return concat(int32(body.length), body);
}

function int32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, false);
  return bytes;
}

function u64be(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, false);
  return bytes;
}

function random(length: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(length));
}

function concat(...parts: ArrayLike<number>[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && prefix.every((byte, i) => bytes[i] === byte);
}

/** Bytes as text, with what is not printable escaped, for messages and comparisons. */
function text(bytes: Uint8Array): string {
  return Array.from(
    bytes,
    (byte) => byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16)}`,
  ).join("");
}

/** What `promise` rejects with (or resolves to), within a bound that only a hang exceeds. */
function settled(promise: Promise<unknown>): Promise<unknown> {
  return within(promise.catch((error) => error), 5_000, "the call");
}

/** Settles with `promise`, or fails naming `what` if it takes over `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("connect() without an authkey to a listener with one says the listener wants one", async () => {
  await using server = await authListener();
  const error = await assertRejects(
    () => connect(server.listener.contactAddress, { timeout: 5_000 }),
    ConnectError,
  );
  assertStringIncludes(error.message, "authkey challenge: connect with the authkey option");
  const [report] = await server.reports.atLeast(1);
  assertInstanceOf(report, AuthenticationError);
  assertStringIncludes((report as Error).message, "(a peer without the authkey?)");
});
