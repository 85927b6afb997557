"""Probing devices: several at once, each failure that device's own row.

(Running a bundle on a device, or here, is runtime/session.py's job.)
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from edgesmith.errors import one_line
from edgesmith.runtime.devices import Device
from edgesmith.runtime.transports import open_transport


# ------------------------------------------------------------------ probing

def probe_devices(devices: list[Device], *, timeout: float) -> list[dict]:
    """Probe every device at once; a failure is that device's row (reachable False, error), never a raise."""

    def one(device: Device) -> dict:
        started = time.monotonic()
        try:
            with open_transport(device) as transport:
                info = transport.probe(timeout=timeout)
            row = {"name": device.name, "reachable": True, "error": None, **info}
        except Exception as err:  # noqa: BLE001 - one device's failure is its own row
            row = {"name": device.name, "reachable": False, "error": one_line(err)}
        row.update(transport=device.transport, target=device.target, where=device.where,
                   probe_s=round(time.monotonic() - started, 3))
        return row

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        return list(pool.map(one, devices))


def format_devices_table(probes: list[dict]) -> str:
    from edgesmith.runtime.probe import format_table

    return format_table(probes)
