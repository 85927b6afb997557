"""The device side of a profile: a RunnerSession (runtime/session.py: pushed once, the runner's
commands one after another over the same connection; the same arguments, in the same order) that
also probes the device and reads its memory and temperature. Without --device this machine is the
device: the bundle runs in place, an aarch64 bundle through qemu (labelled emulated, like the
emulated board and phone).
"""
from __future__ import annotations

from edgesmith.runtime.session import RunnerSession
from edgesmith.runtime.transports.base import shell_join


def _sensor_script(sysroot: str) -> str:
    root = shell_join([sysroot]) if sysroot else ""
    return "; ".join([
        f"grep -E '^(MemTotal|MemAvailable):' {root}/proc/meminfo 2>/dev/null | tr -d ' ' | sed 's/kB$//;s/:/=/'",
        f'for z in {root}/sys/class/thermal/thermal_zone*; do [ -r "$z/temp" ] && echo "temp=$(cat "$z/temp")"; done',
        "true",
    ])


class ProfileSession(RunnerSession):
    """RunnerSession(bundle, device, timeout=, manifest=) with the device's sensors; `sysroot`:
    read sysfs and /proc/meminfo under this folder on the device (a fake device state)."""

    def __init__(self, bundle, device=None, *, timeout: float, manifest=None, sysroot: str = ""):
        super().__init__(bundle, device, timeout=timeout, manifest=manifest)
        self.sysroot = sysroot

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
        return self.run(args, on_line=on_line)
