// dask's error reply, both ways: what a server sends when a handler throws,
// and how a caller reads one back. Not part of the public API.
//
// dask's shape is {status: "uncaught-error", exception, traceback,
// exception_text, traceback_text}, and its `rpc` raises from it. There,
// `exception` is a pickled Python exception, loaded when it is bytes and
// wrapped as `Exception(text)` when it is a string. We send a small pickle of
// a builtin exception class, so that a Python caller can catch `ValueError`
// or `KeyError` thrown by a TypeScript handler, and we read replies from
// `exception_text` (Python's `repr()` of the exception), never unpickling.

/** What a reply says about a remote error. */
export interface RemoteErrorInfo {
  name: string;
  message: string;
  stack: string;
}

/** dask's status for an error reply. */
export const UNCAUGHT_ERROR = "uncaught-error";

/** dask's `distributed.admin.max-error-length`: longer messages are cut. */
const MAX_ERROR_LENGTH = 10_000;

// Exception classes of Python's `builtins` that a thrown error's name maps
// to. Left out on purpose: the ones that mean "stop" to Python code
// (BaseException, SystemExit, KeyboardInterrupt, GeneratorExit,
// StopIteration, StopAsyncIteration).
const PYTHON_EXCEPTIONS = new Set([
  "ArithmeticError",
  "AssertionError",
  "AttributeError",
  "BlockingIOError",
  "BrokenPipeError",
  "BufferError",
  "ConnectionAbortedError",
  "ConnectionError",
  "ConnectionRefusedError",
  "ConnectionResetError",
  "EOFError",
  "Exception",
  "FileExistsError",
  "FileNotFoundError",
  "FloatingPointError",
  "ImportError",
  "IndexError",
  "InterruptedError",
  "IsADirectoryError",
  "KeyError",
  "LookupError",
  "MemoryError",
  "ModuleNotFoundError",
  "NameError",
  "NotADirectoryError",
  "NotImplementedError",
  "OSError",
  "OverflowError",
  "PermissionError",
  "ProcessLookupError",
  "RecursionError",
  "ReferenceError",
  "RuntimeError",
  "TimeoutError",
  "TypeError",
  "UnicodeError",
  "ValueError",
  "ZeroDivisionError",
]);

/** JavaScript error names with a Python counterpart of another name. */
const PYTHON_EQUIVALENTS: Record<string, string> = { RangeError: "ValueError" };

/**
 * The error reply for `error`, in dask's shape.
 *
 * The Python class is the error's name when Python has a builtin exception
 * of that name (`TypeError`, `KeyError`, `TimeoutError`…), `ValueError` for
 * a `RangeError`, and `Exception` otherwise, with the name kept in the text.
 */
export function errorReply(error: unknown): Record<string, unknown> {
  const { name, message, stack } = describeError(error);
  const pythonName = PYTHON_EXCEPTIONS.has(name) ? name : PYTHON_EQUIVALENTS[name] ?? "Exception";
  const argument = pythonName === "Exception" && name !== "Exception"
    ? `${name}: ${message}`
    : message;
  return {
    status: UNCAUGHT_ERROR,
    exception: pickleException(pythonName, argument),
    traceback: null,
    exception_text: `${name}(${pythonRepr(message)})`,
    traceback_text: stack,
  };
}

/** Whether `reply` is an error reply. */
export function isErrorReply(reply: unknown): reply is Record<string, unknown> {
  return typeof reply === "object" && reply !== null && !Array.isArray(reply) &&
    (reply as Record<string, unknown>).status === UNCAUGHT_ERROR;
}

/**
 * Reads the name, message and stack from an error reply, whether dask or
 * this library sent it.
 */
export function parseErrorReply(reply: Record<string, unknown>): RemoteErrorInfo {
  const text = reply.exception_text;
  const stack = typeof reply.traceback_text === "string" ? reply.traceback_text : "";
  if (typeof text === "string") {
    const match = /^([A-Za-z_][\w.]*)\(([\s\S]*)\)$/.exec(text);
    if (match) {
      return { name: match[1], message: pythonUnrepr(match[2]) ?? match[2], stack };
    }
    return { name: "Exception", message: text, stack };
  }
  if (typeof reply.exception === "string") {
    return { name: "Exception", message: reply.exception, stack };
  }
  return { name: "Exception", message: "(the reply carries no description)", stack };
}

function describeError(error: unknown): RemoteErrorInfo {
  if (!(error instanceof Error)) {
    return { name: "Error", message: truncate(safeString(error)), stack: "" };
  }
  const name = typeof error.name === "string" && error.name !== "" ? error.name : "Error";
  const message = truncate(String(error.message));
  let stack = typeof error.stack === "string" ? error.stack : "";
  // V8 starts the stack with "Name: message"; dask's traceback_text holds
  // only the frames.
  const head = `${name}: ${error.message}`;
  if (stack.startsWith(head)) stack = stack.slice(head.length).replace(/^\n/, "");
  else if (stack.startsWith(name)) stack = stack.slice(stack.indexOf("\n") + 1);
  return { name, message, stack };
}

/** `String(value)`, or a description when that throws. */
function safeString(value: unknown): string {
  try {
    return String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

function truncate(text: string): string {
  return text.length > MAX_ERROR_LENGTH ? `${text.slice(0, MAX_ERROR_LENGTH)}...` : text;
}

const encoder = new TextEncoder();

/**
 * A pickle (protocol 2) of `builtins.<name>(message)`: PROTO, GLOBAL,
 * BINUNICODE, TUPLE1, REDUCE, STOP.
 */
function pickleException(name: string, message: string): Uint8Array {
  const global = encoder.encode(`cbuiltins\n${name}\n`);
  const text = encoder.encode(message);
  const out = new Uint8Array(2 + global.length + 5 + text.length + 3);
  out.set([0x80, 0x02], 0);
  out.set(global, 2);
  let at = 2 + global.length;
  out[at++] = 0x58; // X: BINUNICODE, a 4-byte little-endian length
  new DataView(out.buffer).setUint32(at, text.length, true);
  at += 4;
  out.set(text, at);
  at += text.length;
  out.set([0x85, 0x52, 0x2e], at); // TUPLE1, REDUCE, STOP
  return out;
}

// What Python's str.isprintable() refuses (besides the space): controls,
// format characters, surrogates, private use, unassigned, separators.
const NOT_PRINTABLE = /^[\p{C}\p{Z}]$/u;

/** Python's `repr()` of a string. */
export function pythonRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const char of text) {
    const code = char.codePointAt(0)!;
    if (char === "\\" || char === quote) out += `\\${char}`;
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (char === " " || !NOT_PRINTABLE.test(char)) out += char;
    else if (code <= 0xff) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else if (code <= 0xffff) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += `\\U${code.toString(16).padStart(8, "0")}`;
  }
  return out + quote;
}

/**
 * The string a Python string literal stands for, or undefined when `text`
 * is not exactly one (an exception with several arguments, or none).
 */
export function pythonUnrepr(text: string): string | undefined {
  const quote = text[0];
  if ((quote !== "'" && quote !== '"') || text.length < 2 || text.at(-1) !== quote) {
    return undefined;
  }
  let out = "";
  for (let i = 1; i < text.length - 1; i++) {
    const char = text[i];
    if (char === quote) return undefined;
    if (char !== "\\") {
      out += char;
      continue;
    }
    const next = text[++i];
    // A backslash may not escape the closing quote.
    if (i >= text.length - 1) return undefined;
    const simple: Record<string, string> = {
      "\\": "\\",
      "'": "'",
      '"': '"',
      n: "\n",
      r: "\r",
      t: "\t",
      "0": "\0",
      a: "\x07",
      b: "\b",
      f: "\f",
      v: "\v",
    };
    if (next in simple) {
      out += simple[next];
      continue;
    }
    const width = next === "x" ? 2 : next === "u" ? 4 : next === "U" ? 8 : 0;
    const hex = text.slice(i + 1, i + 1 + width);
    if (width === 0 || !/^[0-9a-fA-F]+$/.test(hex) || hex.length !== width) return undefined;
    const code = parseInt(hex, 16);
    if (code > 0x10ffff) return undefined;
    out += String.fromCodePoint(code);
    i += width;
  }
  return out;
}
