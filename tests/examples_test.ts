// Every example under examples/ runs end to end, as its header says: a
// subprocess `deno run` with exactly the permissions a `deno run` line in its
// header states (never --allow-all, so those are proven enough), on loopback
// and port 0, checked for its exit code and the lines it prints.
//
// EXAMPLES maps every entry of examples/ to how it is run, or to the test
// that covers it; an example missing from the table fails the first case.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { fromFileUrl, join } from "@std/path";
import { connect, Server } from "../mod.ts";
import { within } from "./_wait.ts";
import { DaskScheduler, daskUnavailable, PYTHON } from "./_dask.ts";

const ROOT = new URL("../", import.meta.url);
const EXAMPLES_DIR = new URL("examples/", ROOT);
/** Longest an example may run, or take to print a line we wait for. */
const RUN_MS = 30_000;

type Permission = "--allow-net" | "--allow-read" | "--allow-write" | "--allow-run";

/** How one entry of examples/ is tested: run here, or covered elsewhere. */
type Example = { coveredBy: string } | { name: string; fn: () => Promise<void> };

const EXAMPLES: Record<string, Example> = {
  "browser/": { coveredBy: "tests/browser_test.ts (headless Chromium loads the page)" },
  "switchboard_pingpong.ts": { coveredBy: "tests/switchboard_test.ts (two processes)" },
  "hello.ts": {
    name: "listens and connects over inproc, tcp and unix in one process",
    fn: testHello,
  },
  "echo_server.ts": {
    name: "echoes echo_client.ts over tcp, serves unix, and stops on SIGINT",
    fn: testEchoServer,
  },
  "echo_client.ts": {
    name: "round-trips its messages through echo_server.ts (tested with it)",
    fn: testEchoServer,
  },
  "tls_echo.ts": {
    name: "round-trips over tls with the test certificates and is refused with another CA",
    fn: testTlsEcho,
  },
  "authkey.ts": {
    name: "lets in the right key, refuses a wrong one, and serves Python's Client",
    fn: testAuthkey,
  },
  "udp_receiver.ts": {
    name: "acknowledges udp_sender.ts's heartbeats and exits after --count",
    fn: testUdp,
  },
  "udp_sender.ts": {
    name: "gets every heartbeat acknowledged by udp_receiver.ts (tested with it)",
    fn: testUdp,
  },
  "udp_multicast.ts": {
    name: "delivers every message to both members of a group on loopback",
    fn: testUdpMulticast,
  },
  "rpc.ts": {
    name: "calls a Server with rpc(), a ConnectionPool and a BatchedSend",
    fn: testRpc,
  },
  "ws_echo.ts": {
    name: "serves HTTP and echoes a Deno client over ws://",
    fn: testWsEcho,
  },
  "dask_identity.ts": {
    name: "prints a Server's identity, and a dask scheduler's where dask is installed",
    fn: testDaskIdentity,
  },
  "tour.ts": {
    name: "(deno task demo) prints a row for every transport",
    fn: testTour,
  },
};

Deno.test("examples/ has an entry in EXAMPLES for every file, and no other", async () => {
  const entries: string[] = [];
  for await (const entry of Deno.readDir(EXAMPLES_DIR)) {
    entries.push(entry.isDirectory ? `${entry.name}/` : entry.name);
  }
  assertEquals(
    Object.keys(EXAMPLES).sort(),
    entries.sort(),
    "every file in examples/ needs a row in EXAMPLES (tests/examples_test.ts)",
  );
});

// A file tested with another (a client with its server) runs once.
const registered = new Set<() => Promise<void>>();
for (const [file, example] of Object.entries(EXAMPLES)) {
  if ("coveredBy" in example || registered.has(example.fn)) continue;
  registered.add(example.fn);
  const also = Object.entries(EXAMPLES)
    .filter(([other, e]) => other !== file && "fn" in e && e.fn === example.fn)
    .map(([other]) => ` (with examples/${other})`).join("");
  Deno.test(`examples/${file} ${example.name}${also}`, example.fn);
}

// ---------------------------------------------------------------------------
// The examples

async function testHello() {
  const run = await runExample("hello.ts", ["--allow-net", "--allow-read", "--allow-write"]);
  assertSucceeded(run);
  for (const scheme of ["inproc", "tcp", "unix"]) {
    assertMatch(run.stdout, new RegExp(`^${scheme}: listening on ${scheme}://`, "m"));
    assertMatch(run.stdout, new RegExp(`^${scheme}: server got "hello from ${scheme}://`, "m"));
    assertStringIncludes(run.stdout, `${scheme}: client got {"reply":"hi","bytes":3}`);
  }
  assertMatch(
    run.stdout,
    /^tcp: scheme "tcp", location "127\.0\.0\.1:\d+", host "127\.0\.0\.1", port [1-9]\d*$/m,
  );

  // Without unix, --allow-net is enough, as the header says.
  const netOnly = await runExample("hello.ts", ["--allow-net"], ["inproc://", "tcp://127.0.0.1:0"]);
  assertSucceeded(netOnly);
  assertStringIncludes(netOnly.stdout, `tcp: client got {"reply":"hi","bytes":3}`);
  assert(!netOnly.stdout.includes("unix:"), netOnly.stdout);
}

async function testEchoServer() {
  {
    await using server = startExample("echo_server.ts", ["--allow-net"], ["tcp://127.0.0.1:0"]);
    const [, address] = await server.waitFor(/^Connect to (tcp:\/\/127\.0\.0\.1:\d+)$/m);
    const client = await runExample("echo_client.ts", ["--allow-net"], [address]);
    assertSucceeded(client);
    assertMatch(
      client.stdout,
      new RegExp(`^Connected to ${address} from tcp://127\\.0\\.0\\.1:\\d+$`, "m"),
    );
    assertStringIncludes(client.stdout, `sent "hello" got "hello"`);
    assertStringIncludes(
      client.stdout,
      `sent {"op":"add","numbers":[1,2,3]} got {"op":"add","numbers":[1,2,3]}`,
    );
    assertStringIncludes(client.stdout, `sent {"bytes":"<4 bytes>"} got {"bytes":"<4 bytes>"}`);
    assertStringIncludes(client.stdout, `{"big":"<1048576 bytes>"`);
    await server.waitFor(/^- tcp:\/\/127\.0\.0\.1:\d+$/m);
    const stopped = await server.stop("SIGINT");
    assertSucceeded(stopped);
    assertStringIncludes(stopped.stdout, "Echo server listening on tcp://127.0.0.1:");
  }

  // The unix line of its header; driven from here, echo_client.ts states tcp only.
  const dir = await Deno.makeTempDir({ prefix: "x-comm-examples-" });
  try {
    const address = `unix://${join(dir, "echo.sock")}`;
    await using server = startExample(
      "echo_server.ts",
      ["--allow-net", "--allow-read", "--allow-write"],
      [address],
    );
    await server.waitFor(new RegExp(`^Connect to ${address}$`, "m"));
    {
      await using comm = await connect(address, { timeout: RUN_MS });
      await comm.write({ over: "unix" });
      assertEquals(await within(comm.read(), "the unix echo"), { over: "unix" });
    }
    assertSucceeded(await server.stop("SIGINT"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function testTlsEcho() {
  const run = await runExample("tls_echo.ts", ["--allow-net", "--allow-read"]);
  assertSucceeded(run);
  assertMatch(run.stdout, /^Listening on tls:\/\/127\.0\.0\.1:\d+$/m);
  assertStringIncludes(
    run.stdout,
    `Trusting ca.pem: sent "hello over TLS", got back "hello over TLS"`,
  );
  assertMatch(
    run.stdout,
    /^Trusting other-ca\.pem: refused \(ConnectError: .*not signed by a trusted CA/m,
  );

  // The second line of its header: the certificates as arguments, here
  // relative to tests/testdata/.
  const withArgs = await runExample("tls_echo.ts", ["--allow-net", "--allow-read"], [
    "--cert",
    "server.pem",
    "--key",
    "server-key.pem",
    "--ca",
    "ca.pem",
    "--address",
    "tls://127.0.0.1:0",
  ], { cwd: fromFileUrl(new URL("tests/testdata/", ROOT)) });
  assertSucceeded(withArgs);
  assertStringIncludes(withArgs.stdout, `got back "hello over TLS"`);
  assertStringIncludes(withArgs.stdout, "Trusting other-ca.pem: refused");
}

async function testAuthkey() {
  const run = await runExample("authkey.ts", ["--allow-net"]);
  assertSucceeded(run);
  assertMatch(run.stdout, /^Listening on tcp:\/\/127\.0\.0\.1:\d+ \(authkey "secret"/m);
  assertStringIncludes(run.stdout, `Right key: sent "hello", got "HELLO"`);
  assertMatch(run.stdout, /^Wrong key: refused \(AuthenticationError: /m);
  assertMatch(run.stdout, /^Refused a peer: /m);

  await using server = startExample("authkey.ts", ["--allow-net"], ["serve", "tcp://127.0.0.1:0"]);
  const [, port] = await server.waitFor(/^Listening on tcp:\/\/127\.0\.0\.1:(\d+) /m);
  const unavailable = commandMissing(PYTHON, ["--version"]);
  if (unavailable) {
    console.warn(`examples/authkey.ts: the Python client in its header skipped: ${unavailable}`);
  } else {
    // The Python client exactly as the header prints it.
    const python = await output(PYTHON, ["-c", pythonSnippet("authkey.ts"), port]);
    assertSucceeded(python, "the header's Python client");
    assertEquals(python.stdout.trim(), "HELLO FROM PYTHON");
    await server.waitFor(/^tcp:\/\/127\.0\.0\.1:\d+: "hello from python"$/m);
  }
  const stopped = await server.stop("SIGINT");
  assertSucceeded(stopped);
  assertStringIncludes(stopped.stdout, "Stopping");
}

async function testUdp() {
  await using receiver = startExample(
    "udp_receiver.ts",
    ["--allow-net"],
    ["udp://127.0.0.1:0", "--count", "5"],
  );
  const [, address] = await receiver.waitFor(/^Listening on (udp:\/\/127\.0\.0\.1:\d+) /m);
  const sender = await runExample("udp_sender.ts", ["--allow-net"], [address, "5"]);
  assertSucceeded(sender);
  assertStringIncludes(sender.stdout, `Sent 5 heartbeat(s) to ${address}; 5 acknowledged`);
  const received = await receiver.exited();
  assertSucceeded(received);
  assertStringIncludes(received.stdout, "Received 5 message(s)");
  assertMatch(received.stdout, /^from udp:\/\/127\.0\.0\.1:\d+: \{ seq: 5, at: "/m);
}

async function testUdpMulticast() {
  const run = await runExample("udp_multicast.ts", ["--allow-net"], ["239.255.42.98", "3"]);
  assertSucceeded(run);
  assertMatch(run.stdout, /^2 members of 239\.255\.42\.98 on port \d+, joined on 127\.0\.0\.1$/m);
  assertStringIncludes(
    run.stdout,
    `member 2 got {"seq":3,"text":"to the group"} from udp://127.0.0.1:`,
  );
  assertMatch(
    run.stdout,
    /^Sent 3 message\(s\) to udp:\/\/239\.255\.42\.98:\d+; member 1 got 3, member 2 got 3$/m,
  );
}

async function testRpc() {
  const run = await runExample("rpc.ts", ["--allow-net"], ["tcp://127.0.0.1:0"]);
  assertSucceeded(run);
  assertMatch(run.stdout, /^Server Server-[\w-]+ on tcp:\/\/127\.0\.0\.1:\d+$/m);
  assertStringIncludes(run.stdout, "rpc: add(1, 2) = 3");
  assertStringIncludes(
    run.stdout,
    "rpc: divide(1, 0) failed remotely: RangeError: Division by zero",
  );
  assertStringIncludes(run.stdout, "pool: 100 calls over 4 comms (limit 4), sum 5050");
  assertMatch(run.stdout, /^batched: 1000 messages in \d+ write\(s\), the server handled 1000$/m);

  const unix = await runExample("rpc.ts", ["--allow-net", "--allow-read", "--allow-write"], [
    "unix://",
  ]);
  assertSucceeded(unix);
  assertMatch(unix.stdout, /^Server Server-[\w-]+ on unix:\/\//m);
  assertStringIncludes(unix.stdout, "the server handled 1000");
}

async function testWsEcho() {
  const run = await runExample("ws_echo.ts", ["--allow-net"], ["ws://127.0.0.1:0/comm"]);
  assertSucceeded(run);
  const [, port] = matchOf(run.stdout, /^Listening on ws:\/\/127\.0\.0\.1:(\d+)\/comm$/m);
  assertStringIncludes(run.stdout, `GET http://127.0.0.1:${port}/: 200 "Comms are at /comm"`);
  assertMatch(
    run.stdout,
    new RegExp(
      `^Connected from ws://127\\.0\\.0\\.1:\\d+ to ws://127\\.0\\.0\\.1:${port}/comm$`,
      "m",
    ),
  );
  assertStringIncludes(run.stdout, `sent "hello" got "hello"`);
  assertStringIncludes(run.stdout, "sent <1048576 bytes> got <1048576 bytes>");
}

async function testDaskIdentity() {
  const usage = await runExample("dask_identity.ts", ["--allow-net"], []);
  assertEquals(usage.code, 2, usage.stderr);
  assertStringIncludes(usage.stderr, "Usage: deno run --allow-net examples/dask_identity.ts");

  // Our own Server, which its header says it works with too.
  {
    await using server = new Server({});
    await server.listen("tcp://127.0.0.1:0");
    const run = await runExample("dask_identity.ts", ["--allow-net"], [server.address]);
    assertSucceeded(run);
    assertEquals(JSON.parse(run.stdout), { type: "Server", id: server.id });
  }

  const unavailable = daskUnavailable();
  if (unavailable) {
    console.warn(
      `examples/dask_identity.ts against a dask scheduler skipped ` +
        `(apt-get install python3-distributed): ${unavailable}`,
    );
    return;
  }
  await using scheduler = await DaskScheduler.start();
  const run = await runExample("dask_identity.ts", ["--allow-net"], [scheduler.address]);
  assertSucceeded(run);
  const identity = JSON.parse(run.stdout);
  assertEquals(identity.type, "Scheduler");
  assertEquals(identity.id, scheduler.id);
  assertEquals(identity.address, scheduler.address);
}

async function testTour() {
  const run = await runExample("tour.ts", ["--allow-net", "--allow-read", "--allow-write"]);
  assertSucceeded(run);
  for (const transport of ["inproc", "tcp", "tls", "unix", "ws", "wss", "udp"]) {
    assertMatch(run.stdout, new RegExp(`^${transport} +\\d+ +[\\d,]+ `, "m"));
  }
}

// ---------------------------------------------------------------------------
// Running examples

interface Output {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  /** The working directory. @default the repository root */
  cwd?: string;
}

/** The `deno run` command line of `file`, after checking its header states `permissions`. */
function denoRun(file: string, permissions: Permission[], args: string[]): string[] {
  const stated = statedPermissions(file);
  const wanted = [...permissions].sort().join(" ");
  assert(
    stated.some((set) => set.join(" ") === wanted),
    `examples/${file}'s header has no "deno run ${permissions.join(" ")} examples/${file}" ` +
      `line; it states: ${stated.map((set) => JSON.stringify(set.join(" "))).join(", ")}`,
  );
  return ["run", ...permissions, fromFileUrl(new URL(file, EXAMPLES_DIR)), ...args];
}

/** The permission flags of each `deno run … examples/<file>` line in the file's header. */
function statedPermissions(file: string): string[][] {
  const header = headerOf(file).replace(/\\\n \*\s*/g, " ");
  const escaped = file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const lines = header.matchAll(
    new RegExp(`deno run((?: --[\\w-]+(?:=\\S+)?)*) examples/${escaped}\\b`, "g"),
  );
  return [...lines].map(([, flags]) => flags.trim().split(/\s+/).filter(Boolean).sort());
}

/** The file's leading doc comment. */
function headerOf(file: string): string {
  const text = Deno.readTextFileSync(new URL(file, EXAMPLES_DIR));
  const end = text.indexOf("*/");
  assert(text.startsWith("/**") && end !== -1, `examples/${file} has no header doc comment`);
  return text.slice(0, end);
}

/** The ```python block of the file's header, without the comment's ` * ` prefixes. */
function pythonSnippet(file: string): string {
  const lines = headerOf(file).split("\n").map((line) => line.replace(/^ \*( |$)/, ""));
  const start = lines.indexOf("```python");
  const end = lines.indexOf("```", start + 1);
  assert(start !== -1 && end !== -1, `examples/${file}'s header has no \`\`\`python block`);
  return lines.slice(start + 1, end).join("\n");
}

/** Runs an example to its end, within RUN_MS. */
function runExample(
  file: string,
  permissions: Permission[],
  args: string[] = [],
  options: RunOptions = {},
): Promise<Output> {
  return output(Deno.execPath(), denoRun(file, permissions, args), options, `examples/${file}`);
}

/** Runs a command to its end within RUN_MS (else kills it and fails), collecting its output. */
async function output(
  command: string,
  args: string[],
  options: RunOptions = {},
  what = command,
): Promise<Output> {
  await using child = new Child(what, command, args, options);
  return await child.exited();
}

/** Starts an example that runs until stopped. */
function startExample(
  file: string,
  permissions: Permission[],
  args: string[] = [],
): Child {
  return new Child(
    `examples/${file}`,
    Deno.execPath(),
    denoRun(file, permissions, args),
    {},
  );
}

/**
 * A child process (an example, Python, dask) whose output is collected as it
 * comes; disposing kills it if it still runs.
 */
class Child implements AsyncDisposable {
  readonly #what: string;
  readonly #child: Deno.ChildProcess;
  readonly #status: Promise<Deno.CommandStatus>;
  readonly #pumps: Promise<void>;
  #exited = false;
  #stdout = "";
  #stderr = "";

  constructor(what: string, command: string, args: string[], options: RunOptions) {
    this.#what = what;
    this.#child = new Deno.Command(command, {
      args,
      cwd: options.cwd ?? fromFileUrl(ROOT),
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#status = this.#child.status.finally(() => this.#exited = true);
    this.#pumps = Promise.all([
      pump(this.#child.stdout, (text) => this.#stdout += text),
      pump(this.#child.stderr, (text) => this.#stderr += text),
    ]).then(() => {});
  }

  /** Whether it has not exited yet. */
  get running(): boolean {
    return !this.#exited;
  }

  /** What it printed so far. */
  get transcript(): string {
    return this.#transcript();
  }

  /** Waits for a line of output matching `pattern` (with the `m` flag); fails if it exits first. */
  async waitFor(pattern: RegExp): Promise<RegExpMatchArray> {
    const deadline = Date.now() + RUN_MS;
    for (;;) {
      const match = this.#stdout.match(pattern);
      if (match) return match;
      if (this.#exited || Date.now() > deadline) {
        await this.#pumps;
        throw new Error(
          `${this.#what} ${this.#exited ? "exited" : "printed nothing more"} before printing ` +
            `${pattern}:\n${this.#transcript()}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Waits for it to exit by itself. */
  async exited(): Promise<Output> {
    const status = await within(this.#status, `${this.#what} to exit`, RUN_MS)
      .catch(async (error) => {
        this.#kill("SIGKILL");
        await this.#status;
        await this.#pumps;
        throw new Error(`${error.message}:\n${this.#transcript()}`);
      });
    await this.#pumps;
    return { code: status.code, signal: status.signal, stdout: this.#stdout, stderr: this.#stderr };
  }

  /** Sends `signal` and waits for it to exit. */
  stop(signal: Deno.Signal): Promise<Output> {
    this.#kill(signal);
    return this.exited();
  }

  #kill(signal: Deno.Signal): void {
    if (this.#exited) return;
    try {
      this.#child.kill(signal);
    } catch {
      // It exited meanwhile.
    }
  }

  #transcript(): string {
    return `--- stdout\n${this.#stdout}--- stderr\n${this.#stderr}---`;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#kill("SIGKILL");
    await this.#status;
    await this.#pumps;
  }
}

async function pump(stream: ReadableStream<Uint8Array>, onText: (text: string) => void) {
  const decoder = new TextDecoder();
  for await (const chunk of stream) onText(decoder.decode(chunk, { stream: true }));
  onText(decoder.decode());
}

function assertSucceeded(run: Output, what = "the example"): void {
  assertEquals(
    run.code,
    0,
    `${what} exited with ${run.code}${run.signal ? ` (${run.signal})` : ""}:\n` +
      `--- stdout\n${run.stdout}--- stderr\n${run.stderr}---`,
  );
}

/** The match of `pattern` in `text`, which must have one. */
function matchOf(text: string, pattern: RegExp): RegExpMatchArray {
  const match = text.match(pattern);
  if (match === null) throw new Error(`Expected ${pattern} in:\n${text}`);
  return match;
}

/** Why `command` cannot run, or `undefined` when it can. */
function commandMissing(command: string, args: string[]): string | undefined {
  try {
    const result = new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    })
      .outputSync();
    if (result.success) return undefined;
    const lines = new TextDecoder().decode(result.stderr).trim().split("\n");
    return `${command} ${args.join(" ")} failed: ${lines[lines.length - 1]}`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}
