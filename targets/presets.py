"""What we compile for: one registry of target presets; a new target is one entry.

A preset ties together the TVM target the model library is compiled for, the toolchain
that links it (and builds the C++ runner), where its device runtime comes from, and its bundle
layout (targets/layouts.py: how its runner is shipped and started, here under qemu too).

A GPU preset adds a `GpuSpec`: the TVM device API (opencl, webgpu, metal, cuda) and the
device's limits as data; its `tvm_target()` is the GPU target with the CPU target as host.
Vulkan presets use TVM's WebGPU target: its kernels are WGSL, which edgesmith's WebGPU runtime
(runtime/runner/webgpu/) runs through wgpu-native on the device's Vulkan driver (the registry's
TVM has no SPIR-V code generation).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from edgesmith.errors import TargetError, unknown_name

from .layouts import LAYOUTS, Layout


@dataclass(frozen=True)
class GpuSpec:
    """The GPU side of a preset: TVM's device API and the limits dlight's schedules read."""

    api: str  # TVM target kind: "opencl" | "webgpu" (Vulkan through wgpu-native) | "metal" | "cuda"
    max_threads_per_block: int
    max_shared_memory_per_block: int  # bytes
    thread_warp_size: int  # 1: no subgroup/warp shuffles assumed
    vector_width: int  # bytes in the widest vector load the device does well
    device: str = ""  # TVM's device name where it changes the schedules ("adreno")
    attrs: tuple[tuple[str, object], ...] = ()  # further TVM target attributes
    runtime_note: str = ""  # set when no prebuilt device runtime exists: why, and what to do

    def limits(self) -> dict:
        return {"max_threads_per_block": self.max_threads_per_block,
                "max_shared_memory_per_block": self.max_shared_memory_per_block,
                "thread_warp_size": self.thread_warp_size, "vector_width_bytes": self.vector_width}

    def tvm_target(self, host: dict) -> dict:
        target = {"kind": self.api, "max_num_threads": self.max_threads_per_block,
                  "max_shared_memory_per_block": self.max_shared_memory_per_block,
                  "thread_warp_size": self.thread_warp_size, **dict(self.attrs)}
        if self.api != "webgpu":  # TVM's webgpu target kind knows only max_num_threads
            target["max_threads_per_block"] = self.max_threads_per_block
        if self.device:
            target["device"] = self.device
        return dict(target, host=host)


@dataclass(frozen=True)
class TargetPreset:
    name: str
    description: str
    arch: str  # "x86_64" | "aarch64": what the runner and the model library run on
    triple: str  # GNU triple of the toolchain
    platform: str  # where the device runtime comes from: "host" | a wheel platform tag
    layout: Layout  # how its runner ships and starts (targets/layouts.py)
    toolchain: str  # key into toolchains.TOOLCHAINS
    mattr: tuple[str, ...] = ()
    mtriple: str = ""  # LLVM triple when it differs from `triple`
    gpu: GpuSpec | None = None
    # The quantization `compile` uses without --quant: q4f16i8 (int8 activations) on Arm CPUs (dot
    # products, or plain NEON's smull/smlal) and x86 with VNNI, q4f16 elsewhere; "by-cpu": this CPU.
    default_quant: str = "q4f16"

    def tvm_target(self) -> dict:
        """The JSON dict for `tvm.target.Target` (a GPU preset: the GPU, with this CPU as host)."""
        if self.platform == "host" and self.gpu is None:
            target = host_tvm_target()
        elif self.platform == "host":  # GPU: the host side is launch glue; a generic CPU runs anywhere
            target = {"kind": "llvm", "mtriple": self.triple}
        else:
            target = {"kind": "llvm", "mtriple": self.mtriple or self.triple}
            if self.mattr:
                target["mattr"] = list(self.mattr)
        return self.gpu.tvm_target(target) if self.gpu else target


def host_arch() -> str:
    machine = _platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# CPU flags (/proc/cpuinfo) that mean int8 dot products, the instructions q4f16i8 runs on.
_INT8_DOT_FLAGS = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "asimddp": "Arm dotprod"}


def host_int8_dot(cpuinfo: str | None = None) -> str | None:
    """The int8 dot-product extension this machine's CPU has (None: none), read from /proc/cpuinfo:
    no TVM needed, so `compile` can say its default at once."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((name for flag, name in _INT8_DOT_FLAGS.items() if flag in flags), None)


def default_quantization(preset: TargetPreset) -> tuple[str, str]:
    """(quantization, why) that `compile` uses for `preset` when --quant is not given."""
    if preset.default_quant == "by-cpu":
        dot = host_int8_dot()
        if dot:
            return "q4f16i8", f"this CPU has {dot} int8 dot products"
        return "q4f16", "this CPU has no int8 dot products (AVX512-VNNI, AVX-VNNI or Arm dotprod)"
    if preset.default_quant == "q4f16i8" and "+dotprod" not in preset.mattr:
        # plain Armv8-A: int8 activations on NEON's widening multiply-accumulate, as llama.cpp there;
        # on paper a decoded token retires about a quarter of float activations' instructions
        return "q4f16i8", (f"target {preset.name}: int8 activations on NEON (smull/smlal) decode in about a "
                           "quarter of float activations' instructions (README: ARM cost without a phone)")
    if preset.default_quant == "q4f16i8":
        return "q4f16i8", f"target {preset.name} has int8 dot products"
    if preset.gpu is not None and preset.gpu.api == "webgpu":
        return preset.default_quant, ("a Vulkan GPU computes in float16 where its driver has shader-f16 (most do; the "
                                      "runner refuses such a bundle in one line where it has not: then --quant q4f32)")
    if preset.gpu is not None:
        return preset.default_quant, f"a {preset.gpu.api} GPU computes in float"
    return preset.default_quant, f"target {preset.name} has no int8 dot products"


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
)

_ANDROID_GPU = dict(_ARM64, layout=LAYOUTS["android-glibc"],
                    mattr=("+neon", "+v8.2a", "+dotprod", "+fullfp16", "+fp16fml"))
# A phone's libOpenCL.so is a bionic (Android libc) library: the glibc runner, TVM runtime and
# OpenCL plug-in this bundle layout ships cannot load it. Nothing here builds or runs them for bionic.
_ANDROID_OPENCL_RUNTIME = (
    "a phone's OpenCL driver (/vendor/lib64/libOpenCL.so) is a bionic library that a glibc process cannot load: "
    "this bundle needs the runner, libtvm_runtime.so, libtvm_ffi.so and libedgesmith_opencl.so built with the "
    "Android NDK, which the package registry does not have (no Android TVM runtime either); for a glibc ARM "
    "board use arm64-linux-mali or arm64-linux-adreno")
# Boards with a glibc Linux (RK3588 + Mali-G610, Qualcomm Linux + Adreno), reached over SSH: the host
# side is plain ARMv8-A glue; the kernels run on the GPU through edgesmith's OpenCL plug-in.
_ARM64_BOARD_GPU = dict(_ARM64, layout=LAYOUTS["linux"], mattr=("+neon",))
# A phone's libvulkan.so is bionic like its libOpenCL.so: the glibc runner, TVM runtime, WebGPU
# plug-in and wgpu-native this layout would ship cannot load it.
_ANDROID_VULKAN_RUNTIME = (
    "a phone's Vulkan loader (/system/lib64/libvulkan.so) is a bionic library that a glibc process cannot load: "
    "this bundle needs the runner, libtvm_runtime.so, libtvm_ffi.so, libedgesmith_webgpu.so and wgpu-native built "
    "with the Android NDK, which the package registry does not have (no Android TVM runtime either); for a glibc "
    "ARM board use arm64-linux-vulkan")
# Vulkan through WebGPU (WGSL kernels, wgpu-native): 256 invocations a workgroup (WebGPU's portable
# limit, every Vulkan driver allows it) and 32 KiB of workgroup memory (TVM's webgpu default, what
# WebLLM runs with; TVM's prefill attention takes 18.1 KiB at Phi-3's head dim 96, over WebGPU's
# 16 KiB default, so a driver with only 16 KiB, the Pi 5's V3DV, refuses that kernel in one line).
# The runtime requests the adapter's own limits, so a kernel never needs more than these.
_WEBGPU = dict(api="webgpu", max_threads_per_block=256, max_shared_memory_per_block=32768, thread_warp_size=1,
               vector_width=16)

# Device limits: what the vendors document for the class of device (work-group size, local /
# threadgroup / shared memory per group, SIMD width). OpenCL and Vulkan assume no subgroup
# shuffles (warp size 1), which every device runs; Metal SIMD-groups and CUDA warps are 32.
# OpenCL presets take the smallest common limits of their class: work-groups of 256 (AMD's and
# older Intel's maximum, which NVIDIA's 1024, Mali's and Adreno's also allow) and 32 KiB of local
# memory (Mali's and Adreno's; NVIDIA offers 48, Intel and AMD 64).
GPU_PRESETS = [
    TargetPreset(
        name="android-opencl",
        description="Android phone GPU, Qualcomm Adreno (6xx-8xx) through OpenCL; dlight's Adreno rules",
        gpu=GpuSpec("opencl", 256, 32768, 1, 16, device="adreno", runtime_note=_ANDROID_OPENCL_RUNTIME),
        **_ANDROID_GPU,
    ),
    TargetPreset(
        name="android-mali",
        description="Android phone GPU, ARM Mali (Valhall/5th gen) through OpenCL",
        gpu=GpuSpec("opencl", 256, 32768, 1, 16, device="mali", runtime_note=_ANDROID_OPENCL_RUNTIME),
        **_ANDROID_GPU,
    ),
    TargetPreset(
        name="linux-opencl",
        description="a GPU of this Linux machine through OpenCL (NVIDIA, Intel, AMD; PoCL runs it on the CPU)",
        arch=host_arch(),
        triple=f"{host_arch()}-linux-gnu",
        platform="host",
        layout=LAYOUTS["linux"],
        toolchain="host",
        gpu=GpuSpec("opencl", 256, 32768, 1, 16),
    ),
    TargetPreset(
        name="arm64-linux-mali",
        description="ARM Linux board GPU, Mali (Valhall: RK3588's Mali-G610) through OpenCL; runner over SSH",
        gpu=GpuSpec("opencl", 256, 32768, 1, 16, device="mali"),
        **_ARM64_BOARD_GPU,
    ),
    TargetPreset(
        name="arm64-linux-adreno",
        description="ARM Linux board GPU, Qualcomm Adreno (Qualcomm Linux, QCS6490/8550) through OpenCL; Adreno rules",
        gpu=GpuSpec("opencl", 256, 32768, 1, 16, device="adreno"),
        **_ARM64_BOARD_GPU,
    ),
    TargetPreset(
        name="android-vulkan",
        description="Android phone GPU through Vulkan (Adreno, Mali, Xclipse): WebGPU kernels; library only",
        gpu=GpuSpec(**_WEBGPU, runtime_note=_ANDROID_VULKAN_RUNTIME),
        **_ANDROID_GPU,
    ),
    TargetPreset(
        name="linux-vulkan",
        description="a GPU of this Linux machine through Vulkan (NVIDIA, AMD, Intel; Mesa's lavapipe on the CPU): "
                    "TVM's WebGPU kernels on wgpu-native",
        arch=host_arch(),
        triple=f"{host_arch()}-linux-gnu",
        platform="host",
        layout=LAYOUTS["linux"],
        toolchain="host",
        gpu=GpuSpec(**_WEBGPU),
    ),
    TargetPreset(
        name="arm64-linux-vulkan",
        description="ARM Linux board GPU through Vulkan (Pi 5's V3DV, Mali's PanVK, Adreno's turnip): WebGPU kernels "
                    "on wgpu-native; runner over SSH",
        gpu=GpuSpec(**_WEBGPU),
        **_ARM64_BOARD_GPU,
    ),
    TargetPreset(
        name="apple-metal",
        description="Apple GPU through Metal (iPhone/iPad A14+, Mac M1+), arm64; linked on the device",
        arch="aarch64",
        triple="aarch64-apple-darwin",
        mtriple="arm64-apple-darwin",
        platform="macosx_11_0_arm64",
        layout=LAYOUTS["macos"],
        toolchain="on-device",
        gpu=GpuSpec("metal", 1024, 32768, 32, 16),
    ),
    TargetPreset(
        name="cuda",
        description="an NVIDIA GPU of this machine (sm_80+) through CUDA; kernels compiled by nvcc when loaded",
        arch=host_arch(),
        triple=f"{host_arch()}-linux-gnu",
        platform="host",
        layout=LAYOUTS["linux"],
        toolchain="host",
        gpu=GpuSpec("cuda", 1024, 49152, 32, 16, attrs=(("arch", "sm_80"),)),
    ),
]

PRESETS: dict[str, TargetPreset] = {
    p.name: p
    for p in [
        TargetPreset(
            name="host",
            description="this machine's CPU, named by LLVM (real timings)",
            arch=host_arch(),
            triple=f"{host_arch()}-linux-gnu",
            platform="host",
            layout=LAYOUTS["linux"],
            toolchain="host",
            default_quant="by-cpu",
        ),
        TargetPreset(
            name="arm64-linux",
            description="64-bit ARM Linux board, baseline ARMv8-A with NEON (any Pi 4/5, Graviton)",
            layout=LAYOUTS["linux"],
            mattr=("+neon",),
            default_quant="q4f16i8",
            **_ARM64,
        ),
        TargetPreset(
            name="arm64-linux-dotprod",
            description="ARMv8.2-A with dot product and fp16 (Cortex-A55/A76 and later, Pi 5)",
            layout=LAYOUTS["linux"],
            mattr=("+neon", "+v8.2a", "+dotprod", "+fullfp16", "+fp16fml"),
            default_quant="q4f16i8",
            **_ARM64,
        ),
        TargetPreset(
            name="arm64-linux-i8mm",
            description="ARMv8.6-A with int8 matrix multiply (Cortex-A710/X2 and later, Graviton3)",
            layout=LAYOUTS["linux"],
            mattr=("+neon", "+v8.6a", "+i8mm", "+dotprod", "+fullfp16", "+fp16fml", "+bf16"),
            default_quant="q4f16i8",
            **_ARM64,
        ),
        TargetPreset(
            name="android-arm64",
            description="Android phone, ARMv8.2-A dotprod; glibc runner started through its shipped loader",
            layout=LAYOUTS["android-glibc"],
            mattr=("+neon", "+v8.2a", "+dotprod", "+fullfp16", "+fp16fml"),
            default_quant="q4f16i8",
            **_ARM64,
        ),
        *GPU_PRESETS,
    ]
}


def missing_codegen(preset: TargetPreset) -> str | None:
    """None when the installed TVM can generate code for `preset`; else a one-line reason."""
    if preset.gpu is None:
        return None
    import tvm

    if tvm.get_global_func(f"target.build.{preset.gpu.api}", allow_missing=True) is not None:
        return None
    return (f"target '{preset.name}': this TVM ({tvm.__version__}) has no {preset.gpu.api} code generation "
            f"(target.build.{preset.gpu.api} is missing); install a TVM built with it")


def get_preset(name: str) -> TargetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise TargetError(unknown_name("target", name, PRESETS) + " (see `edgesmith targets`)") from None
