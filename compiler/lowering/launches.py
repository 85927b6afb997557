"""The kernels a decoded token launches on a GPU, derived from the lowered `decode` function.

Read from the Relax VM function after the pipeline's last phase: every call of a PrimFunc that
binds GPU threads launches one kernel per loop nest bound to blockIdx.x (host-only PrimFuncs,
such as the symbolic-shape helpers, launch none), and each call of the paged KV cache's fused-QKV attention launches the kernels TVM's
runtime runs for a decode step (src/runtime/vm/paged_kv_cache.cc, AttentionWithFusedQKV):
  no sliding window  split_rotary, transpose_append, batch_decode            3
    with our fused split + append (kernels/kv_append.py: the module has it)   2
  sliding window     split_rotary, ragged self-attention, batch_decode, merge, transpose_append  5
That part is derived from TVM's source, not seen in our module; the runner counts the real
launches on the device (`edgesmith profile`: the OpenCL/WebGPU plug-in's counter) and
tests/test_gpu_fusion.py holds the two equal on PoCL.

A CUDA bundle compiled with --cuda-graph replays runs of those kernels as CUDA graphs
(vm.builtin.cuda_graph.run_or_capture of a captured function): their kernels are counted inside
the captured function, and "graphs" says how many replays a decoded token makes (the host's
launches a token are then total - kernels in graphs + graphs).

Layers are told apart by the parameters a call reads (`model.layers.N....`): a call reading none
(RoPE, SiLU * up) belongs to the layer of the call before it; calls before the first layer
(embedding, positions) and those reading the final norm or lm_head are the head.
"""
from __future__ import annotations

import re

from edgesmith.targets.tvm_api import relax

ATTENTION = "vm.builtin.attention_kv_cache_attention_with_fused_qkv"
GRAPH = "vm.builtin.cuda_graph.run_or_capture"  # (captured function, its args, ...): one graph replay
KV_KERNELS = {False: 3, True: 5}  # a decode step's kernels inside ATTENTION, by sliding window
KV_KERNELS_FUSED = 2  # no sliding window, split + RoPE + append in one kernel (kernels/kv_append.py)
_LAYER = re.compile(r"layers_(\d+)_")


def _kernels_of(func) -> int:
    """Kernels a call of a scheduled PrimFunc launches: one per loop nest bound to blockIdx.x (a
    TE with several outputs under dlight's fallback is one per output), 0 for host-only code.
    (TVM 0.27's Python has no TIR statement visitor: the script says it.)"""
    text = func.script(show_meta=False)
    nests = text.count('thread="blockIdx.x"')
    return nests or int("threadIdx." in text or "blockIdx." in text)


def decode_launches(mod, *, sliding: bool = False, entry: str = "decode") -> dict | None:
    """{"total", "head", "per_layer": [n per layer], "kv_cache_per_layer", "graphs"} for `entry` of a
    lowered GPU module; None when the module has no such function."""
    from edgesmith.targets.tvm_api import tirx

    gvars = {gv.name_hint: gv for gv in mod.get_global_vars()}
    if entry not in gvars:
        return None
    from edgesmith.compiler.kernels.kv_append import FUSED_NAME

    kv_kernels = KV_KERNELS_FUSED if FUSED_NAME in gvars and not sliding else KV_KERNELS[sliding]
    kernels = {name: n for name, gv in gvars.items()
               if isinstance(mod[gv], tirx.PrimFunc) and (n := _kernels_of(mod[gv]))}
    layers: dict[int, int] = {}
    head = 0
    current = None  # the layer of the last call that read a layer's parameters

    def layer_of(call) -> int | None | str:
        names = [str(a.name) for a in call.args if isinstance(a, relax.Var)]
        tagged = [int(m.group(1)) for n in names if (m := _LAYER.search(n))]
        if tagged:
            return tagged[0]
        return "head" if any(n.startswith(("model_norm", "lm_head", "model_embed")) for n in names) else None

    graphs = 0

    def walk(func) -> None:  # a Relax function's calls in order; a graph replay's captured function inline
        nonlocal head, current, graphs
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if not isinstance(call, relax.Call):
                    continue
                captured = _captured(call)
                if captured is not None:
                    graphs += 1
                    walk(mod[captured])
                    continue
                if isinstance(call.op, relax.GlobalVar) and call.op.name_hint in kernels:
                    count = kernels[call.op.name_hint]
                elif isinstance(call.op, relax.ExternFunc) and call.op.global_symbol == ATTENTION:
                    count = kv_kernels
                    current = int(call.args[1].value)  # (kv, layer id, sm_scale, qkv, out)
                    layers[current] = layers.get(current, 0) + count
                    continue
                else:
                    continue
                where = layer_of(call)
                if where == "head" or (where is None and current is None):
                    current = None if where == "head" else current
                    head += count
                    continue
                if isinstance(where, int):
                    current = where
                layers[current] = layers.get(current, 0) + count

    walk(mod[gvars[entry]])
    per_layer = [layers.get(i, 0) for i in range(max(layers) + 1)] if layers else []
    return {"total": head + sum(per_layer), "head": head, "per_layer": per_layer,
            "kv_cache_per_layer": kv_kernels, "graphs": graphs}


def _captured(call):
    """The captured function (a GlobalVar) a CUDA-graph replay call runs, else None:
    R.call_builtin_with_ctx(GRAPH, (captured, (args...), index, ...))."""
    if len(call.args) < 2 or not isinstance(call.args[0], relax.ExternFunc) or call.args[0].global_symbol != GRAPH:
        return None
    fields = getattr(call.args[1], "fields", None)
    return fields[0] if fields and isinstance(fields[0], relax.GlobalVar) else None
