"""Incremental, verified bundle push: only what differs is sent, nothing half-written is ever final.

1. One command asks the device for the sha256 of every bundle file (and of any temporary left
   by an interrupted push).
2. A file whose hash already matches is skipped. One that differs goes to a temporary name
   beside its final one (`.NAME.<sha256[:16]>.partial`); a temporary that already holds the right
   bytes (a push cut after sending it) is only renamed.
3. One command hashes every temporary on the device and renames it to its final name only if
   its hash is the manifest's; a mismatch is deleted and reported.
4. manifest.json is removed first when anything changes and written last (the same way), so a
   device bundle with a manifest is a complete one.

Every step runs through the Transport interface with what is left of one Deadline.

What it needs of a transport (base.Transport): push() of one file, and run() of POSIX shell lines
using SHELL_TOOLS (the device's sha256sum hashes what arrived; mv renames only what matches).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.compiler.bundle.folder import MANIFEST, read_manifest, verify
from edgesmith.runtime.transports.base import Deadline, DeviceError, Transport, TransferError, shell_join

BATCH = 64  # files per hashing command: keeps each command line well under adb's limits
SHELL_TOOLS = ("sh", "sha256sum", "cut", "mkdir", "mv", "chmod", "rm")


@dataclass
class PushReport:
    dest: str
    sent: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # temporaries completed by an earlier push
    skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


def temp_name(rel: str, sha256: str) -> str:
    head, name = posixpath.split(rel)
    return posixpath.join(head, f".{name}.{sha256[:16]}.partial")


def _hash_script(dest: str, paths: list[str]) -> str:
    # One line per path, in order: its sha256, or "-" when it is not a regular file.
    return (f"cd {shell_join([dest])} 2>/dev/null || exit 0; for f in {shell_join(paths)}; do "
            'if [ -f "$f" ]; then sha256sum < "$f" | cut -c1-64; else echo -; fi; done')


def device_hashes(transport: Transport, dest: str, paths: list[str], deadline: Deadline) -> dict[str, str]:
    """{path: sha256} for those of `paths` (relative to dest) present on the device."""
    found: dict[str, str] = {}
    for i in range(0, len(paths), BATCH):
        batch = paths[i:i + BATCH]
        out = transport.check(_hash_script(dest, batch), timeout=deadline.left(), what="hashing the device's files")
        lines = out.splitlines()
        if not lines:  # dest does not exist yet
            continue
        if len(lines) != len(batch):
            raise transport.error(TransferError, f"hashing the device's files gave {len(lines)} lines for "
                                                 f"{len(batch)} files: {out[:120]!r}")
        for path, line in zip(batch, lines):
            if len(line) == 64:
                found[path] = line
    return found


def _finish(transport: Transport, dest: str, moves: list[tuple[str, str, str, str]], deadline: Deadline) -> None:
    """Hash each temporary on the device; give it its mode and rename it to its final name only
    when the hash matches. moves: (temporary, sha256, final, octal mode)."""
    for i in range(0, len(moves), BATCH):
        batch = moves[i:i + BATCH]
        lines = ['v() { h=$(sha256sum < "$1" | cut -c1-64) && [ "$h" = "$2" ] && chmod "$4" "$1" && '
                 'mv -f -- "$1" "$3" || { rm -f -- "$1"; echo "BAD $5"; }; }',
                 f"cd {shell_join([dest])} || exit 3"]
        lines += [f"v {shell_join([*move, str(n)])}" for n, move in enumerate(batch)]
        out = transport.check("\n".join(lines), timeout=deadline.left(), what="verifying pushed files")
        bad = [batch[int(l.split()[1])][2] for l in out.splitlines() if l.startswith("BAD ")]
        if bad:
            raise transport.error(TransferError, f"{bad[0]} arrived with a different sha256 than the manifest's "
                                                 f"({len(bad)} file(s)); it was deleted — push again, and if it "
                                                 "repeats check the device's storage")


def _free_note(transport: Transport, dest: str, deadline: Deadline) -> str:
    try:
        out = transport.run(f"df -k {shell_join([dest])} 2>/dev/null | tail -n 1", timeout=min(5, deadline.left()))
        avail = int(out.stdout.split()[3])
    except (DeviceError, ValueError, IndexError):
        return ""
    return f"; the device has {avail} KiB free at {dest}" + (" (disk full)" if avail < 1024 else "")


def push_bundle(transport: Transport, bundle: Path, dest: str, *, deadline: Deadline,
                on_file=None) -> PushReport:
    """Make `dest` on the device hold exactly `bundle`'s files; returns what was sent."""
    start = time.monotonic()
    transport.require_shell("pushing a bundle", SHELL_TOOLS)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    want = {rel: meta.sha256 for rel, meta in manifest.files.items()}
    want[MANIFEST] = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    temps = {rel: temp_name(rel, sha) for rel, sha in want.items()}
    have = device_hashes(transport, dest, [*want, *temps.values()], deadline)

    report = PushReport(dest)
    todo = [rel for rel in want if have.get(rel) != want[rel]]
    report.skipped = len(want) - len(todo)
    if not todo:
        report.seconds = time.monotonic() - start
        return report
    to_send = [rel for rel in todo if rel != MANIFEST and have.get(temps[rel]) != want[rel]]
    # What we are about to send must be right here first: a corrupt or missing local file is this
    # machine's fault, and is found before anything on the device changes.
    verify(bundle, manifest, only=to_send)

    # The manifest marks a complete bundle: it goes first and comes back last.
    if MANIFEST not in todo:
        todo.append(MANIFEST)
    dirs = sorted({posixpath.join(dest, posixpath.dirname(rel)) for rel in todo})
    transport.check(f"rm -f -- {shell_join([posixpath.join(dest, MANIFEST)])} && mkdir -p -- {shell_join(dirs)}",
                    timeout=deadline.left(), what=f"preparing {dest}")
    sent_temps: list[str] = []
    try:
        for group in ([rel for rel in todo if rel != MANIFEST], [MANIFEST]):
            moves = []
            for rel in group:
                tmp = temps[rel]
                if have.get(tmp) == want[rel]:
                    report.renamed.append(rel)
                else:
                    sent_temps.append(tmp)
                    _send_one(transport, bundle / rel, dest, tmp, deadline)
                    report.sent.append(rel)
                    report.bytes_sent += (bundle / rel).stat().st_size
                    if on_file is not None:
                        on_file(rel)
                moves.append((tmp, want[rel], rel, "755" if os.access(bundle / rel, os.X_OK) else "644"))
            _finish(transport, dest, moves, deadline)
    except DeviceError:
        raise  # the device's side: its temporaries let the next push resume
    except BaseException:
        # Our side failed mid-push (a local read error, Ctrl-C): leave no temporaries of ours behind.
        _remove(transport, dest, sent_temps, deadline)
        raise
    # Temporaries of older bundle versions are garbage now.
    transport.run(f"find {shell_join([dest])} -name '.*.partial' -type f -exec rm -f {{}} + 2>/dev/null; true",
                  timeout=deadline.left())
    report.seconds = time.monotonic() - start
    return report


def _send_one(transport: Transport, local: Path, dest: str, tmp: str, deadline: Deadline) -> None:
    try:
        transport.push(local, posixpath.join(dest, tmp), timeout=deadline.left())
    except TransferError as err:
        raise transport.error(TransferError, err.detail + _free_note(transport, dest, deadline)) from None


def _remove(transport: Transport, dest: str, temps: list[str], deadline: Deadline) -> None:
    try:
        transport.run(f"cd {shell_join([dest])} && rm -f -- {shell_join(temps)}", timeout=min(10, deadline.left()))
    except DeviceError:
        pass
