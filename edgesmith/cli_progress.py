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

    def tensors(self, total: int):
        if self.quiet:
            return lambda: None
        from tqdm import tqdm

        # In a log (not a terminal) a redraw is a new line: draw rarely there.
        interactive = sys.stderr.isatty()
        self._bar = tqdm(total=total, unit="tensor", file=sys.stderr, leave=False, dynamic_ncols=True,
                         mininterval=0.2 if interactive else 15.0)
        return self._bar.update

    def done(self, msg: str) -> None:
        self.step(msg)
