"""The emulated devices' own process: the phone's ADB protocol server and the board's link (a
TCP proxy, where the board's link faults happen, in front of an OpenSSH sshd started in inetd mode
for each connection).

    python -m edgesmith.runtime.emulated.devd --state DIR --adb-port 5557 --ssh-port 2222 --sshd-config FILE

It binds both ports itself (0: one the OS picks) and then writes the ports it holds to
STATE/devd-ports.json: whoever started it reads them there, so no port is chosen by one process
and bound by another.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .adbd import Phone, serve
from .faults import FaultSwitch
from .sshd import inetd_command

PORTS_FILE = "devd-ports.json"


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


class SshdLink:
    """One sshd in inetd mode per connection, reached through a socket pair (the proxy's end
    carries the bytes the fault switch sees)."""

    def __init__(self, config: Path, log: Path):
        self.command = inetd_command(config)
        self.log = log
        self.children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def connect(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(self.command, stdin=theirs, stdout=theirs, stderr=log, close_fds=True)
        theirs.close()
        with self._lock:
            self.children = {c for c in self.children if c.poll() is None} | {proc}
        return ours

    def kill_children(self) -> None:
        with self._lock:
            for child in self.children:
                if child.poll() is None:
                    child.kill()


def proxy(listener: socket.socket, link: SshdLink, switch: FaultSwitch) -> None:
    while True:
        client, _ = listener.accept()
        if switch.active() == "cut":
            client.close()
            continue
        try:
            upstream = link.connect()
        except OSError:
            client.close()
            continue
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dead = threading.Event()
        for a, b, inbound in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=_pump, args=(a, b, switch, inbound, dead), daemon=True).start()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--adb-port", type=int, required=True, help="0: one the OS picks")
    ap.add_argument("--ssh-port", type=int, required=True, help="0: one the OS picks")
    ap.add_argument("--sshd-config", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    phone = Phone(args.state / "phone", args.state, "phone")
    link = SshdLink(args.sshd_config, args.state / "logs" / "sshd.log")

    def stop(*_):
        phone.kill_children()  # what the phone still runs goes with it, as on a power-off
        link.kill_children()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    # Bind both before saying ready, so a taken port fails here, loudly.
    adb_listener = socket.create_server((args.host, args.adb_port))
    ssh_listener = socket.create_server((args.host, args.ssh_port))
    threading.Thread(target=serve, args=(phone, adb_listener), daemon=True).start()
    threading.Thread(target=proxy, args=(ssh_listener, link, FaultSwitch(args.state, "board")), daemon=True).start()
    ports = {"adb_device": adb_listener.getsockname()[1], "ssh": ssh_listener.getsockname()[1], "pid": os.getpid()}
    tmp = args.state / f".{PORTS_FILE}.tmp"
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, args.state / PORTS_FILE)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
