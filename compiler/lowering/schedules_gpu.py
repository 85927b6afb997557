"""GPU schedules: dlight's GPU rules, then a catch-all that binds whatever is left to threads.

The linear layers reach dlight in the form its rules read (kernels/gpu.py: dequantize block +
plain reduction); GEMV (decode) and Matmul (prefill) inline the dequantize, so the int4
weight is decoded inside the kernel. RMSNorm goes to Reduction/GeneralReduction, the
embedding gather, RoPE and elementwise ops to Fallback. The paged KV cache's attention
kernels arrive already scheduled for the GPU (TIRPagedKVCache picks them by target).

Adreno (an OpenCL target with device "adreno") gets dlight's Adreno fallback ahead of the
generic one. A rule returns None when it does not apply; the first that applies wins.
DefaultGPUSchedule then binds any PrimFunc no rule took, since a GPU kernel with unbound
loops does not build.
"""
from __future__ import annotations

import tvm
from edgesmith.targets.tvm_api import dlight, s_tir_transform


class Matmul(dlight.gpu.Matmul):
    """dlight's Matmul without its Metal simdgroup path.

    On a metal target dlight tries `MetalMatmul` (simdgroup tensorization) first; in TVM 0.27
    that crashes the process (a segfault inside Tensorize, past its `except`) on this model's
    float32 matmuls. Scheduling against an OpenCL target with the same limits takes dlight's
    generic path, which is what Metal falls back to anyway; the kernels are still built for
    Metal (a schedule is target-independent TIR; codegen uses the real target).
    """

    def apply(self, func, target, tunable):
        if target.kind.name == "metal":
            generic = {k: v for k, v in target.export().items() if k.startswith("max_") or k == "thread_warp_size"}
            target = tvm.target.Target(dict(generic, kind="opencl"))
        return super().apply(func, target, tunable)


class NormGEMV(dlight.ScheduleRule):
    """Our fused decode GEMVs (kernels/gpu.py): RMSNorm + int4 GEMV (two reductions in one kernel)
    and SiLU * up + int4 GEMV, which no dlight rule takes (lowering/schedules_fused.py), with the
    choices `tuning` (compiler/tuning.Tuning; None: the defaults) has for each one's shape."""

    def __init__(self, tuning=None):
        super().__init__()
        self.tuning = tuning

    def apply(self, func, target, tunable):
        from edgesmith.compiler.lowering.schedules_fused import norm_gemv

        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        return norm_gemv(func, self.tuning)


def rules(target, tuning=None) -> list:
    gpu = dlight.gpu
    head = [NormGEMV(tuning), Matmul(), gpu.GEMV(), gpu.LowBatchGEMV(), gpu.Reduction(), gpu.GeneralReduction()]
    if "adreno" in target.keys:
        return head + [dlight.adreno.Fallback(), gpu.Fallback()]
    return head + [gpu.Fallback()]


def passes(target, tuning=None) -> list:
    """tuning: compiler/tuning.Tuning for our fused GEMVs' choices (None: the defaults)."""
    return [dlight.ApplyDefaultSchedule(*rules(target, tuning)), s_tir_transform.DefaultGPUSchedule()]
