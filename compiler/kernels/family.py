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
    tuning: Tuning = field(default=DEFAULT)  # the CPU kernels' choices per shape (compiler/tuning.py)

    @property
    def gpu(self) -> bool:
        return self.name == "gpu"


CPU = KernelFamily("cpu")
GPU = KernelFamily("gpu")


def is_gpu(target) -> bool:
    """A tvm.target.Target whose code runs on a GPU (TVM tags those with the "gpu" key)."""
    return target is not None and "gpu" in target.keys


def kernel_family(target, tuning: Tuning | None = None) -> KernelFamily:
    """The family of a tvm.target.Target (None: a plain CPU), with `tuning`'s kernel choices."""
    if is_gpu(target):
        return GPU
    from edgesmith.compiler.kernels.int8 import dot_isas

    isas = dot_isas(target)
    family = KernelFamily("cpu-int8dot", tuple(isas)) if isas else CPU
    return replace(family, tuning=tuning) if tuning is not None else family
