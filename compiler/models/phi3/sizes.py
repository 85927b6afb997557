"""What the rest of edgesmith asks of a Phi-3 model, answered from its config: its linear layers
(edgesmith tune measures their kernels), the bytes a token takes in the KV cache and in the
activations (the profiler's fit check), the weights a decoded token reads (the roofline), the id of
its shapes (a tuned thread count is kept per id) and one line describing it (edgesmith inspect).
"""
from __future__ import annotations

from ..registry import LinearShape
from .config import Phi3Config

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def linear_layers(cfg: Phi3Config) -> list[LinearShape]:
    """Every distinct linear of a layer, then lm_head (or the tied embedding used as one)."""
    d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    return [LinearShape("qkv", (hq + 2 * hkv) * d, cfg.hidden_size), LinearShape("o", cfg.hidden_size, hq * d),
            LinearShape("gate_up", 2 * cfg.intermediate_size, cfg.hidden_size),
            LinearShape("down", cfg.hidden_size, cfg.intermediate_size),
            LinearShape("lm_head", cfg.vocab_size, cfg.hidden_size)]


def kv_bytes_per_token(cfg: Phi3Config, dtype: str) -> int:
    """K and V of one token in every layer, in the cache's dtype."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * _DTYPE_BYTES[dtype]


def activation_bytes_per_token(cfg: Phi3Config) -> int:
    """float32 activations one token of a prefill holds at once at most: the residual and the
    normalized hidden state, q/k/v-sized and o-sized buffers (4 x hidden), gate_up's output (2 x
    intermediate) and the logits row."""
    return 4 * (4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.vocab_size)


def weights_read_per_token(cfg: Phi3Config, params: dict[str, int]) -> int:
    """Bytes of `params` ({name: bytes}, the bundle's) a decoded token reads: every weight once, but
    of the embedding table one row, unless lm_head is the tied embedding (then all of it)."""
    tied = not any(name.startswith("lm_head.") for name in params)
    weights = sum(b for name, b in params.items() if tied or not name.startswith("model.embed_tokens."))
    if not tied:  # one row of the (possibly quantized) embedding table
        weights += sum(b for name, b in params.items() if name.startswith("model.embed_tokens.")) // cfg.vocab_size
    return weights


def shape_id(cfg: Phi3Config) -> str:
    """The layer shapes and depth: what a tuned thread count was measured for (with the quantization)."""
    return (f"h={cfg.hidden_size}:i={cfg.intermediate_size}:q={cfg.num_attention_heads}"
            f":kv={cfg.num_key_value_heads}:d={cfg.head_dim}:v={cfg.vocab_size}:l={cfg.num_hidden_layers}")


# The longest context Phi-3 is trained at (the 128k models, 131072 positions): RoPE's angles
# are float32 products position x frequency there (transformers' too), so their rounding grows
# with the position; up to here it stays within what the family is trained with.
TRAINED_POSITIONS = 131072


def position_limit(cfg: Phi3Config) -> tuple[int, str]:
    """(the longest context of a sliding-window Phi-3, why). Default RoPE depends only on the
    distance between query and key, and the window keeps every distance under it: such a model
    may go past max_position_embeddings, up to TRAINED_POSITIONS. Longrope's factors and its
    attention factor are defined up to max_position_embeddings only."""
    if cfg.rope_type == "longrope":
        return cfg.max_position_embeddings, (f"longrope's factors are defined up to max_position_embeddings "
                                             f"{cfg.max_position_embeddings}")
    limit = max(cfg.max_position_embeddings, TRAINED_POSITIONS)
    return limit, (f"past max_position_embeddings {cfg.max_position_embeddings} the sliding window of "
                   f"{cfg.sliding_window} keeps every query-key distance within what default RoPE was trained on, "
                   f"and float32 positions stay as exact as Phi-3's 128k models are trained with up to {limit}")


def describe(cfg: Phi3Config) -> str:
    return (f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads}"
            f"/{cfg.num_key_value_heads} kv, vocab {cfg.vocab_size}, rope {cfg.rope_type}"
            f"{'' if cfg.partial_rotary_factor == 1 else ' partial ' + str(cfg.partial_rotary_factor)}"
            f"{', tied embeddings' if cfg.tie_word_embeddings else ''}")
