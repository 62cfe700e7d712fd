"""A UDP peer for tests/datagram_interop_test.ts: Python's socket module.

Every mode binds one SOCK_DGRAM socket to the loopback address of FAMILY
("4": 127.0.0.1, "6": ::1) at port 0, prints the port as the first line of
stdout, and sends to (or answers) the test's socket at loopback:PORT. The
standard library is enough, except for the msg* modes, which need msgpack.

    udp_peer.py send FAMILY PORT GROUPS
        Sends datagrams of the sizes in GROUPS ("0,1,2/65507/100": groups
        split by "/", sizes by ","), the i-th (counting over all groups)
        holding payload(i, size). Before each group but the first it waits
        for a datagram from PORT (the test's go-ahead), so that the test's
        socket is never sent more than one group ahead of its reader.
        Then prints one JSON line {"sent": count, "sockname": [host, port]}
        and exits 0.

    udp_peer.py echo FAMILY
        Sends every datagram back to its sender (recvfrom, sendto) until
        stdin closes; then prints one JSON line {"count", "sizes", "sha256",
        "senders", "sockname"} and exits 0. sha256 is over each datagram's
        size (4 bytes, big-endian) followed by its bytes, in arrival order.

    udp_peer.py garbage FAMILY PORT
        Sends each of GARBAGE (datagrams that are not one msgpack value),
        each followed by the valid message {"after": index}, written out by
        hand; lockstep, as `send` with one datagram per group. Then prints
        {"sent": count, "sockname": ...} and exits 0.

    udp_peer.py msgsend FAMILY PORT
        Sends each of values() packed with msgpack.packb(use_bin_type=True),
        then 0.1 packed with use_single_float=True; lockstep, as `garbage`.
        Then prints {"sent": count, "sockname": ...} and exits 0.

    udp_peer.py msgecho FAMILY
        For each datagram: unpacks it with msgpack.unpackb(raw=False),
        prints one JSON line {"value": describe(value)} (or {"error": ...}),
        and sends msgpack.packb(value, use_bin_type=True) back to the sender.
        When stdin closes, prints {"end": count, "senders": ..., "sockname":
        ...} and exits 0.

Any mode exits 3 if stdin closes before it is done, 2 after TIMEOUT
seconds, 1 on an error (with a traceback on stderr), so it never outlives a
test.
"""

import asyncio
import hashlib
import json
import socket
import struct
import sys

sys.dont_write_bytecode = True  # Leave tests/testdata/__pycache__ alone.

from _stdin_watch import run_bounded, watch_stdin  # noqa: E402

TIMEOUT = 60
RECEIVE_BYTES = 65536
MAX_DATAGRAM = {"4": 65507, "6": 65527}
HOSTS = {"4": ("127.0.0.1", socket.AF_INET), "6": ("::1", socket.AF_INET6)}

# Datagrams that are not one msgpack value: a byte no msgpack starts with,
# {"a": [1, 2, 3]} without its last byte, two values (1 then 2), text (0x6e
# is the fixint 110, then more bytes), and nothing at all.
GARBAGE = [
    b"\xc1",
    b"\x81\xa1a\x93\x01\x02",
    b"\x01\x02",
    b"not msgpack",
    b"",
]


def log(*args):
    print("udp_peer:", *args, file=sys.stderr, flush=True)


def payload(index, size):
    """The bytes of the index-th datagram of `send`: shake_256(b"udp_peer <index>")."""
    return hashlib.shake_256(b"udp_peer %d" % index).digest(size) if size else b""


def blob(size):
    return hashlib.shake_256(b"udp_peer blob").digest(size) if size else b""


def after(index):
    """msgpack for {"after": index} (index < 128), written by hand."""
    return b"\x81\xa5after" + bytes([index])


def values(family):
    """What `msgsend` sends; datagram_interop_test.ts expects the same."""
    import msgpack

    return [
        {"op": "hello", "n": 1, "nested": {"list": [1, 2, [3, None]], "empty": {}}},
        [1, "two", None, True, False, 3.5],
        b"\x00\x01\xfe\xff",
        b"",
        [0, 1, -1, 127, 128, 255, 256, -32, -33, 65535, 65536, 2**31 - 1, 2**31, 2**32],
        [-(2**31), -(2**31) - 1, 2**53 - 1, -(2**53) + 1],
        [2**53, -(2**53), 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1],
        [0.0, -0.0, 1.0, 1.5, -0.25, 0.1, 1e300, 5e-324, float("inf"), float("-inf")],
        float("nan"),
        "héllo wörld 日本語 🎉 𝄞",
        "",
        "nul\0inside",
        None,
        True,
        False,
        {1: "one", -2: "minus two"},
        {"deep": [[[[{"x": [None]}]]]]},
        msgpack.Timestamp(1709209815, 250000000),
        # Exactly the largest datagram: fixmap, fixstr "blob", bin16 header.
        {"blob": blob(MAX_DATAGRAM[family] - 9)},
    ]


def describe(value):
    """A received value as JSON, exact: ints as text, floats as their bits."""
    import msgpack

    if value is None or isinstance(value, bool):
        return {"type": type(value).__name__, "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "bits": struct.pack(">d", value).hex()}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, bytes):
        if len(value) > 64:
            return {"type": "bytes", "len": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        return {"type": "bytes", "hex": value.hex()}
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__, "items": [describe(item) for item in value]}
    if isinstance(value, dict):
        return {"type": "dict", "items": [[describe(k), describe(v)] for k, v in value.items()]}
    if isinstance(value, msgpack.Timestamp):
        return {"type": "Timestamp", "seconds": value.seconds, "nanoseconds": value.nanoseconds}
    return {"type": type(value).__name__, "repr": repr(value)}


def host_port(address):
    return [address[0], address[1]]


async def receive(sock):
    """The next (data, address) from a non-blocking socket."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    while True:
        try:
            return sock.recvfrom(RECEIVE_BYTES)
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def send(sock, data, address):
    """sendto on a non-blocking socket, waiting while the send buffer is full."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    while True:
        try:
            sent = sock.sendto(data, address)
            if sent != len(data):
                raise RuntimeError(f"sent {sent} of {len(data)} bytes")
            return
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_writer(fd)


async def go_ahead(sock, target):
    """Waits for a datagram from the test's socket; others are logged and dropped."""
    while True:
        data, address = await receive(sock)
        if host_port(address) == host_port(target):
            return
        log(f"ignored {len(data)} bytes from {address}, expected the go-ahead from {target}")


async def send_groups(sock, target, groups):
    """Sends each group of datagrams, waiting for a go-ahead before each but the first."""
    count = 0
    for number, group in enumerate(groups):
        if number > 0:
            await go_ahead(sock, target)
        for data in group:
            await send(sock, data, target)
            count += 1
    return count


def finished(sock, **report):
    print(json.dumps({**report, "sockname": host_port(sock.getsockname())}), flush=True)
    return 0


async def run_send(sock, target, spec):
    groups = []
    index = 0
    for part in spec.split("/"):
        group = []
        for size in (int(s) for s in part.split(",") if s != ""):
            group.append(payload(index, size))
            index += 1
        groups.append(group)
    return finished(sock, sent=await send_groups(sock, target, groups))


async def run_garbage(sock, target):
    datagrams = []
    for index, garbage in enumerate(GARBAGE):
        datagrams += [garbage, after(index)]
    return finished(sock, sent=await send_groups(sock, target, [[d] for d in datagrams]))


async def run_msgsend(sock, target, family):
    import msgpack

    datagrams = [msgpack.packb(v, use_bin_type=True) for v in values(family)]
    datagrams.append(msgpack.packb(0.1, use_bin_type=True, use_single_float=True))
    return finished(sock, sent=await send_groups(sock, target, [[d] for d in datagrams]))


async def run_echo(sock, done):
    sizes = []
    digest = hashlib.sha256()
    senders = []

    async def serve():
        while True:
            data, address = await receive(sock)
            sizes.append(len(data))
            digest.update(struct.pack(">I", len(data)))
            digest.update(data)
            if host_port(address) not in senders:
                senders.append(host_port(address))
            await send(sock, data, address)

    await until(done, asyncio.ensure_future(serve()))
    return finished(
        sock, count=len(sizes), sizes=sizes, sha256=digest.hexdigest(), senders=senders
    )


async def run_msgecho(sock, done):
    import msgpack

    senders = []
    count = 0

    async def serve():
        nonlocal count
        while True:
            data, address = await receive(sock)
            count += 1
            if host_port(address) not in senders:
                senders.append(host_port(address))
            try:
                value = msgpack.unpackb(data, raw=False)
            except Exception as error:  # noqa: BLE001 - reported to the test
                print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
                continue
            print(json.dumps({"value": describe(value)}), flush=True)
            await send(sock, msgpack.packb(value, use_bin_type=True), address)

    await until(done, asyncio.ensure_future(serve()))
    return finished(sock, end=count, senders=senders)


async def until(done, serving):
    """Waits for `done`, then stops `serving`; re-raises if `serving` fails first."""
    waiting = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({waiting, serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel(waiting)
    if serving.done():
        serving.result()  # Raises what it raised.
        raise RuntimeError("the echo loop ended")
    await cancel(serving)


async def cancel(task):
    """Cancels `task` and waits for it to finish, before its socket closes."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def main(argv):
    if len(argv) < 2 or argv[1] not in HOSTS:
        log("usage: udp_peer.py send|echo|garbage|msgsend|msgecho 4|6 [PORT [GROUPS]]")
        return 64
    mode, family = argv[0], argv[1]
    host, af = HOSTS[family]
    done = asyncio.Event()
    watch_stdin(done, "udp_peer")
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((host, 0))
        print(sock.getsockname()[1], flush=True)
        target = (host, int(argv[2])) if len(argv) >= 3 else None
        if mode == "send" and len(argv) == 4:
            work = run_send(sock, target, argv[3])
        elif mode == "garbage" and len(argv) == 3:
            work = run_garbage(sock, target)
        elif mode == "msgsend" and len(argv) == 3:
            work = run_msgsend(sock, target, family)
        elif mode == "echo" and len(argv) == 2:
            return await run_echo(sock, done)
        elif mode == "msgecho" and len(argv) == 2:
            return await run_msgecho(sock, done)
        else:
            log(f"bad arguments: {argv}")
            return 64
        # A sending mode: stdin closing first means that the test gave up.
        working = asyncio.ensure_future(work)
        waiting = asyncio.ensure_future(done.wait())
        try:
            await asyncio.wait({working, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel(waiting)
        if working.done():
            return working.result()
        await cancel(working)
        log("stdin closed before all was sent")
        return 3


if __name__ == "__main__":
    sys.exit(run_bounded(main, sys.argv[1:], TIMEOUT, log))
