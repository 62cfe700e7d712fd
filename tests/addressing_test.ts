import { assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  AddressError,
  connect,
  getAddressHost,
  getAddressHostPort,
  getBackend,
  getLocalAddressFor,
  listen,
  normalizeAddress,
  parseAddress,
  parseHostPort,
  resolveAddress,
  unparseAddress,
  unparseHostPort,
} from "../mod.ts";

Deno.test("parseAddress() splits scheme and location", () => {
  assertEquals(parseAddress("tcp://127.0.0.1:8786"), ["tcp", "127.0.0.1:8786"]);
  assertEquals(parseAddress("tls://[::1]:8786"), ["tls", "[::1]:8786"]);
  assertEquals(parseAddress("unix:///tmp/app.sock"), ["unix", "/tmp/app.sock"]);
  assertEquals(parseAddress("inproc://localhost/1/2"), ["inproc", "localhost/1/2"]);
  assertEquals(parseAddress("tcp://"), ["tcp", ""]);
  assertEquals(parseAddress("tcp://:0"), ["tcp", ":0"]);
});

Deno.test("parseAddress() defaults to tcp unless strict", () => {
  assertEquals(parseAddress("127.0.0.1:8786"), ["tcp", "127.0.0.1:8786"]);
  assertEquals(parseAddress(""), ["tcp", ""]);
  assertThrows(
    () => parseAddress("127.0.0.1:8786", { strict: true }),
    AddressError,
    `"127.0.0.1:8786": it has no scheme`,
  );
});

Deno.test("parseAddress() refuses garbage with a message quoting it", () => {
  assertThrows(() => parseAddress("1tcp://x:1"), AddressError, `malformed scheme "1tcp"`);
  assertThrows(() => parseAddress("://x:1"), AddressError, `malformed scheme ""`);
  assertThrows(() => parseHostPort("tcp://a b:1"), AddressError, `"tcp://a b:1"`);
  assertThrows(() => parseHostPort("a\tb:1"), AddressError, "white space");
  assertThrows(() => parseAddress("tcp://x:1\n"), AddressError, "control characters");
  assertEquals(parseAddress("unix:///tmp/My App/x.sock"), ["unix", "/tmp/My App/x.sock"]);
  assertThrows(
    // @ts-expect-error: a number is not an address
    () => parseAddress(8786),
    AddressError,
    "expected a string",
  );
});

Deno.test("unparseAddress() and normalizeAddress() join what parseAddress() splits", () => {
  for (const address of ["tcp://127.0.0.1:1", "unix:///x.sock", "inproc://a/b", "tcp://"]) {
    assertEquals(unparseAddress(...parseAddress(address)), address);
  }
  assertEquals(normalizeAddress("127.0.0.1:8786"), "tcp://127.0.0.1:8786");
  assertEquals(normalizeAddress("tls://h:1"), "tls://h:1");
  assertThrows(() => unparseAddress("no scheme", "x"), AddressError, `"no scheme"`);
});

Deno.test("parseHostPort() reads IPv4, IPv6 and names", () => {
  assertEquals(parseHostPort("127.0.0.1:8786"), ["127.0.0.1", 8786]);
  assertEquals(parseHostPort("[::1]:8786"), ["::1", 8786]);
  assertEquals(parseHostPort("[fe80::1%eth0]:1"), ["fe80::1%eth0", 1]);
  assertEquals(parseHostPort("localhost:0"), ["localhost", 0]);
  assertEquals(parseHostPort(":0"), ["", 0]);
  assertEquals(parseHostPort("tcp://example.org:65535"), ["example.org", 65535]);
});

Deno.test("parseHostPort() uses the default port only when none is given", () => {
  assertEquals(parseHostPort("localhost", 80), ["localhost", 80]);
  assertEquals(parseHostPort("[::1]", 80), ["::1", 80]);
  assertEquals(parseHostPort("", 0), ["", 0]);
  assertEquals(parseHostPort("h:1", 80), ["h", 1]);
});

Deno.test("parseHostPort() refuses bad ports and hosts", () => {
  assertThrows(() => parseHostPort("localhost"), AddressError, `"localhost": missing port`);
  assertThrows(() => parseHostPort("h:65536"), AddressError, "port 65536 is out of range");
  assertThrows(() => parseHostPort("h:99999"), AddressError, "99999");
  assertThrows(() => parseHostPort("h:-1"), AddressError, `port "-1" is not a number`);
  assertThrows(() => parseHostPort("h:80x"), AddressError, `port "80x"`);
  assertThrows(() => parseHostPort("h:"), AddressError, `port ""`);
  assertThrows(() => parseHostPort("h:123456"), AddressError, "123456");
  assertThrows(() => parseHostPort("::1:80"), AddressError, "must be in brackets");
  assertThrows(() => parseHostPort("[::1:80"), AddressError, "never closed");
  assertThrows(() => parseHostPort("[::1]80"), AddressError, `found "80"`);
});

Deno.test("unparseHostPort() brackets IPv6 hosts", () => {
  assertEquals(unparseHostPort("::1", 8786), "[::1]:8786");
  assertEquals(unparseHostPort("[::1]", 8786), "[::1]:8786");
  assertEquals(unparseHostPort("::1"), "[::1]");
  assertEquals(unparseHostPort("10.0.0.1", 0), "10.0.0.1:0");
  assertEquals(unparseHostPort("h"), "h");
  assertThrows(() => unparseHostPort("h", 70000), AddressError, "70000");
  assertThrows(() => unparseHostPort("h", 1.5), AddressError, "1.5");
  for (const location of ["[::1]:1", "127.0.0.1:2", "name:3"]) {
    assertEquals(unparseHostPort(...parseHostPort(location)), location);
  }
});

Deno.test("getAddressHost() and getAddressHostPort() ask the backend", () => {
  assertEquals(getAddressHost("tcp://127.0.0.1:8786"), "127.0.0.1");
  assertEquals(getAddressHost("tls://[::1]:1"), "::1");
  assertEquals(getAddressHost("127.0.0.1:1"), "127.0.0.1");
  assertEquals(getAddressHost("unix:///tmp/x.sock"), "localhost");
  assertEquals(getAddressHost("inproc://localhost/1/2"), "localhost");
  assertEquals(getAddressHostPort("tcp://[::1]:8786"), ["::1", 8786]);
  assertThrows(() => getAddressHostPort("tcp://h"), AddressError, "missing port");
  assertThrows(() => getAddressHostPort("unix:///x"), AddressError, "have no port");
  assertThrows(() => getAddressHostPort("inproc://x"), AddressError, "have no port");
});

Deno.test("getBackend() lists the known schemes for an unknown one", () => {
  const error = assertThrows(() => getBackend("foo"), AddressError);
  assertEquals(
    error.message,
    `Unknown scheme "foo" (known schemes: inproc, tcp, tls, unix, ws, wss)`,
  );
  assertThrows(
    () => getAddressHost("foo://x"),
    AddressError,
    `Cannot get the host of "foo://x": unknown scheme "foo" (known schemes: inproc, tcp, tls, unix, ws, wss`,
  );
});

Deno.test("connect() and listen() refuse unknown schemes and bad addresses", async () => {
  await assertRejects(
    () => connect("foo://x"),
    AddressError,
    `Cannot connect to "foo://x": unknown scheme "foo" (known schemes: inproc, tcp, tls, unix`,
  );
  await assertRejects(() => listen("foo://x"), AddressError, `Cannot listen on "foo://x"`);
  await assertRejects(() => connect("tcp://127.0.0.1"), AddressError, "missing port");
  await assertRejects(() => connect("tcp://127.0.0.1:0"), AddressError, "port 0");
  await assertRejects(() => connect("tcp://:8786"), AddressError, "has no host");
  await assertRejects(() => listen("tcp://127.0.0.1:70000"), AddressError, "70000");
  await assertRejects(() => connect("unix://"), AddressError, "no socket path");
});

Deno.test("resolveAddress() resolves names through the system resolver", async () => {
  assertEquals(await resolveAddress("tcp://127.0.0.1:1"), "tcp://127.0.0.1:1");
  assertEquals(await resolveAddress("tcp://[::1]:1"), "tcp://[::1]:1");
  const resolved = await resolveAddress("tcp://localhost:8786");
  assertEquals(
    ["tcp://127.0.0.1:8786", "tcp://[::1]:8786"].includes(resolved),
    true,
    `unexpected resolution ${resolved}`,
  );
  assertEquals(await resolveAddress("unix:///tmp/x.sock"), "unix:///tmp/x.sock");
  await assertRejects(
    () => resolveAddress("tcp://no-such-host.invalid:1"),
    AddressError,
    `host "no-such-host.invalid" was not found`,
  );
});

Deno.test("getLocalAddressFor() answers loopback for loopback peers", () => {
  assertEquals(getLocalAddressFor("tcp://127.0.0.1:8786"), "tcp://127.0.0.1");
  assertEquals(getLocalAddressFor("tcp://[::1]:8786"), "tcp://[::1]");
  assertEquals(getLocalAddressFor("inproc://x"), "inproc://");
  assertEquals(getLocalAddressFor("unix:///tmp/x.sock"), "unix://");
});
