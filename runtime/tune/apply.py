"""`compile --tuning FILE|auto [--device D]`: the tuning record found and checked before the compile.

FILE: a record from `edgesmith tune -o` (or the cache). It must be for the compile's target, and
for the device it will run on: with --device D (or for the host target, this machine) its
fingerprint is probed and compared. auto: the cache's record for D's fingerprint and the target.
Every refusal is one line saying what differs and what to do.
"""
from __future__ import annotations

from pathlib import Path

from edgesmith.compiler.tuning import TuningError, TuningRecord, fingerprint_mismatch
from edgesmith.runtime.tune.fingerprint import describe, probe_fingerprint
from edgesmith.runtime.tune.tuner import cache_path


def _device(name: str | None, target: str, devices: Path | None):
    from edgesmith.runtime.devices import get_device
    from edgesmith.runtime.session import host_device

    if name:
        device = get_device(name, devices)
        if device.target != target:
            raise TuningError(f"device '{name}' runs target {device.target}, and the compile is for {target}; "
                              f"compile with --target {device.target}")
        return device
    if target == "host":
        from edgesmith.targets.presets import get_preset

        host = get_preset("host")
        return host_device(host.name, host.arch, host.layout)
    return None


def resolve(spec: str, target: str, device_name: str | None = None,
            devices: Path | None = None) -> tuple[TuningRecord, str]:
    """(record, where it came from) for `compile --tuning spec --target target [--device name]`."""
    device = _device(device_name, target, devices)
    if spec == "auto":
        if device is None:
            raise TuningError(f"--tuning auto needs --device NAME (the device whose record to use) for target {target}")
        fp = probe_fingerprint(device)
        path = cache_path(fp, target)
        if not path.is_file():
            raise TuningError(f"no tuning record for device '{device.name}' ({describe(fp)}) and target {target} in "
                              f"the cache; run `edgesmith tune MODEL --device {device.name}` first")
        return TuningRecord.read(path), str(path)
    record = TuningRecord.read(Path(spec))
    if record.target != target:
        raise TuningError(f"tuning record {spec} was measured for target {record.target}, not {target}; use a record "
                          f"tuned on a {target} device, or compile with --target {record.target}")
    if device is not None:
        fp = probe_fingerprint(device)
        diff = fingerprint_mismatch(record, fp)
        if diff:
            raise TuningError(f"tuning record {spec} was measured on another kind of device than '{device.name}' "
                              f"({diff}); tune on this device: edgesmith tune MODEL --device {device.name}")
    return record, spec
