"""Split + RoPE + KV append in one kernel on GPU decode: TVM's paged KV cache runs two.

TVM 0.27's fused-QKV attention (src/runtime/vm/paged_kv_cache.cc, AttentionWithFusedQKV) always
calls two functions before a decode step's attention: f_split_rotary(qkv, q_rope_position_map,
q, k, v, apply_rope) (our split + RoPE: kernels/rope_split.py), then f_transpose_append(pages,
k, v, append_position_map). Both are functions the model hands to
`vm.builtin.paged_attention_kv_cache_create`, so here they are replaced by a pair that a factory
builtin of our runner makes per cache (FACTORY, runtime/runner/kv_append.h):
  split(qkv, pos, q, k, v, _)          one token: launches nothing, keeps (qkv, pos, q)
                                       else: our split kernel, as before
  append(pages, k, v, append_pos)      after a kept split: `split_rope_append` (this file) with
                                       the kept buffers, writing q and the pages; else TVM's append
One token is a decode step of our one sequence, the only case TVM appends before attention in a
cache that does not slide (append_before_attn_: every sequence appends one token); a prefill
(attention reads the split's k and v, then appends) keeps both kernels, as does a sliding cache
(the factory is told and returns the two as they were). So a decoded token runs 2 of the cache's
kernels a layer instead of 3 (lowering/launches.py).

Only where the split applies RoPE (rope_split.ATTR: plain RoPE, a cache that does not slide, GPU
fusion on): the pipeline's RopeInKVSplit calls `fuse_kv_append` after swapping the split.
"""
from __future__ import annotations

import tvm
from edgesmith.compiler.kernels.rope_split import rope_value, with_template_attrs
from edgesmith.targets.tvm_api import relax, tirx

FACTORY = "edgesmith.kv_fused_append"  # (fused, split, append, sliding) -> [split, append]
CREATE = "vm.builtin.paged_attention_kv_cache_create"
# the create call's arguments (C++ args[i] is call.args[i + 1]: the callee comes first)
_APPEND_ARG, _SPLIT_ARG, _CONFIG_ARG = 13 + 1, 24 + 1, 0 + 1
_SLIDING = 4  # support_sliding_window in the config shape
FUSED_NAME = "split_rope_append"


def split_rope_append(split_template: tirx.PrimFunc, append_template: tirx.PrimFunc, spec: dict) -> tirx.PrimFunc:
    """(qkv (t, hq + 2 hkv, d), pos (t,), q (t, hq, d), pages (num_pages, 2, hkv, page_size, d),
    append_pos (t,)): q as the split writes it, k (rotated) and v straight into the pages at
    append_pos (page p // page_size, slot p % page_size, as TVM's transpose_append; -1: skip).
    Shapes and dtypes from TVM's two kernels; one block over (token, head, channel): one kernel."""
    from edgesmith.targets.tvm_api import tir_script as T

    qkv_buf, _, q_buf, k_buf, _ = split_template.params[:5]
    pages_buf = append_template.params[0]
    heads, d = int(qkv_buf.shape[1]), int(qkv_buf.shape[2])
    hq, hkv, dtype = int(q_buf.shape[1]), int(k_buf.shape[1]), str(qkv_buf.dtype)
    page_size = int(pages_buf.shape[3])
    rot_heads, rot = spec["rot_heads"], spec["rotary_dim"]
    rope = dict(d=d, rot=rot, theta=float(spec["theta"]), factor=float(spec["attention_factor"]))

    @T.prim_func(private=True, s_tir=True)
    def fused(var_qkv: T.handle, var_pos: T.handle, var_q: T.handle, var_pages: T.handle, var_append: T.handle):
        T.func_attr({"tirx.noalias": True})
        seq_len = T.int32()
        num_pages = T.int64()
        pages_elem_offset = T.int64()
        append_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, heads, d), dtype)
        pos = T.match_buffer(var_pos, (seq_len,), "int32", offset_factor=1)
        q = T.match_buffer(var_q, (seq_len, hq, d), dtype)
        pages = T.match_buffer(var_pages, (num_pages, 2, hkv, page_size, d), dtype, elem_offset=pages_elem_offset)
        append = T.match_buffer(var_append, (seq_len,), "int32", elem_offset=append_elem_offset)
        for s_, h_, c_ in T.grid(seq_len, heads, d):
            with T.sblock("split_rope_append"):
                vs, vh, vc = T.axis.remap("SSS", [s_, h_, c_])
                T.reads(qkv[vs, 0:heads, 0:d], pos[vs], append[vs])
                T.writes(q[vs, vh, vc], pages[0:num_pages, 0:2, 0:hkv, 0:page_size, vc])
                if vh < hq:
                    if vh < rot_heads and vc < rot:
                        q[vs, vh, vc] = T.Cast(dtype, rope_value(qkv, pos, vs, vh, vc, **rope))
                    else:
                        q[vs, vh, vc] = qkv[vs, vh, vc]
                elif append[vs] != -1:
                    if vh >= hq + hkv:
                        pages[T.floordiv(append[vs], page_size), 1, vh - hq - hkv, T.floormod(append[vs], page_size),
                              vc] = qkv[vs, vh, vc]
                    elif vh < rot_heads and vc < rot:
                        pages[T.floordiv(append[vs], page_size), 0, vh - hq, T.floormod(append[vs], page_size),
                              vc] = T.Cast(dtype, rope_value(qkv, pos, vs, vh, vc, **rope))
                    else:
                        pages[T.floordiv(append[vs], page_size), 0, vh - hq, T.floormod(append[vs], page_size),
                              vc] = qkv[vs, vh, vc]

    return with_template_attrs(fused, split_template)


def _is_create(call) -> bool:
    return (isinstance(call, relax.Call) and len(call.args) > 0 and isinstance(call.args[0], relax.ExternFunc)
            and call.args[0].global_symbol == CREATE)


def _pair_bindings(binding, fused_gv, var) -> list:
    """The create call `binding` as FACTORY's pair, then the call handed that pair."""
    call = binding.value
    split_gv, append_gv = call.args[_SPLIT_ARG], call.args[_APPEND_ARG]
    sliding = call.args[_CONFIG_ARG].values[_SLIDING]
    obj = relax.ObjectType()
    pair = var("kv_fused_pair", relax.TupleType([obj, obj]))
    split_fn, append_fn = var("kv_fused_split", obj), var("kv_fused_append", obj)
    args = list(call.args)
    args[_SPLIT_ARG], args[_APPEND_ARG] = split_fn, append_fn
    return [
        relax.VarBinding(pair, relax.call_pure_packed(FACTORY, fused_gv, split_gv, append_gv, relax.prim_value(sliding),
                                                      ty_args=relax.TupleType([obj, obj]))),
        relax.VarBinding(split_fn, relax.TupleGetItem(pair, 0)),
        relax.VarBinding(append_fn, relax.TupleGetItem(pair, 1)),
        relax.VarBinding(binding.var, relax.Call(call.op, args, call.attrs, call.ty_args)),
    ]


def fuse_kv_append(mod: tvm.IRModule, spec: dict) -> tvm.IRModule:
    """`mod` with its cache creation handing the cache FACTORY's pair in place of the split and
    the append (the module's own split and TVM's append stay: the pair falls back on them)."""
    creates = [gv for gv, f in mod.functions.items() if isinstance(f, relax.Function) and CREATE in f.script()]
    if not creates:
        raise RuntimeError(f"the model hands RoPE to the KV cache's split and its module has no {CREATE} "
                           "call: TVM's paged KV cache changed")
    fused_gv, attrs = None, mod.attrs
    for gv in creates:
        func = mod[gv]
        blocks = []
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            bindings = []
            for binding in block.bindings:
                if not _is_create(binding.value):
                    bindings.append(binding)
                    continue
                if fused_gv is None:  # a block builder gives the GlobalVar its type, which Relax checks
                    call = binding.value
                    builder = relax.BlockBuilder(mod)
                    fused = split_rope_append(mod[call.args[_SPLIT_ARG]], mod[call.args[_APPEND_ARG]], spec)
                    fused_gv = builder.add_func(fused, FUSED_NAME)
                    mod = builder.get()
                bindings += _pair_bindings(binding, fused_gv, relax.DataflowVar if dataflow else relax.Var)
            blocks.append(relax.DataflowBlock(bindings) if dataflow else relax.BindingBlock(bindings))
        funcs = dict(mod.functions)  # a new module: a pass leaves its input as it was
        funcs[gv] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                                   func.attrs)
        mod = tvm.IRModule(funcs, attrs=attrs, global_infos=mod.global_infos)
    return mod
