"""A dask.distributed rpc peer: dask's own rpc client and Server, for tests.

Run with a Python that has dask.distributed (Debian: /usr/bin/python3 with
python3-distributed 2022.12.1).

    dask_rpc_peer.py call ADDRESS
        Calls ops on the server at ADDRESS, first through
        distributed.core.rpc (client "rpc"), then through
        distributed.core.ConnectionPool (client "pool"). Each client does, in
        this order, on the same connection(s):
            identity()                      -> {"op": "identity", ...}
            echo(data=b"x" * 10)            -> {"op": "echo", ...}
            add(x=1, y=2)                   -> {"op": "add", ...}
            fail()   (must raise)           -> {"op": "fail", "error_type", "error"}
            add(x=3, y=4)                   -> {"op": "add_after_fail", ...}
        and the pool client also does five add(x=i, y=10 * i) at once
        (asyncio.gather, so several connections):
                                            -> {"op": "add_concurrent", ...}
        Prints one JSON object per line on stdout, e.g.
            {"client": "rpc", "op": "add", "type": "int", "result": 3}
            {"client": "rpc", "op": "fail", "error_type": "ValueError", "error": "boom"}
        "type" is the Python type name of the result; "result" is the result
        made JSON-able by jsonable(): bytes / bytearray / memoryview become
        {"$bytes": "<base64>"}, tuples and lists become lists, sets become
        {"$set": [...]}, anything else without a JSON form becomes
        {"$repr": repr(value)}. For fail, "error_type" is
        type(exception).__name__ and "error" is str(exception).
        Exits 0 when every call ran; fail() not raising, a connection error or
        any other exception exits 1 with the traceback on stderr.

    dask_rpc_peer.py serve
        Starts a distributed.core.Server on tcp://127.0.0.1:0 with the
        handlers
            add(x, y) -> x + y
            fail()    -> raises ValueError("boom")
            recorded() -> list of the messages received by the stream handler
                          record, in order, without their "op"
        plus dask's built-in identity, echo, connection_stream, dump_state;
        and the stream handler record(**msg) (used after
        {"op": "connection_stream", "reply": False}). Prints one line
        "ADDRESS tcp://127.0.0.1:PORT" on stdout, serves until stdin closes
        or SIGTERM / SIGINT, then closes the server and exits 0.

Every mode gives up after TIMEOUT seconds (exit 2), so it never hangs a test.
dask's own logging goes to stderr.
"""

import asyncio
import base64
import json
import signal
import sys

from distributed.core import ConnectionPool, Server, rpc

from _stdin_watch import run_bounded, watch_stdin

TIMEOUT = 60


def log(*args):
    print("dask_rpc_peer:", *args, file=sys.stderr, flush=True)


def jsonable(value):
    """A JSON-able form of a value received through dask (see the docstring)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(item) for item in value]
        items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        return {"$set": items}
    if isinstance(value, dict):
        return {
            (key if isinstance(key, str) else repr(key)): jsonable(item)
            for key, item in value.items()
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"$repr": repr(value)}


def emit(record):
    print(json.dumps(record), flush=True)


def result_line(client, op, value):
    return {"client": client, "op": op, "type": type(value).__name__, "result": jsonable(value)}


async def call_sequence(client, r):
    """identity, echo, add, fail, add on one rpc-like object `r`."""
    emit(result_line(client, "identity", await r.identity()))
    emit(result_line(client, "echo", await r.echo(data=b"x" * 10)))
    emit(result_line(client, "add", await r.add(x=1, y=2)))
    try:
        value = await r.fail()
    except (OSError, asyncio.TimeoutError):
        # CommClosedError is an OSError: the connection broke, not the op.
        raise
    except Exception as error:  # the expected failure
        emit({"client": client, "op": "fail", "error_type": type(error).__name__, "error": str(error)})
    else:
        raise AssertionError(f"{client}: fail() returned {value!r} instead of raising")
    emit(result_line(client, "add_after_fail", await r.add(x=3, y=4)))


async def run_call(address):
    async with rpc(address) as r:
        await call_sequence("rpc", r)

    pool = await ConnectionPool(limit=16)
    try:
        await call_sequence("pool", pool(address))
        results = await asyncio.gather(*(pool(address).add(x=i, y=10 * i) for i in range(5)))
        emit(result_line("pool", "add_concurrent", results))
    finally:
        await pool.close()
    return 0


async def run_serve():
    records = []

    def add(x, y):
        return x + y

    def fail():
        raise ValueError("boom")

    def recorded():
        return list(records)

    def record(**msg):
        records.append(msg)

    server = Server(
        {"add": add, "fail": fail, "recorded": recorded},
        stream_handlers={"record": record},
    )
    await server.listen("tcp://127.0.0.1:0")
    await server  # status running

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    watch_stdin(done, "dask_rpc_peer")

    try:
        print("ADDRESS", server.address, flush=True)
        await done.wait()
    finally:
        await server.close()
    return 0


async def main(argv):
    if len(argv) == 2 and argv[0] == "call":
        return await run_call(argv[1])
    if len(argv) == 1 and argv[0] == "serve":
        return await run_serve()
    log("usage: dask_rpc_peer.py call ADDRESS | serve")
    return 64


if __name__ == "__main__":
    sys.exit(run_bounded(main, sys.argv[1:], TIMEOUT, log))
