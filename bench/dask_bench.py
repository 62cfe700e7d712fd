#!/usr/bin/python3
"""dask.distributed comm and RPC benchmark: the reference column for bench/run.ts.

Run with Debian's system interpreter (python3-distributed 2022.12.1):

    /usr/bin/python3 bench/dask_bench.py [--repeats N] [--only W1_one_process,...]

Measures dask's own comm layer (`distributed.comm.connect` / `listen`) and
its RPC layer (`distributed.core.Server`, `ConnectionPool`) on loopback
(tcp://127.0.0.1:0, inproc://), with dask's default configuration, and prints
ONE JSON object on stdout (progress goes to stderr):

    {"python": ..., "distributed": ..., "repeats": N, "results": {name: median}}

Workloads mirror bench/run.ts (fresh listener + connection per repetition,
connection setup untimed, value = median of the repetitions):

- W1_one_process     round trips/s: echo listener and client in one event loop,
                     5000 x `await write({"op": "ping", "i": i}); await read()`.
- W1_two_processes   the same, the echo listener in a child process (this script
                     with the hidden `--serve-echo`; one child for all repetitions).
- W2_one_write_each  msgs/s one way: 50_000 x `await write({"op": "data", "i": i})`,
                     timed from the first write until the server read the last.
- W2_lists_of_1000   200_000 such dicts one way, written as lists of 1000 (what
                     dask's BatchedSend does); counts dicts, not writes.
- W3_64MiB_tcp_GBps  one 64 MiB binary one way as `{"data": to_serialize(payload)}`
                     (out-of-band frames, dask's fast path for big binaries), timed
                     from the write until the receiver holds all of it.  The payload
                     is random: dask lz4-compresses compressible frames by default,
                     so zeros would measure lz4, not the transport.
- W4_inproc          msgs/s one way over inproc://, 100_000 x write({"op": "data", "i": i}).
- RPC_1_one_process  calls/s: a `Server({"add": add})` (`def add(x, y): return x + y`)
                     and a fresh `ConnectionPool(limit=4)` in one event loop, one
                     caller looping `await pool(address).add(x=i, y=1)`, 3_200 calls.
                     The pool's comms are opened untimed, by concurrent calls first.
- RPC_64_one_process the same from 64 concurrent asyncio tasks, 1_280 calls in all.
                     With callers waiting at the limit, dask's pool closes the idle
                     comm on every reuse() and opens a new one (its `collect()`), so
                     this measures a connection per call; its "Collecting unused
                     comms" log line, once a call, is silenced (distributed.core
                     logs at WARNING here), which only makes dask faster.
- RPC_1_two_processes, RPC_64_two_processes
                     the same two, the Server in a child process (this script with
                     the hidden `--serve-add`; one child for all repetitions);
                     2_560 and 1_280 calls.

Every repetition runs under asyncio.wait_for(60 s); a faulthandler watchdog
kills the process if even that fails.  A failed workload reports null, its
error goes under "errors", and the exit status is 1.  If `distributed` cannot
be imported the output is {"error": "distributed not importable: ..."}, exit 0.
"""

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import statistics
import subprocess
import sys
import time

W1_COUNT = 5_000
W2_COUNT = 50_000
W2_LIST_COUNT = 200_000
W2_LIST_SIZE = 1_000
W3_BYTES = 64 * 2**20
W4_COUNT = 100_000
RPC_1_COUNT = 3_200
RPC_64_COUNT = 1_280
RPC_1_TWO_PROCESSES_COUNT = 2_560
RPC_64_TWO_PROCESSES_COUNT = 1_280
RPC_POOL_LIMIT = 4
TCP = "tcp://127.0.0.1:0"
REPETITION_TIMEOUT = 60.0

try:
    import distributed
    from distributed.comm import CommClosedError, connect, listen
    from distributed.core import ConnectionPool, Server
    from distributed.protocol.serialize import to_serialize
except Exception as error:  # ImportError, or a broken install
    print(json.dumps({"error": f"distributed not importable: {error!r}"}))
    sys.exit(0)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass
    finally:
        await comm.close()


async def started(address, handler):
    listener = listen(address, handler)
    await listener.start()
    return listener


async def ping_pong(address):
    comm = await connect(address)
    try:
        start = time.perf_counter()
        for i in range(W1_COUNT):
            await comm.write({"op": "ping", "i": i})
            await comm.read()
        return W1_COUNT / (time.perf_counter() - start)
    finally:
        await comm.close()


async def w1_one_process(_):
    listener = await started(TCP, echo)
    try:
        return await ping_pong(listener.contact_address)
    finally:
        listener.stop()


async def w1_two_processes(child_address):
    return await ping_pong(child_address)


async def one_way(address, expected, send):
    """Server reads `expected` messages; `send(comm)` writes them. Returns msgs/s."""
    finished = asyncio.get_running_loop().create_future()

    async def reader(comm):
        try:
            count = 0
            while count < expected:
                msg = await comm.read()
                count += len(msg) if isinstance(msg, (list, tuple)) else 1
            finished.set_result(time.perf_counter())
        except Exception as error:
            if not finished.done():
                finished.set_exception(error)
        finally:
            await comm.close()

    listener = await started(address, reader)
    comm = await connect(listener.contact_address)
    try:
        start = time.perf_counter()
        await send(comm)
        return expected / (await finished - start)
    finally:
        await comm.close()
        listener.stop()


async def w2_one_write_each(_):
    async def send(comm):
        for i in range(W2_COUNT):
            await comm.write({"op": "data", "i": i})

    return await one_way(TCP, W2_COUNT, send)


async def w2_lists_of_1000(_):
    async def send(comm):
        for base in range(0, W2_LIST_COUNT, W2_LIST_SIZE):
            await comm.write([{"op": "data", "i": i} for i in range(base, base + W2_LIST_SIZE)])

    return await one_way(TCP, W2_LIST_COUNT, send)


async def w4_inproc(_):
    async def send(comm):
        for i in range(W4_COUNT):
            await comm.write({"op": "data", "i": i})

    return await one_way("inproc://", W4_COUNT, send)


PAYLOAD = None


async def w3_bulk(_):
    global PAYLOAD
    if PAYLOAD is None:
        PAYLOAD = os.urandom(W3_BYTES)
    received = asyncio.get_running_loop().create_future()

    async def reader(comm):
        try:
            received.set_result((await comm.read())["data"])
        except Exception as error:
            received.set_exception(error)
        finally:
            await comm.close()

    listener = await started(TCP, reader)
    comm = await connect(listener.contact_address)
    try:
        start = time.perf_counter()
        await comm.write({"data": to_serialize(PAYLOAD)})
        data = await received
        seconds = time.perf_counter() - start
        assert isinstance(data, (bytes, bytearray, memoryview)), type(data)
        assert memoryview(data).nbytes == W3_BYTES, memoryview(data).nbytes
        return W3_BYTES / 1e9 / seconds
    finally:
        await comm.close()
        listener.stop()


def add(x, y):
    return x + y


async def rpc_calls(address, callers, count):
    """`callers` tasks call `add` `count` times in all through a fresh pool. Returns calls/s."""
    pool = await ConnectionPool(limit=RPC_POOL_LIMIT)
    try:
        remote = pool(address)
        await asyncio.gather(*(remote.add(x=0, y=1) for _ in range(min(callers, RPC_POOL_LIMIT))))

        async def caller():
            for i in range(count // callers):
                if await remote.add(x=i, y=1) != i + 1:
                    raise AssertionError("wrong sum")

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return count / (time.perf_counter() - start)
    finally:
        await pool.close()


async def rpc_one_process(callers, count):
    async with Server({"add": add}) as server:
        await server.listen(TCP)
        return await rpc_calls(server.address, callers, count)


async def rpc_1_one_process(_):
    return await rpc_one_process(1, RPC_1_COUNT)


async def rpc_64_one_process(_):
    return await rpc_one_process(64, RPC_64_COUNT)


async def rpc_1_two_processes(child_address):
    return await rpc_calls(child_address, 1, RPC_1_TWO_PROCESSES_COUNT)


async def rpc_64_two_processes(child_address):
    return await rpc_calls(child_address, 64, RPC_64_TWO_PROCESSES_COUNT)


WORKLOADS = {
    "W1_one_process": w1_one_process,
    "W1_two_processes": w1_two_processes,
    "W2_one_write_each": w2_one_write_each,
    "W2_lists_of_1000": w2_lists_of_1000,
    "W3_64MiB_tcp_GBps": w3_bulk,
    "W4_inproc": w4_inproc,
    "RPC_1_one_process": rpc_1_one_process,
    "RPC_64_one_process": rpc_64_one_process,
    "RPC_1_two_processes": rpc_1_two_processes,
    "RPC_64_two_processes": rpc_64_two_processes,
}

# The workloads whose server is a child process, and the child's mode.
CHILDREN = {
    "W1_two_processes": "--serve-echo",
    "RPC_1_two_processes": "--serve-add",
    "RPC_64_two_processes": "--serve-add",
}


async def serve_echo():
    """Child mode: echo on loopback, print the address, exit when stdin closes."""
    listener = await started(TCP, echo)
    print(listener.contact_address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    listener.stop()


async def serve_add():
    """Child mode: a Server with `add` on loopback, print the address, exit when stdin closes."""
    async with Server({"add": add}) as server:
        await server.listen(TCP)
        print(server.address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def start_child(mode):
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = await asyncio.wait_for(
        asyncio.get_running_loop().run_in_executor(None, child.stdout.readline), 30)
    if not line.startswith("tcp://"):
        raise RuntimeError(f"{mode} child did not report an address: {line!r}")
    return child, line.strip()


def stop_child(child):
    child.stdin.close()  # the child exits on EOF; kill it if it does not
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


async def run(names, repeats):
    results, errors = {}, {}
    for name in names:
        child = None
        try:
            argument = None
            if name in CHILDREN:
                child, argument = await start_child(CHILDREN[name])
            runs = []
            for r in range(repeats):
                runs.append(await asyncio.wait_for(WORKLOADS[name](argument), REPETITION_TIMEOUT))
                log(f"{name} #{r + 1}: {runs[-1]:.6g}")
            results[name] = round(statistics.median(runs), 3 if runs[0] < 100 else 0)
        except Exception as error:
            log(f"{name} failed: {error!r}")
            results[name], errors[name] = None, repr(error)
        finally:
            if child is not None:
                stop_child(child)
    return results, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help="comma-separated workloads: " + ", ".join(WORKLOADS))
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-add", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # dask's pool logs "Collecting unused comms" at INFO once a call when
    # callers wait at its limit (RPC_64_*): thousands of lines to stderr.
    logging.getLogger("distributed.core").setLevel(logging.WARNING)
    if args.serve_echo:
        return asyncio.run(serve_echo())
    if args.serve_add:
        return asyncio.run(serve_add())
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or args.repeats < 1:
        parser.error(f"unknown workloads {unknown}" if unknown else "--repeats must be >= 1")
    # Last resort against a wedged event loop, which wait_for cannot interrupt.
    faulthandler.dump_traceback_later(REPETITION_TIMEOUT * (args.repeats * len(names) + 1), exit=True)
    results, errors = asyncio.run(run(names, args.repeats))
    out = {"python": ".".join(map(str, sys.version_info[:3])),
           "distributed": distributed.__version__, "repeats": args.repeats, "results": results}
    if errors:
        out["errors"] = errors
    print(json.dumps(out), flush=True)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
