"""One device for the length of a profile: the bundle is pushed (and verified) once, then the
runner's commands run one after another over the same connection.

A profile run without --device uses this machine as a `local` device: the bundle runs in place,
an aarch64 bundle through qemu (labelled emulated, like the emulated board and phone).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgesmith.runtime.devices import Device
from edgesmith.runtime.push import push_bundle
from edgesmith.runtime.remote import check_compatible, device_bundle_dir, runner_command
from edgesmith.runtime.transports import open_transport
from edgesmith.runtime.transports.base import Deadline, DeviceError, DeviceTimeout, shell_join
from edgesmith.targets.presets import QEMU_AARCH64, host_arch


def this_machine(manifest: dict) -> Device:
    """The host as a device for `manifest`'s bundle (qemu for an aarch64 bundle on x86_64)."""
    layout = manifest.get("target", {}).get("layout", "linux")
    wrapper: tuple[str, ...] = ()
    if manifest["arch"] != host_arch():
        wrapper = QEMU_AARCH64[:1] if layout.startswith("android") else QEMU_AARCH64
    from edgesmith.targets.cache import cache_root

    cache = cache_root()
    return Device(name="host", transport="local", target=manifest["target"]["preset"],
                  workdir=str(cache / "devices" / "host"), exec_wrapper=wrapper,
                  tags=("emulated",) if wrapper else ())


def _sensor_script(sysroot: str) -> str:
    root = shell_join([sysroot]) if sysroot else ""
    return "; ".join([
        f"grep -E '^(MemTotal|MemAvailable):' {root}/proc/meminfo 2>/dev/null | tr -d ' ' | sed 's/kB$//;s/:/=/'",
        f'for z in {root}/sys/class/thermal/thermal_zone*; do [ -r "$z/temp" ] && echo "temp=$(cat "$z/temp")"; done',
        "true",
    ])


class DeviceSession:
    def __init__(self, device: Device, bundle: Path, manifest: dict, *, timeout: float, sysroot: str = ""):
        self.device, self.bundle, self.manifest = device, Path(bundle).resolve(), manifest
        self.timeout, self.sysroot = timeout, sysroot
        self.transport = None
        self.push_report = None

    def __enter__(self) -> DeviceSession:
        check_compatible(self.device, self.manifest)
        self.transport = open_transport(self.device)
        try:
            if self.device.transport == "local":
                self.where = str(self.bundle)
            else:
                self.where = device_bundle_dir(self.transport, self.device, self.bundle)
                self.push_report = push_bundle(self.transport, self.bundle, self.where, deadline=Deadline(self.timeout))
        except BaseException:
            self.transport.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.transport.close()

    def probe(self) -> dict:
        return self.transport.probe(timeout=min(self.timeout, 60))

    def memory_and_temperature(self) -> dict:
        """{mem_total_bytes, mem_free_bytes, max_temp_c} now (under the sysroot, if one is set)."""
        out = self.transport.check(_sensor_script(self.sysroot), timeout=min(self.timeout, 60),
                                   what="reading memory and temperature")
        info: dict = {"mem_total_bytes": None, "mem_free_bytes": None, "max_temp_c": None}
        temps = []
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "MemTotal" and value.isdigit():
                info["mem_total_bytes"] = int(value) * 1024
            elif key == "MemAvailable" and value.isdigit():
                info["mem_free_bytes"] = int(value) * 1024
            elif key == "temp" and value.lstrip("-").isdigit():
                t = int(value)
                temps.append(t / 1000 if abs(t) > 200 else t)
        info["max_temp_c"] = max(temps) if temps else None
        return info

    def runner(self, args: list, on_line=None) -> list[dict]:
        """`runner SUBCOMMAND BUNDLE ARGS` on the device; its JSON lines (each also to on_line)."""
        records: list[dict] = []
        bad: list[str] = []

        def line(text: str) -> None:
            text = text.strip()
            if not text or bad:
                return
            try:
                rec = json.loads(text)
            except ValueError:
                bad.append(text[:200])
                return
            records.append(rec)
            if on_line is not None:
                on_line(rec)

        argv = runner_command(self.manifest, ".", [str(a) for a in args], self.device.exec_wrapper)
        try:
            result = self.transport.run(f"cd {shell_join([self.where])} && {shell_join(argv)}", timeout=self.timeout,
                                        on_line=line)
        except DeviceTimeout:
            raise DeviceTimeout(self.device.name, f"runner {args[0]}", self.timeout,
                                "device hung, or the run needs a longer --timeout") from None
        if result.exit_code != 0:
            errs = [l.strip() for l in result.stderr.splitlines() if l.strip()]
            message = next((l for l in reversed(errs) if l.startswith("runner: ")), None)
            message = message or (errs[-1] if errs else f"exit code {result.exit_code}, no message")
            message = message.removeprefix("runner: ")
            if message.startswith(f"unknown command '{args[0]}'"):
                message += f"; the bundle's runner predates `{args[0]}`: recompile the bundle"
            raise DeviceError(self.device.name, f"runner {args[0]} failed: {message}")
        if bad:
            raise DeviceError(self.device.name, f"runner printed a line that is not JSON: {bad[0]!r}")
        return records
