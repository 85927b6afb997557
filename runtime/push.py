"""Incremental, verified bundle push: only what differs is sent, nothing half-written is ever
final, and concurrent pushes of one bundle to one device send it once.

1. One command asks the device for the sha256 of every bundle file. When all match there is
   nothing to do and no lock is taken (a bundle already there: any number of runs start at once).
2. Otherwise the bundle's push lock is taken on the device (runtime/device_lock.py) and the
   device is asked again: another push may have completed the bundle while we waited (its
   manifest, written last, is then ours).
3. A file whose hash already matches is skipped. One that differs goes to a temporary name of
   this push's own beside its final one (`.NAME.<sha256[:16]>.<token>.partial`); a temporary
   of an earlier, interrupted push that holds the right bytes is taken over (renamed to ours),
   and one that another bundle folder there holds (an earlier build of the same model: the same
   weights, the same runtime libraries) is hard-linked from it: neither is sent again.
4. Before anything is sent, the device's free space is checked against what is to be sent;
   a disk that fills up mid-push is reported as full too, with its free space.
5. One command hashes every temporary on the device and renames it to its final name only if
   its hash is the manifest's; a mismatch is deleted and reported.
6. manifest.json is removed first when anything changes and written last (the same way), so a
   device bundle with a manifest is a complete one.

Every step runs through the Transport interface with what is left of one Deadline. Nothing
outside the bundle folder is ever sent: a symbolic link that leaves it is refused.

What it needs of a transport (base.Transport): push() of one file, and run() of POSIX shell lines
using SHELL_TOOLS (the device's sha256sum hashes what arrived; mv renames only what matches;
device_lock.py's lock needs its own few).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.compiler.bundle.folder import MANIFEST, check_inside, read_manifest, verify
from edgesmith.runtime.device_lock import DeviceLock
from edgesmith.runtime.transports.base import Deadline, DeviceError, Transport, TransferError, shell_join

BATCH = 64  # files per hashing command: keeps each command line well under adb's limits
FREE_MARGIN = 256 * 1024  # directories and partly used blocks beside the files' own bytes
SHELL_TOOLS = ("sh", "sha256sum", "cut", "mkdir", "mv", "chmod", "rm", "stat", "ln", "cp", "find", "df", "tail",
               "dirname")


class DiskFull(TransferError):
    """The device has no room for what is to be pushed."""


@dataclass
class PushReport:
    dest: str
    sent: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # temporaries completed by an earlier push
    reused: list[str] = field(default_factory=list)  # linked from another bundle on the device
    skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    waited: bool = False  # another push of this bundle held the lock first


def bundle_digest(bundle: Path) -> str:
    """The name of `bundle`'s folder on a device: the sha256 of its manifest, which holds the
    sha256 of every other file. Two different bundles never share a folder; one bundle copied to
    two places shares one."""
    return hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()[:32]


def temp_prefix(rel: str, sha256: str) -> str:
    head, name = posixpath.split(rel)
    return posixpath.join(head, f".{name}.{sha256[:16]}.")


def temp_name(rel: str, sha256: str, token: str) -> str:
    """The temporary that the push `token` writes `rel` to (each push has its own)."""
    return f"{temp_prefix(rel, sha256)}{token}.partial"


def is_temp_of(path: str, rel: str, sha256: str) -> bool:
    """Whether `path` is a temporary of `rel` at `sha256`, by any push."""
    return re.fullmatch(re.escape(temp_prefix(rel, sha256)) + r"[0-9a-f]+\.partial", path) is not None


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


def _adopt(transport: Transport, dest: str, items: list[tuple[str, str, str]], deadline: Deadline) -> set[str]:
    """Temporaries that earlier, interrupted pushes left with the right bytes, renamed to ours so
    that they are not sent again; items: (rel, sha256, our temporary). Returns those rels."""
    adopted: set[str] = set()
    for i in range(0, len(items), BATCH):
        batch = items[i:i + BATCH]
        lines = [f"cd {shell_join([dest])} 2>/dev/null || exit 0"]
        for rel, sha, ours in batch:
            # the glob's literal parts quoted: any file name stays a file name
            lines.append(f"h=-; for t in {shell_join([temp_prefix(rel, sha)])}*.partial; do "
                         '[ -f "$t" ] || continue; x=$(sha256sum < "$t" | cut -c1-64); '
                         f'if [ "$x" = {sha} ]; then mv -f -- "$t" {shell_join([ours])} && h=ok && break; fi; '
                         'done; echo "$h"')
        out = transport.check("\n".join(lines), timeout=deadline.left(), what="looking for interrupted pushes")
        answers = out.splitlines()
        if answers and len(answers) != len(batch):
            raise transport.error(TransferError, f"looking for interrupted pushes gave {len(answers)} lines for "
                                                 f"{len(batch)} files: {out[:120]!r}")
        adopted |= {rel for (rel, _, _), line in zip(batch, answers) if line == "ok"}
    return adopted


def _reuse(transport: Transport, dest: str, items: list[tuple[str, str, int, str]], deadline: Deadline) -> set[str]:
    """Files that another bundle folder on the device holds with the right bytes (an earlier
    build of the same model: its weights, the runtime libraries), hard-linked (else copied) to
    our temporaries instead of sent; items: (rel, sha256, size, our temporary). Candidates are
    the same path in the sibling folders, hashed only when their size matches."""
    reused: set[str] = set()
    for i in range(0, len(items), BATCH):
        batch = items[i:i + BATCH]
        lines = [f"cd {shell_join([dest])} || exit 3"]
        for rel, sha, size, ours in batch:
            lines.append(f"h=-; for c in ../*/{shell_join([rel])}; do "
                         f'[ -f "$c" ] && [ "$(stat -c %s -- "$c" 2>/dev/null)" = {size} ] || continue; '
                         f'x=$(sha256sum < "$c" | cut -c1-64); if [ "$x" = {sha} ]; then '
                         f'{{ ln -f -- "$c" {shell_join([ours])} 2>/dev/null || cp -- "$c" {shell_join([ours])}; }} '
                         '&& h=ok && break; fi; done; echo "$h"')
        out = transport.check("\n".join(lines), timeout=deadline.left(), what="looking for the files on the device")
        answers = out.splitlines()
        if len(answers) != len(batch):
            raise transport.error(TransferError, f"looking for the files on the device gave {len(answers)} lines "
                                                 f"for {len(batch)} files: {out[:120]!r}")
        reused |= {rel for (rel, _, _, _), line in zip(batch, answers) if line == "ok"}
    return reused


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


def free_bytes(transport: Transport, folder: str, deadline: Deadline) -> int | None:
    """Bytes free on the filesystem holding `folder` (or its nearest existing parent), as the
    device's `df` says; None when it cannot say."""
    script = (f"d={shell_join([folder])}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; "
              'df -Pk "$d" 2>/dev/null | tail -n 1')
    try:
        out = transport.run(script, timeout=max(0.5, min(10.0, deadline.left())), what="asking for free space")
        return int(out.stdout.split()[3]) * 1024
    except (DeviceError, ValueError, IndexError):
        return None


def size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def push_bundle(transport: Transport, bundle: Path, dest: str, *, deadline: Deadline, lock: str | None = None,
                on_file=None) -> PushReport:
    """Make `dest` on the device hold exactly `bundle`'s files; returns what was sent. `lock`:
    the device path of this bundle's push lock (default: beside dest)."""
    start = time.monotonic()
    transport.require_shell("pushing a bundle", SHELL_TOOLS)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    want = {rel: meta.sha256 for rel, meta in manifest.files.items()}
    want[MANIFEST] = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    have = device_hashes(transport, dest, list(want), deadline)
    report = PushReport(dest)
    todo = [rel for rel in want if have.get(rel) != want[rel]]
    if todo:
        # What we are about to send must be right here first: a corrupt, missing or escaping local
        # file is this machine's fault, and is found before anything on the device changes.
        check_inside(bundle, [MANIFEST])
        verified = {rel for rel in todo if rel != MANIFEST}
        verify(bundle, manifest, only=sorted(verified))
        lock = lock or posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.lock")
        # Waiting for another push of this bundle ends when its manifest is there, unless the
        # manifest was there before (a damaged file being repaired): then only the lock tells.
        done_if = None if have.get(MANIFEST) == want[MANIFEST] else (posixpath.join(dest, MANIFEST), want[MANIFEST])
        with _lock_or_disk_full(transport, lock, deadline, done_if, dest) as held:
            report.waited = held.waited
            todo = _still_missing(transport, dest, want, have, deadline) if held.held else []
            verify(bundle, manifest, only=[rel for rel in todo if rel != MANIFEST and rel not in verified])
            if todo:
                _push_locked(transport, bundle, dest, want, todo, report, held, deadline, on_file)
    report.skipped = len(want) - len(report.sent) - len(report.renamed) - len(report.reused)
    report.seconds = time.monotonic() - start
    return report


@contextmanager
def _lock_or_disk_full(transport: Transport, lock: str, deadline: Deadline, done_if, dest: str):
    """The push lock; a disk too full for even the lock's folder is said as what it is."""
    try:
        held = DeviceLock(transport, lock, deadline, done_if=done_if).__enter__()
    except TransferError as err:
        # (dash's printf says "I/O error" for a full disk: the free space tells)
        free = free_bytes(transport, dest, deadline)
        if "No space left" not in err.detail and (free is None or free >= FREE_MARGIN):
            raise
        raise transport.error(DiskFull, f"disk full: the device has {size_text(free or 0)} free at "
                                        f"{posixpath.dirname(dest)}, not even room for the push lock ({err.detail}); "
                                        "free space there, or give the device a workdir on a larger filesystem "
                                        "(devices.yaml)") from None
    try:
        yield held
    finally:
        held.__exit__(None, None, None)


def _still_missing(transport: Transport, dest: str, want: dict, before: dict, deadline: Deadline) -> list[str]:
    """What the device lacks now that we hold the lock. A manifest that appeared meanwhile means
    another push completed the bundle (it writes the manifest last, under the lock): nothing."""
    now = device_hashes(transport, dest, [MANIFEST], deadline)
    if now.get(MANIFEST) == want[MANIFEST] and before.get(MANIFEST) != want[MANIFEST]:
        return []
    have = device_hashes(transport, dest, list(want), deadline)
    return [rel for rel in want if have.get(rel) != want[rel]]


def _push_locked(transport, bundle: Path, dest: str, want: dict, todo: list[str], report: PushReport,
                 held: DeviceLock, deadline: Deadline, on_file) -> None:
    temps = {rel: temp_name(rel, want[rel], held.token) for rel in todo}
    temps.setdefault(MANIFEST, temp_name(MANIFEST, want[MANIFEST], held.token))
    dirs = sorted({posixpath.join(dest, posixpath.dirname(rel)) for rel in temps})
    transport.check(f"mkdir -p -- {shell_join(dirs)}", timeout=deadline.left(), what=f"preparing {dest}")
    adopted = _adopt(transport, dest, [(rel, want[rel], temps[rel]) for rel in todo], deadline)
    reused = _reuse(transport, dest, [(rel, want[rel], (bundle / rel).stat().st_size, temps[rel])
                                      for rel in todo if rel not in adopted and rel != MANIFEST], deadline)
    to_send = [rel for rel in todo if rel not in adopted and rel not in reused]
    need = sum((bundle / rel).stat().st_size for rel in to_send)
    free = free_bytes(transport, dest, deadline)
    if free is not None and need + FREE_MARGIN > free:
        raise transport.error(DiskFull, f"disk full: the push needs {size_text(need)} and the device has "
                                        f"{size_text(free)} free at {dest}; free space there, or give the device "
                                        "a workdir on a larger filesystem (devices.yaml)")

    # The manifest marks a complete bundle: it goes first and comes back last.
    if MANIFEST not in todo:
        todo.append(MANIFEST)
    transport.check(f"rm -f -- {shell_join([posixpath.join(dest, MANIFEST)])}", timeout=deadline.left(),
                    what=f"preparing {dest}")
    sent_temps: list[str] = []
    left = need + (0 if MANIFEST in to_send else (bundle / MANIFEST).stat().st_size)
    try:
        for group in ([rel for rel in todo if rel != MANIFEST], [MANIFEST]):
            moves = []
            for rel in group:
                tmp = temps[rel]
                if rel in adopted:
                    report.renamed.append(rel)
                elif rel in reused:
                    report.reused.append(rel)
                else:
                    held.check()
                    sent_temps.append(tmp)
                    _send_one(transport, bundle / rel, dest, tmp, left, deadline)
                    size = (bundle / rel).stat().st_size
                    report.sent.append(rel)
                    report.bytes_sent += size
                    left -= size
                    if on_file is not None:
                        on_file(rel)
                moves.append((tmp, want[rel], rel, _mode(bundle, rel)))
            held.check()
            _finish(transport, dest, moves, deadline)
    except DeviceError:
        raise  # the device's side: its temporaries let the next push resume
    except BaseException:
        # Our side failed mid-push (a local read error, Ctrl-C): leave no temporaries of ours behind.
        _remove(transport, dest, sent_temps, deadline)
        raise
    # Temporaries of older bundle versions and of pushes that died are garbage now (we hold the lock).
    transport.run(f"find {shell_join([dest])} -name '.*.partial' -type f -exec rm -f {{}} + 2>/dev/null; true",
                  timeout=deadline.left())


# Files the runner's start command executes: executable on the device whatever the local copy's
# mode (a bundle unpacked by a tool that drops modes still runs there).
PROGRAMS = ("bin/runner", "bin/ld-linux-aarch64.so.1")


def _mode(bundle: Path, rel: str) -> str:
    return "755" if rel in PROGRAMS or os.access(bundle / rel, os.X_OK) else "644"


def _send_one(transport: Transport, local: Path, dest: str, tmp: str, left: int, deadline: Deadline) -> None:
    try:
        transport.push(local, posixpath.join(dest, tmp), timeout=deadline.left())
    except TransferError as err:
        free = free_bytes(transport, dest, deadline)
        if "No space left" in err.detail or "disk full" in err.detail or (free is not None and free < left):
            _remove(transport, dest, [tmp], deadline)  # a partial file only takes the space others need
            said = (f"the device has {size_text(free)} free at {dest}" if free is not None
                    else "its free space is unknown")
            raise transport.error(DiskFull, f"disk full during the push of {local.name}: {said} and the push "
                                            f"needs {size_text(left)} more ({err.detail}); free space there, or "
                                            "give the device a workdir on a larger filesystem (devices.yaml)") \
                from None
        raise


def _remove(transport: Transport, dest: str, temps: list[str], deadline: Deadline) -> None:
    try:
        transport.run(f"cd {shell_join([dest])} && rm -f -- {shell_join(temps)}",
                      timeout=max(1.0, min(10, deadline.left())))
    except DeviceError:
        pass
