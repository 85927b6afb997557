"""A device-side ADB protocol server: the emulated arm64 phone that the real adb server talks to
(`adb connect 127.0.0.1:PORT`).

Implemented: CNXN (no AUTH), OPEN/OKAY/WRTE/CLSE streams with per-stream flow control, the
services `shell,v2,...:CMD` (stdout/stderr apart, exit status), `shell:CMD` and `exec:CMD`, and
`sync:` (STAT, LIST, SEND, RECV, QUIT; a SEND the disk cannot take is answered as adbd answers
it: FAIL "write failed: No space left on device" at once, the rest of the file read and dropped,
the sync service ended). Its /data/local/tmp is a sandbox folder: sync paths under
it map there, and shell commands run in it with the text /data/local/tmp replaced by the sandbox
path. Commands run on this machine, with a `getprop` of its own; aarch64 binaries run through the
exec wrapper devices.yaml gives the phone (qemu). Its fault switch: runtime/emulated/faults.py.
"""
from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

from .faults import FaultSwitch

CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (int.from_bytes(c, "little") for c in
                                      (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
VERSION = 0x01000001
MAXDATA = 256 * 1024
SYNC_MAX = 64 * 1024
DEVICE_ROOT = "/data/local/tmp"
PROPS = {
    "ro.product.name": "edgesmith_phone",
    "ro.product.model": "edgesmith emulated phone",
    "ro.product.device": "emu64a",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
}
log = logging.getLogger("edgesmith.emulated.adbd")


class Dropped(Exception):
    """The connection ends (a cut link, a stall that was cleared, or the host went away)."""


class Phone:
    """What all connections share: the sandbox, the fault switch, the shell environment."""

    def __init__(self, sandbox: Path, state_dir: Path, name: str = "phone", features: str = "shell_v2,cmd"):
        self.features = features  # what the banner advertises (an old adbd: no shell_v2)
        self.sandbox = Path(sandbox).resolve()
        if not re.fullmatch(r"[A-Za-z0-9_./+-]+", str(self.sandbox)):
            raise ValueError(f"sandbox path {self.sandbox} must hold no shell-special characters")
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.faults = FaultSwitch(state_dir, name)
        self.children: set[subprocess.Popen] = set()  # shell commands still running
        self.system_bin = Path(state_dir) / f"{name}-system" / "bin"
        self.fault_bin = Path(state_dir) / "fault-bin"
        self.system_bin.mkdir(parents=True, exist_ok=True)
        getprop = self.system_bin / "getprop"
        cases = "".join(f"  {k}) echo {shlex.quote(v)};;\n" for k, v in PROPS.items())
        listing = "".join(f"echo {shlex.quote(f'[{k}]: [{v}]')}; " for k, v in PROPS.items())
        getprop.write_text(f'#!/bin/sh\ncase "$1" in\n{cases}  "") {listing};;\n  *) echo;;\nesac\n')
        getprop.chmod(0o755)

    def kill_children(self) -> None:
        for proc in list(self.children):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def banner(self) -> bytes:
        props = ";".join(f"{k}={PROPS[k]}" for k in ("ro.product.name", "ro.product.model", "ro.product.device"))
        return f"device::{props};features={self.features}".encode()

    def map_path(self, path: str) -> Path | None:
        path = posixpath.normpath(path)
        if path == DEVICE_ROOT:
            return self.sandbox
        if path.startswith(DEVICE_ROOT + "/"):
            return self.sandbox / path[len(DEVICE_ROOT) + 1:]
        return None

    def shell_env(self) -> dict:
        path = [str(self.system_bin), "/usr/local/bin", "/usr/bin", "/bin"]
        if self.faults.disk_limit() is not None:
            path.insert(0, str(self.fault_bin))
        return {"PATH": ":".join(path), "HOME": str(self.sandbox), "TMPDIR": str(self.sandbox),
                "ANDROID_DATA": "/data", "LANG": "C.UTF-8"}

    def rewrite(self, command: str) -> str:
        return command.replace(DEVICE_ROOT, str(self.sandbox))


class Stream:
    """One OPENed service: bytes in from the host's WRTEs, bytes out as WRTEs, one OKAY each."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.buf = bytearray()
        self.cv = threading.Condition()
        self.closed = False
        self.okay = threading.Event()
        self.okay.set()
        self.wlock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def feed(self, data: bytes) -> None:
        with self.cv:
            self.buf += data
            self.cv.notify_all()

    def read(self, n: int) -> bytes:
        with self.cv:
            while len(self.buf) < n and not self.closed:
                self.cv.wait()
            if len(self.buf) < n:
                raise EOFError
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data

    def write(self, data: bytes) -> None:
        with self.wlock:
            for i in range(0, len(data), self.conn.host_maxdata):
                while not self.okay.wait(0.5):
                    if self.closed:
                        raise EOFError
                if self.closed:
                    raise EOFError
                self.okay.clear()
                self.conn.send(WRTE, self.local_id, self.remote_id, data[i:i + self.conn.host_maxdata])

    def close(self) -> None:
        """We are done: tell the host."""
        if not self.closed:
            self.closed = True
            try:
                self.conn.send(CLSE, self.local_id, self.remote_id)
            except (OSError, Dropped):
                pass
        self._wake()

    def closed_by_host(self) -> None:
        self.closed = True
        self._wake()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _wake(self) -> None:
        with self.cv:
            self.cv.notify_all()
        self.okay.set()


class Connection(threading.Thread):
    def __init__(self, phone: Phone, sock: socket.socket):
        super().__init__(daemon=True)
        self.phone, self.sock = phone, sock
        self.sendlock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.host_maxdata = MAXDATA
        self.generation = phone.faults.generation

    # -------------------------------------------------------------- packets

    def _fault(self, received: int) -> None:
        kind = self.phone.faults.consume(received)
        if kind == "cut":
            self._hang_up()
            raise Dropped("link cut")
        if kind == "stall":
            while self.phone.faults.active() == "stall":
                time.sleep(0.1)
            self._hang_up()
            raise Dropped("stall cleared")
        if kind == "garbage":
            with self.sendlock:
                self.sock.sendall(os.urandom(4096))

    def _hang_up(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread too
        except OSError:
            pass

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self._fault(0)
        header = struct.pack("<6I", command, arg0, arg1, len(data), 0, command ^ 0xFFFFFFFF)
        with self.sendlock:
            self.sock.sendall(header + data)

    def _recvall(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise Dropped("host closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def run(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _check, magic = struct.unpack("<6I", self._recvall(24))
                if magic != command ^ 0xFFFFFFFF:
                    raise Dropped("bad packet magic from the host")
                data = self._recvall(length) if length else b""
                self._fault(24 + length)
                self.handle(command, arg0, arg1, data)
        except (Dropped, OSError) as err:
            log.info("connection ends: %s", err)
        finally:
            for stream in list(self.streams.values()):
                stream.closed_by_host()
            self._hang_up()
            self.sock.close()

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == CNXN:
            self.host_maxdata = max(4096, min(arg1, MAXDATA))
            self.send(CNXN, VERSION, MAXDATA, self.phone.banner())
        elif command == OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "replace")
            handler = self._service(service)
            if handler is None:
                log.info("refusing service %r", service[:80])
                self.send(CLSE, 0, arg0)
                return
            stream = Stream(self, self.next_id, arg0)
            self.next_id += 1
            self.streams[stream.local_id] = stream
            self.send(OKAY, stream.local_id, arg0)
            threading.Thread(target=self._serve, args=(stream, handler), daemon=True).start()
        elif command == WRTE:
            stream = self.streams.get(arg1)
            if stream is not None and not stream.closed:
                stream.feed(data)
                self.send(OKAY, arg1, arg0)
        elif command == OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.okay.set()
        elif command == CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.closed_by_host()

    def _serve(self, stream: Stream, handler) -> None:
        try:
            handler(stream)
        except (EOFError, OSError, Dropped):
            pass
        except Exception:  # a bug here must not take the connection down silently
            log.exception("service failed")
        finally:
            stream.close()
            self.streams.pop(stream.local_id, None)

    def _service(self, service: str):
        if service.startswith("shell") and ":" in service:
            head, _, command = service.partition(":")
            v2 = "v2" in head.split(",")[1:]
            return lambda s: self.shell(s, command, v2=v2, merge=not v2)
        if service.startswith("exec:"):
            return lambda s: self.shell(s, service[5:], v2=False, merge=False)
        if service == "sync:":
            return self.sync
        return None

    # -------------------------------------------------------------- shell

    def shell(self, stream: Stream, command: str, *, v2: bool, merge: bool) -> None:
        def packet(kind: int, payload: bytes) -> bytes:
            return struct.pack("<BI", kind, len(payload)) + payload if v2 else payload

        if not command.strip():
            stream.write(packet(2, b"interactive shells are not emulated; pass a command\n") + packet(3, b"\1"))
            return
        phone = self.phone
        proc = subprocess.Popen(["/bin/sh", "-c", phone.rewrite(command)], cwd=phone.sandbox, env=phone.shell_env(),
                                stdin=subprocess.PIPE if v2 else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge else subprocess.PIPE, start_new_session=True)
        stream.proc = proc
        phone.children.add(proc)
        if stream.closed:
            stream.closed_by_host()

        def pump(pipe, kind: int) -> None:
            try:
                for chunk in iter(lambda: pipe.read1(SYNC_MAX), b""):
                    if kind == 2 and not v2:
                        continue  # exec: drops stderr, as adbd does
                    stream.write(packet(kind, chunk))
            except (EOFError, OSError, Dropped):
                pass

        pumps = [threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True)]
        if not merge:
            pumps.append(threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True))
        if v2:
            pumps.append(threading.Thread(target=self._stdin, args=(stream, proc), daemon=True))
        for p in pumps:
            p.start()
        for p in pumps[:2]:
            p.join()
        code = proc.wait()
        phone.children.discard(proc)
        if v2 and not stream.closed:
            stream.write(packet(3, bytes([code & 0xFF if code >= 0 else 128 - code])))

    @staticmethod
    def _stdin(stream: Stream, proc: subprocess.Popen) -> None:
        try:
            while True:
                kind, length = struct.unpack("<BI", stream.read(5))
                payload = stream.read(length)
                if kind == 0:
                    proc.stdin.write(payload)
                    proc.stdin.flush()
                elif kind == 4:
                    proc.stdin.close()
        except (EOFError, OSError, ValueError):
            pass

    # -------------------------------------------------------------- sync

    def sync(self, stream: Stream) -> None:
        def reply(rid: bytes, payload: bytes = b"", arg: int | None = None) -> None:
            stream.write(rid + struct.pack("<I", len(payload) if arg is None else arg) + payload)

        while True:
            rid, length = stream.read(4), struct.unpack("<I", stream.read(4))[0]
            if rid == b"QUIT":
                return
            if rid in (b"STAT", b"LIST", b"SEND", b"RECV") and length > 4096:
                raise EOFError("path too long")
            arg = stream.read(length).decode("utf-8", "surrogateescape")
            if rid == b"STAT":
                stream.write(b"STAT" + self._stat(arg))
            elif rid == b"LIST":
                target = self.phone.map_path(arg)
                if target is not None and target.is_dir():
                    for entry in sorted(os.listdir(target)):
                        name = entry.encode("utf-8", "surrogateescape")
                        stream.write(b"DENT" + self._stat(posixpath.join(arg, entry)) + struct.pack("<I", len(name))
                                     + name)
                stream.write(b"DONE" + bytes(16))
            elif rid == b"SEND":
                path, _, mode = arg.rpartition(",")
                if not self._receive(stream, path, int(mode) if mode.isdigit() else 0o644):
                    return  # adbd ends the sync service after a failed SEND
                reply(b"OKAY", arg=0)
            elif rid == b"RECV":
                target = self.phone.map_path(arg)
                try:
                    if target is None:
                        raise PermissionError(13, "Permission denied")
                    with open(target, "rb") as f:
                        for chunk in iter(lambda: f.read(SYNC_MAX), b""):
                            reply(b"DATA", chunk)
                    reply(b"DONE", arg=0)
                except OSError as err:
                    reply(b"FAIL", f"open failed: {err.strerror}".encode())
            else:
                reply(b"FAIL", f"unknown sync request {rid!r}".encode())
                return

    def _stat(self, path: str) -> bytes:
        target = self.phone.map_path(path)
        if posixpath.normpath(path) in ("/", "/data", "/data/local"):
            return struct.pack("<III", stat.S_IFDIR | 0o755, 4096, int(time.time()))
        try:
            st = os.lstat(target) if target is not None else None
        except OSError:
            st = None
        if st is None:
            return bytes(12)
        return struct.pack("<III", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def _receive(self, stream: Stream, path: str, mode: int) -> bool:
        """SEND: write the DATA chunks to path until DONE. As adbd does on a failure (a full disk,
        a folder it may not write): FAIL with "REASON: strerror" at once, read and drop the rest
        of the file's chunks up to DONE, remove what was written, and answer False (the caller
        ends the sync service)."""
        target = self.phone.map_path(path)
        f = None
        written = 0
        try:
            if target is None:
                raise PermissionError(13, "Permission denied")
            f = open(target, "wb", buffering=0)  # unbuffered: a full disk shows on the chunk that hit it
        except OSError as err:
            return self._fail_send(stream, f"couldn't create file: {err.strerror}", None, None)
        with f:
            while True:
                rid, length = stream.read(4), struct.unpack("<I", stream.read(4))[0]
                if rid == b"DONE":
                    mtime = length
                    break
                if rid != b"DATA" or length > SYNC_MAX:
                    raise EOFError(f"bad sync SEND frame {rid!r}")
                data = stream.read(length)
                try:
                    limit = self.phone.faults.disk_limit()
                    if limit is not None and written + len(data) > limit:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    view = memoryview(data)
                    while view:  # a nearly full disk takes part of a chunk, then refuses the rest
                        view = view[f.write(view):]
                    written += len(data)
                except OSError as err:
                    return self._fail_send(stream, f"write failed: {err.strerror}", f, target)
        os.chmod(target, mode & 0o7777)
        os.utime(target, (mtime, mtime))
        return True

    @staticmethod
    def _fail_send(stream: Stream, message: str, f, target: Path | None) -> bool:
        stream.write(b"FAIL" + struct.pack("<I", len(message.encode())) + message.encode())
        try:
            while True:
                rid, length = stream.read(4), struct.unpack("<I", stream.read(4))[0]
                if rid != b"DATA" or length > SYNC_MAX:
                    break  # DONE, or anything else: stop reading
                stream.read(length)
        finally:
            if f is not None:
                f.close()
            if target is not None:
                target.unlink(missing_ok=True)
        return False


def serve(phone: Phone, listener: socket.socket) -> None:
    """Accept the adb server's connections on `listener` (bound to loopback by the caller)."""
    while True:
        sock, _ = listener.accept()
        if phone.faults.active() == "cut":
            sock.close()
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Connection(phone, sock).start()
