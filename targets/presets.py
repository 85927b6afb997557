"""What we compile for: one registry of target presets; a new target is one entry.

A preset ties together the TVM target the model library is compiled for, the toolchain
that links it (and builds the C++ runner), where its device runtime comes from, and how
its binaries are started (natively, through qemu, or through a shipped glibc loader).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from edgesmith.errors import TargetError

QEMU_AARCH64 = ("qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu")


@dataclass(frozen=True)
class TargetPreset:
    name: str
    description: str
    arch: str  # "x86_64" | "aarch64": what the runner and the model library run on
    triple: str  # GNU triple of the toolchain
    platform: str  # where the device runtime comes from: "host" | a wheel platform tag
    layout: str  # "linux" | "android-glibc" (started through the shipped loader) | "android-ndk"
    toolchain: str  # key into toolchains.TOOLCHAINS
    mattr: tuple[str, ...] = ()
    mtriple: str = ""  # LLVM triple when it differs from `triple`
    emulator: tuple[str, ...] | None = None  # how this x86 host runs its binaries

    def tvm_target(self) -> dict:
        """The JSON dict for `tvm.target.Target`."""
        if self.platform == "host":
            return host_tvm_target()
        target = {"kind": "llvm", "mtriple": self.mtriple or self.triple}
        if self.mattr:
            target["mattr"] = list(self.mattr)
        return target


def host_arch() -> str:
    machine = _platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_tvm_target() -> dict:
    """The CPU this machine has, named (LLVM 22 rejects "mcpu": "native")."""
    from tvm.target import codegen  # lazy: `edgesmith targets` needn't pay for TVM early

    arch = host_arch()
    target = {"kind": "llvm", "mtriple": f"{arch}-linux-gnu"}
    cpu = codegen.llvm_get_system_cpu()
    if cpu and cpu != "generic":
        target["mcpu"] = cpu
    return target


_ARM64 = dict(
    arch="aarch64",
    triple="aarch64-linux-gnu",
    platform="manylinux_2_28_aarch64",
    toolchain="aarch64-linux-gnu",
    emulator=QEMU_AARCH64,
)

PRESETS: dict[str, TargetPreset] = {
    p.name: p
    for p in [
        TargetPreset(
            name="host",
            description="this machine's CPU, named by LLVM (real timings)",
            arch=host_arch(),
            triple=f"{host_arch()}-linux-gnu",
            platform="host",
            layout="linux",
            toolchain="host",
        ),
        TargetPreset(
            name="arm64-linux",
            description="64-bit ARM Linux board, baseline ARMv8-A with NEON (any Pi 4/5, Graviton)",
            layout="linux",
            mattr=("+neon",),
            **_ARM64,
        ),
        TargetPreset(
            name="arm64-linux-dotprod",
            description="ARMv8.2-A with dot product and fp16 (Cortex-A55/A76 and later, Pi 5)",
            layout="linux",
            mattr=("+neon", "+v8.2a", "+dotprod", "+fullfp16", "+fp16fml"),
            **_ARM64,
        ),
        TargetPreset(
            name="arm64-linux-i8mm",
            description="ARMv8.6-A with int8 matrix multiply (Cortex-A710/X2 and later, Graviton3)",
            layout="linux",
            mattr=("+neon", "+v8.6a", "+i8mm", "+dotprod", "+fullfp16", "+fp16fml", "+bf16"),
            **_ARM64,
        ),
        TargetPreset(
            name="android-arm64",
            description="Android phone, ARMv8.2-A dotprod; glibc runner started through its shipped loader",
            layout="android-glibc",
            mattr=("+neon", "+v8.2a", "+dotprod", "+fullfp16", "+fp16fml"),
            **_ARM64,
        ),
    ]
}


def get_preset(name: str) -> TargetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise TargetError(
            f"unknown target '{name}'; known: {known} (see `edgesmith targets`)"
        ) from None
