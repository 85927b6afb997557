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
