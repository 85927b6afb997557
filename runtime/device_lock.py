"""The push lock of one bundle on one device, held on the device itself, so that it works the
same over SSH and ADB, between processes and between machines.

    WORKDIR/bundles/.DIGEST.lock/          a folder: mkdir either creates it or fails, atomically,
                                           on every filesystem and shell (coreutils, toybox, busybox)
    WORKDIR/bundles/.DIGEST.lock/owner     "TOKEN HOST PID" of the holder; its mtime is the
                                           holder's last heartbeat, by the device's own clock

The holder touches `owner` every HEARTBEAT_S seconds over a connection of its own (a busy push
never delays it). A lock whose owner was not touched for STALE_S seconds belongs to a holder that
died or lost its link: a waiter breaks it (one breaker at a time, under a second mkdir guard) and
takes it. Ages are measured on the device (its `date` against its `stat`), so clocks that differ
between machines do not matter. A holder whose lock was broken finds out at its next heartbeat
(`lost`) and stops before it renames anything into place.

Waiting happens on the device (a loop of mkdir tries, WAIT_STEP_S at most per command), not by
polling it from here: sixteen waiters cost sixteen sleeping shells, not a flood of connections.
"""
from __future__ import annotations

import os
import secrets
import socket
import threading

from edgesmith.runtime.transports.base import (Deadline, DeviceError, DeviceTimeout, Transport, TransferError,
                                               shell_join)

HEARTBEAT_S = 5.0
STALE_S = 30  # six missed heartbeats: the holder is gone
WAIT_STEP_S = 10  # longest single wait command on the device


class LockTimeout(DeviceTimeout):
    """Another push of the same bundle held the lock for longer than our timeout."""

    def __init__(self, device: str, seconds: float, holder: str, age: int):
        self.during, self.seconds = "waiting for the push lock", seconds
        DeviceError.__init__(self, device, f"another push of this bundle ({holder or 'holder unknown'}, last seen "
                                           f"{age} s ago) still held its lock after {seconds:.3g} s; wait for it "
                                           f"to finish or raise --timeout (a lock unseen for {STALE_S} s is "
                                           "taken over)")


def _acquire_script(lock: str, token: str, info: str, wait: int, done: tuple[str, str] | None) -> str:
    q = shell_join
    done_file, done_sha = done or ("", "")
    return f"""L={q([lock])}; me={q([token])}; stale={STALE_S}; wait={wait}; done={q([done_file])}
mkdir -p -- "${{L%/*}}" || exit 3
age() {{ m=$(stat -c %Y -- "$1" 2>/dev/null) || {{ echo 0; return; }}; echo $(( $(date +%s) - m )); }}
t0=$(date +%s); fails=0
while :; do
  if err=$(mkdir -- "$L" 2>&1); then
    if err=$( {{ printf '%s %s\\n' "$me" {q([info])} > "$L/owner"; }} 2>&1 ); then echo GOT; exit 0; fi
    rm -rf -- "$L"; echo "FAIL $err"; exit 0
  fi
  if [ ! -d "$L" ]; then  # released between our mkdir and this look: try again; a real failure repeats
    fails=$((fails + 1)); [ "$fails" -ge 3 ] && {{ echo "FAIL $err"; exit 0; }}; continue
  fi
  fails=0
  if [ -n "$done" ] && [ -f "$done" ] && [ "$(sha256sum < "$done" | cut -c1-64)" = {q([done_sha])} ]; then
    echo DONE; exit 0
  fi
  a=$(age "$L/owner"); [ -f "$L/owner" ] || a=$(age "$L")
  if [ "$a" -gt "$stale" ] && mkdir -- "$L.break" 2>/dev/null; then
    a=$(age "$L/owner"); [ -f "$L/owner" ] || a=$(age "$L")
    if [ "$a" -gt "$stale" ] && mv -- "$L" "$L.stale.$me" 2>/dev/null; then
      echo "BROKE $(cat -- "$L.stale.$me/owner" 2>/dev/null)"; rm -rf -- "$L.stale.$me"
    fi
    rmdir -- "$L.break"; continue
  fi
  [ "$(age "$L.break")" -gt "$stale" ] && rmdir -- "$L.break" 2>/dev/null
  if [ $(( $(date +%s) - t0 )) -ge "$wait" ]; then echo "HELD $a $(cat -- "$L/owner" 2>/dev/null)"; exit 0; fi
  sleep 0.2 2>/dev/null || sleep 1
done"""


def _mine(lock: str, token: str, then: str) -> str:
    """Run `then` only while the lock's owner is still `token`; prints LOST otherwise."""
    return (f"L={shell_join([lock])}; read o _ < \"$L/owner\" 2>/dev/null && [ \"$o\" = {shell_join([token])} ] "
            f"&& {{ {then}; }} || echo LOST")


class DeviceLock:
    """`with DeviceLock(transport, path, deadline):` holds the lock at `path` on the device (a
    folder that need not exist) until the block ends; `lost` turns true if it was taken over.

    done_if=(FILE, SHA256): stop waiting, without the lock (`held` false), once FILE on the device
    has that sha256: what the holder was making is made (a pushed bundle's manifest, written
    last), and every waiter may go on at once instead of taking the lock in turn."""

    def __init__(self, transport: Transport, path: str, deadline: Deadline, done_if: tuple[str, str] | None = None):
        self.transport, self.path, self.deadline, self.done_if = transport, path, deadline, done_if
        self.held = False
        self.token = secrets.token_hex(8)
        self.info = f"{socket.gethostname()[:40]} pid {os.getpid()}"
        self.lost = False
        self.waited = False  # someone else held it when we first tried
        self.broke: list[str] = []  # holders whose stale locks we took over
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.transport.name

    def __enter__(self) -> DeviceLock:
        while True:
            left = self.deadline.left()
            wait = int(min(WAIT_STEP_S, max(0.0, left - 1)))
            out = self.transport.check(_acquire_script(self.path, self.token, self.info, wait, self.done_if),
                                       timeout=max(left, 0.1), what="taking the bundle's push lock")
            lines = out.splitlines()
            self.broke += [l[6:] for l in lines if l.startswith("BROKE ")]
            last = lines[-1] if lines else ""
            if last == "GOT":
                break
            if last == "DONE":  # made by the holder we waited for
                self.waited = True
                return self
            if last.startswith("FAIL "):  # (a full disk: push.py says so)
                raise self.transport.error(TransferError, f"cannot make the push lock {self.path}: {last[5:]}")
            if not last.startswith("HELD "):
                raise self.transport.error(DeviceError, f"taking the push lock {self.path} gave {out[-200:]!r}")
            self.waited = True
            # HELD AGE TOKEN HOST pid PID (no owner file yet: HELD AGE)
            _, age_text, _token, holder = (last.split(" ", 3) + ["", "", ""])[:4]
            age = int(age_text) if age_text.lstrip("-").isdigit() else 0
            if self.deadline.left() <= 1:
                raise LockTimeout(self.name, self.deadline.total, holder, age)
        self.held = True
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="push-lock-heartbeat")
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        """Touch the owner file on a connection of our own until released; a failed touch is
        retried (STALE_S allows several), a lock that is no longer ours sets `lost`."""
        from edgesmith.runtime.transports import open_transport

        beat = open_transport(self.transport.device)
        beat.sidecar = True
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    out = beat.run(_mine(self.path, self.token, 'touch -c -- "$L/owner" && echo OK'),
                                   timeout=STALE_S / 2, what="the push lock's heartbeat").stdout
                except DeviceError:
                    continue
                if "LOST" in out.split():
                    self.lost = True
                    return
        finally:
            beat.close()

    def check(self) -> None:
        """Raise if the lock was taken over (our heartbeats stopped reaching the device)."""
        if self.lost:
            raise self.transport.error(DeviceError, f"lost the push lock {self.path}: another edgesmith took it over "
                                                    f"after {STALE_S} s without our heartbeat (a stalled link?); "
                                                    "run again")

    def __exit__(self, *exc) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            # within the command's deadline: a heartbeat blocked on a stalled link (up to STALE_S / 2)
            # is left to end on its own thread (a daemon; it only touches a lock that is ours)
            self._beat.join(timeout=max(1.0, self.deadline.left()))
        try:  # best effort: a lock we cannot remove goes stale and is taken over
            self.transport.run(_mine(self.path, self.token, 'rm -rf -- "$L"'),
                               timeout=max(2.0, min(10.0, self.deadline.left())), what="releasing the push lock")
        except DeviceError:
            pass

