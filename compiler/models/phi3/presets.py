"""random:<preset> configs for Phi3ForCausalLM: the public shapes (config.json dicts in the classic
HF layout, parsed by the same code as real checkpoints). compiler/inputs/random_weights.py fills them
with random weights.
"""
from __future__ import annotations

import numpy as np


def _longrope_factors(rotary_dim: int) -> dict[str, list[float]]:
    """Plausible, deterministic factors: short a gentle 1.0..1.1 ramp, long a 1..40 geometric climb."""
    n = rotary_dim // 2
    short = np.linspace(1.0, 1.1, n)
    long = np.geomspace(1.0, 40.0, n)
    return {"short_factor": [round(float(x), 6) for x in short], "long_factor": [round(float(x), 6) for x in long]}


def _longrope(rotary_dim: int) -> dict:
    return {"type": "longrope", **_longrope_factors(rotary_dim)}


_MINI = dict(
    architectures=["Phi3ForCausalLM"],
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    sliding_window=2047,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=[32000, 32007],
    pad_token_id=32000,
    rope_scaling=None,
    torch_dtype="float32",
)

# Config dicts in the classic HF config.json layout, parsed by the same code as real checkpoints.
RANDOM_PRESETS: dict[str, dict] = {
    "phi-3-mini-4k": dict(_MINI),
    "phi-3-mini-128k": dict(_MINI, max_position_embeddings=131072, sliding_window=262144, rope_scaling=_longrope(96)),
    "phi-3-medium-4k": dict(
        _MINI, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=10
    ),
    "phi-3.5-mini": dict(_MINI, max_position_embeddings=131072, sliding_window=262144, rope_scaling=_longrope(96)),
    "phi-4-mini": dict(
        _MINI,
        vocab_size=200064,
        num_attention_heads=24,
        num_key_value_heads=8,  # head_dim 3072 / 24 = 128
        partial_rotary_factor=0.75,  # rotary_dim 96
        max_position_embeddings=131072,
        sliding_window=262144,
        rope_scaling=_longrope(96),
        tie_word_embeddings=True,
        bos_token_id=199999,
        eos_token_id=[200020, 199999],
        pad_token_id=199999,
    ),
    "tiny": dict(
        _MINI,
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, head_dim 32
        max_position_embeddings=2048,
        original_max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=[2],
        pad_token_id=0,
    ),
}
