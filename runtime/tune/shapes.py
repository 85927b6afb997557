"""The distinct tunable kernels of a model on a target: its linear layers (qkv, o, gate_up, down,
lm_head) at decode (one token: a GEMV) and prefill (a GEMM), each as the shape key the compile
looks its params up by (the quantization entry's `tunable`, so tune and compile agree), and the
prefill attention (the key attention_cpu looks up)."""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.tuning import attention_key


@dataclass(frozen=True)
class KernelShape:
    key: str  # compiler/tuning.py shape key
    layers: tuple[str, ...]  # the model's layers with this kernel, e.g. ("qkv",) or ("o", "down")
    phase: str  # "decode" | "prefill"
    quant: object  # the layers' Quantization (the scheme's float one for a float lm_head)


def linear_layers(cfg) -> list[tuple[str, int, int, bool]]:
    """(name, n, k, quantized-if-the-scheme-is) of a Phi-3-family config's linears."""
    d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    layers = [("qkv", (hq + 2 * hkv) * d, cfg.hidden_size, True), ("o", cfg.hidden_size, hq * d, True),
              ("gate_up", 2 * cfg.intermediate_size, cfg.hidden_size, True),
              ("down", cfg.hidden_size, cfg.intermediate_size, True)]
    # lm_head (or the tied embedding used as one): quantized unless --float-embedding
    return layers + [("lm_head", cfg.vocab_size, cfg.hidden_size, True)]


def tunable_shapes(cfg, quant, family, *, quantize_embedding: bool = True, kv_dtype: str | None = None
                   ) -> list[KernelShape]:
    """Decode kernels first (they decide tok/s in generation), in the model's layer order; then the
    prefill GEMMs and (kv_dtype given: the KV cache's dtype on the target) the prefill attention."""
    by_key: dict[tuple, list[str]] = {}
    for phase in ("decode", "prefill"):
        for name, n, k, _ in linear_layers(cfg):
            q = quant if (name != "lm_head" or quantize_embedding) else quant.unquantized()
            key = q.tunable(family, n, k, phase == "decode")
            if key is not None:
                by_key.setdefault((phase, key, q), []).append(name)
    shapes = [KernelShape(key, tuple(names), phase, q) for (phase, key, q), names in by_key.items()]
    if kv_dtype and not family.gpu:  # our CPU attention kernels (attention_cpu.py)
        key = attention_key(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, kv_dtype)
        shapes.append(KernelShape(key, ("attention",), "prefill", quant))
    return shapes
