"""TVM's RPC tracker for the tests, on a port it binds itself: it is given a range and says which
port it took ("bind to HOST:PORT" on stderr), so no port is picked free, released and raced for."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager


@contextmanager
def running_tracker(timeout: float = 60):
    """Yields "127.0.0.1:PORT" of a tracker started for the caller, stopped afterwards."""
    import random

    base = random.randrange(20000, 60000)
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(base), "--port-end", str(base + 500)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    found: list[str] = []
    said: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:  # keep draining: a full pipe would block the tracker
            said.append(line)
            m = re.search(r"bind to (127\.0\.0\.1:\d+)", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        end = time.monotonic() + timeout
        while not ready.wait(0.2):
            assert time.monotonic() < end, "the tracker did not start: " + "".join(said[-5:])
        assert found, f"the tracker exited ({proc.poll()}): " + "".join(said[-5:])
        # it says "bind to" once bound, a moment before it listens: wait until it takes connections
        host, port = found[0].split(":")
        while socket.socket().connect_ex((host, int(port))) != 0:
            assert time.monotonic() < end and proc.poll() is None, "the tracker did not listen: " + "".join(said[-5:])
            time.sleep(0.05)
        yield found[0]
    finally:
        # the module's process only waits on the tracker it forked (a PopenWorker): terminating
        # the parent alone orphans that child, its port and ~400 MB; stop the whole group
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
