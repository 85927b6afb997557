"""RoPE inside the paged KV cache's split kernel: one kernel fewer per layer on GPU decode.

TVM's fused-QKV attention first runs its split kernel (`fused_rope`, TVM's
llama_rope_with_position_map: qkv (t, hq + 2 hkv, d) -> q, k, v) and would apply RoPE there in
rope_mode NORMAL; our caches are rope_mode NONE (the attention kernels rely on it:
kernels/attention_gpu.py, attention_opencl.py), so that split only copies, and the model ran its
own RoPE kernel before it (kernels/cpu.rope, transformers' formula). Here the split is replaced by
one that applies our RoPE while it splits, with the same signature (the cache calls it as before,
apply_rope 0: ignored). The positions are the cache's `position_map` (the tokens' positions in
the sequence), which are absolute only for a cache that does not slide; longrope's factors are
chosen from the forward's length, which the split is not given. So the model leaves RoPE to the
split only for plain RoPE (default or partial rotary) on a cache that does not slide:
Phi3ForCausalLM.rope_in_kv_split, recorded as the module attribute ATTR for the lowering
pipeline (RopeInKVSplit). A float16 cache takes qkv in float16 (the qkv GEMV's epilogue casts
it): the split rotates in float32 from those values, where the unfused path rotated the float32
ones and rounded once, so q and k carry up to twice float16's rounding (q4f16's bound holds:
tests/test_vulkan_bundles.py on lavapipe). On a decode step the split and TVM's KV append then
become one kernel (kernels/kv_append.py, called from rope_in_kv_split below).
"""
from __future__ import annotations

import json

import tvm
from edgesmith.targets.tvm_api import tirx

ATTR = "edgesmith_rope_in_kv_split"  # JSON: {rot_heads, rotary_dim, theta, attention_factor}
_SPLIT_BLOCK = 'sblock("llama_fused_rope")'  # TVM's split kernel, told apart by its block


def rope_value(qkv, pos, vs, vh, vc, *, d: int, rot: int, theta: float, factor: float):
    """qkv[vs, vh, vc] rotated (float32): kernels.cpu.rope's formula (transformers' rotate_half)
    at position pos[vs], for a channel vc < rot. Built in Python, called from the TIR kernels
    below (as TVM's own _rope is): the one place the formula is written."""
    f32 = lambda e: tirx.Cast("float32", e)  # noqa: E731
    half = rot // 2
    inv_freq = tirx.FloatImm("float32", 1.0) / tirx.pow(
        tirx.FloatImm("float32", theta), f32(vc % half * 2) / tirx.FloatImm("float32", float(rot)))
    angle = f32(pos[vs]) * inv_freq
    scale = tirx.FloatImm("float32", factor)
    other = tirx.if_then_else(vc < half, tirx.FloatImm("float32", 0.0) - f32(qkv[vs, vh, tirx.min(vc + half, d - 1)]),
                              f32(qkv[vs, vh, tirx.max(vc - half, 0)]))
    return f32(qkv[vs, vh, vc]) * (tirx.cos(angle) * scale) + other * (tirx.sin(angle) * scale)


def split_rope(template: tirx.PrimFunc, spec: dict) -> tirx.PrimFunc:
    """Our split + RoPE with `template`'s (TVM's split's) parameters and shapes: one block over
    (token, head, channel), as TVM's, so it stays one kernel (a TE with three outputs would be
    three). No `Let` in it: TVM 0.27's CSE miscompiles those in GPU kernels (attention_gpu.py)."""
    from edgesmith.targets.tvm_api import tir_script as T

    qkv_buf, _, q_buf, k_buf, _ = template.params[:5]  # TVM 0.27: buffer parameters
    heads, d = int(qkv_buf.shape[1]), int(qkv_buf.shape[2])
    hq, hkv, dtype = int(q_buf.shape[1]), int(k_buf.shape[1]), str(qkv_buf.dtype)
    rot_heads, rot = spec["rot_heads"], spec["rotary_dim"]
    rope = dict(d=d, rot=rot, theta=float(spec["theta"]), factor=float(spec["attention_factor"]))

    @T.prim_func(private=True, s_tir=True)
    def split(var_qkv: T.handle, var_pos: T.handle, var_q: T.handle, var_k: T.handle, var_v: T.handle,
              apply_rope: T.int64):  # apply_rope: the cache passes 0 (rope_mode NONE); unused
        seq_len = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, heads, d), dtype)
        pos = T.match_buffer(var_pos, (seq_len,), "int32", offset_factor=1)
        q = T.match_buffer(var_q, (seq_len, hq, d), dtype)
        k = T.match_buffer(var_k, (seq_len, hkv, d), dtype)
        v = T.match_buffer(var_v, (seq_len, hkv, d), dtype)
        for s_, h_, c_ in T.grid(seq_len, heads, d):
            with T.sblock("split_rope"):
                vs, vh, vc = T.axis.remap("SSS", [s_, h_, c_])
                if vh < rot_heads and vc < rot:
                    if vh < hq:
                        q[vs, vh, vc] = T.Cast(dtype, rope_value(qkv, pos, vs, vh, vc, **rope))
                    else:
                        k[vs, vh - hq, vc] = T.Cast(dtype, rope_value(qkv, pos, vs, vh, vc, **rope))
                elif vh < hq:
                    q[vs, vh, vc] = qkv[vs, vh, vc]
                elif vh < hq + hkv:
                    k[vs, vh - hq, vc] = qkv[vs, vh, vc]
                else:
                    v[vs, vh - hq - hkv, vc] = qkv[vs, vh, vc]

    return with_template_attrs(split, template)


def with_template_attrs(func: tirx.PrimFunc, template: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the attributes of the TVM kernel it stands in for (its symbol name aside)."""
    attrs = {key: val for key, val in (template.attrs or {}).items() if key != "global_symbol"}
    return func.with_attrs(attrs) if attrs else func


def rope_in_kv_split(mod: tvm.IRModule) -> tvm.IRModule:
    spec = mod.attrs.get(ATTR) if mod.attrs is not None else None
    if spec is None:
        return mod
    spec = json.loads(str(spec))
    funcs = dict(mod.functions)
    found = [gv for gv, f in funcs.items() if isinstance(f, tirx.PrimFunc) and _SPLIT_BLOCK in f.script()]
    if not found:
        raise RuntimeError("the model leaves RoPE to the KV cache's split kernel, and the module has none "
                           "(TVM's llama_fused_rope block): TVM's paged KV cache changed")
    for gv in found:
        funcs[gv] = split_rope(funcs[gv], spec)
    mod = tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)
    # and on decode, the split with the append in one kernel (kernels/kv_append.py)
    from edgesmith.compiler.kernels.kv_append import fuse_kv_append

    return fuse_kv_append(mod, spec)


@tvm.transform.module_pass(opt_level=0, name="RopeInKVSplit")
def RopeInKVSplit(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a pass)
    return rope_in_kv_split(mod)
