"""A device's fingerprint: what decides which kernel choices are best on it.

From the probe (runtime/probe.py): architecture, CPU model (x86 "model name"; ARM implementer and
part), core count, the ISA flags kernels can use, the GPU APIs present, and whether it is emulated.
Two devices with the same fingerprint get the same record; anything else is a mismatch.
"""
from __future__ import annotations

from edgesmith.compiler.tuning import fingerprint_id

# Flags that change what our kernels compile to or how fast they run (vector width, dot products,
# fp16 arithmetic); the rest of /proc/cpuinfo's flags (a kernel's mitigations, virtualisation) would
# make the same CPU differ between two kernels or hypervisors.
ISA_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "sve", "sve2", "bf16",
})


def fingerprint(probe: dict) -> dict:
    cpu = probe.get("cpu") or {}
    model = cpu.get("model name") or " ".join(f"{k} {v}" for k, v in sorted(cpu.items())) or "unknown"
    return {
        "arch": probe.get("arch", "?"),
        "cpu_model": model,
        "cores": probe.get("cores"),
        "isa": sorted(set(probe.get("isa_flags") or []) & ISA_FLAGS),
        "gpu": sorted(probe.get("gpu_apis") or {}),
        "emulated": bool(probe.get("emulated")),
    }


def probe_fingerprint(device, *, timeout: float = 60) -> dict:
    """Probe `device` (a devices.yaml Device) and return its fingerprint."""
    from edgesmith.runtime.transports import open_transport

    transport = open_transport(device)
    try:
        return fingerprint(transport.probe(timeout=timeout))
    finally:
        transport.close()


def describe(fp: dict) -> str:
    return (f"{fp.get('cpu_model')} ({fp.get('arch')}, {fp.get('cores')} cores"
            + (", emulated" if fp.get("emulated") else "") + f"; id {fingerprint_id(fp)})")
