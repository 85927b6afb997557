"""Transports: how edgesmith reaches a device (local, ssh, adb), behind one interface (base.py)."""
from __future__ import annotations

from .base import (DeviceError, DeviceTimeout, DeviceUnreachable, HostKeyError, RunResult, TransferError,
                   Transport, shell_join)


def open_transport(device) -> Transport:
    """A transport for a devices.yaml entry; it connects lazily, on its first call."""
    if device.transport == "local":
        from .local import LocalTransport

        return LocalTransport(device)
    if device.transport == "ssh":
        try:
            from .ssh import SshTransport
        except ImportError as err:  # that device's failure, not the whole command's
            raise DeviceError(device.name, f"the ssh transport cannot load ({err}); paramiko is a dependency of "
                                           "edgesmith: reinstall it (bash scripts/install.sh, or pip install "
                                           "paramiko)") from None

        return SshTransport(device)
    if device.transport == "adb":
        from .adb import AdbTransport

        return AdbTransport(device)
    raise DeviceError(device.name, f"unknown transport {device.transport!r}")


__all__ = ["DeviceError", "DeviceTimeout", "DeviceUnreachable", "HostKeyError", "RunResult", "TransferError",
           "Transport", "open_transport", "shell_join"]
