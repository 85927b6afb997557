"""Phi-3's checkpoint side: the tensors a Phi3ForCausalLM checkpoint holds, and where each
parameter of our model (models/phi3/model.py) comes from in it.

The name map is short: Phi-3's checkpoints already store q/k/v fused (`qkv_proj`, rows: q heads,
k heads, v heads) and gate/up fused (`gate_up_proj`, rows: gate, then up), as our model wants
them, so every parameter is the checkpoint tensor of the same name. The one exception is
longrope's (short, long) factor table, which config.json holds, not the weights.
"""
from __future__ import annotations

import numpy as np

from ..registry import ParamSource
from .config import Phi3Config

ROPE_FACTORS = "model.rope_ext_factors"  # (2, rotary_dim / 2) float32: short, long divisors


def expected_shapes(cfg: Phi3Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a Phi3ForCausalLM checkpoint must hold, with its shape ([out, in] for linears)."""
    h, d = cfg.hidden_size, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.qkv_proj.weight"] = (cfg.qkv_dim, h)  # rows: q heads, k heads, v heads
        shapes[p + "self_attn.o_proj.weight"] = (h, cfg.num_attention_heads * d)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * cfg.intermediate_size, h)  # rows: gate, then up
        shapes[p + "mlp.down_proj.weight"] = (h, cfg.intermediate_size)
    shapes["model.norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    return shapes


def param_source(cfg: Phi3Config, param: str) -> ParamSource:
    """Our float parameter `param` -> the checkpoint tensor(s) it is read from."""
    if param == ROPE_FACTORS:
        return ParamSource((), derive=_rope_factors)
    return ParamSource((param,))


def _rope_factors(cfg: Phi3Config) -> np.ndarray:
    return np.array([cfg.rope_short_factor, cfg.rope_long_factor], dtype=np.float32)
