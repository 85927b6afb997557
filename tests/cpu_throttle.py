"""Run a command at a fraction of the CPU, the way a hot, throttled phone runs: its process
group is stopped (SIGSTOP) and continued (SIGCONT) in turn, `share` of every 10 ms running.

    python tests/cpu_throttle.py SHARE COMMAND [ARGS...]

It needs no cgroup, so it works the same on cgroup v1 and v2 machines (a stock Debian 12 has v2
only, where a v1 cpu-controller path does not exist) and without root. The command gets the
caller's stdin/stdout/stderr and its exit status is returned; it is killed if this process dies
(PR_SET_PDEATHSIG), so a stopped command is never left behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PERIOD_S = 0.010


def _die_with_parent() -> None:
    os.setpgrp()  # its own group: stop/continue reaches every thread and child it starts
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    share, command = float(argv[0]), argv[1:]
    if not 0 < share <= 1 or not command:
        print("usage: cpu_throttle.py SHARE(0..1] COMMAND [ARGS...]", file=sys.stderr)
        return 2
    proc = subprocess.Popen(command, preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT):  # pass a stop request on, running, so it can act on it
        signal.signal(sig, lambda s, _f: (os.killpg(proc.pid, signal.SIGCONT), os.killpg(proc.pid, s)))
    # The phases are timed as they happen, and each stop lasts until stopped time is (1 - share) /
    # share of the time the command ran: on a loaded machine this process wakes late, and a run
    # phase that overshot is paid back by a longer stop, so the share holds whatever the load.
    ran = stopped = 0.0
    while proc.poll() is None:
        t0 = time.monotonic()
        time.sleep(PERIOD_S * share)
        t1 = time.monotonic()
        ran += t1 - t0
        if share >= 1:
            continue
        try:
            os.killpg(proc.pid, signal.SIGSTOP)
            while stopped < ran * (1 - share) / share:
                time.sleep(max(0.0005, ran * (1 - share) / share - stopped))
                stopped = stopped + (time.monotonic() - t1)
                t1 = time.monotonic()
            os.killpg(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            break
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
