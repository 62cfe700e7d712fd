// The `comm` tool (cli.ts) driven as a user drives it: each case runs
// `deno run cli.ts …` in a subprocess, against a real listener on loopback
// (a Server started here, or `cli.ts listen` in another subprocess), and
// checks stdout, stderr and the exit status. The dask case is skipped when
// /usr/bin/python3 has no dask.

import { fromFileUrl, join } from "@std/path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { connect, listen, Server } from "../mod.ts";
import { main } from "../cli.ts";
import { within } from "./_wait.ts";
import { DaskScheduler, daskUnavailable } from "./_dask.ts";

const CLI = fromFileUrl(new URL("../cli.ts", import.meta.url));
const TESTDATA = fromFileUrl(new URL("./testdata/", import.meta.url));
const CA_FILE = join(TESTDATA, "ca.pem");
const SERVER_CERT_FILE = join(TESTDATA, "server.pem");
const SERVER_KEY_FILE = join(TESTDATA, "server-key.pem");
const COMMANDS = ["listen", "send", "call", "ping", "bench"];

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cli.ts ARGS` to its end, within the hang guard. */
async function comm(...args: string[]): Promise<Ran> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", CLI, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  try {
    const { code, stdout, stderr } = await within(output, `comm ${args.join(" ")}`);
    const decoder = new TextDecoder();
    return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
  } finally {
    kill(child);
    await output.catch(() => {});
  }
}

function kill(child: Deno.ChildProcess, signal: Deno.Signal = "SIGKILL") {
  try {
    child.kill(signal);
  } catch {
    // It exited already.
  }
}

/** Asserts that nothing printed holds a stack trace. */
function assertNoStack(ran: Ran) {
  for (const text of [ran.stdout, ran.stderr]) {
    assert(!/^\s+at /m.test(text), `a stack trace was printed:\n${text}`);
  }
}

/** Asserts a failure with exit status `code` and one line on stderr. */
function assertFails(ran: Ran, code: number, includes: string) {
  assertEquals(ran.code, code, `exit status, stderr: ${ran.stderr}`);
  assertNoStack(ran);
  const lines = ran.stderr.trimEnd().split("\n");
  assertEquals(lines.length, 1, `expected one line on stderr, got:\n${ran.stderr}`);
  assertStringIncludes(lines[0], includes);
}

/**
 * `cli.ts listen ARGS` in a subprocess, once it says where it listens.
 * Disposing it sends SIGTERM and waits for it to exit.
 */
class ListenProcess implements AsyncDisposable {
  readonly address: string;
  readonly #child: Deno.ChildProcess;
  readonly #stdout: Promise<string>;
  readonly #stderr: Promise<string>;

  private constructor(
    child: Deno.ChildProcess,
    stdout: Promise<string>,
    stderr: Promise<string>,
    address: string,
  ) {
    this.#child = child;
    this.#stdout = stdout;
    this.#stderr = stderr;
    this.address = address;
  }

  static async start(...args: string[]): Promise<ListenProcess> {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", CLI, "listen", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdout = new Response(child.stdout).text();
    const listening = Promise.withResolvers<string>();
    const stderr = (async () => {
      let text = "";
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        text += chunk;
        const match = /^listening on (\S+)$/m.exec(text);
        if (match) listening.resolve(match[1]);
      }
      listening.reject(new Error(`comm listen exited without listening:\n${text}`));
      return text;
    })();
    try {
      const address = await within(listening.promise, "comm listen to say its address");
      return new ListenProcess(child, stdout, stderr, address);
    } catch (error) {
      kill(child);
      await Promise.allSettled([child.status, stdout, stderr]);
      throw error;
    }
  }

  /** Waits for the process to exit by itself. */
  async exited(): Promise<Ran> {
    const { code } = await within(this.#child.status, "comm listen to exit");
    return { code, stdout: await this.#stdout, stderr: await this.#stderr };
  }

  /** Sends `signal`, then waits for the process to exit. */
  stop(signal: Deno.Signal = "SIGTERM"): Promise<Ran> {
    kill(this.#child, signal);
    return this.exited();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    kill(this.#child);
    await Promise.allSettled([this.#child.status, this.#stdout, this.#stderr]);
  }
}

/** A loopback address where nothing listens. */
async function deadAddress(): Promise<string> {
  const listener = await listen("tcp://127.0.0.1:0");
  const address = listener.listenAddress;
  await listener.close();
  return address;
}

function jsonLines(text: string): unknown[] {
  return text.trimEnd().split("\n").filter((line) => line !== "").map((line) => JSON.parse(line));
}

Deno.test("comm --help lists the commands, and every command has --help", async () => {
  const [tool, ...commands] = await Promise.all([
    comm("--help"),
    ...COMMANDS.map((command) => comm(command, "--help")),
  ]);
  assertEquals(tool.code, 0);
  assertStringIncludes(tool.stdout, "Usage: comm <command>");
  for (const command of COMMANDS) assertStringIncludes(tool.stdout, `  ${command} `);
  for (const [i, command] of COMMANDS.entries()) {
    const ran = commands[i];
    assertEquals(ran.code, 0, ran.stderr);
    assertMatch(ran.stdout, new RegExp(`^Usage: comm ${command}\\b`));
    assertStringIncludes(ran.stdout, "-h, --help");
    assertEquals(ran.stderr, "");
  }
  const help = await comm("help", "ping");
  assertEquals(help.code, 0);
  assertMatch(help.stdout, /^Usage: comm ping ADDRESS/);
});

Deno.test("comm call prints the replies of a Server's identity and echo", async () => {
  await using server = new Server({}, { id: "cli-test-server" });
  await server.listen("tcp://127.0.0.1:0");
  const [identity, echo] = await Promise.all([
    comm("call", server.address, "identity"),
    comm("call", server.address, "echo", '{"data": {"n": [1, 2, 3], "s": "text"}}'),
  ]);
  assertEquals(identity.code, 0, identity.stderr);
  assertEquals(JSON.parse(identity.stdout), { type: "Server", id: "cli-test-server" });
  assertStringIncludes(identity.stdout, '\n  "type": "Server"'); // Indented for reading.
  assertEquals(echo.code, 0, echo.stderr);
  assertEquals(JSON.parse(echo.stdout), { n: [1, 2, 3], s: "text" });
  assertNoStack(identity);
  assertNoStack(echo);
});

Deno.test("comm call shows binary values readably and says so, and sends them", async () => {
  await using server = new Server({
    bytes: () => ({
      text: new TextEncoder().encode("hello"),
      raw: new Uint8Array([0, 1, 2, 255]),
      long: new Uint8Array(1000).fill(0x41),
      big: 2n ** 63n,
      set: new Set(["a"]),
    }),
    kind: ({ data }) => data instanceof Uint8Array ? [...data] : typeof data,
  });
  await server.listen("tcp://127.0.0.1:0");
  const [shown, sent] = await Promise.all([
    comm("call", server.address, "bytes"),
    comm("call", server.address, "kind", '{"data": {"$binary": "AAEC/w==", "encoding": "base64"}}'),
  ]);
  assertEquals(shown.code, 0, shown.stderr);
  assertEquals(JSON.parse(shown.stdout), {
    text: { $binary: "hello", encoding: "utf8", bytes: 5 },
    raw: { $binary: "AAEC/w==", encoding: "base64", bytes: 4 },
    long: { $binary: "A".repeat(256), encoding: "utf8", bytes: 1000, truncated: true },
    big: { $bigint: "9223372036854775808" },
    set: { $set: ["a"] },
  });
  // Each binary stays on one line of the indented output.
  assertStringIncludes(
    shown.stdout,
    '"text": {"$binary": "hello", "encoding": "utf8", "bytes": 5}',
  );
  assertStringIncludes(shown.stderr, "binary values are shown as");
  assertEquals(sent.code, 0, sent.stderr);
  assertEquals(JSON.parse(sent.stdout), [0, 1, 2, 255]);
  assertEquals(sent.stderr, "");
});

Deno.test("comm call prints an error reply as one line and exits 1", async () => {
  await using server = new Server({
    fail: () => {
      throw new RangeError("out of range\nwith a second line");
    },
  }, { onError: () => {} });
  await server.listen("tcp://127.0.0.1:0");
  const ran = await comm("call", server.address, "fail");
  assertFails(ran, 1, "RangeError: out of range with a second line");
  assertEquals(ran.stdout, "");
});

Deno.test("comm send delivers messages that comm listen prints as JSON lines", async () => {
  await using listener = await ListenProcess.start("tcp://127.0.0.1:0", "--count", "3");
  const sent = await comm(
    "send",
    listener.address,
    '"hello"',
    '{"op": "x", "values": [1, 2.5, null]}',
    "--",
    "-7",
  );
  assertEquals(sent.code, 0, sent.stderr);
  assertEquals(sent.stdout, "");
  assertStringIncludes(sent.stderr, `sent 3 messages to ${listener.address}`);
  const listened = await listener.exited();
  assertEquals(listened.code, 0, listened.stderr);
  assertNoStack(listened);
  const lines = jsonLines(listened.stdout) as { peer: string; message: unknown }[];
  assertEquals(lines.map((line) => line.message), [
    "hello",
    { op: "x", values: [1, 2.5, null] },
    -7,
  ]);
  for (const { peer } of lines) assertMatch(peer, /^tcp:\/\/127\.0\.0\.1:\d+$/);
});

Deno.test("comm listen --echo answers comm send --read and comm ping --raw", async () => {
  await using listener = await ListenProcess.start("tcp://127.0.0.1:0", "--echo");
  const [sent, pinged] = await Promise.all([
    comm("send", listener.address, '{"$binary": "hi", "encoding": "utf8"}', "--read", "1"),
    comm("ping", listener.address, "--raw", "--count", "3", "--interval", "10"),
  ]);
  assertEquals(sent.code, 0, sent.stderr);
  assertEquals(JSON.parse(sent.stdout), { $binary: "hi", encoding: "utf8", bytes: 2 });
  assertEquals(pinged.code, 0, pinged.stderr);
  assertEquals(
    pinged.stdout.match(/^reply from tcp:\/\/127\.0\.0\.1:\d+: seq=\d time=/gm)?.length,
    3,
  );
  assertStringIncludes(pinged.stdout, "3 sent, 3 received, 0% lost");
  assertMatch(pinged.stdout, /^rtt min\/avg\/max = \d+\.\d{3}\/\d+\.\d{3}\/\d+\.\d{3} ms$/m);
  // SIGINT, as Ctrl-C: the listener closes and the process exits cleanly.
  const stopped = await listener.stop("SIGINT");
  assertEquals(stopped.code, 0, stopped.stderr);
  assertNoStack(stopped);
  assertEquals(jsonLines(stopped.stdout).length, 4); // One message, three pings.
});

Deno.test("comm ping calls a Server's echo operation", async () => {
  await using server = new Server({});
  await server.listen("tcp://127.0.0.1:0");
  const ran = await comm("ping", server.address, "-c", "2", "-i", "10", "--size", "1k");
  assertEquals(ran.code, 0, ran.stderr);
  assertStringIncludes(ran.stdout, `PING ${server.address}: the "echo" operation, 1024 bytes`);
  assertStringIncludes(ran.stdout, "2 sent, 2 received, 0% lost");
  assertMatch(ran.stdout, /^rtt min\/avg\/max = /m);
});

Deno.test("comm bench prints messages/s and MB/s for one transport", async () => {
  const ran = await comm("bench", "--transport", "tcp", "--duration", "200ms", "--size", "1k");
  assertEquals(ran.code, 0, ran.stderr);
  const [header, row, ...rest] = ran.stdout.trimEnd().split("\n");
  assertMatch(header, /^transport\s+messages\/s\s+MB\/s$/);
  assertMatch(row, /^tcp\s+[\d,]+\s+\d+\.\d+$/);
  assertEquals(rest, []);
  assert(!ran.stderr.includes("\r"), "no progress bar when stderr is not a terminal");
});

Deno.test("main() shows bench progress on a terminal for runs over a second", async () => {
  let stdout = "";
  let stderr = "";
  const code = await main(["bench", "-t", "inproc", "-d", "1.1"], {
    stdout: (text) => void (stdout += text),
    stderr: (text) => void (stderr += text),
    stderrIsTerminal: true,
    signal: new AbortController().signal,
  });
  assertEquals(code, 0, stderr);
  assertMatch(stderr, /\rinproc {2}\[#* *\] +\d+%/);
  assert(stderr.endsWith("\r\x1b[K"), "the progress bar is cleared at the end");
  assertMatch(stdout, /^inproc\s+[\d,]+\s+\d+\.\d+$/m);
});

Deno.test("comm --authkey works as a client and as a listener, and refuses a wrong key", async () => {
  await using server = new Server({}, { onError: () => {} });
  await server.listen("tcp://127.0.0.1:0", { authkey: "s3cret" });
  await using listener = await ListenProcess.start(
    "tcp://127.0.0.1:0",
    "--authkey",
    "s3cret",
    "--count",
    "1",
  );
  const [called, wrong, without] = await Promise.all([
    comm("call", server.address, "identity", "--authkey", "s3cret"),
    comm("call", server.address, "identity", "--authkey", "guess", "--timeout", "2000"),
    comm("call", server.address, "identity", "--timeout", "2000"),
  ]);
  assertEquals(called.code, 0, called.stderr);
  assertEquals((JSON.parse(called.stdout) as { type: string }).type, "Server");
  assertFails(wrong, 1, "comm call: ");
  assertStringIncludes(wrong.stderr, "rejected");
  assertFails(without, 1, "authkey");

  // A client of the listener must know its key.
  await using comm1 = await connect(listener.address, { authkey: "s3cret" });
  await comm1.write("authenticated");
  const listened = await listener.exited();
  assertEquals(listened.code, 0, listened.stderr);
  assertEquals(jsonLines(listened.stdout).map((line) => (line as { message: unknown }).message), [
    "authenticated",
  ]);
});

Deno.test("comm listen and send work over tls with --cert, --key and --ca-cert", async () => {
  await using listener = await ListenProcess.start(
    "tls://127.0.0.1:0",
    "--cert",
    SERVER_CERT_FILE,
    "--key",
    SERVER_KEY_FILE,
    "--count",
    "1",
  );
  assertMatch(listener.address, /^tls:\/\/127\.0\.0\.1:\d+$/);
  const untrusted = await comm("send", listener.address, "1", "--timeout", "2000");
  assertFails(untrusted, 1, "comm send: Cannot connect to");
  const sent = await comm("send", listener.address, '"over tls"', "--ca-cert", CA_FILE);
  assertEquals(sent.code, 0, sent.stderr);
  const listened = await listener.exited();
  assertEquals(listened.code, 0, listened.stderr);
  assertEquals((jsonLines(listened.stdout)[0] as { message: unknown }).message, "over tls");
});

Deno.test("comm says in one line that a peer is unreachable, and exits 1", async () => {
  const address = await deadAddress();
  const ran = await Promise.all([
    comm("call", address, "identity", "--timeout", "200"),
    comm("send", address, "1", "--timeout", "200ms"),
    comm("ping", address, "--timeout", "0.2s"),
  ]);
  for (const [i, name] of ["call", "send", "ping"].entries()) {
    assertFails(ran[i], 1, `comm ${name}: Cannot connect to "${address}"`);
    assertStringIncludes(ran[i].stderr, "within 200 ms");
    assertEquals(ran[i].stdout, "");
  }
});

Deno.test("comm refuses bad arguments in one line, with exit status 2", async () => {
  const address = await deadAddress();
  const cases: [args: string[], says: string][] = [
    [[], "comm: missing command"],
    [["frob"], 'comm: unknown command "frob"'],
    [["--timeout", "5"], 'comm: unknown option "--timeout" before the command'],
    [["help", "frob"], 'unknown command "frob"'],
    [["call"], "comm call: missing ADDRESS"],
    [["call", address], "comm call: missing OP"],
    [["call", address, "op", "{bad"], 'comm call: ARGS "{bad" is not JSON'],
    [["call", address, "op", "[1]"], 'comm call: ARGS "[1]" is not a JSON object'],
    [["call", address, "op", "{}", "extra"], 'comm call: unexpected argument "extra"'],
    [["call", "foo://x", "identity"], 'unknown scheme "foo"'],
    [["call", address, "identity", "--nope"], 'comm call: unknown option "--nope"'],
    [["call", address, "identity", "--timeout", "soon"], '--timeout "soon" is not a duration'],
    [["call", address, "identity", "--cert", "c.pem"], "--cert needs --key"],
    [
      ["call", address, "identity", "--ca-cert", join(TESTDATA, "missing.pem")],
      "cannot read --ca-cert file",
    ],
    [["send", address], "comm send: missing MESSAGE"],
    [["send", address, "1", "nope"], 'comm send: MESSAGE 2 "nope" is not JSON'],
    [["send", address, "-5"], 'unknown option "-5" (put values that start with "-" after "--")'],
    [["send", address, '{"$binary": "!!"}'], "is not base64"],
    [["ping", address, "--count"], "option --count needs a value"],
    [["ping", address, "--count", "-1"], "option --count needs a value"],
    [["ping", address, "--count", "two"], '--count "two" is not a whole number'],
    [["listen"], "comm listen: missing ADDRESS"],
    [
      ["listen", "tcp://127.0.0.1:0", "--count", "0"],
      '--count "0" is not a whole number of at least 1',
    ],
    [["listen", "tls://127.0.0.1:0"], "listening on tls:// needs --cert and --key"],
    [["bench", "--transport", "pigeon"], 'unknown transport "pigeon"'],
    [["bench", "--size", "lots"], '--size "lots" is not a size'],
    [["bench", "--transport", "tls"], "tls and wss need --cert and --key"],
  ];
  const results = await Promise.all(cases.map(([args]) => comm(...args)));
  for (const [i, [args, says]] of cases.entries()) {
    const ran = results[i];
    assertEquals(ran.code, 2, `comm ${args.join(" ")}: ${ran.stderr}`);
    assertFails(ran, 2, says);
    // Usage errors point to the help; an address error says it all.
    if (args[0] !== "call" || args[1] !== "foo://x") assertStringIncludes(ran.stderr, "--help");
    assertEquals(ran.stdout, "");
  }
});

// ---------------------------------------------------------------------------
// Against a real dask scheduler

const daskMissing = daskUnavailable();
if (daskMissing !== undefined) {
  console.warn(
    `comm call against dask skipped (apt-get install python3-distributed): ${daskMissing}`,
  );
}

Deno.test({
  name: "comm call prints the identity of a real dask scheduler",
  ignore: daskMissing !== undefined,
  async fn() {
    await using scheduler = await DaskScheduler.start();
    const ran = await comm("call", scheduler.address, "identity");
    assertEquals(ran.code, 0, ran.stderr);
    assertStringIncludes(ran.stdout, '"type": "Scheduler"');
    assertEquals((JSON.parse(ran.stdout) as { address: string }).address, scheduler.address);
    assertNoStack(ran);
  },
});
