"""Which kernels a target gets: its kernel family, decided here and nowhere else.

    cpu          an LLVM CPU target: our tensor-expression linears (kernels/cpu.py) and TIR GEMVs
                 (kernels/gemv.py), scheduled by our CPU rules (lowering/schedules_cpu.py)
    cpu-int8dot  the same, on a CPU with int8 dot products (kernels_int8.ISAS, widest first):
                 a scheme with int8 activations runs its decode and prefill on them
    gpu          a GPU target: the textbook forms of kernels/gpu.py, scheduled by dlight's GPU
                 rules (lowering/schedules_gpu.py)

A quantization entry (compiler/quantization/registry.py) picks its linear kernels by the family, and their
parameters by the family's tuning (compiler/tuning.py); the pipeline picks the schedule rules by
`is_gpu`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgesmith.compiler.tuning import DEFAULT, Tuning


@dataclass(frozen=True)
class KernelFamily:
    name: str  # "cpu" | "cpu-int8dot" | "gpu"
    dot_isas: tuple = ()  # cpu-int8dot: the target's kernels_int8.DotISA, widest first
    i8mm: bool = False  # cpu-int8dot on Arm with +i8mm: prefill's GEMM takes `smmla` (kernels/int8_smmla.py)
    tuning: Tuning = field(default=DEFAULT)  # the CPU kernels' choices per shape (compiler/tuning.py)
    # gpu: decode's fusions (kernels/gpu.py: RMSNorm into the next GEMV, SiLU * up into down_proj);
    # False compiles the unfused bundle the fused one is tested against
    fuse: bool = True

    @property
    def gpu(self) -> bool:
        return self.name == "gpu"


CPU = KernelFamily("cpu")
GPU = KernelFamily("gpu")


def is_gpu(target) -> bool:
    """A tvm.target.Target whose code runs on a GPU (TVM tags those with the "gpu" key)."""
    return target is not None and "gpu" in target.keys


def kernel_family(target, tuning: Tuning | None = None, *, gpu_fusion: bool = True) -> KernelFamily:
    """The family of a tvm.target.Target (None: a plain CPU), with `tuning`'s kernel choices.
    gpu_fusion False: a GPU family without decode's fusions (the reference they are tested against)."""
    if is_gpu(target):
        return GPU if gpu_fusion else replace(GPU, fuse=False)
    from edgesmith.compiler.kernels.int8 import dot_isas, has_feature

    isas = dot_isas(target)
    # Arm's int8 matrix multiply (+i8mm): prefill's GEMM takes `smmla`
    family = KernelFamily("cpu-int8dot", tuple(isas), i8mm=has_feature(target, "i8mm")) if isas else CPU
    return replace(family, tuning=tuning) if tuning is not None else family


def honoured_quants(preset, target=None) -> dict[str, str]:
    """{quantization name: what the target computes it with} for every registered scheme `preset`
    honours. A scheme with int8 activations needs a CPU family with int8 dot products (real or
    emulated: plain NEON has them through `dot`); a GPU, or an x86 CPU without VNNI, computes in
    float and is not handed a q4f16i8 label it would not live up to. target: the preset's
    tvm.target.Target when the caller already made it."""
    from edgesmith.compiler.quantization.registry import QUANTIZATIONS

    if preset.gpu is not None:
        family = GPU
    else:
        import tvm

        family = kernel_family(target if target is not None else tvm.target.Target(preset.tvm_target()))
    isa = family.dot_isas[0].name if family.dot_isas else None
    return {name: (f"int8 activations on {isa}" if q.int8_activations else "float activations")
            for name, q in QUANTIZATIONS.items() if isa or not q.int8_activations}


def check_quant(quant, preset, target=None) -> None:
    """Raise (one line, naming what the target can do) when `preset` cannot honour `quant`."""
    from edgesmith.errors import TargetError

    can = honoured_quants(preset, target)
    if quant.name in can:
        return
    why = (f"its {preset.gpu.api} GPU computes in float" if preset.gpu is not None
           else f"its CPU ({preset.arch}) has no int8 dot products (AVX512-VNNI, AVX-VNNI or Arm NEON)")
    twin = quant.variant(int8_activations=False)
    instead = f"use --quant {twin.name} (the same weights, float activations)" if twin.name in can else \
        "use one of those"
    raise TargetError(f"--quant {quant.name} needs int8 activations, which target {preset.name} cannot run: {why}; "
                      f"it honours {', '.join(can)}; {instead}")
