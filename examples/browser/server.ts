/**
 * A web page that talks to Deno over a WebSocket comm: this server builds
 * `@x/comm/browser` into one ES module with Deno's bundler, serves the page
 * and the module, and answers comms at `/comm` on the same port.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-run examples/browser/server.ts          # port 8788
 * deno run --allow-net --allow-read --allow-run examples/browser/server.ts --port 0
 * ```
 *
 * Then open the printed address in a browser: the page connects, sends a
 * message, and shows the reply. Stop the server with Ctrl-C.
 *
 * The first line printed is the page's address, so that a test can start
 * the server on port 0 and find it.
 *
 * @module
 */

import { type Comm, listen } from "@x/comm";

const HERE = new URL("./", import.meta.url);
const ROOT = new URL("../../", import.meta.url);

/** What the comm handler answers: the message back, with who answered and a digest of its binaries. */
async function answer(comm: Comm): Promise<void> {
  let count = 0;
  for await (const message of comm) {
    count++;
    await comm.write({
      reply: message,
      from: `Deno ${Deno.version.deno}`,
      count,
      binaryBytes: binaryBytes(message),
    });
  }
}

/** Bytes in the binaries of `value`, however deep. */
function binaryBytes(value: unknown): number {
  if (value instanceof Uint8Array) return value.length;
  if (Array.isArray(value)) return value.reduce((sum, item) => sum + binaryBytes(item), 0);
  if (typeof value === "object" && value !== null) {
    return Object.values(value).reduce((sum, item) => sum + binaryBytes(item), 0);
  }
  return 0;
}

/** Builds browser.ts into one minified ES module with `deno bundle`. */
async function bundle(): Promise<string> {
  const command = new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--minify",
      "--config",
      new URL("deno.json", ROOT).pathname,
      new URL("browser.ts", ROOT).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  });
  const { success, stdout, stderr } = await command.output();
  if (!success) {
    throw new Error(`deno bundle failed:\n${new TextDecoder().decode(stderr)}`);
  }
  return new TextDecoder().decode(stdout);
}

const portFlag = Deno.args.indexOf("--port");
const port = portFlag === -1 ? 8788 : Number(Deno.args[portFlag + 1]);

const files: Record<string, [body: string, type: string]> = {
  "/": [await Deno.readTextFile(new URL("index.html", HERE)), "text/html; charset=utf-8"],
  "/app.js": [await Deno.readTextFile(new URL("app.js", HERE)), "text/javascript"],
  "/comm.js": [await bundle(), "text/javascript"],
};

const listener = await listen(`ws://127.0.0.1:${port}/comm`, answer, {
  httpHandler(request) {
    const file = files[new URL(request.url).pathname];
    if (!file) return new Response("Not Found\n", { status: 404 });
    return new Response(file[0], {
      headers: { "content-type": file[1], "cache-control": "no-store" },
    });
  },
});
const page = listener.contactAddress.replace(/^ws:/, "http:").replace(/\/comm$/, "/");
console.log(page);
console.error(`Open ${page} in a browser; its comms come to ${listener.contactAddress}`);

Deno.addSignalListener("SIGINT", async () => {
  await listener.close();
  Deno.exit(0);
});
