"""ADB: the real adb client and server (`adb -P PORT -s SERIAL shell|push|pull`).

adb has no timeouts of its own (a blackholed push hangs while `adb devices` still says
"device"), so every adb client runs under our timeout and is killed when it passes; the next
call then reconnects a TCP device (`adb disconnect` + `adb connect`) before using it again.
"""
from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from .base import (DeviceError, DeviceTimeout, DeviceUnreachable, LineCallback, RunResult, Transport,
                   TransferError, run_process, shell_join)

# What the adb client prints when the link, not the command, failed.
_LINK_ERRORS = re.compile(r"^(adb: )?error: (closed|protocol fault.*|device .*(offline|not found)|"
                          r"no devices.*|cannot connect.*|connection reset.*)$", re.I)
_STATE_HELP = {
    "unauthorized": "adb reports it 'unauthorized' — accept the debugging prompt on the phone",
    "offline": "adb reports it 'offline' — reconnect the cable or restart adbd on the device",
    "recovery": "it is in recovery mode; boot it normally",
}


class AdbTransport(Transport):
    def __init__(self, device):
        super().__init__(device)
        self.cfg = device.adb
        self._adb = shutil.which("adb")
        self._ready = False

    def _argv(self, *args: str) -> list[str]:
        if self._adb is None:
            raise DeviceError(self.name, "the adb binary is not installed (apt-get install adb, or the "
                                         "Android platform-tools)")
        return [self._adb, "-P", str(self.cfg.server_port), "-s", self.cfg.serial, *args]

    def _call(self, args: Sequence[str], *, timeout: float, what: str,
              on_line: LineCallback | None = None) -> RunResult:
        result, timed_out = run_process(self._argv(*args), timeout=timeout, on_line=on_line)
        if timed_out:
            self._ready = False
            raise self.error(DeviceTimeout, f"no answer within {timeout:g} s during {what} "
                                            "(link stalled or device hung)")
        if result.exit_code != 0 and _LINK_ERRORS.match(result.last_error_line()):
            self._ready = False
            raise self.error(DeviceUnreachable, f"connection lost during {what} ({result.last_error_line()})")
        return result

    def _state(self, timeout: float) -> str:
        result, timed_out = run_process(self._argv("get-state"), timeout=timeout)
        if timed_out:
            return "no answer from the adb server"
        return result.stdout.strip() if result.exit_code == 0 else result.last_error_line()

    def connect(self, timeout: float) -> None:
        if self._ready:
            return
        end = time.monotonic() + timeout
        state = self._state(min(timeout, 5))
        if state != "device" and self.cfg.tcp:
            # A TCP device that timed out or dropped stays "offline" in the server; start afresh.
            base = [self._adb, "-P", str(self.cfg.server_port)]
            run_process([*base, "disconnect", self.cfg.serial], timeout=max(0.1, min(5, end - time.monotonic())))
            done, _ = run_process([*base, "connect", self.cfg.serial], timeout=max(0.1, min(10, end - time.monotonic())))
            said = (done.stdout + done.stderr).strip()
            if "connected to" not in said:  # `adb connect` exits 0 even when it failed
                raise self.error(DeviceUnreachable, f"adb connect {self.cfg.serial} failed: "
                                                    f"{said.splitlines()[-1] if said else 'no answer'}; "
                                                    "is the device listening there?")
            while (state := self._state(max(0.1, min(5, end - time.monotonic())))) != "device" \
                    and time.monotonic() < end - 0.2:
                time.sleep(0.2)
        if state != "device":
            help = _STATE_HELP.get(state, f"adb says: {state}" + (
                "; is it connected (`adb devices`)?" if not self.cfg.tcp else
                f"; is the device listening at {self.cfg.serial}?"))
            raise self.error(DeviceUnreachable, help)
        self._ready = True

    def home(self, timeout: float = 10) -> str:
        return "/"

    def run(self, command: str | Sequence[str], *, timeout: float,
            on_line: LineCallback | None = None) -> RunResult:
        if not isinstance(command, str):
            command = shell_join(command)
        start = time.monotonic()
        self.connect(timeout)
        # adb joins its arguments with spaces and hands them to the device's sh -c: one pre-quoted word.
        return self._call(["shell", command], timeout=timeout - (time.monotonic() - start), what="a command",
                          on_line=on_line)

    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        start = time.monotonic()
        self.connect(timeout)
        what = f"push of {Path(local).name}"
        result = self._call(["push", str(local), remote], timeout=timeout - (time.monotonic() - start), what=what)
        if result.exit_code != 0:
            raise self.error(TransferError, f"{what} failed: {_adb_message(result)}")

    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        start = time.monotonic()
        self.connect(timeout)
        what = f"pull of {remote}"
        result = self._call(["pull", remote, str(local)], timeout=timeout - (time.monotonic() - start), what=what)
        if result.exit_code != 0:
            raise self.error(TransferError, f"{what} failed: {_adb_message(result)}")


def _adb_message(result: RunResult) -> str:
    line = result.last_error_line()
    return re.sub(r"^adb: error: ", "", line)
