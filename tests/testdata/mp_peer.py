"""A multiprocessing.connection peer for tests/mp_interop_test.ts.

Runs on CPython 3.11, 3.12 and 3.13, standard library only.

    mp_peer.py listen AUTHKEY|-
        Opens a Listener on ('127.0.0.1', 0) (with AUTHKEY, or none for "-"),
        prints its port as the first line of stdout, and accepts ONE
        connection. Every message received with recv_bytes() is sent back
        REVERSED (data[::-1]) with send_bytes(), so that an echo can only
        have come through Python, until the peer closes (EOFError): then it
        prints "EOF <count of messages>" and exits 0.

    mp_peer.py connect PORT AUTHKEY|-
        Connects with Client(('127.0.0.1', PORT)) (with AUTHKEY, or none for
        "-"), sends messages of SIZES bytes (0, 1, 64 KiB, 16 MiB) of a
        deterministic pattern, checks that each comes back IDENTICAL, prints
        "OK" and exits 0. A wrong echo prints "MISMATCH ..." and exits 1.

AUTHKEY is taken as the bytes of the argument (UTF-8 for text). Either mode
prints "AUTH_FAILED <message>" and exits 3 on AuthenticationError; any other
error prints a traceback to stderr and exits 1. A watchdog ends the process
after WATCHDOG seconds (exit 124), so it never outlives a test.
"""

import hashlib
import os
import signal
import sys
import threading
from multiprocessing.connection import AuthenticationError, Client, Listener

WATCHDOG = 60
SIZES = (0, 1, 64 * 1024, 16 * 1024 * 1024)
HOST = "127.0.0.1"


def log(*args):
    print("mp_peer:", *args, file=sys.stderr, flush=True)


def start_watchdog():
    def expire():
        log(f"watchdog: still running after {WATCHDOG} s, exiting")
        os._exit(124)

    timer = threading.Timer(WATCHDOG, expire)
    timer.daemon = True
    timer.start()
    # A kernel-enforced backstop, in case the interpreter itself is stuck.
    if hasattr(signal, "alarm"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(WATCHDOG + 5)


def authkey_of(arg):
    return None if arg == "-" else os.fsencode(arg)


def pattern(size):
    """Deterministic bytes without a short period."""
    return hashlib.shake_256(b"mp_peer %d" % size).digest(size) if size else b""


def auth_failed(error):
    print(f"AUTH_FAILED {error}", flush=True)
    return 3


def listen(authkey):
    with Listener((HOST, 0), authkey=authkey) as listener:
        print(listener.address[1], flush=True)
        try:
            conn = listener.accept()
        except AuthenticationError as error:
            return auth_failed(error)
        with conn:
            count = 0
            while True:
                try:
                    data = conn.recv_bytes()
                except EOFError:
                    break
                conn.send_bytes(data[::-1])
                count += 1
    print(f"EOF {count}", flush=True)
    return 0


def connect(port, authkey):
    try:
        conn = Client((HOST, port), authkey=authkey)
    except AuthenticationError as error:
        return auth_failed(error)
    with conn:
        for size in SIZES:
            data = pattern(size)
            conn.send_bytes(data)
            echo = conn.recv_bytes()
            if echo != data:
                where = next(
                    (i for i, (a, b) in enumerate(zip(echo, data)) if a != b),
                    min(len(echo), len(data)),
                )
                print(
                    f"MISMATCH sent {size} bytes, got {len(echo)} back, "
                    f"first difference at byte {where}",
                    flush=True,
                )
                return 1
    print("OK", flush=True)
    return 0


def main(argv):
    start_watchdog()
    if len(argv) == 2 and argv[0] == "listen":
        return listen(authkey_of(argv[1]))
    if len(argv) == 3 and argv[0] == "connect":
        return connect(int(argv[1]), authkey_of(argv[2]))
    log("usage: mp_peer.py listen AUTHKEY|- | connect PORT AUTHKEY|-")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
