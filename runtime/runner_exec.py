"""Running a bundle's own runner on this machine: natively, or through qemu for aarch64.

| bundle                    | argv                                                                   |
| ------------------------- | ---------------------------------------------------------------------- |
| x86_64 on an x86_64 host  | BUNDLE/bin/runner ARGS                                                 |
| aarch64, linux            | qemu-aarch64-static -L /usr/aarch64-linux-gnu BUNDLE/bin/runner ARGS   |
| aarch64, android-glibc    | qemu-aarch64-static BUNDLE/bin/ld-linux-aarch64.so.1 --library-path    |
|                           |   BUNDLE/bin BUNDLE/bin/runner ARGS   (as a phone starts it, emulated) |

The runner prints one JSON object per line; a non-zero exit becomes a BundleError that
carries the runner's own one-line message.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from edgesmith.errors import BundleError
from edgesmith.runtime.transports.base import StdinFeed, Watchdog
from edgesmith.targets.presets import QEMU_AARCH64, host_arch

LOADER = "ld-linux-aarch64.so.1"


def runner_start(bindir: str, android_glibc: bool) -> list[str]:
    """argv that starts bindir/runner: directly, or through the glibc loader the android-glibc
    layout ships next to it (posix paths, so the same argv serves remote devices)."""
    runner = posixpath.join(bindir, "runner")
    if android_glibc:
        return [posixpath.join(bindir, LOADER), "--library-path", bindir, runner]
    return [runner]


def runner_argv(bundle: Path) -> list[str]:
    """How this machine starts `bundle`'s runner (without the runner's own arguments)."""
    bundle = Path(bundle)
    manifest_path = bundle / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        arch = manifest["arch"]
    except FileNotFoundError:
        raise BundleError(f"{manifest_path} not found; is '{bundle}' a bundle folder?") from None
    except (ValueError, KeyError) as err:
        raise BundleError(f"{manifest_path} is unreadable ({err}); rebuild the bundle") from None
    bindir = bundle / "bin"
    runner = bindir / "runner"
    if not runner.is_file():  # a GPU target nothing here can build a runtime for, or a damaged copy
        raise BundleError(missing_runner(bundle, manifest))
    if arch == host_arch():
        return [str(runner)]
    if arch == "aarch64":
        qemu = shutil.which(QEMU_AARCH64[0])
        if qemu is None:
            raise BundleError(
                f"bundle '{bundle}' is for aarch64 and {QEMU_AARCH64[0]} is not installed; "
                "apt-get install qemu-user-static"
            )
        if (bindir / LOADER).is_file():  # android-glibc: the shipped loader starts it
            return [qemu, *runner_start(str(bindir), True)]
        return [qemu, *QEMU_AARCH64[1:], *runner_start(str(bindir), False)]
    raise BundleError(f"bundle '{bundle}' is for {arch}; this machine ({host_arch()}) cannot run it")


def missing_runner(bundle: Path, manifest: dict) -> str:
    """Why `bundle` has no runner: its target has none yet (and what it needs), or it was damaged."""
    from edgesmith.targets.presets import PRESETS

    preset = PRESETS.get(manifest.get("target", {}).get("preset", ""))
    device = manifest.get("device") or {}
    note = device.get("runtime_missing") or (preset.gpu.runtime_note if preset and preset.gpu else "")
    if preset is not None and preset.toolchain == "on-device":
        return (f"bundle '{bundle}' (target {preset.name}) has its runner built on the device: copy the bundle "
                "there and run bin/build-on-device.sh")
    if note:
        return (f"bundle '{bundle}' (target {preset.name if preset else '?'}) ships no runner ({', '.join(_runnerless())} "
                f"have none yet): {note}")
    return f"{Path(bundle) / 'bin' / 'runner'} not found; the bundle is incomplete: copy it again or recompile"


def _runnerless() -> list[str]:
    from edgesmith.targets.presets import PRESETS

    return [p.name for p in PRESETS.values() if p.gpu and p.gpu.runtime_note]


def run_runner(
    bundle: Path,
    args: list[str],
    *,
    timeout: float,
    on_line: Callable[[dict], None] | None = None,
    stdin: StdinFeed | None = None,
) -> list[dict]:
    """Run `runner ARGS` for `bundle`; returns its JSON lines (each also given to on_line).
    `stdin` feeds the runner's input as it runs (generate --interactive's turns)."""
    argv = runner_argv(bundle) + [str(a) for a in args]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    records = []
    with Watchdog(timeout, kill) as dog:
        if stdin is not None:
            stdin.start(dog, lambda data: (proc.stdin.write(data.decode()), proc.stdin.flush()), proc.stdin.close)
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise BundleError(f"runner printed a line that is not JSON: {line[:200]!r}") from None
                records.append(record)
                if on_line is not None:
                    on_line(record)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
    if proc.returncode != 0:
        if timed_out.is_set():
            raise BundleError(f"runner for '{bundle}' did not finish within {timeout:g} s; raise the timeout")
        lines = [l.strip() for l in stderr if l.strip()]
        message = next((l for l in reversed(lines) if l.startswith("runner: ")), None)
        if message is None:
            message = lines[-1] if lines else f"exit code {proc.returncode}, no message"
        raise BundleError(message.removeprefix("runner: "))
    return records
