"""What the Python test peers share: ending when the test closes their stdin,
and a bounded run of their main coroutine."""

import asyncio
import os
import sys
import traceback


def watch_stdin(done, label):
    """Sets the asyncio.Event `done` when stdin reaches end of file."""
    loop = asyncio.get_running_loop()

    def on_readable():
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            done.set()

    try:
        loop.add_reader(0, on_readable)
    except (OSError, ValueError, NotImplementedError) as error:
        print(f"{label}: cannot watch stdin:", error, file=sys.stderr, flush=True)


def run_bounded(main, argv, timeout, log):
    """Runs `main(argv)` for at most `timeout` seconds; returns the exit code."""

    async def bounded():
        try:
            return await asyncio.wait_for(main(argv), timeout)
        except asyncio.TimeoutError:
            log(f"gave up after {timeout} s")
            return 2
        except Exception:  # noqa: BLE001 - the test reads stderr
            log("failed:\n" + traceback.format_exc())
            return 1

    return asyncio.run(bounded())
