"""ADB: the real adb client and server (`adb -H 127.0.0.1 -P PORT -s SERIAL shell|push|pull`).

adb has no timeouts of its own (a blackholed push hangs while `adb devices` still says
"device"), so every adb client runs under our timeout and is killed when it passes; the next
call then reconnects a TCP device (`adb disconnect` + `adb connect`) before using it again.

An adb client that finds no server starts one, as a daemon of its own (`adb fork-server`) that
outlives us. Every client here names the server's address (`-H 127.0.0.1`): adb then counts the
server as remote and never starts one, so after a server died every call fails in one line
instead; the one server edgesmith starts is its own child (`_Servers`).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import (DeviceError, DeviceTimeout, DeviceUnreachable, LineCallback, RunResult, StdinFeed, Transport,
                   TransferError, run_process, shell_join)

# What the adb client prints when the link, not the command, failed.
_LINK_ERRORS = re.compile(r"^(adb: )?error: (closed|protocol fault.*|device .*(offline|not found)|"
                          r"no devices.*|cannot connect.*|connection reset.*)$", re.I)
_STATE_HELP = {
    "unauthorized": "adb reports it 'unauthorized' — accept the debugging prompt on the phone",
    "offline": "adb reports it 'offline' — reconnect the cable or restart adbd on the device",
    "recovery": "it is in recovery mode; boot it normally",
}


EXIT_MARK = "\x1eedgesmith-exit:"


class _Servers:
    """adb servers this process started. Any adb client call starts a server when none listens
    on its port, as an untracked background `fork-server` that outlives us; so we start it
    ourselves (`nodaemon server`, a child we know), share it between the transports that use
    that port, and stop it when the last of them closes. A server someone else runs is left alone."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users: dict[int, int] = {}
        self._ours: dict[int, subprocess.Popen] = {}

    def acquire(self, adb: str, port: int, timeout: float, device: str) -> None:
        with self._lock:
            self._users[port] = self._users.get(port, 0) + 1
            if port in self._ours and self._ours[port].poll() is not None:  # ours died (killed)
                if self._users[port] > 1:  # mid-command: its users fail in one line, no second server
                    self._users[port] -= 1
                    raise DeviceUnreachable(device, f"the adb server on port {port} that edgesmith started went "
                                                    "away (stopped or killed); run again")
                self._stop(port)  # a new command: start another, ours again
            if port in self._ours or _listening(port):
                return
            proc = subprocess.Popen([adb, "-P", str(port), "nodaemon", "server"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self._ours[port] = proc
            end = time.monotonic() + timeout
            while not _listening(port):
                if proc.poll() is not None or time.monotonic() > end:
                    self._stop(port)
                    if _listening(port):  # another process started one at the same moment: use it
                        return
                    self._users[port] -= 1
                    raise DeviceUnreachable(device, f"could not start an adb server on port {port} (adb -P {port} "
                                                           "nodaemon server exited or never listened)")
                time.sleep(0.05)

    def release(self, port: int) -> None:
        with self._lock:
            self._users[port] = self._users.get(port, 1) - 1
            if self._users[port] <= 0:
                del self._users[port]
                self._stop(port)

    def _stop(self, port: int) -> None:
        proc = self._ours.pop(port, None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SERVER_HOST = "127.0.0.1"


def _listening(port: int) -> bool:
    try:
        socket.create_connection((SERVER_HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


SERVERS = _Servers()


# ---------------------------------------------------------------- devices.yaml's adb: section

@dataclass(frozen=True)
class AdbConfig:
    serial: str  # a USB serial, or host:port for a device reached over TCP (`adb connect`)
    server_port: int = 5037

    @property
    def tcp(self) -> bool:
        return ":" in self.serial

    @property
    def where(self) -> str:
        return f"adb {self.serial} (server :{self.server_port})"


def read_settings(a) -> AdbConfig:
    """The adb: section (runtime/devices.Fields), field by field."""
    cfg = AdbConfig(serial=a.get("serial", str), server_port=a.port("server_port", 5037))
    if cfg.tcp:
        port = cfg.serial.rpartition(":")[2]
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise a.fail("serial", f"host:port needs a port number 1-65535, got {cfg.serial!r}")
    a.no_extra()
    return cfg


# ---------------------------------------------------------------- the transport

class AdbTransport(Transport):
    def __init__(self, device):
        super().__init__(device)
        self.cfg = device.settings
        self._adb = shutil.which("adb")
        self._ready = False
        self._server = False  # holds a use of SERVERS for cfg.server_port

    def close(self) -> None:
        if self._server:
            self._server = False
            SERVERS.release(self.cfg.server_port)

    def _argv(self, *args: str) -> list[str]:
        if self._adb is None:
            raise DeviceError(self.name, "the adb binary is not installed (apt-get install adb, or the "
                                         "Android platform-tools)")
        return [*self._server_argv(), "-s", self.cfg.serial, *args]

    def _server_argv(self) -> list[str]:
        # -H 127.0.0.1: the server's address, so that no client ever starts a server of its own
        return [self._adb, "-H", SERVER_HOST, "-P", str(self.cfg.server_port)]

    def _call(self, args: Sequence[str], *, timeout: float, what: str,
              on_line: LineCallback | None = None, stdin: StdinFeed | None = None) -> RunResult:
        result, timed_out = run_process(self._argv(*args), timeout=timeout, on_line=on_line, stdin=stdin)
        if timed_out:
            self._ready = False
            raise DeviceTimeout(self.name, what, timeout)
        if result.exit_code != 0:
            self._server_gone(what)
            if _LINK_ERRORS.match(result.last_error_line()):
                self._ready = False
                raise self.error(DeviceUnreachable, f"connection lost during {what} ({result.last_error_line()})")
        return result

    def _server_gone(self, what: str) -> None:
        """A failed call whose adb server is gone (killed, crashed): say so, in one line."""
        port = self.cfg.server_port
        if not _listening(port):
            self._ready = False
            raise self.error(DeviceUnreachable, f"the adb server on port {port} went away during {what} (stopped or "
                                                "killed); run again: edgesmith starts one of its own")

    def _state(self, timeout: float) -> str:
        result, timed_out = run_process(self._argv("get-state"), timeout=timeout)
        if timed_out:
            return "no answer from the adb server"
        return result.stdout.strip() if result.exit_code == 0 else result.last_error_line()

    def connect(self, timeout: float) -> None:
        if self._ready:
            return
        end = time.monotonic() + timeout
        if not self._server:
            SERVERS.acquire(self._argv()[0], self.cfg.server_port, min(timeout, 10), self.name)
            self._server = True
        state = self._state(min(timeout, 5))
        # (a sidecar never reconnects: `adb disconnect` would cut the busy connection beside it)
        if state != "device" and self.cfg.tcp and not self.sidecar:
            state = self._reconnect(end)
        if state == "device" and self.cfg.tcp and not self.sidecar and not self._answers(end):
            state = self._reconnect(end)
        if state != "device":
            self._server_gone("connecting")
            help = _STATE_HELP.get(state, f"adb says: {state}" + (
                "; is it connected (`adb devices`)?" if not self.cfg.tcp else
                f"; is the device listening at {self.cfg.serial}?"))
            raise self.error(DeviceUnreachable, help)
        self._check_features(max(0.1, min(5, end - time.monotonic())))
        self._ready = True

    def _check_features(self, timeout: float) -> None:
        """Without shell_v2 adb mixes stderr into stdout and loses the exit status: say so now
        rather than fail later with "its exit status never came"."""
        result, timed_out = run_process(self._argv("features"), timeout=timeout)
        if timed_out or result.exit_code != 0:
            return  # an old adb client without `features`: the run itself will tell
        if "shell_v2" not in result.stdout.split():
            raise self.error(DeviceError, "its adbd lacks the shell_v2 protocol (Android 7 and later have it), "
                                          "which edgesmith needs to tell the runner's output from its errors and "
                                          "to read exit statuses; update the device's Android")

    def _answers(self, end: float) -> bool:
        """"device" in the server's list is not proof: a link cut a moment ago still says so."""
        result, timed_out = run_process(self._argv("shell", "echo ok"), timeout=max(0.1, min(5, end - time.monotonic())))
        return not timed_out and result.stdout.strip() == "ok"

    def _reconnect(self, end: float) -> str:
        """A TCP device that timed out or dropped stays "offline" in the server: start afresh. The
        server may still be tearing down the old link and drop the new one with it ("device not
        found" right after "connected to"): then once more."""
        base = self._server_argv()
        for _ in range(3):
            run_process([*base, "disconnect", self.cfg.serial], timeout=max(0.1, min(5, end - time.monotonic())))
            done = run_process([*base, "connect", self.cfg.serial],
                               timeout=max(0.1, min(10, end - time.monotonic())))[0]
            said = (done.stdout + done.stderr).strip()
            if "connected to" not in said:  # `adb connect` exits 0 even when it failed
                raise self.error(DeviceUnreachable, f"adb connect {self.cfg.serial} failed: "
                                                    f"{said.splitlines()[-1] if said else 'no answer'}; "
                                                    "is the device listening there?")
            settle = min(end, time.monotonic() + 5)
            while (state := self._state(max(0.1, min(5, end - time.monotonic())))) != "device" \
                    and time.monotonic() < settle - 0.2:
                time.sleep(0.2)
            if state == "device" or time.monotonic() >= end - 0.5:
                break
        return state

    def home(self, timeout: float = 10) -> str:
        return "/"

    def run(self, command: str | Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
            what: str = "a command", stdin: StdinFeed | None = None) -> RunResult:
        if not isinstance(command, str):
            command = shell_join(command)
        start = time.monotonic()
        self.connect(timeout)
        # adb joins its arguments with spaces and hands them to the device's sh -c: one pre-quoted word.
        # adb exits 0 when the link drops before the command's exit status arrives, so the status
        # also travels as the last thing on stderr; no mark means the link was lost.
        # The client forwards its stdin to the command over the shell protocol, its end as close-stdin.
        wrapped = f"({command}\n); printf '{EXIT_MARK}%d\\n' $? >&2"
        result = self._call(["shell", wrapped], timeout=timeout - (time.monotonic() - start), what=what,
                            on_line=on_line, stdin=stdin)
        stderr = result.stderr
        at = stderr.rfind(EXIT_MARK)
        end = stderr.find("\n", at) if at >= 0 else -1
        code = stderr[at + len(EXIT_MARK):end if end >= 0 else None] if at >= 0 else ""
        if not code.isdigit():
            self._ready = False
            raise self.error(DeviceUnreachable, f"connection lost during {what} (its exit status never came)")
        # (a background job of the command may still write to stderr after the mark)
        return RunResult(int(code), result.stdout, stderr[:at] + (stderr[end + 1:] if end >= 0 else ""))

    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        start = time.monotonic()
        self.connect(timeout)
        what = f"push of {Path(local).name}"
        result = self._call(["push", str(local), remote], timeout=timeout - (time.monotonic() - start), what=what)
        if result.exit_code != 0:
            self._fail(what, result)

    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        start = time.monotonic()
        self.connect(timeout)
        what = f"pull of {remote}"
        result = self._call(["pull", remote, str(local)], timeout=timeout - (time.monotonic() - start), what=what)
        if result.exit_code != 0:
            self._fail(what, result)

    def _fail(self, what: str, result: RunResult):
        self._server_gone(what)
        message = _adb_message(result)
        if _LINK_LOST.search(message):
            self._ready = False
            raise self.error(DeviceUnreachable, f"connection lost during {what} (adb: {message})")
        raise self.error(TransferError, f"{what} failed: {message}")


_LINK_LOST = re.compile(r"couldn't read from device|connection reset|closed|protocol fault|offline|"
                        r"no response|not found|Broken pipe", re.I)


def _adb_message(result: RunResult) -> str:
    """adb's own reason, without its long `failed to copy 'A' to 'B':` preamble."""
    said = [l.strip() for l in (result.stderr + "\n" + result.stdout).splitlines() if l.strip()]
    errors = [l for l in said if "error" in l.lower() or "fail" in l.lower()]
    line = (errors or said or [f"exit code {result.exit_code}"])[-1]
    line = re.sub(r"^adb: error: ", "", line)
    return re.sub(r"^failed to copy '.*' to '.*': ", "", line)


TRANSPORT = AdbTransport
