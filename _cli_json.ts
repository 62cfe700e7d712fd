// What the command-line tool (cli.ts) shows of a message as JSON, and reads
// back: tagged objects for what JSON lacks (binaries, bigints, sets, dates,
// numbers JSON cannot write, and dask payloads we cannot decode).

import { Serialized } from "./mod.ts";

const encoder = new TextEncoder();

/** Bytes shown of a longer binary value. */
export const MAX_SHOWN_BYTES = 256;
// deno-lint-ignore no-control-regex -- finding them is the point
const CONTROL_CHARACTERS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;
const TAGS = {
  $binary: ["$binary", "encoding", "bytes", "truncated"],
  $bigint: ["$bigint"],
  $set: ["$set"],
  $date: ["$date"],
  $number: ["$number"],
  $serialized: ["$serialized", "header", "frames"],
} as const;

/** A value as plain JSON, with the tagged forms for what JSON lacks. */
export function toJson(value: unknown, state: { binary: boolean }, seen: Set<object>): unknown {
  switch (typeof value) {
    case "undefined":
      return null;
    case "number":
      return Number.isFinite(value) ? value : { $number: String(value) };
    case "bigint":
      return { $bigint: String(value) };
    case "string":
    case "boolean":
      return value;
    case "object":
      break;
    default:
      return String(value);
  }
  if (value === null) return null;
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    state.binary = true;
    return binaryJson(
      value instanceof ArrayBuffer
        ? new Uint8Array(value)
        : new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
    );
  }
  if (value instanceof Date) {
    return { $date: Number.isNaN(value.getTime()) ? String(value) : value.toISOString() };
  }
  if (seen.has(value)) return "[circular]";
  seen.add(value);
  try {
    const inner = (item: unknown) => toJson(item, state, seen);
    if (Array.isArray(value)) return value.map(inner);
    if (value instanceof Set) return { $set: [...value].map(inner) };
    if (value instanceof Map) {
      return Object.fromEntries([...value].map(([k, v]) => [String(k), inner(v)]));
    }
    if (value instanceof Serialized) {
      return {
        $serialized: value.kind,
        header: inner(value.header),
        frames: value.frames.map(inner),
      };
    }
    if (value instanceof Error) return { $error: value.name, message: value.message };
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, inner(v)]));
  } finally {
    seen.delete(value);
  }
}

function binaryJson(bytes: Uint8Array): Record<string, unknown> {
  const truncated = bytes.length > MAX_SHOWN_BYTES;
  let text: string | undefined;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    if (CONTROL_CHARACTERS.test(text)) text = undefined;
  } catch {
    // Not UTF-8: base64 below.
  }
  const shown = text !== undefined
    ? { $binary: truncated ? cutText(text) : text, encoding: "utf8" }
    : { $binary: toBase64(bytes.subarray(0, MAX_SHOWN_BYTES)), encoding: "base64" };
  return truncated
    ? { ...shown, bytes: bytes.length, truncated: true }
    : { ...shown, bytes: bytes.length };
}

/** The characters of `text` within its first MAX_SHOWN_BYTES bytes of UTF-8. */
function cutText(text: string): string {
  let bytes = 0;
  let end = 0;
  for (const character of text) {
    bytes += encoder.encode(character).length;
    if (bytes > MAX_SHOWN_BYTES) break;
    end += character.length;
  }
  return text.slice(0, end);
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let at = 0; at < bytes.length; at += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  }
  return btoa(binary);
}

/** Whether `value` is one of the tagged objects, by its keys. */
export function isTagged(value: object): keyof typeof TAGS | undefined {
  const keys = Object.keys(value);
  for (const [tag, allowed] of Object.entries(TAGS)) {
    if (keys.includes(tag) && keys.every((key) => (allowed as readonly string[]).includes(key))) {
      return tag as keyof typeof TAGS;
    }
  }
  return undefined;
}

/** A JSON value with the tagged forms turned back into what they stand for. */
export function fromTagged(value: unknown): unknown {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return value;
  const tagged = value as Record<string, unknown>;
  switch (isTagged(tagged)) {
    case "$binary": {
      const { $binary: text, encoding = "base64", truncated } = tagged;
      if (typeof text !== "string") throw new SyntaxError(`"$binary" must be a string`);
      if (truncated === true) {
        throw new SyntaxError(`a "$binary" with "truncated": true lacks its end`);
      }
      if (encoding === "utf8") return encoder.encode(text);
      if (encoding !== "base64") {
        throw new SyntaxError(
          `"encoding" must be "utf8" or "base64", not ${JSON.stringify(encoding)}`,
        );
      }
      try {
        return Uint8Array.from(atob(text), (character) => character.charCodeAt(0));
      } catch {
        throw new SyntaxError(`"$binary" ${JSON.stringify(text)} is not base64`);
      }
    }
    case "$bigint": {
      const text = tagged.$bigint;
      if (typeof text !== "string" || !/^-?\d+$/.test(text)) {
        throw new SyntaxError(`"$bigint" must be a string of digits`);
      }
      return BigInt(text);
    }
    case "$set":
      if (!Array.isArray(tagged.$set)) throw new SyntaxError(`"$set" must be an array`);
      return new Set(tagged.$set);
    case "$date": {
      const date = new Date(String(tagged.$date));
      if (Number.isNaN(date.getTime())) throw new SyntaxError(`"$date" must be a date`);
      return date;
    }
    case "$number": {
      const number = Number(tagged.$number);
      if (!Number.isNaN(number) || tagged.$number === "NaN") return number;
      throw new SyntaxError(`"$number" must be "NaN", "Infinity" or "-Infinity"`);
    }
    case "$serialized":
      throw new SyntaxError(`a "$serialized" dask payload cannot be sent from JSON`);
    default:
      return value;
  }
}
