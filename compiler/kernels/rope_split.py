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
split only for plain RoPE (default or partial rotary) on a cache that does not slide, and keeps
float32 keys (a float16 cache would take qkv rounded to float16 before the rotation, where the
unfused path rounds after it): Phi3ForCausalLM.rope_in_kv_split, recorded as the module
attribute ATTR for the lowering pipeline (RopeInKVSplit).
"""
from __future__ import annotations

import json

import tvm
from edgesmith.targets.tvm_api import te, tirx

ATTR = "edgesmith_rope_in_kv_split"  # JSON: {rot_heads, rotary_dim, theta, attention_factor}
_SPLIT_BLOCK = 'sblock("llama_fused_rope")'  # TVM's split kernel, told apart by its block


def split_rope(template: tirx.PrimFunc, spec: dict) -> tirx.PrimFunc:
    """Our split + RoPE with `template`'s (TVM's split's) parameters and shapes."""
    qkv_buf, pos_buf, q_buf, k_buf, v_buf = template.params[:5]  # TVM 0.27: buffer parameters
    apply_rope = template.params[5]  # int64; the cache passes 0 (rope_mode NONE): unused here
    t, heads, d = qkv_buf.shape
    hq, hkv = int(q_buf.shape[1]), int(k_buf.shape[1])
    rot_heads, rotary_dim = spec["rot_heads"], spec["rotary_dim"]
    half = rotary_dim // 2
    qkv = te.placeholder(tuple(qkv_buf.shape), qkv_buf.dtype, name="qkv")
    pos = te.placeholder(tuple(pos_buf.shape), pos_buf.dtype, name="position_map")

    def rotated(s, h, c):
        # kernels.cpu.rope's formula (float32, transformers' rotate_half), at position_map[s]
        x = qkv[s, h, c].astype("float32")
        jj = tirx.floormod(c, half)
        exponent = (jj * 2).astype("float32") / tirx.const(float(rotary_dim), "float32")
        freq = tirx.const(1.0, "float32") / tirx.power(tirx.const(float(spec["theta"]), "float32"), exponent)
        angle = pos[s].astype("float32") * freq
        scale = tirx.const(float(spec["attention_factor"]), "float32")
        partner = tirx.if_then_else(c < half, -qkv[s, h, tirx.min(c + half, d - 1)].astype("float32"),
                                    qkv[s, h, tirx.max(c - half, 0)].astype("float32"))
        out = x * (tirx.cos(angle) * scale) + partner * (tirx.sin(angle) * scale)
        return tirx.if_then_else(tirx.all(h < rot_heads, c < rotary_dim), out, x).astype(q_buf.dtype)

    q = te.compute((t, hq, d), lambda s, h, c: rotated(s, h, c), name="split_q")
    k = te.compute((t, hkv, d), lambda s, h, c: rotated(s, h + hq, c), name="split_k")
    v = te.compute((t, hkv, d), lambda s, h, c: qkv[s, h + hq + hkv, c].astype(v_buf.dtype), name="split_v")
    f = te.create_prim_func([qkv, pos, q, k, v, apply_rope])
    return f.with_attrs({k_: v_ for k_, v_ in template.attrs.items() if k_ != "global_symbol"}) \
        if template.attrs is not None else f


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
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


@tvm.transform.module_pass(opt_level=0, name="RopeInKVSplit")
def RopeInKVSplit(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (a pass)
    return rope_in_kv_split(mod)
