// What the Python interop tests (dask_interop_test.ts, mp_interop_test.ts)
// share: a Python script run as a child process, whose output is kept for
// error messages, and a few small helpers.

import { assertInstanceOf } from "@std/assert";
import { basename } from "@std/path";

/** The longest we wait for anything Python does. */
export const WAIT_MS = 30_000;

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Rejects with `what()` if `promise` takes over `ms`; clears its timer. */
export async function within<T>(
  promise: Promise<T>,
  what: () => string,
  ms = WAIT_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} (waited ${ms} ms)`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Deterministic bytes that are not all alike (xorshift32). */
export function pattern(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x;
  }
  return bytes;
}

// deno-std's npm build has no types, so its asserts do not narrow: this does.
export function asBytes(value: unknown, what = "value"): Uint8Array {
  assertInstanceOf(value, Uint8Array, `${what} is not a Uint8Array: ${Deno.inspect(value)}`);
  return value as Uint8Array;
}

async function pump(stream: ReadableStream<Uint8Array>, onText: (text: string) => void) {
  const decoder = new TextDecoder();
  for await (const chunk of stream) onText(decoder.decode(chunk, { stream: true }));
  onText(decoder.decode());
}

export interface PythonPeerOptions {
  /** The interpreter to run. */
  python: string;
  /** The script it runs. */
  script: string;
  /** The script's arguments. */
  args?: readonly string[];
  /**
   * Whether Python's stdin is a pipe, which finish() and stopping close;
   * otherwise it is null. False by default.
   */
  pipeStdin?: boolean;
  /** Names the script in error messages; its file name by default. */
  label?: string;
  /**
   * How error messages show Python's output:
   * - `"output"` (the default): `report` gives stdout and stderr under the
   *   label, and only explain() adds it to errors.
   * - `"stderr"`: `report` gives Python's stderr alone, and the errors of
   *   firstLine() and finish() carry it too (explain() does not repeat it).
   */
  report?: "output" | "stderr";
  /** How long disposal lets Python exit before killing it; 5 s by default. */
  disposeMs?: number;
}

/** A Python script running as a child process, its stdout and stderr collected. */
export class PythonPeer implements AsyncDisposable {
  /** The script's name in error messages. */
  readonly label: string;
  readonly #child: Deno.ChildProcess;
  readonly #pumps: Promise<void>;
  readonly #stderrReport: boolean;
  readonly #disposeMs: number;
  #stdout = "";
  #stderr = "";
  #stdoutDone = false;
  #wake: (() => void) | undefined;
  #stdinClosed: boolean;
  #status: Deno.CommandStatus | undefined;

  constructor(options: PythonPeerOptions) {
    this.label = options.label ?? basename(options.script);
    this.#stderrReport = options.report === "stderr";
    this.#disposeMs = options.disposeMs ?? 5_000;
    this.#stdinClosed = !options.pipeStdin;
    this.#child = new Deno.Command(options.python, {
      args: [options.script, ...(options.args ?? [])],
      stdin: options.pipeStdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const notify = () => {
      const wake = this.#wake;
      this.#wake = undefined;
      wake?.();
    };
    this.#pumps = Promise.all([
      pump(this.#child.stdout, (text) => {
        this.#stdout += text;
        notify();
      }).finally(() => {
        this.#stdoutDone = true;
        notify();
      }),
      pump(this.#child.stderr, (text) => this.#stderr += text),
    ]).then(() => {});
    this.#child.status.then((status) => this.#status = status);
  }

  /** Python's output so far, for error messages. */
  get report(): string {
    if (this.#stderrReport) {
      const stderr = this.#stderr.trim();
      return stderr === "" ? "(Python wrote nothing to stderr)" : `Python's stderr:\n${stderr}`;
    }
    const out = this.#stdout.trim() || "(nothing)";
    const err = this.#stderr.trim() || "(nothing)";
    return `${this.label}'s stdout: ${out}\n${this.label}'s stderr: ${err}`;
  }

  /**
   * The first line Python prints, trimmed. Rejects with `errors.exited` if
   * Python closes its stdout before, or `errors.timeout` after WAIT_MS.
   */
  firstLine(errors: { exited?: string; timeout?: string } = {}): Promise<string> {
    const exited = errors.exited ?? `${this.label} exited without printing a line`;
    const timeout = errors.timeout ?? `No first line from ${this.label}`;
    const wait = async () => {
      while (!this.#stdout.includes("\n") && !this.#stdoutDone) {
        await new Promise<void>((resolve) => this.#wake = resolve);
      }
      const newline = this.#stdout.indexOf("\n");
      if (newline === -1) throw new Error(this.#withReport(exited));
      return this.#stdout.slice(0, newline).trim();
    };
    return within(wait(), () => this.#withReport(timeout));
  }

  /** Closes stdin if piped and waits for Python to exit on its own. */
  async finish(): Promise<{ code: number; stdout: string; stderr: string }> {
    await this.#closeStdin();
    const status = await within(
      this.#child.status,
      () => this.#withReport(`${this.label} did not exit`),
    );
    await this.#pumps;
    return { code: status.code, stdout: this.#stdout, stderr: this.#stderr };
  }

  /** `error` with Python's output appended, once Python is done. */
  async explain(error: unknown): Promise<Error> {
    await this.#stop(5_000);
    const report = this.report;
    if (this.#stderrReport && error instanceof Error && error.message.includes(report)) {
      return error;
    }
    return new Error(`${messageOf(error)}\n${report}`, { cause: error });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#stop(this.#disposeMs);
  }

  /** `message`, followed by the report if errors carry it. */
  #withReport(message: string): string {
    return this.#stderrReport ? `${message}\n${this.report}` : message;
  }

  /** Lets Python exit within `ms`, then kills it; waits for its streams. */
  async #stop(ms: number): Promise<void> {
    await this.#closeStdin();
    if (this.#status === undefined) {
      try {
        await within(this.#child.status, () => `${this.label} did not exit`, ms);
      } catch {
        try {
          this.#child.kill("SIGKILL");
        } catch {
          // It exited meanwhile.
        }
      }
    }
    await this.#child.status;
    await this.#pumps;
  }

  async #closeStdin(): Promise<void> {
    if (this.#stdinClosed) return;
    this.#stdinClosed = true;
    try {
      await this.#child.stdin.close();
    } catch {
      // Python already exited.
    }
  }
}
