"""The pass that swaps TVM's CPU attention kernels for ours (compiler/kernels/attention_cpu.py), found by
their global_symbol, with the head counts, head dims and dtype read off TVM's own PrimFuncs.

Only in a module whose every paged KV cache is created with rope_mode NONE: our kernels never apply
RoPE (the model applies it: kernels/cpu.rope). compiler/kernels/attention_opencl.py reads the caches' rope
modes and the buffers the same way for its GPU kernels.
"""
from __future__ import annotations

import tvm

from edgesmith.compiler.kernels.attention_cpu import (DECODE, KV_CACHE_CREATE, PREFILL_PAGED, PREFILL_RAGGED,
                                                      SLIDING, attention_decode_cpu, attention_prefill_paged_cpu,
                                                      attention_prefill_ragged_cpu)
from edgesmith.compiler.tuning import DEFAULT, Tuning, attention_key
from edgesmith.targets.tvm_api import relax, tirx

_ROPE_MODE_ARG = 9  # call_pure_packed args: the ExternFunc, then the creation arguments; rope_mode is 9th


def _cache_rope_modes(mod: tvm.IRModule) -> list:
    """The rope_mode of every paged KV cache created in `mod` (None where it can't be read)."""
    modes = []

    def visit(e):
        if (isinstance(e, relax.Call) and e.args and isinstance(e.args[0], relax.ExternFunc)
                and str(e.args[0].global_symbol) == KV_CACHE_CREATE):
            arg = e.args[_ROPE_MODE_ARG] if len(e.args) > _ROPE_MODE_ARG else None
            modes.append(int(arg.value) if isinstance(arg, tirx.IntImm) else None)

    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f.body, visit)
    return modes


def _shape(f: tirx.PrimFunc, i: int) -> tuple:
    buf = f.params[i]  # TVM 0.27: a buffer parameter carries its shape and dtype
    return tuple(buf.shape), str(buf.dtype)


OURS = (DECODE, PREFILL_RAGGED, PREFILL_PAGED, DECODE + SLIDING, PREFILL_PAGED + SLIDING)


def _ours(symbol: str, f: tirx.PrimFunc, window: int, tuning: Tuning = DEFAULT) -> tirx.PrimFunc:
    """Our kernel for TVM's `f`, with the head counts, head dims and dtype read off its buffers,
    and (prefill) the tuning's tile for them."""
    sliding = symbol.endswith(SLIDING)
    if symbol.startswith(DECODE):
        (_, h_q, d), dtype = _shape(f, 0)
        (_, _, h_kv, page, _), _ = _shape(f, 1)
        return attention_decode_cpu(int(h_kv), int(h_q), int(d), dtype, int(page), window=window, sliding=sliding)
    if symbol == PREFILL_RAGGED:
        (_, h_q, d_qk), dtype = _shape(f, 0)
        (_, h_kv, _), _ = _shape(f, 2)
        (_, _, d_v), _ = _shape(f, 3)
        params = tuning.by_key(attention_key(int(h_q), int(h_kv), int(d_qk), dtype))
        return attention_prefill_ragged_cpu(int(h_kv), int(h_q), int(d_qk), int(d_v), dtype, window=window,
                                            params=params)
    (_, h_q, d), dtype = _shape(f, 0)
    (_, _, h_kv, page, _), _ = _shape(f, 2)
    params = tuning.by_key(attention_key(int(h_q), int(h_kv), int(d), dtype))
    return attention_prefill_paged_cpu(int(h_kv), int(h_q), int(d), dtype, int(page), window=window, params=params,
                                       sliding=sliding)


def replace_cpu_attention(mod: tvm.IRModule, window: int = 0, tuning: Tuning = DEFAULT) -> tvm.IRModule:
    """TVM's CPU attention PrimFuncs (by global_symbol) swapped for ours, same GlobalVars.

    Only when the module creates paged KV caches and every one of them has rope_mode NONE (0):
    our kernels never apply RoPE. The `_sliding_window` variants (what the cache calls once it
    may slide: compiler/context.py) are ours too, over the sliding cache's page layout. A cache
    of another dtype than float32/float16 keeps TVM's kernels. `window` > 0 (a sliding window
    only our kernels apply): a module where any of the five cannot be swapped is an error, not a
    silently unwindowed model.
    """
    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        if window:
            raise ValueError(f"sliding window {window}: only edgesmith's CPU attention applies it, and this "
                             f"module's KV caches have rope modes {modes} (it needs every one NONE)")
        return mod
    funcs = dict(mod.functions)
    swapped = set()
    for gv, f in funcs.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and "global_symbol" in f.attrs:
            symbol = str(f.attrs["global_symbol"])
            if symbol in OURS and _shape(f, 0)[1] in ("float32", "float16"):
                funcs[gv] = _ours(symbol, f, window, tuning)
                swapped.add(symbol)
    missing = set(OURS) - swapped
    if window and missing:
        raise ValueError(f"sliding window {window}: TVM's {sorted(missing)} would run without it "
                         "(a KV cache dtype other than float32/float16?)")
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def ReplaceCPUAttention(window: int = 0, tuning: Tuning = DEFAULT):  # noqa: N802 (a pass)
    """The pass: `replace_cpu_attention` with this sliding window (0: none) and tuning."""

    @tvm.transform.module_pass(opt_level=0, name="ReplaceCPUAttention")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return replace_cpu_attention(mod, window, tuning)

    return _pass
