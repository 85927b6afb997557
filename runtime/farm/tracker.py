"""TVM's RPC tracker (`python -m tvm.exec.rpc_tracker`) as the broker that leases devices.

We speak the tracker's own control protocol (tvm/rpc/base.py, tracker.py): a connection sends
the magic RPC_TRACKER_MAGIC as int32 and reads it back, then exchanges messages framed as
[int32 length][JSON]. The messages we use:

    [PUT, key, [port, matchkey], addr]   offer one resource under `key` (agent)
    [UPDATE_INFO, {...}]                 describe this connection; "key" starting "server" makes
                                         it show in SUMMARY, and the tracker drops its resources
                                         when the connection closes (agent)
    [GET_PENDING_MATCHKEYS]              which of my offers nobody has taken yet (agent)
    [REQUEST, key, user, priority]       wait for a resource; the answer [SUCCESS, [addr, port,
                                         matchkey]] comes when one is free, highest priority
                                         first, then in request order (run)
    [SUMMARY]                            queues {key: {free, pending}} and servers' infos (status)

A device is one resource under the key `edgesmith/<target>/<name>` (one key per device, so it is
never handed out twice). The tracker takes an offer off its queue when it matches a request; it
never gives it back by itself. So a lease is held the way TVM's own RPC server holds a session:
the run connects to the agent at (addr, port) and presents the matchkey; the lease lasts as long as
that connection, and when it closes (run done, or run killed: the kernel closes it) the agent
offers the device again under a fresh matchkey.
"""
from __future__ import annotations

import json
import socket
import struct

from edgesmith.errors import EdgesmithError

# Values of tvm.rpc.base (kept here so the CLI need not import tvm, nor tornado, to talk to a tracker).
RPC_TRACKER_MAGIC = 0x2F271
SUCCESS, PUT, REQUEST, UPDATE_INFO, SUMMARY, GET_PENDING_MATCHKEYS = 0, 3, 4, 5, 6, 7
KEY_PREFIX = "edgesmith/"
AGENT_KEY = "server:edgesmith-agent"  # UPDATE_INFO key: "server..." shows in SUMMARY
LEASE_MAGIC = 0x45534D31  # "ESM1": first word a run sends to an agent


class TrackerError(EdgesmithError):
    pass


def device_key(target: str, name: str) -> str:
    return f"{KEY_PREFIX}{target}/{name}"


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise TrackerError(f"tracker address must be HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}")
    return host, int(port)


def send(sock: socket.socket, value) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def recv(sock: socket.socket):
    (size,) = struct.unpack("<i", _recvall(sock, 4))
    return json.loads(_recvall(sock, size).decode())


def _recvall(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            raise ConnectionError("connection closed by the other side")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class TrackerConnection:
    """One control connection to the tracker; calls are request/answer, one at a time."""

    def __init__(self, address: str, timeout: float = 10.0):
        self.address = address
        host, port = parse_address(address)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            (magic,) = struct.unpack("<i", _recvall(self.sock, 4))
        except OSError as err:
            raise TrackerError(f"cannot reach the tracker at {address}: {err}; start one with "
                               f"`python -m tvm.exec.rpc_tracker --host HOST --port PORT`") from None
        if magic != RPC_TRACKER_MAGIC:
            raise TrackerError(f"{address} is not a TVM RPC tracker (magic {magic:#x})")

    def call(self, *message, timeout: float | None = 10.0):
        try:
            self.sock.settimeout(timeout)
            send(self.sock, list(message))
            return recv(self.sock)
        except socket.timeout:
            raise TrackerError(f"tracker {self.address}: no answer to {message[0]} in {timeout:g}s") from None
        except OSError as err:
            raise TrackerError(f"tracker {self.address}: connection lost ({err})") from None

    def summary(self) -> dict:
        code, status = self.call(SUMMARY)
        if code != SUCCESS:
            raise TrackerError(f"tracker {self.address}: SUMMARY failed")
        return status

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ what the tracker knows

def published_devices(summary: dict) -> list[dict]:
    """Every device the agents on the tracker publish: their info's "devices" entries, each
    {name, target, tags, transport, key, entry, leased_by}."""
    out = []
    for server in summary.get("server_info", []):
        if server.get("key") != AGENT_KEY:
            continue
        for d in server.get("devices", []):
            out.append(dict(d, agent=server.get("agent"), agent_addr=server.get("addr")))
    return out


def farm_status(address: str) -> dict:
    """{devices: [...], queue: {key: {free, pending}}} as the tracker sees them now."""
    with TrackerConnection(address) as t:
        summary = t.summary()
    queue = {k: v for k, v in summary.get("queue_info", {}).items() if k.startswith(KEY_PREFIX)}
    return {"tracker": address, "devices": published_devices(summary), "queue": queue}


def format_status(status: dict) -> str:
    lines = [f"tracker {status['tracker']}", "",
             f"{'device':14s} {'target':18s} {'tags':24s} {'agent':18s} {'state':8s} {'waiting':7s} lease"]
    for d in status["devices"]:
        q = status["queue"].get(d["key"], {})
        lease = d.get("lease") or {}
        state = "leased" if lease else ("free" if q.get("free") else "busy")
        holder = f"{lease.get('user')} (priority {lease.get('priority')}, since {lease.get('since')})" if lease else ""
        lines.append(f"{d['name']:14s} {d['target']:18s} {','.join(d.get('tags', [])):24s} "
                     f"{str(d.get('agent')):18s} {state:8s} {q.get('pending', 0):<7d} {holder}")
    if not status["devices"]:
        lines.append("(no devices: start `edgesmith farm agent --tracker HOST:PORT` on a machine with devices)")
    return "\n".join(lines)
