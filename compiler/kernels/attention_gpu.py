"""GPU targets: TVM's paged-KV-cache attention kernels with their inline-RoPE branch folded away,
and, for a model with a sliding window, TVM's prefill kernels masking it per query.

Sliding window (`window_gpu_attention`, compiler/context.py says how the cache slides). TVM's GPU
kernels mask causally, and its sliding-window prefill applies a per-layer window (Gemma's kind,
`mha_sliding`) only when called causal, which the cache never does for the cached prefix: no
per-query window. All of TVM's prefill kernels test visibility in one helper,
`_kernel_common._causal_or_sliding_cross_mask(causal, row, col, kv_len, qo_len, ...)`, read while
a kernel is built. The ragged prefill (a chunk's own keys) and both paged prefills (the cached
prefix; the `_sliding_window` one reads a sliding cache's pages) are rebuilt here, from the shapes
of the module's own kernels, with that helper standing in for one that also drops the keys
before each query's window: query row r at position p sees key col iff it is visible to TVM
and col > p - W, where p = kv_len - qo_len + r (causal: the chunk's own keys) or kv_len + r
(the cached prefix, which the chunk follows). The decode kernels need no mask: a sliding cache
hands decode exactly the W - 1 keys before the query (which adds its own), and a cache that
does not slide never holds more than the window. tests/test_pocl_kernels.py checks the rebuilt
kernels against numpy on PoCL.

Every GPU attention kernel of TVM's paged KV cache (prefill over pages, ragged prefill, tree
attention, decode) takes `rotary_mode` and, for 1, applies RoPE to q and k as it loads them: a
`Let` expression (the frequency) inside each load. Our model applies RoPE in the graph and
creates its caches with rope_mode NONE, so the cache calls every kernel with rotary_mode 0 and
that branch is dead code.

It is also what breaks the compile: TVM 0.27's CommonSubexprElim (the TIR pass after
unrolling) hoists an index expression whose first use sits inside that `Let` and binds it after
the use, and the build stops with "variable cse_vN has been used before definition". Which
shapes hit it depends on the tile arithmetic and the KV dtype; measured kernel by kernel on every
GPU preset: head dim 16 with 4 or 8 query heads per KV head (float32 cache: both prefill kernels
and tree attention, everywhere), head dim 32 with 3 or 4 (float16: tree attention; float32: the
ragged prefill on the OpenCL presets), head dim 64 with 3 or 4 on the Adreno presets (float16:
tree attention). tests/test_gpu_shapes.py keeps one of each per preset. Folding rotary_mode = 0 into
the kernels (signature kept: the cache still passes the argument) removes the branch, the `Let`
with it, and the failure; the kernels compute exactly what they computed before for
rotary_mode 0.

Only in modules whose every cache has rope_mode NONE (read off the create call, as
attention_opencl.py does): a cache that applies RoPE itself keeps TVM's kernels as they are.

Head sizes those kernels cannot take are refused before anything is traced (`head_size_limit`,
called by build.py), in one line naming the limit, instead of TVM's ValueError from deep inside
the cache's construction (or, for the decode kernel, wrong numbers): the decode and merge kernels
give each thread 4 values of a head (head size a multiple of 4), and the prefill kernels' tiles
must divide among 128 threads, which TVM's own `_get_prefill_kernel_config` decides per target
and KV dtype (on OpenCL and CUDA: multiples of 8 with float32 KV, of 4 with float16 KV, up to
256 and some larger). Phi-3's own head sizes (96, 128) pass everywhere.
"""
from __future__ import annotations

import tvm

from contextlib import contextmanager

from edgesmith.compiler.kernels.attention_cpu import PREFILL_RAGGED
from edgesmith.compiler.lowering.attention_swap import _cache_rope_modes, _shape
from edgesmith.targets.tvm_api import llm_kernel_common, llm_prefill_kernels, tirx

ROTARY_MODE = "rotary_mode"  # the int32 parameter of TVM's attention kernels (0: none, 1: inline RoPE)
PREFILL_PAGED = "batch_prefill_paged_kv"  # TVM's GPU paged prefill; + "_sliding_window": over a sliding cache
SLIDING = "_sliding_window"
DECODE_VEC = 4  # values of a head per thread in TVM's GPU decode and merge kernels (bdx = head_dim // 4)


def head_size_limit(cfg, target, kv_dtype: str) -> str | None:
    """Why TVM's GPU attention kernels cannot take `cfg`'s heads on `target` with a `kv_dtype`
    cache (one clause, naming the limit); None when they can."""
    d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    if d % DECODE_VEC:
        return (f"head size {d} is not a multiple of {DECODE_VEC}: TVM's GPU decode attention gives each thread "
                f"{DECODE_VEC} values of a head and would leave the last {d % DECODE_VEC} out")
    threads = int(target.attrs["max_num_threads"])
    if d // DECODE_VEC > threads:
        return (f"head size {d} needs {d // DECODE_VEC} threads a row in TVM's GPU decode attention, more than "
                f"the {threads} a work-group has here")
    try:
        llm_kernel_common._get_prefill_kernel_config(hkv, hq, d, kv_dtype, target)
    except (ValueError, AssertionError) as e:
        return (f"head size {d} with a {kv_dtype} KV cache does not tile into TVM's GPU prefill attention "
                f"({' '.join(str(e).split())})")
    return None


def fold_rotary_mode(f: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`f` with rotary_mode fixed at 0 and kept as an (unused) parameter; None when `f` has none."""
    var = next((p for p in f.params if isinstance(p, tirx.Var) and p.name == ROTARY_MODE), None)
    if var is None or str(var.ty) != "int32":
        return None
    return f.with_body(f.specialize({var: tirx.IntImm("int32", 0)}).body)


def fold_gpu_attention_rope(mod: tvm.IRModule) -> tvm.IRModule:
    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        return mod
    funcs = dict(mod.functions)
    changed = False
    for gv, f in funcs.items():
        if isinstance(f, tirx.PrimFunc):
            folded = fold_rotary_mode(f)
            if folded is not None:
                funcs[gv], changed = folded, True
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos) if changed else mod


@tvm.transform.module_pass(opt_level=0, name="FoldGPUAttentionRope")
def FoldGPUAttentionRope(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a pass)
    return fold_gpu_attention_rope(mod)


# ----------------------------------------------------------------------------------------------
# sliding window: TVM's prefill kernels with a per-query window


@contextmanager
def window_mask(window: int):
    """Inside: TVM's prefill kernels, as they are built, see key col of query row `row` only
    within `window` keys of the query's position (module docstring); `window` 0: TVM's mask."""
    causal_mask = llm_kernel_common._causal_mask
    tvm_mask = llm_kernel_common._causal_or_sliding_cross_mask

    def mask(causal, row, col, kv_len, qo_len, sliding_window_size=0):
        pos = tirx.if_then_else(causal > 0, kv_len - qo_len + row, kv_len + row)
        return tirx.And(causal_mask(causal, row, col, kv_len, qo_len), col > pos - window)

    if window:
        llm_kernel_common._causal_or_sliding_cross_mask = mask
    try:
        yield
    finally:
        llm_kernel_common._causal_or_sliding_cross_mask = tvm_mask


def prefill_ragged(f: tirx.PrimFunc, target, window: int) -> tirx.PrimFunc:
    """TVM's ragged prefill for `target` with the shapes of `f` (one of its own), the window masked."""
    (_, h_q, d_qk), dtype = _shape(f, 0)
    (_, h_kv, _), _ = _shape(f, 2)
    (_, _, d_v), _ = _shape(f, 3)
    with window_mask(window):
        return llm_prefill_kernels._attention_prefill_ragged(int(h_kv), int(h_q), int(d_qk), int(d_v), dtype, {},
                                                             target)


def prefill_paged(f: tirx.PrimFunc, target, window: int, sliding: bool) -> tirx.PrimFunc:
    """TVM's paged prefill (`sliding`: over a sliding cache) with the shapes of `f`, the window masked."""
    (_, h_q, d), dtype = _shape(f, 0)
    (_, _, h_kv, page, _), _ = _shape(f, 2)
    with window_mask(window):
        return llm_prefill_kernels._attention_prefill(int(h_kv), int(h_q), int(d), dtype, sliding, {}, target,
                                                      page_size=int(page))


def window_gpu_attention(mod: tvm.IRModule, target, window: int, ragged_target=None) -> tvm.IRModule:
    """`mod` with TVM's GPU prefill kernels (ragged, paged, paged over a sliding cache) rebuilt
    to mask `window` per query; the ragged one for `ragged_target` (default: `target`; OpenCL
    passes its own). Only in modules whose every cache has rope_mode NONE, as FoldGPUAttentionRope;
    a window it cannot apply there is an error, not a silently unwindowed model."""
    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        if window:
            raise ValueError(f"sliding window {window}: edgesmith's GPU attention applies it only to caches "
                             f"without RoPE, and this module's have rope modes {modes}")
        return mod
    funcs = dict(mod.functions)
    for gv, f in funcs.items():
        symbol = f.attrs.get("global_symbol") if isinstance(f, tirx.PrimFunc) and f.attrs is not None else None
        if symbol == PREFILL_RAGGED:
            funcs[gv] = prefill_ragged(f, ragged_target or target, window)
        elif window and symbol in (PREFILL_PAGED, PREFILL_PAGED + SLIDING):
            funcs[gv] = prefill_paged(f, target, window, sliding=symbol == PREFILL_PAGED + SLIDING)
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def WindowGPUAttention(window: int):  # noqa: N802 (a pass)
    """The pass: `window_gpu_attention` for the current target (a no-op without a window)."""

    @tvm.transform.module_pass(opt_level=0, name="WindowGPUAttention")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return window_gpu_attention(mod, tvm.target.Target.current(), window) if window else mod

    return _pass
