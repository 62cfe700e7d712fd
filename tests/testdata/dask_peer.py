"""A dask.distributed peer for tests/dask_interop_test.ts.

Run with a Python that has dask.distributed (Debian: /usr/bin/python3 with
python3-distributed).

    dask_peer.py listen [SCHEME]
        Listens on SCHEME://127.0.0.1:0 (tcp by default, or ws: dask's
        WebSocket comm, bound to loopback only) with
        distributed.comm.listen, prints the
        contact address as the first line of stdout, and serves one client:
        - {"op": "describe", "value": v} is answered with
          {"op": "described", "value": describe(v), "frames": sizes}: the
          Python types received and the sizes of the message's frames;
        - {"op": "generate", "size": n, "seed": s} is answered with values
          sent with to_serialize / ToPickle (see generate());
        - anything else is echoed back, with every bytes-like of at least
          LARGE bytes wrapped in to_serialize, so that it travels out of band.
        Exits when the client disconnects or stdin closes: 0 if every message
        was handled, 1 otherwise.

    dask_peer.py connect ADDRESS [BIG_SIZE]
        Connects with distributed.comm.connect, sends messages, checks the
        echoes and prints one JSON line {"ok": ..., ...}; exits 1 on mismatch.
        With BIG_SIZE, also sends a to_serialize'd bytes of that size.

Every mode gives up after TIMEOUT seconds (exit 2), so it never hangs a test.
"""

import asyncio
import hashlib
import json
import random
import sys
import traceback

import distributed.comm.tcp
import distributed.comm.ws
from distributed.comm import CommClosedError, connect, listen
from distributed.protocol import to_serialize
from distributed.protocol.serialize import Serialized, ToPickle

from _stdin_watch import run_bounded, watch_stdin

TIMEOUT = 60
LARGE = 64 * 1024
BYTES_LIKE = (bytes, bytearray, memoryview)


# The frame sizes of the last message read, so that the other side can check
# which binaries travelled out of band: the TCP comm's from_frames is wrapped.
LAST_FRAME_SIZES = []
_from_frames = distributed.comm.tcp.from_frames


async def _recording_from_frames(frames, *args, **kwargs):
    LAST_FRAME_SIZES[:] = [len(memoryview(frame).cast("B")) for frame in frames]
    return await _from_frames(frames, *args, **kwargs)


distributed.comm.tcp.from_frames = _recording_from_frames
distributed.comm.ws.from_frames = _recording_from_frames


class LoopbackHTTPServer(distributed.comm.ws.HTTPServer):
    """dask's WebSocket listener binds every interface: tests bind loopback."""

    def listen(self, port, address="127.0.0.1", **kwargs):
        return super().listen(port, address=address, **kwargs)


distributed.comm.ws.HTTPServer = LoopbackHTTPServer


def log(*args):
    print("dask_peer:", *args, file=sys.stderr, flush=True)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def describe(value):
    """The Python types of a received value, as plain data."""
    if isinstance(value, BYTES_LIKE):
        data = bytes(value)
        return {"type": type(value).__name__, "len": len(data), "sha256": sha256(data)}
    if isinstance(value, (set, frozenset)):
        items = [describe(item) for item in value]
        items.sort(key=lambda d: json.dumps(d, sort_keys=True))
        return {"type": type(value).__name__, "items": items}
    if isinstance(value, dict):
        return {
            "type": "dict",
            "items": {
                (key if isinstance(key, str) else f"{type(key).__name__}:{key!r}"): describe(item)
                for key, item in value.items()
            },
        }
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__, "items": [describe(item) for item in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"type": type(value).__name__, "value": value}
    if isinstance(value, Serialized):
        return {"type": "Serialized", "header": repr(value.header)}
    return {"type": type(value).__name__, "repr": repr(value)}


def serialize_large(value):
    """Wraps every bytes-like of at least LARGE bytes in to_serialize."""
    if isinstance(value, BYTES_LIKE):
        return to_serialize(value) if len(value) >= LARGE else value
    if isinstance(value, dict):
        return {key: serialize_large(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [serialize_large(item) for item in value]
    return value


def generate(size, seed):
    """Values that dask sends out of band, and what the other side should see."""
    rng = random.Random(seed)
    blob = rng.randbytes(size)
    array = bytearray(rng.randbytes(LARGE + 1))
    view = memoryview(rng.randbytes(1000))
    big_part = rng.randbytes(LARGE * 2)
    return {
        "op": "generated",
        "bytes": to_serialize(blob),
        "bytearray": to_serialize(array),
        "memoryview": to_serialize(view),
        "small": to_serialize(b"tiny"),
        "empty": to_serialize(b""),
        # Not bytes: pickled or split into several sub-frames.
        "complex": to_serialize(complex(1.5, -2)),
        "collection": to_serialize([big_part, "text", 3]),
        "pickled": ToPickle({"frozen": frozenset({1, 2, 3})}),
        # Integers beyond 2**53 and keys that are not strings.
        "wide": [2**63 - 1, -(2**63), 2**53 + 1, 2**64 - 1],
        "odd_keys": {("x", 0): "tuple", 2: "int"},
        "sha256": {
            "bytes": sha256(blob),
            "bytearray": sha256(array),
            "memoryview": sha256(view),
            "big_part": sha256(big_part),
        },
    }


async def run_listen(scheme):
    done = asyncio.Event()
    failures = []

    async def handle(comm):
        try:
            while True:
                try:
                    message = await comm.read()
                except CommClosedError:
                    return
                op = message.get("op") if isinstance(message, dict) else None
                if op == "describe":
                    reply = {
                        "op": "described",
                        "value": describe(message.get("value")),
                        "frames": list(LAST_FRAME_SIZES),
                    }
                elif op == "generate":
                    reply = generate(message["size"], message.get("seed", 0))
                else:
                    reply = serialize_large(message)
                await comm.write(reply)
        except Exception:
            failures.append(traceback.format_exc())
            log("handler failed:\n" + failures[-1])
        finally:
            await comm.close()
            done.set()

    listener = listen(f"{scheme}://127.0.0.1:0", handle)
    await listener.start()
    try:
        print(listener.contact_address, flush=True)
        watch_stdin(done, "dask_peer")
        await done.wait()
    finally:
        listener.stop()
    return 1 if failures else 0


def normalize(value):
    """Forgets what msgpack cannot tell apart: list/tuple, bytes-likes."""
    if isinstance(value, BYTES_LIKE):
        return ("bytes", bytes(value))
    if isinstance(value, (list, tuple)):
        return [normalize(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize(item) for key, item in value.items()}
    return value


def unwrap(value):
    """The value a to_serialize / ToPickle wrapper stands for."""
    if hasattr(value, "data") and type(value).__name__ in ("Serialize", "ToPickle"):
        return unwrap(value.data)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(item) for item in value)
    return value


def check_types(name, value, errors):
    """Checks the Python types of the echoes where normalize() is lenient."""
    data = value.get("data")
    expected = {
        "serialized_bytes": bytes,
        "serialized_bytearray": bytes,
        "inline_large_bytes": bytes,
        "small_bytes": bytes,
        "set": dict,
        "tuple": tuple,
        "complex": complex,
        "pickled": dict,
        "empty": dict,
        "big": bytes,
    }.get(name)
    if expected is not None and type(data) is not expected:
        errors.append(f"{name}: echo data is {type(data).__name__}, expected {expected.__name__}")
    if name == "set":
        for key in ("ints", "strs", "empty"):
            if type(data.get(key)) is not set:
                errors.append(f"set: echo {key} is {type(data.get(key)).__name__}, expected set")
    if name == "empty" and type(data.get("set")) is not set:
        errors.append(f"empty: echo set is {type(data.get('set')).__name__}, expected set")
    if name == "pickled" and type(data.get("frozen")) is not frozenset:
        errors.append(f"pickled: echo frozen is {type(data.get('frozen')).__name__}")


async def run_connect(address, big_size):
    rng = random.Random(1234)
    mib = rng.randbytes(1024 * 1024)
    array = bytearray(rng.randbytes(200 * 1024))
    inline = rng.randbytes(100 * 1024)
    part = rng.randbytes(LARGE * 2)
    messages = [
        ("serialized_bytes", to_serialize(mib), {"sha256": sha256(mib), "len": len(mib)}),
        ("serialized_bytearray", to_serialize(array), {"sha256": sha256(array)}),
        ("inline_large_bytes", inline, {"sha256": sha256(inline)}),
        ("small_bytes", b"\x00\x01\xfe\xff", {}),
        (
            "nested",
            {"a": {"b": [1, 2, {"c": "d", "e": [None, True, False]}]}, "f": [[[[]]]], "g": {}},
            {},
        ),
        ("set", {"ints": {1, 2, 3}, "strs": {"x", "yz", "ü"}, "empty": set()}, {}),
        (
            "unicode",
            ["héllo wörld", "日本語テキスト", "emoji 🎉🧪 and 𝄞", "nul\x00inside", "", "ℵ₀ → ∞"],
            {},
        ),
        (
            "scalars",
            [0, 1, -1, 127, 128, -33, 2**31, -(2**31) - 1, 2**53 - 1, -(2**53) + 1,
             1.5, -0.25, 1e300, 5e-324, float("inf"), None, True, False],
            {},
        ),
        ("tuple", (1, "two", 3.25, None, (4, 5)), {}),
        ("complex", to_serialize(complex(3, -4)), {}),
        ("collection", to_serialize([part, "text", 7]), {"sha256": sha256(part)}),
        ("pickled", ToPickle({"frozen": frozenset({"a", "b"})}), {}),
        ("empty", {"dict": {}, "list": [], "set": set(), "str": "", "bytes": to_serialize(b"")}, {}),
    ]
    if big_size:
        big = random.Random(99).randbytes(big_size)
        messages.append(("big", to_serialize(big), {"sha256": sha256(big), "len": big_size}))

    errors = []
    comm = await connect(address, timeout=30)
    try:
        for name, data, extra in messages:
            await comm.write({"op": name, "data": data, **extra})
            echo = await comm.read()
            if not isinstance(echo, dict) or echo.get("op") != name:
                errors.append(f"{name}: echo is {echo!r:.200}")
                continue
            expected = unwrap(data)
            if normalize(echo.get("data")) != normalize(expected):
                errors.append(f"{name}: echo data {echo.get('data')!r:.300} != {expected!r:.300}")
            for key, value in extra.items():
                if echo.get(key) != value:
                    errors.append(f"{name}: echo {key} {echo.get(key)!r} != {value!r}")
            check_types(name, echo, errors)

        # Many small messages without waiting: they must come back in order.
        count = 200
        for i in range(count):
            await comm.write({"op": "burst", "i": i})
        for i in range(count):
            echo = await comm.read()
            if echo != {"op": "burst", "i": i}:
                errors.append(f"burst {i}: echo is {echo!r:.200}")
                break
    finally:
        await comm.close()

    print(
        json.dumps({"ok": not errors, "messages": len(messages) + count, "errors": errors}),
        flush=True,
    )
    return 1 if errors else 0


async def main(argv):
    if len(argv) in (1, 2) and argv[0] == "listen" and argv[1:] in ([], ["tcp"], ["ws"]):
        return await run_listen(argv[1] if len(argv) == 2 else "tcp")
    if len(argv) in (2, 3) and argv[0] == "connect":
        return await run_connect(argv[1], int(argv[2]) if len(argv) == 3 else 0)
    log("usage: dask_peer.py listen [tcp|ws] | connect ADDRESS [BIG_SIZE]")
    return 64


if __name__ == "__main__":
    sys.exit(run_bounded(main, sys.argv[1:], TIMEOUT, log))
