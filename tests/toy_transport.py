"""A toy transport, whole in this one file, as a new transport is added to edgesmith (its file
under runtime/transports/ and one `register(...)` entry): `folder` reaches a "device" that is a
folder of this machine, as if it were another machine's disk: bundles are pushed into it (never
run in place), commands run by /bin/sh inside it. tests/test_registries.py registers ENTRY.

    devices:
      - name: drawer
        transport: folder
        target: host
        folder: {root: /some/where}     # its section, read by read_settings below
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgesmith.runtime.transports import TransportEntry
from edgesmith.runtime.transports.base import (DeviceTimeout, LineCallback, RunResult, StdinFeed, Transport,
                                               TransferError, run_process, shell_join)


@dataclass(frozen=True)
class FolderSettings:
    root: Path

    @property
    def where(self) -> str:
        return f"folder {self.root}"


def read_settings(fields) -> FolderSettings:
    """The folder: section (runtime/devices.Fields): one field, a folder that exists."""
    root = Path(fields.get("root", str, expand=True))
    if not root.is_dir():
        raise fields.fail("root", f"is not a folder: {root}")
    fields.no_extra()
    return FolderSettings(root)


class FolderTransport(Transport):
    def home(self, timeout: float = 10) -> str:
        return str(self.device.settings.root)

    def run(self, command: str | Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
            what: str = "a command", stdin: StdinFeed | None = None) -> RunResult:
        if not isinstance(command, str):
            command = shell_join(command)
        result, timed_out = run_process(["/bin/sh", "-c", command], timeout=timeout, on_line=on_line, stdin=stdin,
                                        cwd=self.home())
        if timed_out:
            raise DeviceTimeout(self.name, what, timeout)
        return result

    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as err:
            raise self.error(TransferError, f"copying {local} into the folder failed: {err.strerror}") from None

    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as err:
            raise self.error(TransferError, f"copying {remote} out of the folder failed: {err.strerror}") from None


TRANSPORT = FolderTransport
ENTRY = TransportEntry("folder", __name__, section="folder", workdir="bundles")
