"""Transports: how edgesmith reaches a device, behind one interface (base.py), and their registry:
one entry per devices.yaml `transport:` value, its code in one file.

| transport | file     | devices.yaml section         | bundles go to (workdir default)      |
| --------- | -------- | ---------------------------- | ------------------------------------ |
| local     | local.py | -                            | run in place: this machine           |
| ssh       | ssh.py   | ssh: host, port, user, keys  | edgesmith (in the login folder)      |
| adb       | adb.py   | adb: serial, server_port     | /data/local/tmp/edgesmith            |

A transport's file holds its Transport subclass as `TRANSPORT` and, when devices.yaml gives it a
section, `read_settings(fields)`: the section checked field by field (runtime/devices.Fields) into
its settings, a frozen dataclass with a `where` property (how the device is reached, no secrets).
What a transport must offer the rest is Transport's contract (base.py). A new transport is its file
and one `register(...)` below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import (DeviceError, DeviceTimeout, DeviceUnreachable, HostKeyError, RunResult, TransferError,
                   Transport, shell_join)


@dataclass(frozen=True)
class TransportEntry:
    name: str  # devices.yaml's `transport:` value
    module: str  # its file: TRANSPORT (and read_settings when it has a section)
    section: str | None = None  # the devices.yaml mapping it is configured by ("ssh"), if any
    workdir: str = ""  # where bundles go by default (relative: in the login folder); "": this machine's cache
    in_place: bool = False  # the device is this machine: a bundle runs where it is, never pushed

    def load(self, device: str):
        """Its module; a transport that cannot load is that device's failure, not the command's."""
        try:
            return importlib.import_module(self.module)
        except ImportError as err:
            raise DeviceError(device, f"the {self.name} transport cannot load ({err}); its dependencies come with "
                                      "edgesmith: reinstall it (bash scripts/install.sh)") from None

    def open(self, device) -> Transport:
        return self.load(device.name).TRANSPORT(device)

    def read_settings(self, fields, device: str):
        return self.load(device).read_settings(fields)


TRANSPORTS: dict[str, TransportEntry] = {}


def register(entry: TransportEntry) -> TransportEntry:
    if entry.name in TRANSPORTS:
        raise ValueError(f"transport {entry.name} is registered already")
    TRANSPORTS[entry.name] = entry
    return entry


def open_transport(device) -> Transport:
    """A transport for a devices.yaml entry; it connects lazily, on its first call."""
    entry = TRANSPORTS.get(device.transport)
    if entry is None:
        raise DeviceError(device.name, f"unknown transport {device.transport!r} (known: {', '.join(TRANSPORTS)})")
    return entry.open(device)


for _entry in (
    TransportEntry("local", "edgesmith.runtime.transports.local", in_place=True),
    TransportEntry("ssh", "edgesmith.runtime.transports.ssh", section="ssh", workdir="edgesmith"),
    TransportEntry("adb", "edgesmith.runtime.transports.adb", section="adb", workdir="/data/local/tmp/edgesmith"),
):
    register(_entry)
del _entry

__all__ = ["DeviceError", "DeviceTimeout", "DeviceUnreachable", "HostKeyError", "RunResult", "TransferError",
           "Transport", "TransportEntry", "TRANSPORTS", "open_transport", "register", "shell_join"]
