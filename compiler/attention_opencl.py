"""OpenCL: the paged KV cache's ragged prefill attention rebuilt with 16-byte vector loads.

TVM's GPU ragged prefill kernel (`_attention_prefill_ragged`, symbol `batch_prefill_ragged_kv`:
self-attention over the tokens of this forward) takes its load width from the target: 16 bytes
on Adreno, 8 bytes on any other OpenCL device. The 8-byte variant keeps its V tile in a
`__local float2` array written element by element inside an if/else; PoCL 3.1 (LLVM 15, Debian
12's OpenCL on the CPU) compiles that store to nothing, so every output row stays zero whenever
the tile has padding (fewer than 16 keys). Checked with pyopencl on PoCL against a numpy
reference (tests/test_pocl_kernels.py::test_ragged_prefill_attention): the 8-byte variant is wrong
for 1-9 and 17 keys, the 16-byte one right for all.

Every OpenCL preset therefore gets TVM's own 16-byte variant (the width of GpuSpec.vector_width,
and what TVM already ships for Adreno): same signature, same math, wider loads, which any OpenCL
GPU does well. Only this kernel is swapped: the paged prefill and the decode kernels are right on
PoCL as TVM builds them. The model creates its caches with rope_mode NONE and no rope_scaling,
so the kernel is rebuilt with rope_scaling {} (the swap is skipped otherwise).
"""
from __future__ import annotations

import tvm
from tvm import tirx

from edgesmith.compiler.attention_cpu import PREFILL_RAGGED, _cache_rope_modes, _shape


def _vec16_target(target) -> tvm.target.Target:
    """`target` as TVM's prefill config reads an Adreno one (16-byte loads); limits unchanged."""
    spec = dict(target.export())
    spec["device"] = "adreno"
    return tvm.target.Target(spec)


def replace_ragged_prefill(mod: tvm.IRModule, target) -> tvm.IRModule:
    from tvm.relax.frontend.nn.llm import _prefill_kernels

    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        return mod
    funcs = dict(mod.functions)
    for gv, f in funcs.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and f.attrs.get("global_symbol") == PREFILL_RAGGED:
            (_, h_q, d_qk), dtype = _shape(f, 0)
            (_, h_kv, _), _ = _shape(f, 2)
            (_, _, d_v), _ = _shape(f, 3)
            funcs[gv] = _prefill_kernels._attention_prefill_ragged(
                int(h_kv), int(h_q), int(d_qk), int(d_v), dtype, {}, _vec16_target(target))
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


@tvm.transform.module_pass(opt_level=0, name="OpenCLRaggedPrefill16")
def OpenCLRaggedPrefill16(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a pass)
    return replace_ragged_prefill(mod, tvm.target.Target.current())
