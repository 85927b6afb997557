"""OpenCL: two of the paged KV cache's GPU attention kernels, made right on every OpenCL device.

TVM's GPU kernels are written for SIMT hardware, where the threads of a warp run in lock step.
OpenCL promises no such thing: PoCL (the CPU OpenCL these bundles are tested on) runs a
work-group's items one after another between barriers. Two kernels break there, both checked
with pyopencl on PoCL against numpy (tests/test_pocl_kernels.py):

- `tir_attention_merge_state` (merging the attention over a chunk with the one over the earlier
  pages: every prefill after the first chunk of a long prompt) reads the running log-sum-exp S
  in every thread of a row, and every one of them writes S back, in place, with no barrier
  between: on a lock-step warp all reads come first; on PoCL the second thread reads what the
  first wrote, and all but the first 4 head dims get a wrong scale. Here: the same kernel with a
  barrier between the reads and the write, which one thread makes.
- `batch_prefill_ragged_kv` (attention among the tokens of one forward) takes its load width
  from the target: 16 bytes on Adreno, 8 elsewhere. The 8-byte variant writes its V tile into a
  `__local float2` array element by element inside an if/else; PoCL 3.1 (LLVM 15) leaves that
  tile zero (writing the same values with vstore2 works), so every output row is zero whenever a
  tile has padding. Here: TVM's own 16-byte variant (GpuSpec.vector_width; what TVM ships for
  Adreno), same signature and math.

The decode and paged prefill kernels are right on PoCL as TVM builds them. The model creates its
caches with rope_mode NONE and no rope_scaling, so the ragged kernel is rebuilt with rope_scaling
{} (nothing is swapped in a module whose caches apply RoPE). A model with a sliding window gets
the prefill kernels masking it (attention_gpu.window_gpu_attention), the ragged one in the same
16-byte variant.
"""
from __future__ import annotations

import tvm

from edgesmith.compiler.kernels.attention_gpu import window_gpu_attention
from edgesmith.compiler.lowering.attention_swap import _cache_rope_modes, _shape
from edgesmith.targets.tvm_api import Schedule, tirx
from edgesmith.targets.tvm_api import tir_script as T

MERGE = "tir_attention_merge_state"


def merge_state_inplace(bdx: int, bdy: int, gdy: int, v_dtype: str, vec: int = 4) -> tirx.PrimFunc:
    """V, S <- the merge of (V, S) with (V_other, S_other); V: (N, H, D), S: (N, H) base-2 lse.

    TVM's launch shape, read off its kernel (a block of bdx = D / vec by bdy heads per token,
    gdy blocks of heads), with S written once per row after a barrier."""

    @T.prim_func(s_tir=True)
    def merge(v: T.handle, s: T.handle, v_other: T.handle, s_other: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": MERGE})
        N = T.int32()
        H = T.int32()
        D = T.int32()
        V = T.match_buffer(v, (N, H, D), v_dtype)
        S = T.match_buffer(s, (N, H), "float32")
        V_other = T.match_buffer(v_other, (N, H, D), v_dtype)
        S_other = T.match_buffer(s_other, (N, H), "float32")
        for bx in T.thread_binding(N, thread="blockIdx.x"):
            for by in T.thread_binding(gdy, thread="blockIdx.y"):
                for ty in T.thread_binding(bdy, thread="threadIdx.y"):
                    for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                        with T.sblock("merge"):
                            w = T.sblock_alloc_buffer((4,), "float32", scope="local")  # s, s_other, max, lse
                            v_vec = T.sblock_alloc_buffer((vec,), v_dtype, scope="local")
                            v_other_vec = T.sblock_alloc_buffer((vec,), v_dtype, scope="local")
                            w[2] = T.max(S[bx, ty + by * bdy], S_other[bx, ty + by * bdy])
                            w[0] = T.exp2(S[bx, ty + by * bdy] - w[2])
                            w[1] = T.exp2(S_other[bx, ty + by * bdy] - w[2])
                            w[3] = T.log2(w[0] + w[1]) + w[2]
                            for i in T.vectorized(vec):
                                v_vec[i] = V[bx, ty + by * bdy, tx * vec + i]
                            for i in T.vectorized(vec):
                                v_other_vec[i] = V_other[bx, ty + by * bdy, tx * vec + i]
                            for i in T.serial(vec):
                                v_vec[i] = (v_vec[i] * T.Cast(v_dtype, w[0] / (w[0] + w[1]))
                                            + v_other_vec[i] * T.Cast(v_dtype, w[1] / (w[0] + w[1])))
                            for i in T.vectorized(vec):
                                V[bx, ty + by * bdy, tx * vec + i] = v_vec[i]
                            # every thread of the row has read S: now one of them may replace it
                            T.tvm_storage_sync("shared")
                            if tx == 0:
                                S[bx, ty + by * bdy] = w[3]

    return merge


def _thread_extents(f: tirx.PrimFunc) -> dict[str, int]:
    """{thread tag: extent} of the thread-bound loops of a scheduled kernel (static extents)."""
    sch = Schedule(f)
    found = {}

    def walk(block):
        for loop in sch.get_loops(block):
            node = sch.get(loop)
            if node.thread_binding is not None and isinstance(node.extent, tirx.IntImm):
                found[str(node.thread_binding.thread_tag)] = int(node.extent)
        for child in sch.get_child_blocks(block):
            walk(child)

    walk(sch.get_sblock("root"))
    return found


def _vec16_target(target) -> tvm.target.Target:
    """`target` as TVM's prefill config reads an Adreno one (16-byte loads); limits unchanged."""
    spec = dict(target.export())
    spec["device"] = "adreno"
    return tvm.target.Target(spec)


def replace_opencl_attention(mod: tvm.IRModule, target, window: int = 0) -> tvm.IRModule:
    modes = _cache_rope_modes(mod)
    if not modes or any(m != 0 for m in modes):
        return window_gpu_attention(mod, target, window) if window else mod  # (refuses the window)
    funcs = dict(mod.functions)
    for gv, f in funcs.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and f.attrs.get("global_symbol") == MERGE:
            ext = _thread_extents(f)
            funcs[gv] = merge_state_inplace(ext["threadIdx.x"], ext["threadIdx.y"], ext["blockIdx.y"], _shape(f, 0)[1])
    # the ragged prefill in its 16-byte variant, and every prefill kernel masking the window
    return window_gpu_attention(tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos), target,
                                window, ragged_target=_vec16_target(target))


def ReplaceOpenCLAttention(window: int = 0):  # noqa: N802 (a pass)
    """The pass: `replace_opencl_attention` for the current target, with this sliding window (0: none)."""

    @tvm.transform.module_pass(opt_level=0, name="ReplaceOpenCLAttention")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return replace_opencl_attention(mod, tvm.target.Target.current(), window)

    return _pass
