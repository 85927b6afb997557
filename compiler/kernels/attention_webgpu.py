"""WebGPU (the Vulkan presets): TVM's attention-merge kernel made right without lock-step warps.

`tir_attention_merge_state` (every prefill after a long prompt's first chunk) reads and rewrites
the running log-sum-exp in place from every thread of a row with no barrier between; WebGPU, like
OpenCL, promises no lock step: lavapipe runs a workgroup's invocations in SIMD batches of 4-16,
so at Phi-3's head dim (24 threads a row) the later batches read what the first wrote, and a
530-token prompt's greedy tokens differed from the host's from the first one. The fix is the
OpenCL one (compiler/attention_opencl.py: the same kernel with a barrier before one thread writes
S), reused as it is. The other kernel attention_opencl.py swaps (the 8-byte ragged prefill) is a
PoCL compiler fault, not one of WebGPU's: it stays TVM's here (checked on lavapipe: the tests'
prompts of 1, 7 and 530 tokens give the host's logits within 1e-4).
"""
from __future__ import annotations

import tvm

from edgesmith.compiler.lowering.attention_swap import _cache_rope_modes, _shape
from edgesmith.compiler.kernels.attention_opencl import MERGE, _thread_extents, merge_state_inplace
from edgesmith.targets.tvm_api import tirx


def replace_webgpu_attention(mod: tvm.IRModule) -> tvm.IRModule:
    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        return mod
    funcs = dict(mod.functions)
    for gv, f in funcs.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and f.attrs.get("global_symbol") == MERGE:
            ext = _thread_extents(f)
            funcs[gv] = merge_state_inplace(ext["threadIdx.x"], ext["threadIdx.y"], ext["blockIdx.y"], _shape(f, 0)[1])
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


@tvm.transform.module_pass(opt_level=0, name="ReplaceWebGPUAttention")
def ReplaceWebGPUAttention(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a pass)
    return replace_webgpu_attention(mod)
