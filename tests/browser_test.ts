// The ws client in a real browser: Debian's Chromium, driven headless by
// playwright-core (no browser download), loads pages from loopback servers
// and runs @x/comm/browser, built with `deno bundle`, against our listeners.
// Skipped, with a message saying why, where there is no Chromium.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import type { Browser, Page } from "playwright-core";
import { fromFileUrl } from "@std/path";
import { listen, type ListenOptions, Server } from "../mod.ts";
import { within } from "./_wait.ts";
import { SERVER_CERT, SERVER_KEY } from "./_certs.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";
const ROOT = new URL("../", import.meta.url);
const EXAMPLE = fromFileUrl(new URL("examples/browser/server.ts", ROOT));
/** Bounds every wait on the browser: a case that hangs fails. */
const PAGE_WAIT_MS = 30_000;
const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function chromiumMissing(): string | undefined {
  try {
    Deno.statSync(CHROMIUM);
    return undefined;
  } catch {
    return `no Chromium at ${CHROMIUM} (install Debian's "chromium" package, or set CHROMIUM to its path)`;
  }
}

const missing = chromiumMissing();
if (missing) console.warn(`Skipping the browser tests: ${missing}`);
const ignore = missing !== undefined;

/** Headless Chromium, closed on dispose. */
async function launch(): Promise<Browser & AsyncDisposable> {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_FLAGS,
    timeout: PAGE_WAIT_MS,
  });
  return Object.assign(browser, { [Symbol.asyncDispose]: () => browser.close() });
}

/** A page that reports what it prints and throws, for failure messages. */
async function openPage(browser: Browser, options?: { ignoreHTTPSErrors?: boolean }) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const log: string[] = [];
  page.on("console", (message) => log.push(`console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => log.push(`page error: ${error.message}`));
  page.setDefaultTimeout(PAGE_WAIT_MS);
  return { page, log };
}

let bundled: Promise<string> | undefined;

/** browser.ts as one ES module, built once for the file with `deno bundle`. */
function bundle(): Promise<string> {
  return bundled ??= (async () => {
    const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        "--config",
        fromFileUrl(new URL("deno.json", ROOT)),
        fromFileUrl(new URL("browser.ts", ROOT)),
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    if (!success) throw new Error(`deno bundle failed:\n${new TextDecoder().decode(stderr)}`);
    return new TextDecoder().decode(stdout);
  })();
}

/**
 * Serves a blank page that puts @x/comm/browser on `window.comm`, and the
 * bundle at `/comm.js`: an `httpHandler` for a ws listener.
 */
async function pageHandler(): Promise<NonNullable<ListenOptions["httpHandler"]>> {
  const code = await bundle();
  const html = `<!doctype html><link rel="icon" href="data:,">
<script type="module">import * as comm from "/comm.js"; window.comm = comm;</script>`;
  return (request) => {
    const path = new URL(request.url).pathname;
    if (path === "/comm.js") {
      return new Response(code, { headers: { "content-type": "text/javascript" } });
    }
    if (path === "/") return new Response(html, { headers: { "content-type": "text/html" } });
    return new Response("Not Found\n", { status: 404 });
  };
}

/** `ws://host:port/path` as the `http://host:port/` that serves the page. */
function pageUrl(address: string): string {
  return new URL("/", address.replace(/^ws/, "http")).href;
}

/** Loads the blank page and waits for the module. */
async function loadComm(page: Page, address: string): Promise<void> {
  await page.goto(pageUrl(address));
  await page.waitForFunction(() => "comm" in globalThis);
}

/** The example server, started on port 0; killed on dispose. */
class ExampleServer implements AsyncDisposable {
  #child: Deno.ChildProcess;
  #stderr: Promise<string>;
  #lines: ReadableStreamDefaultReader<string>;

  constructor() {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", "--allow-read", "--allow-run", EXAMPLE, "--port", "0"],
      cwd: fromFileUrl(ROOT),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.#stderr = new Response(this.#child.stderr).text();
    this.#lines = this.#child.stdout
      .pipeThrough(new TextDecoderStream())
      .getReader();
  }

  /** The page's address: the first line the server prints. */
  async pageAddress(): Promise<string> {
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await within(
        this.#lines.read(),
        "the example server to print its address",
        PAGE_WAIT_MS,
      );
      if (done) throw new Error(`The example server exited:\n${await this.#stderr}`);
      text += value;
    }
    return text.slice(0, text.indexOf("\n"));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#child.kill("SIGINT");
    } catch {
      // Exited already.
    }
    await this.#lines.cancel();
    await this.#child.status;
    await this.#stderr;
  }
}

Deno.test({
  name:
    "examples/browser: the page connects to the Deno server, sends a message and shows the reply",
  ignore,
  async fn() {
    await using server = new ExampleServer();
    const address = await server.pageAddress();
    assertMatch(address, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    await using browser = await launch();
    const { page, log } = await openPage(browser);
    await page.goto(address);
    await page.waitForFunction(() => "result" in globalThis);
    const result = await page.evaluate(() => (globalThis as { result?: unknown }).result) as {
      error?: string;
      first: { reply: { text: string }; from: string; count: number };
      big: { sent: number; binaryBytes: number; intact: boolean };
      burst: { messages: number; inOrder: boolean };
      localAddress: string;
      peerAddress: string;
    };
    assertEquals(result.error, undefined, `the page failed:\n${log.join("\n")}`);
    assertEquals(result.first.reply.text, "Hello from the browser");
    assertMatch(result.first.from, /^Deno \d/);
    assertEquals(result.first.count, 1);
    assertEquals(result.big, { sent: 1024 * 1024, binaryBytes: 1024 * 1024, intact: true });
    assertEquals(result.burst, { messages: 1000, inOrder: true });
    const ws = address.replace(/^http/, "ws") + "comm";
    assertEquals(result.peerAddress, ws);
    // The listener told the page the address it sees the page at.
    assertMatch(result.localAddress, /^ws:\/\/127\.0\.0\.1:\d+$/);

    // What the page shows.
    assertStringIncludes(await page.textContent("#status") ?? "", "the reply came back");
    assertStringIncludes(await page.textContent("#reply") ?? "", "Hello from the browser");

    // And what a user typing into it gets.
    await page.fill("#text", "typed into the page");
    await page.click("button");
    await page.waitForFunction(() => {
      // Runs in the page, where there is a document.
      const { document } = globalThis as unknown as {
        document: { getElementById(id: string): { textContent: string | null } | null };
      };
      return document.getElementById("reply")?.textContent?.includes("typed into the page");
    });
    const shown = JSON.parse(await page.textContent("#reply") ?? "null");
    assertEquals(shown.reply.text, "typed into the page");
    assertEquals(shown.count, 1003, "one reply for every message the page sent, in order");
  },
});

Deno.test({
  name: "connect() in Chromium calls a Server's operations with rpc() over ws://",
  ignore,
  async fn() {
    await using server = new Server({
      add: ({ x, y }) => x + y,
      fail: () => {
        throw new RangeError("out of range on purpose");
      },
      bytes: ({ size }) => new Uint8Array(size).fill(7),
    });
    await server.listen("ws://127.0.0.1:0/rpc", { httpHandler: await pageHandler() });
    await using browser = await launch();
    const { page, log } = await openPage(browser);
    await loadComm(page, server.address);
    const outcome = await page.evaluate(async (address) => {
      // deno-lint-ignore no-explicit-any
      const { rpc, RemoteError } = (globalThis as any).comm;
      const remote = rpc(address, { timeout: 10_000 });
      try {
        const sum = await remote.add({ x: 2, y: 3 });
        const error = await remote.fail().then(() => undefined, (error: Error) => error);
        const bytes = await remote.bytes({ size: 200_000 });
        return {
          sum,
          remoteError: error instanceof RemoteError,
          errorName: error?.name,
          errorMessage: error?.message,
          bytes: bytes instanceof Uint8Array ? bytes.length : String(bytes),
          allSevens: bytes.every((byte: number) => byte === 7),
        };
      } finally {
        await remote.close();
      }
    }, server.address).catch((error) => {
      throw new Error(`${error.message}\n${log.join("\n")}`);
    });
    assertEquals(outcome.sum, 5);
    assert(outcome.remoteError, `expected a RemoteError, got ${outcome.errorName}`);
    assertStringIncludes(outcome.errorMessage, "out of range on purpose");
    assertEquals(outcome.bytes, 200_000);
    assert(outcome.allSevens);
  },
});

Deno.test({
  name: "connect() in Chromium rejects with the errors it gives in Deno",
  ignore,
  async fn() {
    await using listener = await listen("ws://127.0.0.1:0/comm", async (comm) => {
      for await (const message of comm) await comm.write(message);
    }, { httpHandler: await pageHandler() });
    // A listener of another origin (port) that does not allow the page's.
    await using elsewhere = await listen("ws://127.0.0.1:0/comm");
    // A WebSocket peer that breaks the protocol: a text message after the hello.
    await using rogue = rogueServer();
    const dead = await deadAddress();
    await using browser = await launch();
    const { page, log } = await openPage(browser);
    await loadComm(page, listener.contactAddress);
    const outcome = await page.evaluate(async ({ dead, rogue, live, elsewhere }) => {
      // deno-lint-ignore no-explicit-any
      const { connect } = (globalThis as any).comm;
      const failure = (promise: Promise<unknown>) =>
        promise.then(() => "no error", (error: Error) => `${error.name}: ${error.message}`);
      const unknownScheme = await failure(connect("tcp://127.0.0.1:8786"));
      const nobody = await failure(connect(dead, { timeout: 300 }));
      const certificates = await failure(connect(live.replace("ws:", "wss:"), { caCerts: ["x"] }));
      const authkey = await failure(connect(live, { authkey: "secret", timeout: 2_000 }));
      const text = await failure(connect(rogue, { timeout: 5_000 }));
      const crossOrigin = await failure(connect(elsewhere, { timeout: 300 }));
      return { unknownScheme, nobody, certificates, authkey, text, crossOrigin };
    }, {
      dead,
      rogue: rogue.address,
      live: listener.contactAddress,
      elsewhere: elsewhere.contactAddress,
    }).catch((error) => {
      throw new Error(`${error.message}\n${log.join("\n")}`);
    });
    assertMatch(outcome.unknownScheme, /^AddressError: .*"tcp".*inproc, ws, wss/);
    assertMatch(outcome.nobody, /^ConnectTimeoutError: /);
    assertMatch(outcome.certificates, /^TypeError: .*need Deno/);
    assertMatch(outcome.authkey, /^TypeError: .*node:crypto/);
    // It came instead of the handshake.
    assertMatch(outcome.text, /^ConnectError: .*handshake failed.*text WebSocket message/);
    // Refused with 403, which a browser does not tell: retried until the time ran out.
    assertMatch(outcome.crossOrigin, /^ConnectTimeoutError: /);
  },
});

Deno.test({
  name: "connect() in Chromium reaches a wss:// listener with the browser's trust",
  ignore,
  async fn() {
    await using page_ = await listen("ws://127.0.0.1:0/page", { httpHandler: await pageHandler() });
    // The page comes from another origin (port), which the listener must allow.
    const pageOrigin = new URL(pageUrl(page_.contactAddress)).origin;
    await using secure = await listen("wss://127.0.0.1:0/comm", async (comm) => {
      for await (const message of comm) await comm.write({ secure: message });
    }, {
      cert: SERVER_CERT,
      key: SERVER_KEY,
      allowedOrigins: [pageOrigin],
    });
    await using browser = await launch();
    // The test CA is not the browser's: this context trusts any certificate.
    const { page, log } = await openPage(browser, { ignoreHTTPSErrors: true });
    await loadComm(page, page_.contactAddress);
    const reply = await page.evaluate(async (address) => {
      // deno-lint-ignore no-explicit-any
      const { connect } = (globalThis as any).comm;
      const comm = await connect(address, { timeout: 10_000 });
      try {
        await comm.write("over TLS");
        return await comm.read();
      } finally {
        await comm.close();
      }
    }, secure.contactAddress).catch((error) => {
      throw new Error(`${error.message}\n${log.join("\n")}`);
    });
    assertEquals(reply, { secure: "over TLS" });
  },
});

/** A ws address where nothing listens any more. */
async function deadAddress(): Promise<string> {
  const listener = await listen("ws://127.0.0.1:0");
  const address = listener.contactAddress;
  await listener.close();
  return address;
}

/** A WebSocket server that agrees to x-comm, says hello, then sends text. */
function rogueServer(): { address: string } & AsyncDisposable {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request, info) => {
    const peer = `ws://${info.remoteAddr.hostname}:${info.remoteAddr.port}`;
    const { socket, response } = Deno.upgradeWebSocket(request, { protocol: "x-comm" });
    socket.onopen = () => {
      socket.send(JSON.stringify({ peer }));
      socket.send("this is not a comm message");
    };
    return response;
  });
  return {
    address: `ws://127.0.0.1:${server.addr.port}`,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
