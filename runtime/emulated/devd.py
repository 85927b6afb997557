"""The emulated devices' own process: the phone's ADB protocol server and the board's link
(a TCP proxy in front of its sshd, where the board's link faults happen).

    python -m edgesmith.runtime.emulated.devd --state DIR --adb-port 5557 --ssh-port 2222 --sshd-port N
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .adbd import Phone, serve
from .faults import FaultSwitch


def _pump(src: socket.socket, dst: socket.socket, switch: FaultSwitch, inbound: bool, dead: threading.Event) -> None:
    """Copy one direction; inbound (client to device) bytes count towards the fault."""
    try:
        while not dead.is_set():
            data = src.recv(65536)
            if not data:
                break
            kind = switch.consume(len(data)) if inbound else switch.active()
            if kind == "cut":
                break
            if kind == "stall":
                while switch.active() == "stall":
                    time.sleep(0.1)
                break  # a cleared stall drops the connection
            if kind == "garbage" and not inbound:
                data = os.urandom(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        dead.set()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def proxy(listener: socket.socket, target: tuple[str, int], switch: FaultSwitch) -> None:
    while True:
        client, _ = listener.accept()
        if switch.active() == "cut":
            client.close()
            continue
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dead = threading.Event()
        for a, b, inbound in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=_pump, args=(a, b, switch, inbound, dead), daemon=True).start()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--adb-port", type=int, required=True)
    ap.add_argument("--ssh-port", type=int, required=True)
    ap.add_argument("--sshd-port", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    phone = Phone(args.state / "phone", args.state, "phone")

    def stop(*_):
        phone.kill_children()  # what the phone still runs goes with it, as on a power-off
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    # Bind both before saying ready, so a taken port fails here, loudly.
    adb_listener = socket.create_server((args.host, args.adb_port))
    ssh_listener = socket.create_server((args.host, args.ssh_port))
    threading.Thread(target=serve, args=(phone, adb_listener), daemon=True).start()
    threading.Thread(target=proxy, args=(ssh_listener, (args.host, args.sshd_port), FaultSwitch(args.state, "board")),
                     daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
