"""The distinct tunable kernels of a model on a target: its linear layers (what its architecture
entry says: qkv, o, gate_up, down, lm_head for Phi-3) at decode (one token: a GEMV) and prefill (a
GEMM), each as the shape key the compile looks its params up by (the quantization entry's
`tunable`, so tune and compile agree), and the prefill attention (the key attention_cpu looks up)."""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.models import for_config
from edgesmith.compiler.tuning import attention_key


@dataclass(frozen=True)
class KernelShape:
    key: str  # compiler/tuning.py shape key
    layers: tuple[str, ...]  # the model's layers with this kernel, e.g. ("qkv",) or ("o", "down")
    phase: str  # "decode" | "prefill"
    quant: object  # the layers' Quantization (the scheme's float one for a float lm_head)


def tunable_shapes(cfg, quant, family, *, quantize_embedding: bool = True, kv_dtype: str | None = None
                   ) -> list[KernelShape]:
    """Decode kernels first (they decide tok/s in generation), in the model's layer order; then the
    prefill GEMMs and (kv_dtype given: the KV cache's dtype on the target) the prefill attention."""
    by_key: dict[tuple, list[str]] = {}
    for phase in ("decode", "prefill"):
        for layer in for_config(cfg).linear_layers(cfg):
            # lm_head (or the tied embedding used as one): quantized unless --float-embedding
            q = quant if (layer.name != "lm_head" or quantize_embedding) else quant.unquantized()
            key = q.tunable(family, layer.n, layer.k, phase == "decode")
            if key is not None:
                by_key.setdefault((phase, key, q), []).append(layer.name)
    shapes = [KernelShape(key, tuple(names), phase, q) for (phase, key, q), names in by_key.items()]
    if kv_dtype and not family.gpu:  # our CPU attention kernels (compiler/kernels/attention_cpu.py)
        key = attention_key(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, kv_dtype)
        shapes.append(KernelShape(key, ("attention",), "prefill", quant))
    return shapes
