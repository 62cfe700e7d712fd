/**
 * `comm`, a command-line tool for poking comm servers from a terminal: this
 * library's, and dask.distributed's (a scheduler, a worker) alike.
 *
 * ```sh
 * deno run -A jsr:@x/comm/cli call tcp://127.0.0.1:8786 identity
 * deno run -A jsr:@x/comm/cli listen tcp://127.0.0.1:9000 --echo
 * deno run -A jsr:@x/comm/cli ping tcp://127.0.0.1:9000 --raw
 * deno run -A jsr:@x/comm/cli bench --duration 2
 * ```
 *
 * Run it with `--help`, or `COMMAND --help`, for the commands and their
 * options. Programs can run it too, with {@linkcode main}.
 *
 * @module
 */

import { fromTagged, isTagged, MAX_SHOWN_BYTES, toJson } from "./_cli_json.ts";
import { messageOf } from "./comm/_util.ts";
import { parseArgs } from "@std/cli/parse-args";
import {
  AddressError,
  type Comm,
  connect,
  type ConnectOptions,
  listen,
  type ListenOptions,
  RemoteError,
  sendRecv,
} from "./mod.ts";

/**
 * Where {@linkcode main} writes, and what stops it. Each field has a
 * default for a real terminal; give them to run the tool inside a program.
 *
 * @example Capturing the output
 * ```ts
 * import { type CliIo, main } from "@x/comm/cli";
 * import { assertEquals, assertStringIncludes } from "@std/assert";
 *
 * let errors = "";
 * const io: CliIo = { stdout: () => {}, stderr: (text) => void (errors += text) };
 * assertEquals(await main(["call"], io), 2);
 * assertStringIncludes(errors, "comm call: missing ADDRESS");
 * ```
 */
export interface CliIo {
  /**
   * Receives the results: replies, messages, tables.
   *
   * @default {writes to `Deno.stdout`}
   */
  stdout?: (text: string) => void | Promise<void>;
  /**
   * Receives what is said to the person: errors, notes, progress.
   *
   * @default {writes to `Deno.stderr`}
   */
  stderr?: (text: string) => void | Promise<void>;
  /**
   * Whether `stderr` is a terminal, where `bench` shows its progress.
   *
   * @default {Deno.stderr.isTerminal()}
   */
  stderrIsTerminal?: boolean;
  /**
   * Stops the command as Ctrl-C does: `listen` closes and exits, `ping`
   * prints its summary.
   *
   * @default {SIGINT and SIGTERM}
   */
  signal?: AbortSignal;
}

/**
 * Runs the `comm` tool with command-line arguments, as `deno run` does with
 * `Deno.args`, and resolves with its exit code: 0 for success, 1 for a
 * failure (an unreachable peer, an error reply, a timeout), 2 for bad
 * arguments, 130 when interrupted. It never throws: errors are written to
 * `stderr` as one line.
 *
 * @example Printing the help
 * ```ts
 * import { main } from "@x/comm/cli";
 * import { assertEquals, assertStringIncludes } from "@std/assert";
 *
 * let output = "";
 * const code = await main(["--help"], { stdout: (text) => void (output += text) });
 * assertEquals(code, 0);
 * assertStringIncludes(output, "Usage: comm <command>");
 * ```
 *
 * @example Calling a server's operation
 * ```ts
 * import { Server } from "@x/comm";
 * import { main } from "@x/comm/cli";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = new Server({ add: ({ x, y }) => x + y });
 * await server.listen("inproc://");
 * let output = "";
 * const code = await main(["call", server.address, "add", '{"x": 1, "y": 2}'], {
 *   stdout: (text) => void (output += text),
 * });
 * assertEquals(code, 0);
 * assertEquals(JSON.parse(output), 3);
 * ```
 *
 * @param args The arguments, such as `["call", "tcp://127.0.0.1:8786", "identity"]`.
 * @param io Where to write, and what stops long commands.
 * @returns The exit code.
 */
export async function main(args: string[], io: CliIo = {}): Promise<number> {
  const controller = new AbortController();
  const out = new Output(io, controller);
  const removeSignalListeners = io.signal === undefined
    ? onTerminalSignals(controller)
    : linkSignal(io.signal, controller);
  let name = "comm";
  try {
    const [first, ...rest] = args;
    if (first === undefined) {
      const names = COMMANDS.map((command) => command.name).join(", ");
      throw new UsageError(`missing command (${names})`);
    }
    if (first === "--help" || first === "-h" || first === "help") {
      const topic = first === "help" ? rest[0] : undefined;
      if (topic === undefined) {
        await out.out(`${TOOL_HELP}\n`);
        return 0;
      }
      const command = findCommand(topic);
      await out.out(`${command.help}\n`);
      return 0;
    }
    const command = findCommand(first);
    name = `comm ${command.name}`;
    const parsed = parseCommand(command, rest);
    if (parsed.help) {
      await out.out(`${command.help}\n`);
      return 0;
    }
    return await command.run(new Context(parsed, out, controller.signal));
  } catch (error) {
    return await report(error, name, out, controller.signal);
  } finally {
    removeSignalListeners();
    await out.flush();
  }
}

/** Writes the one line for an error that ended a command, and picks the exit code. */
async function report(
  error: unknown,
  name: string,
  out: Output,
  stop: AbortSignal,
): Promise<number> {
  if (out.stdoutClosed) return 0;
  if (error instanceof UsageError) {
    const hint = name === "comm" ? "comm --help" : `${name} --help`;
    await out.err(`${name}: ${oneLine(error.message)}; see "${hint}"\n`);
    return 2;
  }
  if (stop.aborted) {
    await out.err(`${name}: interrupted\n`);
    return 130;
  }
  const message = oneLine(error instanceof Error ? error.message : String(error));
  await out.err(`${name}: ${message}\n`);
  return error instanceof AddressError ? 2 : 1;
}

// ---------------------------------------------------------------------------
// Help

const TOOL_HELP = `comm: talk to @x/comm and dask.distributed servers from a terminal

Usage: comm <command> [options]
  Run it as \`deno run -A jsr:@x/comm/cli <command>\`, or install it once:
  \`deno install -g -A -n comm jsr:@x/comm/cli\`.

Commands:
  listen ADDRESS            Accept comms; print each message as a JSON line
  send ADDRESS MESSAGE...   Send JSON messages; read replies with --read N
  call ADDRESS OP [ARGS]    Call an operation (such as identity) and print the reply
  ping ADDRESS              Measure round-trip times
  bench                     Measure messages/s and MB/s per transport

Addresses: tcp://HOST:PORT (tcp is the default scheme), tls://HOST:PORT,
unix:///PATH, ws://HOST:PORT[/PATH], wss://HOST:PORT[/PATH].

Run \`comm <command> --help\` for a command's options.
Exit status: 0 on success, 1 on a failure (unreachable peer, error reply,
timeout), 2 on bad arguments, 130 when interrupted.`;

const CONNECT_OPTIONS_HELP =
  `  --timeout MS       Give up connecting, and waiting for each reply, after MS
                     milliseconds ("5s" for seconds) [default: 10000]
  --authkey KEY      Prove a shared key, by multiprocessing.connection's challenge
  --ca-cert FILE     Trust this CA (PEM) for tls:// and wss://; repeatable
  --cert FILE        Present this client certificate (PEM), with --key
  --key FILE         The private key of --cert (PEM)
  -h, --help         Show this help`;

const JSON_HELP = `Values that JSON lacks are written as tagged objects, and read back the same way:
  {"$binary": "hello", "encoding": "utf8", "bytes": 5}    bytes: as text when
      they are printable UTF-8, else "encoding": "base64"; past 256 bytes only
      the start is shown, with "truncated": true
  {"$bigint": "18446744073709551616"}   {"$set": [1, 2]}   {"$date": "2024-01-01T00:00:00Z"}
  {"$serialized": "__Pickled__", "header": {...}, "frames": [...]}   a dask
      payload (a pickled object, an array) that this tool does not decode`;

const LISTEN_HELP = `Usage: comm listen ADDRESS [options]

Accepts comms on ADDRESS (any transport) and prints each message received as
one JSON line on stdout: {"peer": "tcp://127.0.0.1:53124", "message": ...}.
The address listened on ("listening on tcp://127.0.0.1:9000") and comms
opening and closing are said on stderr. Stops on Ctrl-C or SIGTERM.

Examples:
  comm listen tcp://127.0.0.1:9000 --echo
  comm listen tcp://127.0.0.1:0          (any free port)
  comm listen tls://0.0.0.0:9443 --cert server.pem --key server-key.pem

Options:
  --echo             Send each message back to its sender
  -c, --count N      Exit after N messages
  --authkey KEY      Require peers to prove this shared key
  --cert FILE        The server certificate (PEM), for tls:// and wss://
  --key FILE         The private key of --cert (PEM)
  -h, --help         Show this help

${JSON_HELP}`;

const SEND_HELP = `Usage: comm send ADDRESS MESSAGE... [options]

Connects to ADDRESS, sends each MESSAGE (a JSON value) in order, reads
--read replies and prints each as JSON, then closes. Without --read it
reads nothing: a peer's replies are dropped. Put MESSAGEs that start
with "-" (negative numbers) after "--".

Examples:
  comm send tcp://127.0.0.1:9000 '"hello"' '{"n": 1}'
  comm send tcp://127.0.0.1:8786 '{"op": "identity", "reply": true}' --read 1

Options:
  -r, --read N       Read and print N replies after sending [default: 0]
${CONNECT_OPTIONS_HELP}

${JSON_HELP}`;

const CALL_HELP = `Usage: comm call ADDRESS OP [ARGS] [options]

Calls the operation OP at ADDRESS with the named arguments ARGS (a JSON
object): it sends {"op": OP, ...ARGS, "reply": true}, as dask's rpc does, and
prints the reply as JSON. An error reply is printed as one line on stderr,
with exit status 1.

Examples:
  comm call tcp://127.0.0.1:8786 identity
  comm call tcp://127.0.0.1:8786 echo '{"data": [1, 2, 3]}'

Options:
${CONNECT_OPTIONS_HELP}

${JSON_HELP}`;

const PING_HELP = `Usage: comm ping ADDRESS [options]

Measures round trips to ADDRESS over one comm, as ping does, and prints a
summary with rtt min/avg/max. Each ping calls the "echo" operation, which
@x/comm's Server and dask's servers (scheduler, worker, nanny) answer; with
--raw, each ping is a plain message that the peer sends back, as
\`comm listen --echo\` does. Stops after --count pings, or on Ctrl-C. Exit
status 1 when no reply came.

Examples:
  comm ping tcp://127.0.0.1:8786
  comm ping tcp://127.0.0.1:9000 --raw --count 0 --interval 200

Options:
  -c, --count N      Stop after N pings; 0 means until Ctrl-C [default: 4]
  -i, --interval MS  Time between pings ("1s" for seconds) [default: 1000]
  -s, --size BYTES   Bytes of payload per ping ("64k", "1M") [default: 0]
  --raw              Send plain messages, for a peer that echoes every message
${CONNECT_OPTIONS_HELP}`;

const BENCH_HELP = `Usage: comm bench [options]

Measures one-way throughput per transport, in this process: a client writes
messages of --size bytes to a listener for --duration, and the table on
stdout gives messages/s and MB/s (10^6 bytes) for each. A progress bar is
shown on stderr when it is a terminal and the run takes over a second.

Examples:
  comm bench
  comm bench --transport tcp,unix --size 1M --duration 3
  comm bench --transport tls --cert server.pem --key server-key.pem --ca-cert ca.pem

Options:
  -t, --transport T  inproc, tcp, unix, ws, tls or wss; comma-separated or
                     repeated [default: inproc,tcp,unix,ws (no unix on Windows)]
  -s, --size BYTES   Bytes per message ("64k", "1M") [default: 100]
  -d, --duration S   Seconds per transport ("500ms" for milliseconds) [default: 1]
  --authkey KEY      Prove a shared key on every comm
  --cert FILE        Server certificate (PEM) for tls and wss
  --key FILE         Its private key (PEM)
  --ca-cert FILE     The CA that signed --cert, when it is not self-signed
  --timeout MS       Give up connecting after MS milliseconds [default: 10000]
  -h, --help         Show this help`;

// ---------------------------------------------------------------------------
// Commands and their arguments

/** A subcommand: its options, its positional arguments and what it does. */
interface Command {
  name: string;
  help: string;
  /** Options that take a value. */
  values: readonly string[];
  /** Options that are on or off. */
  switches: readonly string[];
  aliases: Readonly<Record<string, string>>;
  /** Positional arguments: their names, in order; the last may repeat. */
  positionals: readonly string[];
  minPositionals: number;
  maxPositionals: number;
  run(context: Context): Promise<number>;
}

const CONNECT_VALUES = ["timeout", "authkey", "ca-cert", "cert", "key"] as const;

const COMMANDS: readonly Command[] = [
  {
    name: "listen",
    help: LISTEN_HELP,
    values: ["count", "authkey", "cert", "key"],
    switches: ["echo"],
    aliases: { c: "count" },
    positionals: ["ADDRESS"],
    minPositionals: 1,
    maxPositionals: 1,
    run: runListen,
  },
  {
    name: "send",
    help: SEND_HELP,
    values: ["read", ...CONNECT_VALUES],
    switches: [],
    aliases: { r: "read" },
    positionals: ["ADDRESS", "MESSAGE"],
    minPositionals: 2,
    maxPositionals: Infinity,
    run: runSend,
  },
  {
    name: "call",
    help: CALL_HELP,
    values: CONNECT_VALUES,
    switches: [],
    aliases: {},
    positionals: ["ADDRESS", "OP", "ARGS"],
    minPositionals: 2,
    maxPositionals: 3,
    run: runCall,
  },
  {
    name: "ping",
    help: PING_HELP,
    values: ["count", "interval", "size", ...CONNECT_VALUES],
    switches: ["raw"],
    aliases: { c: "count", i: "interval", s: "size" },
    positionals: ["ADDRESS"],
    minPositionals: 1,
    maxPositionals: 1,
    run: runPing,
  },
  {
    name: "bench",
    help: BENCH_HELP,
    values: ["transport", "size", "duration", ...CONNECT_VALUES],
    switches: [],
    aliases: { t: "transport", s: "size", d: "duration" },
    positionals: [],
    minPositionals: 0,
    maxPositionals: 0,
    run: runBench,
  },
];

/** Bad command-line arguments: exit status 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

function findCommand(name: string): Command {
  const command = COMMANDS.find((command) => command.name === name);
  if (command) return command;
  const names = COMMANDS.map((command) => command.name).join(", ");
  throw new UsageError(
    name.startsWith("-")
      ? `unknown option "${name}" before the command (commands: ${names})`
      : `unknown command "${name}" (commands: ${names})`,
  );
}

/** The arguments of one command, checked. */
interface Parsed {
  command: Command;
  help: boolean;
  positionals: string[];
  /** Values by option name; repeated options keep every value. */
  values: Map<string, string[]>;
  switches: Set<string>;
}

function parseCommand(command: Command, args: string[]): Parsed {
  const unknown: string[] = [];
  const result = parseArgs(args, {
    string: ["_", ...command.values],
    boolean: ["help", ...command.switches],
    collect: [...command.values],
    alias: { h: "help", ...command.aliases },
    unknown: (arg: string, key?: string) => {
      if (key === undefined) return true;
      unknown.push(arg.startsWith("--") ? arg.split("=")[0] : `-${key}`);
      return false;
    },
  }) as Record<string, unknown> & { _: string[] };
  const help = result.help === true;
  if (help) return { command, help, positionals: [], values: new Map(), switches: new Set() };
  const values = new Map<string, string[]>();
  for (const name of command.values) {
    const given = result[name] as string[];
    if (given.length === 0) continue;
    if (given.some((value) => value === "")) {
      throw new UsageError(`option --${name} needs a value`);
    }
    values.set(name, given);
  }
  if (unknown.length > 0) {
    const [first] = unknown;
    throw new UsageError(
      /^-\d/.test(first)
        ? `unknown option "${first}" (put values that start with "-" after "--")`
        : `unknown option "${first}"`,
    );
  }
  const switches = new Set(command.switches.filter((name) => result[name] === true));
  const positionals = result._.map(String);
  if (positionals.length < command.minPositionals) {
    const missing = command.positionals[positionals.length];
    throw new UsageError(`missing ${missing}`);
  }
  if (positionals.length > command.maxPositionals) {
    const extra = positionals[command.maxPositionals];
    throw new UsageError(`unexpected argument "${extra}"`);
  }
  return { command, help, positionals, values, switches };
}

/** What a command runs with: its arguments, the output, the stop signal. */
class Context {
  readonly positionals: readonly string[];
  readonly out: Output;
  readonly signal: AbortSignal;
  readonly #parsed: Parsed;

  constructor(parsed: Parsed, out: Output, signal: AbortSignal) {
    this.#parsed = parsed;
    this.positionals = parsed.positionals;
    this.out = out;
    this.signal = signal;
  }

  has(name: string): boolean {
    return this.#parsed.switches.has(name) || this.#parsed.values.has(name);
  }

  /** The last value of an option. */
  value(name: string): string | undefined {
    return this.#parsed.values.get(name)?.at(-1);
  }

  all(name: string): string[] {
    return this.#parsed.values.get(name) ?? [];
  }

  /** A whole number of at least `min`. */
  integer(name: string, fallback: number, min = 0): number {
    const text = this.value(name);
    if (text === undefined) return fallback;
    if (!/^\d+$/.test(text) || Number(text) < min || !Number.isSafeInteger(Number(text))) {
      throw new UsageError(`--${name} "${text}" is not a whole number of at least ${min}`);
    }
    return Number(text);
  }

  /** A size in bytes, with an optional k, M or G suffix (powers of 1024). */
  bytes(name: string, fallback: number): number {
    const text = this.value(name);
    if (text === undefined) return fallback;
    const match = /^(\d+(?:\.\d+)?)\s*(k|kb|kib|m|mb|mib|g|gb|gib|b)?$/i.exec(text);
    const scale = { "": 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[
      (match?.[2] ?? "").charAt(0).toLowerCase() as "" | "b" | "k" | "m" | "g"
    ];
    const size = match ? Math.round(Number(match[1]) * scale) : NaN;
    if (!Number.isSafeInteger(size) || size > MAX_BENCH_SIZE) {
      throw new UsageError(
        `--${name} "${text}" is not a size in bytes up to 1G (such as 100, 64k or 1M)`,
      );
    }
    return size;
  }

  /** A duration in milliseconds; `unit` is what a bare number means. */
  duration(name: string, fallback: number, unit: "ms" | "s"): number {
    const text = this.value(name);
    if (text === undefined) return fallback;
    const match = /^(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)?$/.exec(text);
    const ms = match ? Number(match[1]) * ((match[2] ?? unit) === "s" ? 1000 : 1) : NaN;
    if (!Number.isFinite(ms) || ms > MAX_DURATION_MS) {
      const example = unit === "s" ? `2, 0.5 or 500ms` : `500, 1000ms or 2s`;
      throw new UsageError(`--${name} "${text}" is not a duration (such as ${example})`);
    }
    return ms;
  }

  /** Options for connecting, from --timeout, --authkey and the TLS files. */
  async connectOptions(): Promise<ConnectOptions> {
    const options: ConnectOptions = {
      timeout: this.duration("timeout", DEFAULT_TIMEOUT_MS, "ms"),
      signal: this.signal,
    };
    if (options.timeout === 0) throw new UsageError(`--timeout must be more than 0`);
    const authkey = this.value("authkey");
    if (authkey !== undefined) options.authkey = authkey;
    const caCerts = this.all("ca-cert");
    if (caCerts.length > 0) {
      options.caCerts = await Promise.all(caCerts.map((file) => readPem("ca-cert", file)));
    }
    Object.assign(options, await this.certificate());
    return options;
  }

  /** The --cert and --key files' contents, both or neither. */
  async certificate(): Promise<{ cert?: string; key?: string }> {
    const cert = this.value("cert");
    const key = this.value("key");
    if ((cert === undefined) !== (key === undefined)) {
      throw new UsageError(cert === undefined ? "--key needs --cert" : "--cert needs --key");
    }
    if (cert === undefined || key === undefined) return {};
    return { cert: await readPem("cert", cert), key: await readPem("key", key) };
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_DURATION_MS = 2 ** 31 - 1;
const MAX_BENCH_SIZE = 1024 ** 3;

async function readPem(option: string, file: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw new Error(
        `Cannot read --${option} file "${file}": no read permission (run with --allow-read, or -A)`,
      );
    }
    const reason = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Error
      ? error.message
      : String(error);
    throw new UsageError(`cannot read --${option} file "${file}": ${reason}`);
  }
}

/** Parses the JSON text of argument `what`, reading the tagged forms back. */
function parseJsonArgument(what: string, text: string): unknown {
  try {
    return JSON.parse(text, (_key, value) => fromTagged(value));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new UsageError(`${what} ${JSON.stringify(text)} is not JSON: ${reason}`);
  }
}

// ---------------------------------------------------------------------------
// listen

async function runListen(context: Context): Promise<number> {
  const [address] = context.positionals;
  const { out, signal } = context;
  const echo = context.has("echo");
  const limit = context.integer("count", 0, 1);
  if (/^(tls|wss):\/\//i.test(address) && !context.has("cert")) {
    throw new UsageError(`listening on ${address.split(":")[0]}:// needs --cert and --key`);
  }
  const options: ListenOptions = {
    ...await context.certificate(),
    onError: (error) => void out.err(`comm listen: ${oneLine(messageOf(error))}\n`),
  };
  const authkey = context.value("authkey");
  if (authkey !== undefined) options.authkey = authkey;
  let seen = 0;
  let closing = false;
  const enough = Promise.withResolvers<void>();
  const listener = await listen(address, async (comm) => {
    const peer = comm.peerAddress;
    await out.err(`${peer} connected\n`);
    try {
      for await (const message of comm) {
        if (limit > 0 && seen >= limit) break;
        seen++;
        await out.out(`${out.json({ peer, message })}\n`);
        if (echo) await comm.write(message);
        if (seen === limit) enough.resolve();
      }
      if (!closing) await out.err(`${peer} closed\n`);
    } catch (error) {
      if (!closing) await out.err(`${peer} failed: ${oneLine(messageOf(error))}\n`);
    }
  }, options);
  try {
    await out.err(`listening on ${listener.contactAddress}\n`);
    await Promise.race([enough.promise, aborted(signal)]);
  } finally {
    closing = true;
    await listener.close();
  }
  return 0;
}

// ---------------------------------------------------------------------------
// send and call

async function runSend(context: Context): Promise<number> {
  const [address, ...texts] = context.positionals;
  const messages = texts.map((text, i) => parseJsonArgument(`MESSAGE ${i + 1}`, text));
  const replies = context.integer("read", 0);
  const options = await context.connectOptions();
  await using comm = await connect(address, options);
  for (const message of messages) await comm.write(message);
  const plural = messages.length === 1 ? "" : "s";
  await context.out.err(`sent ${messages.length} message${plural} to ${comm.peerAddress}\n`);
  for (let i = 0; i < replies; i++) {
    let reply: unknown;
    try {
      reply = await readWithin(comm, options.timeout!, context.signal);
    } catch (error) {
      throw new Error(
        `Got ${i} of ${replies} replies from "${comm.peerAddress}": ${messageOf(error)}`,
      );
    }
    await context.out.out(`${context.out.json(reply, 2)}\n`);
  }
  return 0;
}

async function runCall(context: Context): Promise<number> {
  const [address, op, argsText] = context.positionals;
  const args = argsText === undefined ? {} : parseJsonArgument("ARGS", argsText);
  if (args === null || typeof args !== "object" || Array.isArray(args) || isTagged(args)) {
    throw new UsageError(
      `ARGS ${JSON.stringify(argsText)} is not a JSON object (such as '{"data": 1}')`,
    );
  }
  const options = await context.connectOptions();
  await using comm = await connect(address, options);
  const reply = await sendRecv(comm, { ...args, op, reply: true }, {
    timeout: options.timeout,
    signal: context.signal,
  });
  await context.out.out(`${context.out.json(reply, 2)}\n`);
  return 0;
}

/** Reads one message within `ms`, or rejects saying how long it waited. */
async function readWithin(comm: Comm, ms: number, stop: AbortSignal): Promise<unknown> {
  const controller = new AbortController();
  const onStop = () => controller.abort(stop.reason);
  if (stop.aborted) onStop();
  else stop.addEventListener("abort", onStop, { once: true });
  const timeout = setTimeout(
    () => controller.abort(new Error(`no reply within ${ms} ms`)),
    Math.min(ms, MAX_DURATION_MS),
  );
  try {
    return await comm.read({ signal: controller.signal });
  } finally {
    clearTimeout(timeout);
    stop.removeEventListener("abort", onStop);
  }
}

// ---------------------------------------------------------------------------
// ping

async function runPing(context: Context): Promise<number> {
  const [address] = context.positionals;
  const { out, signal } = context;
  const count = context.integer("count", 4);
  const interval = context.duration("interval", 1000, "ms");
  const size = context.bytes("size", 0);
  const raw = context.has("raw");
  const options = await context.connectOptions();
  const timeout = options.timeout!;
  let comm: Comm | undefined = await connect(address, options);
  const peer = comm.peerAddress;
  const how = raw ? "plain messages echoed" : `the "echo" operation`;
  await out.out(`PING ${peer}: ${how}, ${size} bytes of payload\n`);
  const rtts: number[] = [];
  let sent = 0;
  const started = performance.now();
  try {
    for (let seq = 1; count === 0 || seq <= count; seq++) {
      if (seq > 1 && !await sleep(interval, signal)) break;
      if (signal.aborted) break;
      const data = size > 0 ? new Uint8Array(size) : seq;
      try {
        comm ??= await connect(address, options);
        sent++;
        const start = performance.now();
        if (raw) {
          await comm.write({ ping: seq, data });
          await readWithin(comm, timeout, signal);
        } else {
          await sendRecv(comm, { op: "echo", data }, { timeout, signal });
        }
        const rtt = performance.now() - start;
        rtts.push(rtt);
        await out.out(`reply from ${peer}: seq=${seq} time=${formatMs(rtt)} ms\n`);
      } catch (error) {
        if (signal.aborted) {
          sent = Math.max(rtts.length, sent - 1);
          break;
        }
        if (error instanceof RemoteError) {
          throw new Error(`${error.message} (for a peer that echoes messages, use --raw)`);
        }
        await out.out(`no reply from ${peer}: seq=${seq}: ${oneLine(messageOf(error))}\n`);
        comm?.abort();
        comm = undefined;
      }
    }
  } finally {
    await comm?.close();
  }
  const elapsed = (performance.now() - started) / 1000;
  const lost = sent === 0 ? 0 : Math.round((100 * (sent - rtts.length)) / sent);
  await out.out(`\n--- ${peer} ping statistics ---\n`);
  await out.out(
    `${sent} sent, ${rtts.length} received, ${lost}% lost, time ${elapsed.toFixed(3)} s\n`,
  );
  if (rtts.length > 0) {
    const min = Math.min(...rtts);
    const max = Math.max(...rtts);
    const avg = rtts.reduce((a, b) => a + b, 0) / rtts.length;
    await out.out(`rtt min/avg/max = ${[min, avg, max].map((ms) => ms.toFixed(3)).join("/")} ms\n`);
  }
  return rtts.length > 0 ? 0 : 1;
}

function formatMs(ms: number): string {
  return ms.toFixed(ms < 10 ? 3 : ms < 100 ? 2 : 1);
}

// ---------------------------------------------------------------------------
// bench

const BENCH_ADDRESSES: Readonly<Record<string, string>> = {
  inproc: "inproc://",
  tcp: "tcp://127.0.0.1:0",
  unix: "unix://",
  ws: "ws://127.0.0.1:0",
  tls: "tls://127.0.0.1:0",
  wss: "wss://127.0.0.1:0",
};

/** Messages written before the clock starts, so that the JIT is warm. */
const BENCH_WARM_UP = 200;
/** How often the progress bar is redrawn, in milliseconds. */
const PROGRESS_EVERY_MS = 100;
const PROGRESS_WIDTH = 30;

interface BenchResult {
  transport: string;
  messages?: number;
  seconds?: number;
  error?: string;
}

async function runBench(context: Context): Promise<number> {
  const { out, signal } = context;
  const transports = benchTransports(context.all("transport"));
  const size = context.bytes("size", 100);
  const duration = context.duration("duration", 1000, "s");
  if (duration === 0) throw new UsageError(`--duration must be more than 0`);
  const connectOptions = await context.connectOptions();
  const secure = transports.some((name) => name === "tls" || name === "wss");
  const certificate = await context.certificate();
  if (secure && certificate.cert === undefined) {
    throw new UsageError(`tls and wss need --cert and --key (a server certificate)`);
  }
  if (secure && connectOptions.caCerts === undefined && certificate.cert !== undefined) {
    connectOptions.caCerts = [certificate.cert]; // A self-signed certificate trusts itself.
  }
  // Here --cert is the server's: the client presents none.
  delete connectOptions.cert;
  delete connectOptions.key;
  const listenOptions: ListenOptions = { ...certificate, onError: () => {} };
  if (connectOptions.authkey !== undefined) listenOptions.authkey = connectOptions.authkey;
  const showProgress = out.stderrIsTerminal && duration * transports.length > 1000;
  await out.err(
    `bench: ${size}-byte messages, one way, ${duration / 1000} s per transport\n`,
  );
  const results: BenchResult[] = [];
  for (const transport of transports) {
    if (signal.aborted) break;
    try {
      results.push(
        await benchOne(transport, size, duration, {
          connectOptions,
          listenOptions,
          signal,
          progress: showProgress ? (done) => out.progress(transport, done) : undefined,
        }),
      );
    } catch (error) {
      if (signal.aborted) break;
      results.push({ transport, error: oneLine(messageOf(error)) });
    } finally {
      if (showProgress) await out.progress(undefined, 0);
    }
  }
  await out.out(benchTable(results, size));
  if (signal.aborted) throw new Error("interrupted");
  return results.some((result) => result.error !== undefined) ? 1 : 0;
}

function benchTransports(given: string[]): string[] {
  if (given.length === 0) {
    return Deno.build.os === "windows" ? ["inproc", "tcp", "ws"] : ["inproc", "tcp", "unix", "ws"];
  }
  const names = given.flatMap((text) => text.split(",")).map((name) => name.trim());
  for (const name of names) {
    if (!(name in BENCH_ADDRESSES)) {
      throw new UsageError(
        `unknown transport "${name}" (transports: ${Object.keys(BENCH_ADDRESSES).join(", ")})`,
      );
    }
  }
  return [...new Set(names)];
}

interface BenchOptions {
  connectOptions: ConnectOptions;
  listenOptions: ListenOptions;
  signal: AbortSignal;
  progress?: (done: number) => Promise<void>;
}

async function benchOne(
  transport: string,
  size: number,
  duration: number,
  options: BenchOptions,
): Promise<BenchResult> {
  // The listener answers each string, so that the client knows when all the
  // messages before it were read.
  await using listener = await listen(BENCH_ADDRESSES[transport], async (comm) => {
    for await (const message of comm) {
      if (typeof message === "string") await comm.write(message);
    }
  }, options.listenOptions);
  await using comm = await connect(listener.contactAddress, options.connectOptions);
  const timeout = options.connectOptions.timeout!;
  const payload = new Uint8Array(size);
  for (let i = 0; i < BENCH_WARM_UP; i++) await comm.write(payload);
  await comm.write("warm");
  await readWithin(comm, timeout, options.signal);
  const start = performance.now();
  const deadline = start + duration;
  let messages = 0;
  let drawn = start;
  for (let now = start; now < deadline && !options.signal.aborted; messages++) {
    await comm.write(payload);
    if ((messages & 255) === 0) {
      now = performance.now();
      if (options.progress && now - drawn >= PROGRESS_EVERY_MS) {
        drawn = now;
        await options.progress(Math.min(1, (now - start) / duration));
      }
    }
  }
  await comm.write("done");
  await readWithin(comm, timeout, options.signal);
  return { transport, messages, seconds: (performance.now() - start) / 1000 };
}

function benchTable(results: BenchResult[], size: number): string {
  const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const rows = [["transport", "messages/s", "MB/s"]];
  for (const { transport, messages, seconds, error } of results) {
    if (error !== undefined || messages === undefined || seconds === undefined) {
      rows.push([transport, `failed: ${error}`, ""]);
      continue;
    }
    const rate = messages / seconds;
    const megabytes = (rate * size) / 1e6;
    rows.push([transport, count.format(rate), megabytes.toFixed(megabytes < 10 ? 2 : 1)]);
  }
  const widths = [0, 1, 2].map((column) =>
    Math.max(
      ...rows.filter((row) => row[2] !== "" || row === rows[0]).map((row) => row[column].length),
    )
  );
  return rows.map((row) =>
    row[2] === "" && row !== rows[0]
      ? `${row[0].padEnd(widths[0])}  ${row[1]}`
      : `${row[0].padEnd(widths[0])}  ${row[1].padStart(widths[1])}  ${row[2].padStart(widths[2])}`
  ).join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// Output

const encoder = new TextEncoder();

async function writeAll(writer: { write(p: Uint8Array): Promise<number> }, text: string) {
  const bytes = encoder.encode(text);
  for (let at = 0; at < bytes.length;) at += await writer.write(bytes.subarray(at));
}

/** The two output streams, the binary note, and the progress line. */
class Output {
  readonly stderrIsTerminal: boolean;
  /** Whether stdout was closed by its reader (`comm listen | head -1`). */
  stdoutClosed = false;
  readonly #stdout: (text: string) => void | Promise<void>;
  readonly #stderr: (text: string) => void | Promise<void>;
  readonly #controller: AbortController;
  #notedBinary = false;
  #progressShown = false;
  /** Writes in the order they were asked for, one at a time. */
  #chain: Promise<void> = Promise.resolve();

  constructor(io: CliIo, controller: AbortController) {
    this.#stdout = io.stdout ?? ((text) => writeAll(Deno.stdout, text));
    this.#stderr = io.stderr ?? ((text) => writeAll(Deno.stderr, text));
    this.stderrIsTerminal = io.stderrIsTerminal ??
      (io.stderr === undefined && Deno.stderr.isTerminal());
    this.#controller = controller;
  }

  out(text: string): Promise<void> {
    return this.#write(async () => {
      if (this.stdoutClosed) return;
      try {
        await this.#stdout(text);
      } catch (error) {
        if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
        this.stdoutClosed = true;
        this.#controller.abort(error);
      }
    });
  }

  err(text: string): Promise<void> {
    return this.#write(async () => {
      if (this.#progressShown) {
        this.#progressShown = false;
        await this.#stderr("\r\x1b[K");
      }
      await this.#stderr(text);
    });
  }

  /** Draws the progress bar of `label`; clears it when `label` is undefined. */
  progress(label: string | undefined, done: number): Promise<void> {
    return this.#write(async () => {
      if (label === undefined) {
        if (this.#progressShown) await this.#stderr("\r\x1b[K");
        this.#progressShown = false;
        return;
      }
      const filled = Math.round(done * PROGRESS_WIDTH);
      const bar = "#".repeat(filled) + " ".repeat(PROGRESS_WIDTH - filled);
      const percent = `${Math.round(done * 100)}`.padStart(3);
      await this.#stderr(`\r${label.padEnd(7)} [${bar}] ${percent}%`);
      this.#progressShown = true;
    });
  }

  /** `value` as JSON text, after a note on stderr the first time it holds bytes. */
  json(value: unknown, indent?: number): string {
    const state = { binary: false };
    const plain = toJson(value, state, new Set());
    let text: string;
    if (indent === undefined) {
      text = JSON.stringify(plain);
    } else {
      // Tagged scalars (bytes, bigints, dates) stay on one line each.
      const inline: string[] = [];
      const mark = `\u{f8ff}${crypto.randomUUID()}:`;
      text = JSON.stringify(plain, (_key, item) => {
        if (item === null || typeof item !== "object" || Array.isArray(item)) return item;
        const tag = isTagged(item);
        if (tag === undefined || tag === "$set" || tag === "$serialized") return item;
        inline.push(
          `{${
            Object.entries(item).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(
              ", ",
            )
          }}`,
        );
        return `${mark}${inline.length - 1}`;
      }, indent);
      text = text.replace(new RegExp(`"${mark}(\\d+)"`, "gu"), (_, i) => inline[Number(i)]);
    }
    if (state.binary && !this.#notedBinary) {
      this.#notedBinary = true;
      void this.err(
        `note: binary values are shown as {"$binary": TEXT, "encoding": "utf8" or "base64", "bytes": N}` +
          `, only their first ${MAX_SHOWN_BYTES} bytes when longer ("truncated": true)\n`,
      );
    }
    return text;
  }

  flush(): Promise<void> {
    return this.#write(() => {});
  }

  #write(step: () => void | Promise<void>): Promise<void> {
    const next = this.#chain.then(step);
    this.#chain = next.catch(() => {});
    return next;
  }
}

// ---------------------------------------------------------------------------
// Small helpers

/**
 * Text on one line: newlines and the spaces around them become one space,
 * and the library's option names become this tool's.
 */
function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim()
    .replaceAll(`in "caCerts"`, "with --ca-cert")
    .replaceAll("with the authkey option", "with --authkey");
}

/** Resolves when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) =>
    signal.addEventListener("abort", () => resolve(), { once: true })
  );
}

/** Waits `ms`; resolves false, at once, when `signal` aborts first. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The reason a stop signal gives for Ctrl-C or SIGTERM. */
class TerminalSignal extends Error {
  constructor(signal: Deno.Signal) {
    super(`Received ${signal}`);
    this.name = "TerminalSignal";
  }
}

/**
 * Turns SIGINT and SIGTERM into a stop: the first asks the command to
 * finish (listen closes, ping prints its summary); a second exits at once.
 * Returns a function that removes the listeners.
 */
function onTerminalSignals(controller: AbortController): () => void {
  const removers: (() => void)[] = [];
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT", "SIGBREAK"]
    : ["SIGINT", "SIGTERM"];
  for (const signal of signals) {
    const handler = () => {
      if (controller.signal.aborted) Deno.exit(130);
      controller.abort(new TerminalSignal(signal));
    };
    try {
      Deno.addSignalListener(signal, handler);
      removers.push(() => Deno.removeSignalListener(signal, handler));
    } catch {
      // Not on this platform.
    }
  }
  return () => removers.forEach((remove) => remove());
}

function linkSignal(signal: AbortSignal, controller: AbortController): () => void {
  const onAbort = () => controller.abort(new TerminalSignal("SIGINT"));
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

if (import.meta.main) {
  // Errors that escape every await (a library bug) still make one line.
  const fatal = (error: unknown) => {
    const text = error instanceof Error ? error.message : String(error);
    Deno.stderr.writeSync(encoder.encode(`comm: ${oneLine(text)}\n`));
    Deno.exit(1);
  };
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    fatal(event.reason);
  });
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    fatal(event.error);
  });
  Deno.exit(await main(Deno.args));
}
