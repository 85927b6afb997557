"""Progress on stderr for long commands: a line per step with the elapsed time, a bar for tensors."""
from __future__ import annotations

import sys
import time


class ConsoleProgress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self._bar = None

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def step(self, msg: str) -> None:
        self._close_bar()
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        """A step line that leaves an open bar open (printed above it)."""
        if self._bar is None or self.quiet:
            return self.step(msg)
        self._bar.write(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr)

    def tensors(self, total: int):
        return self.bar(total, "tensor")

    def bar(self, total: int, unit: str):
        """A progress bar of `total` `unit`s (a plain line per quarter in a log); returns update(n=1)."""
        if self.quiet:
            return lambda n=1: None
        if not sys.stderr.isatty():
            return self._log_counter(total, unit)
        from tqdm import tqdm

        self._close_bar()
        self._bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                         mininterval=0.2)
        return self._bar.update

    def _log_counter(self, total: int, unit: str = "tensor"):
        """In a log (not a terminal) a bar's redraws are fragments: a plain line at each quarter."""
        done = [0]
        marks = {max(1, total * q // 4) for q in (1, 2, 3, 4)}

        def update(n: int = 1) -> None:
            before, done[0] = done[0], done[0] + n
            if any(before < m <= done[0] for m in marks):
                self.step(f"  {done[0]}/{total} {unit}s")

        return update

    def done(self, msg: str) -> None:
        self.step(msg)


class Spinner:
    """One status line on a terminal's stderr, redrawn with the elapsed time while a device works
    ("pushing to board", "loading the model on board", "prefill of 11 tokens"); nothing at all
    when stderr is not a terminal (logs, pipes, tests reading stderr). set() changes the text,
    clear() erases the line (before the reply's text is printed). Safe to call from any thread."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, enabled: bool | None = None, stream=None):
        import threading

        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._text: str | None = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def set(self, text: str) -> None:
        if not self.enabled:
            return
        import threading

        with self._lock:
            self._text, self._t0 = text, time.perf_counter()
            self._draw(0)
            if self._thread is None:
                self._stop = threading.Event()  # its own: a cleared spinner's thread stops for good
                self._thread = threading.Thread(target=self._spin, args=(self._stop,), daemon=True, name="spinner")
                self._thread.start()

    def _draw(self, frame: int) -> None:
        if self._text is not None:
            self.stream.write(f"\r{self.FRAMES[frame % len(self.FRAMES)]} {self._text} "
                              f"({time.perf_counter() - self._t0:.1f} s)\x1b[K")
            self.stream.flush()

    def _spin(self, stop) -> None:
        frame = 0
        while not stop.wait(0.1):
            frame += 1
            with self._lock:
                self._draw(frame)

    def clear(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._text is not None:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self._text = None
            self._stop.set()
            self._thread = None
