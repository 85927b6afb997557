"""This machine as a device: commands through /bin/sh, files copied."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from .base import (DeviceTimeout, LineCallback, RunResult, StdinFeed, Transport, TransferError, run_process,
                   shell_join)


def _child_env() -> dict | None:
    """This process's environment, less the TVM_NUM_THREADS the Python engine set for its own pool
    (runtime/engine.py): a runner started here chooses its threads as it would from a shell."""
    import os

    set_by_engine = os.environ.get("EDGESMITH_ENGINE_TVM_THREADS")
    if set_by_engine is None or os.environ.get("TVM_NUM_THREADS") != set_by_engine:
        return None
    return {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "EDGESMITH_ENGINE_TVM_THREADS")}


class LocalTransport(Transport):
    def home(self, timeout: float = 10) -> str:
        return str(Path(self.device.workdir).absolute())

    def run(self, command: str | Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
            what: str = "a command", stdin: StdinFeed | None = None) -> RunResult:
        if not isinstance(command, str):
            command = shell_join(command)
        result, timed_out = run_process(["/bin/sh", "-c", command], timeout=timeout, on_line=on_line, stdin=stdin,
                                        env=_child_env())
        if timed_out:
            raise DeviceTimeout(self.name, what, timeout)
        return result

    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as err:
            raise self.error(TransferError, f"copying {local} to {remote} failed: {err.strerror}") from None

    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as err:
            raise self.error(TransferError, f"copying {remote} to {local} failed: {err.strerror}") from None


TRANSPORT = LocalTransport
