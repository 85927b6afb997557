"""One small interface for every way of reaching a device: run, push, pull, probe.

Every call takes a timeout and honours it even on a dead link (neither adb nor paramiko has
one of its own there): a watchdog aborts the call (closes the connection, kills the adb
client) when the time is up, and the call raises DeviceTimeout. Every error is a one-line
DeviceError that starts with the device's name.

run() can also feed the command's stdin while it runs (StdinFeed: a conversation's turns, each
written when it is ready), on every transport: a pipe (local, and the adb client, which forwards
it over the shell protocol) or the SSH channel; then end of input.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgesmith.errors import EXIT_DEVICE, EdgesmithError

LineCallback = Callable[[str], None]


class DeviceError(EdgesmithError):
    """A device could not be reached, timed out, or refused a transfer (exit code 4)."""

    exit_code = EXIT_DEVICE

    def __init__(self, device: str, message: str):
        self.device = device
        self.detail = message
        super().__init__(f"device '{device}': {message}")


class DeviceUnreachable(DeviceError):
    """No connection, or the connection was lost."""


class DeviceTimeout(DeviceError):
    """The device stopped answering within the call's timeout."""

    def __init__(self, device: str, during: str, seconds: float, hint: str = "link stalled or device hung"):
        self.during, self.seconds = during, seconds
        super().__init__(device, f"no answer within {seconds:.3g} s during {during} ({hint})")


class HostKeyError(DeviceError):
    """An SSH host key that is unknown or differs from the pinned/known one."""


class TransferError(DeviceError):
    """A file could not be written or read on the device (disk full, permissions, bad hash)."""


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        lines = [l.strip() for l in self.stderr.splitlines() if l.strip()]
        return lines[-1] if lines else f"exit code {self.exit_code}"


def shell_join(argv: Sequence[str]) -> str:
    """A POSIX shell command that runs exactly argv: every word quoted, nothing interpreted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class Deadline:
    """One time budget shared by the steps of a command (push, then run)."""

    def __init__(self, seconds: float):
        self.total = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


class Watchdog:
    """Calls abort() once `seconds` pass unless the `with` block ends first. pause() stops the
    clock (the command waits for a person, not the device); restart() gives it `seconds` again."""

    def __init__(self, seconds: float, abort: Callable[[], None]):
        self.fired = False
        # threading's timers refuse more than TIMEOUT_MAX (~292 years): a longer wait is no limit
        self.seconds = min(max(seconds, 0.0), threading.TIMEOUT_MAX)
        self._abort = abort
        self._lock = threading.Lock()
        self._over = False
        self._timer = self._new_timer()

    def _new_timer(self) -> threading.Timer:
        timer = threading.Timer(self.seconds, self._fire)
        timer.daemon = True
        return timer

    def _fire(self) -> None:
        self.fired = True
        try:
            self._abort()
        except Exception:
            pass

    def pause(self) -> None:
        with self._lock:
            self._timer.cancel()

    def restart(self) -> None:
        with self._lock:
            self._timer.cancel()
            if not (self.fired or self._over):
                self._timer = self._new_timer()
                self._timer.start()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._over = True
            self._timer.cancel()


class StdinFeed:
    """What a running command reads on stdin: `chunks` (bytes), each written as soon as the
    iterator yields it, then end of input. The iterator runs on a thread of its own and may wait
    for the command's output or for a person; a wait for a person goes inside `with feed.idle():`
    so that it does not count against the call's timeout (the command gets the whole timeout
    again after it)."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks = chunks
        self._dog: Watchdog | None = None

    @contextmanager
    def idle(self):
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def pause(self) -> None:
        """The command waits for a person (or a client), not the device: stop its clock."""
        if self._dog is not None:
            self._dog.pause()

    def resume(self) -> None:
        """The device has work again: the whole timeout from now."""
        if self._dog is not None:
            self._dog.restart()

    def start(self, dog: Watchdog, write: Callable[[bytes], None], close: Callable[[], None]) -> threading.Thread:
        """Feed on a daemon thread: write(chunk) for each chunk, then close(). A write that fails
        (the command ended, the link dropped) ends the feed quietly: the run's result says why."""
        self._dog = dog

        def pump() -> None:
            try:
                for chunk in self.chunks:
                    write(chunk)
            except (OSError, EOFError, ValueError):
                pass
            finally:
                try:
                    close()
                except (OSError, EOFError, ValueError):
                    pass

        thread = threading.Thread(target=pump, daemon=True, name="stdin-feed")
        thread.start()
        return thread


class LineSplitter:
    """Feeds decoded text to a per-line callback as chunks arrive."""

    def __init__(self, on_line: LineCallback | None):
        self.on_line = on_line
        self.parts: list[str] = []
        self._pending = ""

    def feed(self, text: str) -> None:
        self.parts.append(text)
        if self.on_line is None:
            return
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.on_line(line)

    def close(self) -> str:
        if self.on_line is not None and self._pending:
            self.on_line(self._pending)
            self._pending = ""
        return "".join(self.parts)


def run_process(argv: Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
                env: dict | None = None, cwd: str | None = None,
                stdin: StdinFeed | None = None) -> tuple[RunResult, bool]:
    """Run a local process (its own process group), streaming stdout lines and feeding `stdin`
    (else it reads nothing); (result, timed_out)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(lambda: proc.stderr.read1(65536), b"")),
                              daemon=True)
    reader.start()

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    out = LineSplitter(on_line)
    with Watchdog(timeout, kill) as dog:
        if stdin is not None:
            stdin.start(dog, lambda data: (proc.stdin.write(data), proc.stdin.flush()), proc.stdin.close)
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                out.feed(chunk.decode("utf-8", "replace"))
            proc.wait()
        finally:
            if proc.poll() is None:
                kill()
                proc.wait()
            reader.join(timeout=2)
            proc.stdout.close()
            proc.stderr.close()
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    return RunResult(proc.returncode, out.close(), stderr), dog.fired


class Transport(ABC):
    """How edgesmith reaches one device. Use as a context manager; close() drops the connection.

    What the rest asks of every transport: run() of a command line for a POSIX shell on the device
    (quoting, `&&`, loops, `$(...)`; the session's start command, push.py's hashing and renaming,
    probe.py's and the profiler's readings: each names the tools it uses, in SHELL_TOOLS), with
    its exit code, stdout streamed by line and stdin fed; push() and pull() of one file; home().
    A transport whose device has no such shell sets posix_shell False: those callers refuse it in
    one line (require_shell) instead of sending it what it cannot run.

    sidecar: a second connection beside a busy one (a lock's heartbeat): it must never disturb
    the device's other connections (adb: no `adb disconnect` to recover, which would cut them)."""

    posix_shell = True  # run() executes POSIX sh command lines (Linux, Android's toybox sh)
    sidecar = False

    def __init__(self, device):
        self.device = device

    @property
    def name(self) -> str:
        return self.device.name

    @abstractmethod
    def run(self, command: str | Sequence[str], *, timeout: float, on_line: LineCallback | None = None,
            what: str = "a command", stdin: StdinFeed | None = None) -> RunResult:
        """Run a shell command on the device (a list is quoted word by word) in its login folder;
        stdout lines stream to on_line as they arrive; `stdin` feeds its input while it runs (else
        it reads none). A non-zero exit is returned, not raised; `what` names the command in
        errors ("no answer within 5 s during {what}")."""

    @abstractmethod
    def home(self, timeout: float = 10) -> str:
        """The device's login folder, as an absolute path: where a relative workdir lies."""

    @abstractmethod
    def push(self, local: Path, remote: str, *, timeout: float) -> None:
        """Copy one file to `remote` (the parent folder exists). Not atomic: see runtime.push."""

    @abstractmethod
    def pull(self, remote: str, local: Path, *, timeout: float) -> None:
        """Copy one file from the device to `local`."""

    def probe(self, *, timeout: float) -> dict:
        """What the device is: arch, OS, memory, storage, cores, thermal zones, GPU APIs."""
        from edgesmith.runtime.probe import probe_transport

        return probe_transport(self, timeout=timeout)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def require_shell(self, what: str, tools: Sequence[str]) -> None:
        """Refuse, in one line, to send `what` (which uses `tools`) to a device without a POSIX shell."""
        if not self.posix_shell:
            raise self.error(DeviceError, f"{what} needs a POSIX shell with {', '.join(tools)} on the device, which "
                                          f"the {self.device.transport} transport does not offer")

    # helpers for subclasses
    def error(self, cls: type[DeviceError], message: str) -> DeviceError:
        if issubclass(cls, DeviceUnreachable) and "emulated" in (getattr(self.device, "tags", ()) or ()):
            message += "; it is an emulated device: start it with `edgesmith emulators start`"  # the fix, named
        return cls(self.name, message)

    def check(self, command: str | Sequence[str], *, timeout: float, what: str) -> str:
        """run() that raises a DeviceError on a non-zero exit; returns stdout."""
        result = self.run(command, timeout=timeout, what=what)
        if result.exit_code != 0:
            raise self.error(TransferError, f"{what} failed: {result.last_error_line()}")
        return result.stdout
