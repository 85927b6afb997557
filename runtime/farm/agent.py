"""`edgesmith farm agent`: publish this machine's devices on a TVM RPC tracker and hand out
leases on them (the protocol: tracker.py).

For each device the agent PUTs one offer, `edgesmith/<target>/<name>` with a fresh matchkey, and
listens on one TCP port for runs holding a matched offer. A run connects, sends LEASE_MAGIC and
{matchkey, user, priority}; the agent answers {ok, device: the devices.yaml entry, paths
expanded here} and the lease lasts until that connection closes. Then the device is offered
again. An offer the tracker handed out but nobody claims within `claim_timeout` (the run died in
between) is offered again too.
"""
from __future__ import annotations

import random
import socket
import struct
import threading
import time

from edgesmith.runtime.devices import Device, expand_path
from edgesmith.runtime.farm import tracker as protocol


def _expanded(value):
    if isinstance(value, str):
        return expand_path(value) if ("$" in value or value.startswith("~")) else value
    if isinstance(value, list):
        return [_expanded(v) for v in value]
    if isinstance(value, dict):
        return {k: _expanded(v) for k, v in value.items()}
    return value


class _Slot:
    def __init__(self, device: Device, entry: dict):
        self.device, self.entry = device, _expanded(entry)
        self.key = protocol.device_key(device.target, device.name)
        self.matchkey: str | None = None
        self.taken_at: float | None = None  # when the tracker handed the offer out
        self.lease: dict | None = None


class Agent:
    def __init__(self, tracker: str, devices: list[tuple[Device, dict]], *, name: str | None = None,
                 host: str = "0.0.0.0", port: int = 0, advertise: str | None = None,
                 claim_timeout: float = 30.0, poll: float = 0.5, log=None):
        self.address, self.name = tracker, name or socket.gethostname()
        self.slots = {d.name: _Slot(d, e) for d, e in devices}
        self.host, self.port, self.advertise = host, port, advertise
        self.claim_timeout, self.poll = claim_timeout, poll
        self.log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- tracker side
    def _call(self, *message):
        with self._lock:
            return self.conn.call(*message)

    def _info(self) -> None:
        devices = [{"name": s.device.name, "target": s.device.target, "tags": list(s.device.tags),
                    "transport": s.device.transport, "emulated": s.device.emulated, "key": s.key,
                    "lease": s.lease} for s in self.slots.values()]
        if self._call(protocol.UPDATE_INFO, {"key": protocol.AGENT_KEY, "addr": [self.advertise, self.port],
                                      "agent": self.name, "devices": devices}) != protocol.SUCCESS:
            raise protocol.TrackerError(f"tracker {self.address} refused UPDATE_INFO")

    def _offer(self, slot: _Slot) -> None:
        slot.matchkey = f"{slot.key}:{random.random()}"  # "<key>:<random>": how the tracker splits it
        slot.taken_at = None
        if self._call(protocol.PUT, slot.key, [self.port, slot.matchkey], self.advertise) != protocol.SUCCESS:
            raise protocol.TrackerError(f"tracker {self.address} refused PUT {slot.key}")

    def start(self) -> Agent:
        self.listener = socket.create_server((self.host, self.port))
        self.port = self.listener.getsockname()[1]
        self.conn = protocol.TrackerConnection(self.address)
        self._info()
        for slot in self.slots.values():
            self._offer(slot)
        self.log(f"agent {self.name}: {len(self.slots)} device(s) on tracker {self.address}, leases on port {self.port}")
        for target in (self._accept_loop, self._poll_loop):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _poll_loop(self) -> None:
        """Notice offers the tracker handed out; offer again those nobody claimed in time."""
        while not self._stop.wait(self.poll):
            try:
                pending = set(self._call(protocol.GET_PENDING_MATCHKEYS))
                now = time.monotonic()
                for slot in self.slots.values():
                    if slot.lease or slot.matchkey in pending:
                        continue
                    if slot.taken_at is None:
                        slot.taken_at = now
                    elif now - slot.taken_at > self.claim_timeout:
                        self.log(f"{slot.device.name}: lease granted but never claimed; offering it again")
                        self._offer(slot)
            except protocol.TrackerError as err:
                if not self._stop.is_set():
                    self.log(f"agent: {err}")
                return

    # ---------------------------------------------------------------- run side
    def _accept_loop(self) -> None:
        self.listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        slot = None
        try:
            sock.settimeout(10)
            (magic,) = struct.unpack("<I", protocol._recvall(sock, 4))
            if magic != protocol.LEASE_MAGIC:
                return
            claim = protocol.recv(sock)
            with self._lock:
                slot = next((s for s in self.slots.values() if s.matchkey == claim.get("matchkey")), None)
                if slot is None or slot.lease is not None:
                    slot = None
                else:
                    slot.lease = {"user": str(claim.get("user")), "priority": claim.get("priority"),
                                  "since": time.strftime("%H:%M:%S")}
            if slot is None:
                protocol.send(sock, {"ok": False, "error": "no such offer (expired, or already claimed)"})
                return
            pending = set(self._call(protocol.GET_PENDING_MATCHKEYS))
            if slot.matchkey in pending:  # a claim for an offer the tracker has not handed out
                slot.lease = None
                slot = None
                protocol.send(sock, {"ok": False, "error": "offer was not granted by the tracker"})
                return
            self._info()
            self.log(f"{slot.device.name}: leased to {slot.lease['user']}")
            protocol.send(sock, {"ok": True, "device": slot.entry, "agent": self.name})
            sock.settimeout(None)
            while sock.recv(4096):  # the lease lasts as long as this connection
                pass
        except (OSError, ValueError, struct.error, protocol.TrackerError):
            pass
        finally:
            sock.close()
            if slot is not None and not self._stop.is_set():
                self.log(f"{slot.device.name}: lease returned by {slot.lease['user']}")
                slot.lease = None
                try:
                    self._offer(slot)
                    self._info()
                except protocol.TrackerError as err:
                    self.log(f"agent: {err}")

    def serve_forever(self) -> None:
        try:
            while not self._stop.wait(1.0):
                if not all(t.is_alive() for t in self._threads):
                    raise protocol.TrackerError(f"lost the tracker at {self.address}")
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        for closeable in (getattr(self, "listener", None), getattr(self, "conn", None)):
            if closeable is not None:
                closeable.close()


def run_agent(tracker: str, devices_file=None, select: list[str] | None = None, *, host: str = "0.0.0.0",
              port: int = 0, advertise: str | None = None, name: str | None = None, log=None) -> None:
    """Publish the selected devices of devices.yaml until stopped (Ctrl-C)."""
    import yaml

    from edgesmith.runtime.devices import devices_path, load_devices
    from edgesmith.runtime.farm.select import select_devices

    devices = load_devices(devices_file)
    raw = yaml.safe_load(devices_path(devices_file).read_text())
    raw = raw["devices"] if isinstance(raw, dict) else raw
    entries = {e["name"]: e for e in raw}
    chosen = select_devices(list(devices.values()), select)
    agent = Agent(tracker, [(d, entries[d.name]) for d in chosen], host=host, port=port, advertise=advertise,
                  name=name, log=log).start()
    agent.serve_forever()


def lease_from(address: str, agent_addr: str, port: int, matchkey: str, user: str, priority: int,
               timeout: float = 10.0) -> tuple[socket.socket, dict]:
    """Claim a matched offer at its agent: (the socket that holds the lease, the device entry)."""
    try:
        sock = socket.create_connection((agent_addr, port), timeout=timeout)
        sock.sendall(struct.pack("<I", protocol.LEASE_MAGIC))
        protocol.send(sock, {"matchkey": matchkey, "user": user, "priority": priority})
        answer = protocol.recv(sock)
    except (OSError, ValueError) as err:
        raise protocol.TrackerError(f"agent at {agent_addr}:{port} (via tracker {address}) did not hand out the lease: "
                             f"{err}") from None
    if not answer.get("ok"):
        sock.close()
        raise protocol.TrackerError(f"agent at {agent_addr}:{port} refused the lease: {answer.get('error')}")
    sock.settimeout(None)
    return sock, answer["device"]
