/**
 * Authentication: only peers that know a shared key get in.
 *
 * The HMAC challenge-response of Python's `multiprocessing.connection`,
 * wire-compatible with it (CPython 3.12+'s `{sha256}` challenges, and the
 * HMAC-MD5 form of Python 3.11 and older). The `authkey` option of
 * `connect()` and `listen()` runs it on every new comm; these functions run
 * it on a comm you already have.
 *
 * @example Authenticating a comm by hand
 * ```ts
 * import { answerChallenge, deliverChallenge } from "@x/comm/auth";
 * import { type Comm, connect, listen } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const key = "shared secret";
 * await using listener = await listen("tcp://127.0.0.1:0", async (comm: Comm) => {
 *   await deliverChallenge(comm, key);
 *   await answerChallenge(comm, key);
 *   await comm.write("welcome");
 * });
 * await using comm = await connect(listener.contactAddress);
 * await answerChallenge(comm, key);
 * await deliverChallenge(comm, key);
 * assertEquals(await comm.read(), "welcome");
 * ```
 *
 * @module
 */

export { answerChallenge, type ChallengeOptions, deliverChallenge } from "./challenge.ts";
export type { AuthDigest } from "../comm/types.ts";
export { AuthenticationError } from "../comm/errors.ts";
