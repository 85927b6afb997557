"""The fault-injection switch of the emulated devices.

A fault is a file STATE/faults/DEVICE holding `KIND AFTER_BYTES`; the device side re-reads it
as it works, so a test can flip it mid-transfer. It becomes active once AFTER_BYTES more bytes
have reached the device (counted from the moment it is seen) and stays so until cleared:

| kind      | the device...                                                              |
| --------- | -------------------------------------------------------------------------- |
| cut       | drops every connection and refuses new ones (the link is cut)              |
| stall     | stops answering: keeps connections open, reads and sends nothing           |
| garbage   | answers random bytes instead of its protocol                               |
| disk_full | refuses to write files larger than AFTER_BYTES; its `df` reports 0 free    |

Clearing a fault drops the connections it touched, as a re-plugged cable would.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

KINDS = ("cut", "stall", "garbage", "disk_full")


def fault_path(state_dir: Path, device: str) -> Path:
    return Path(state_dir) / "faults" / device


def set_fault(state_dir: Path, device: str, kind: str, after_bytes: int = 0) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
    path = fault_path(state_dir, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{device}.tmp")
    tmp.write_text(f"{kind} {int(after_bytes)}\n")
    os.replace(tmp, path)


def clear_fault(state_dir: Path, device: str | None = None) -> None:
    folder = Path(state_dir) / "faults"
    for path in folder.glob(device or "*"):
        path.unlink(missing_ok=True)


class FaultSwitch:
    """The device side's view of its switch: call consume(n) for bytes received."""

    def __init__(self, state_dir: Path, device: str):
        self.path = fault_path(state_dir, device)
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._fault: tuple[str, int] | None = None
        self._count = 0
        self.generation = 0  # bumps whenever the switch changes: stalled connections then drop

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            key = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key == self._seen:
            return
        self._seen = key
        self.generation += 1
        self._count = 0
        self._fault = None
        if key is not None:
            try:
                kind, after = self.path.read_text().split()
                self._fault = (kind, int(after))
            except (OSError, ValueError):
                self._fault = None

    def consume(self, n: int) -> str | None:
        """Count n bytes received; the active fault's kind, if any."""
        with self._lock:
            self._refresh()
            if self._fault is None:
                return None
            kind, after = self._fault
            if kind == "disk_full":
                return None
            self._count += n
            return kind if self._count > after or after == 0 else None

    def active(self) -> str | None:
        return self.consume(0)

    def disk_limit(self) -> int | None:
        with self._lock:
            self._refresh()
            if self._fault and self._fault[0] == "disk_full":
                return self._fault[1]
            return None
