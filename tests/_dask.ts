// A real dask.distributed for the interop tests: Debian's python3-distributed
// (2022.12) for /usr/bin/python3, and its `dask scheduler` command.

import { join } from "@std/path";
import { WAIT_MS } from "./_python_peer.ts";

/** Debian's Python, which has dask once python3-distributed is installed. */
export const PYTHON = "/usr/bin/python3";
/** dask's command line, from the same package. */
export const DASK = "/usr/bin/dask";

/** Why the tests cannot run, or `undefined` when dask is there. */
export function daskUnavailable(): string | undefined {
  try {
    const output = new Deno.Command(PYTHON, {
      args: ["-c", "import distributed"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    if (!output.success) {
      const lines = new TextDecoder().decode(output.stderr).trim().split("\n");
      return `${PYTHON} cannot import distributed: ${lines[lines.length - 1]}`;
    }
    Deno.statSync(DASK);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * A `dask scheduler` on 127.0.0.1, a free port, no dashboard, found through
 * its scheduler file. It exits on its own after a minute of idleness, should
 * this process die without stopping it.
 */
export class DaskScheduler implements AsyncDisposable {
  readonly address: string;
  readonly id: string;
  readonly #child: Deno.ChildProcess;
  readonly #stderr: Promise<string>;
  readonly #dir: string;

  private constructor(
    child: Deno.ChildProcess,
    stderr: Promise<string>,
    dir: string,
    file: { address: string; id: string },
  ) {
    this.#child = child;
    this.#stderr = stderr;
    this.#dir = dir;
    this.address = file.address;
    this.id = file.id;
  }

  static async start(): Promise<DaskScheduler> {
    const dir = await Deno.makeTempDir({ prefix: "x-comm-dask-" });
    const file = join(dir, "scheduler.json");
    const child = new Deno.Command(DASK, {
      args: [
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--no-show",
        "--dashboard-address",
        "127.0.0.1:0",
        "--scheduler-file",
        file,
        "--idle-timeout",
        "60s",
      ],
      env: { DASK_LOGGING__DISTRIBUTED: "warning" },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const deadline = Date.now() + WAIT_MS;
    // dask writes the file once listening, not atomically: wait until it parses.
    while (Date.now() < deadline) {
      try {
        const parsed = JSON.parse(await Deno.readTextFile(file));
        if (typeof parsed.address === "string") {
          return new DaskScheduler(child, stderr, dir, parsed);
        }
      } catch {
        // Not there yet, or half written.
      }
      const exited = await Promise.race([
        child.status.then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), 50)),
      ]);
      if (exited) {
        await Deno.remove(dir, { recursive: true });
        throw new Error(`dask scheduler exited before listening:\n${await stderr}`);
      }
    }
    child.kill("SIGKILL");
    await child.status;
    await stderr;
    await Deno.remove(dir, { recursive: true });
    throw new Error(`dask scheduler did not write ${file} within ${WAIT_MS} ms`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // It exited already.
    }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // It exited meanwhile.
      }
    }, 10_000);
    await this.#child.status;
    clearTimeout(timer);
    await this.#stderr;
    await Deno.remove(this.#dir, { recursive: true });
  }
}
