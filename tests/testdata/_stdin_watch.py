"""What the Python test peers share: ending when the test closes their stdin."""

import asyncio
import os
import sys


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
