"""Running a bundle on a device from devices.yaml: push it (incremental, verified), start its
runner there, stream its JSON lines back; and probing several devices at once.

How a device starts the runner (BUNDLE is the bundle folder on the device):

| bundle layout  | command, run in BUNDLE                                                      |
| -------------- | --------------------------------------------------------------------------- |
| linux          | [exec_wrapper] ./bin/runner SUBCOMMAND . ARGS                               |
| android-glibc  | [exec_wrapper] ./bin/ld-linux-aarch64.so.1 --library-path ./bin ./bin/runner |
|                |   SUBCOMMAND . ARGS                                                         |

exec_wrapper is how an emulated device runs aarch64 code (qemu); a real device has none.
A `local` device runs the bundle in place, without copying it.
"""
from __future__ import annotations

import json
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgesmith.compiler.bundle import read_manifest
from edgesmith.errors import BundleError, EdgesmithError, one_line
from edgesmith.runtime.devices import Device
from edgesmith.runtime.push import PushReport, push_bundle
from edgesmith.runtime.runner_exec import missing_runner, runner_start
from edgesmith.runtime.transports import open_transport
from edgesmith.runtime.transports.base import Deadline, DeviceError, DeviceTimeout, shell_join
from edgesmith.targets.presets import get_preset



def check_compatible(device: Device, manifest: dict) -> None:
    """Refuse a bundle the device cannot run, before anything is copied."""
    preset = get_preset(device.target)
    arch = manifest.get("arch")
    layout = manifest.get("target", {}).get("layout", "linux")
    built_for = manifest.get("target", {}).get("preset", "?")
    if arch != preset.arch:
        raise DeviceError(device.name, f"runs {preset.arch} (target {preset.name}) and the bundle is for {arch} "
                                       f"(target {built_for}); compile it with --target {preset.name}")
    if manifest.get("device", {}).get("runtime_missing"):  # the bundle's fault, found before any copy
        raise BundleError(missing_runner(f"for {built_for}", manifest))
    if preset.layout.startswith("android") and layout == "linux":
        raise DeviceError(device.name, f"is an Android device and the bundle (target {built_for}) needs a glibc "
                                       f"Linux; compile it with --target {preset.name}")


def runner_command(manifest: dict, bundle_dir: str, runner_args: list[str], wrapper=()) -> list[str]:
    """argv that starts the runner with its bundle at `bundle_dir` (paths relative to the cwd work)."""
    if not runner_args:
        raise EdgesmithError("runner arguments are empty; expected e.g. ['generate', '--tokens', '1,2', '-n', '8']")
    start = runner_start(posixpath.join(bundle_dir, "bin"), manifest.get("target", {}).get("layout") == "android-glibc")
    sub, *rest = [str(a) for a in runner_args]
    return [*wrapper, *start, sub, bundle_dir, *rest]


class _Lines:
    """Parses the runner's stdout lines as JSON as they stream."""

    def __init__(self, device: str, on_line):
        self.device, self.on_line, self.records = device, on_line, []
        self.bad: str | None = None

    def __call__(self, line: str) -> None:
        line = line.strip()
        if not line or self.bad is not None:
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.bad = line[:200]
            return
        self.records.append(record)
        if self.on_line is not None:
            self.on_line(record)


def device_bundle_dir(transport, device: Device, bundle: Path) -> str:
    workdir = device.workdir
    if not posixpath.isabs(workdir):
        workdir = posixpath.join(transport.home(), workdir)
    return posixpath.join(workdir, "bundles", Path(bundle).resolve().name)


def run_bundle(device: Device, bundle: Path, runner_args: list[str], *, timeout: float, on_line=None,
               on_push=None, stdin=None) -> list[dict]:
    """Push `bundle` to `device` and run `runner SUBCOMMAND BUNDLE ARGS` there (runner_args =
    [SUBCOMMAND, *ARGS], e.g. ["generate", "--tokens", "1,2,3", "-n", "8"]); returns its JSON
    lines, each also given to on_line as it arrives. on_push(PushReport) is told what was sent;
    stdin (a transports.base.StdinFeed) feeds the runner's input while it runs."""
    bundle = Path(bundle).resolve()
    manifest = read_manifest(bundle)
    check_compatible(device, manifest)
    deadline = Deadline(timeout)
    lines = _Lines(device.name, on_line)
    during = "the push"
    try:
        with open_transport(device) as transport:
            if device.transport == "local":
                where = str(bundle)  # in place
            else:
                where = device_bundle_dir(transport, device, bundle)
                report = push_bundle(transport, bundle, where, deadline=deadline)
                if on_push is not None:
                    on_push(report)
            argv = runner_command(manifest, ".", runner_args, device.exec_wrapper)
            during = "the run"
            result = transport.run(f"cd {shell_join([where])} && {shell_join(argv)}", timeout=deadline.left(),
                                   on_line=lines, what="the run", stdin=stdin)
    except DeviceTimeout as err:  # say the command's timeout, not what was left of it
        if during == "the run":
            raise DeviceTimeout(device.name, "the run", timeout, "link stalled, device hung, or the run needs "
                                                                 "a longer timeout") from None
        raise DeviceTimeout(device.name, err.during, timeout) from None
    if result.exit_code != 0:
        errs = [l.strip() for l in result.stderr.splitlines() if l.strip()]
        message = next((l for l in reversed(errs) if l.startswith("runner: ")), None)
        message = message or (errs[-1] if errs else f"exit code {result.exit_code}, no message")
        raise DeviceError(device.name, f"runner failed: {message.removeprefix('runner: ')}")
    if lines.bad is not None:
        raise DeviceError(device.name, f"runner printed a line that is not JSON: {lines.bad!r}")
    return lines.records


def push_to_device(device: Device, bundle: Path, *, timeout: float) -> PushReport:
    """Only the push half of run_bundle (for `edgesmith push`-like uses and the tests)."""
    bundle = Path(bundle).resolve()
    check_compatible(device, read_manifest(bundle))
    with open_transport(device) as transport:
        return push_bundle(transport, bundle, device_bundle_dir(transport, device, bundle),
                           deadline=Deadline(timeout))


# ------------------------------------------------------------------ probing

def probe_devices(devices: list[Device], *, timeout: float) -> list[dict]:
    """Probe every device at once; a failure is that device's row (reachable False, error), never a raise."""

    def one(device: Device) -> dict:
        started = time.monotonic()
        try:
            with open_transport(device) as transport:
                info = transport.probe(timeout=timeout)
            row = {"name": device.name, "reachable": True, "error": None, **info}
        except Exception as err:  # noqa: BLE001 - one device's failure is its own row
            row = {"name": device.name, "reachable": False, "error": one_line(err)}
        row.update(transport=device.transport, target=device.target, where=device.where,
                   probe_s=round(time.monotonic() - started, 3))
        return row

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        return list(pool.map(one, devices))


def format_devices_table(probes: list[dict]) -> str:
    from edgesmith.runtime.probe import format_table

    return format_table(probes)
