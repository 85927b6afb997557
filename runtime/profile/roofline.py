"""Decode is memory-bound: every generated token reads every weight once (the embedding table
only one row, unless lm_head shares it) and the KV cache up to the current position. With the
device's measured read bandwidth B, no decode can beat B / bytes-per-token tokens/sec; the
fraction of that ceiling a run reaches says how much is left to win."""
from __future__ import annotations

from edgesmith.runtime.profile.fit import kv_cache_bytes


def bytes_per_token(manifest: dict, params: dict[str, int], prompt: int, gen: int) -> int:
    """Bytes read per decoded token, averaged over a decode of `gen` tokens after `prompt`."""
    tied = not any(name.startswith("lm_head.") for name in params)
    weights = sum(b for name, b in params.items() if tied or not name.startswith("model.embed_tokens."))
    vocab = manifest["model"]["config"]["vocab_size"]
    if not tied:  # one row of the (possibly quantized) embedding table
        weights += sum(b for name, b in params.items() if name.startswith("model.embed_tokens.")) // vocab
    # KV read per token: the whole cache so far; average position over the decode = prompt + gen/2.
    per_position = kv_cache_bytes(manifest, manifest["kv_cache"]["page_size"]) / manifest["kv_cache"]["page_size"]
    return int(weights + per_position * (prompt + gen / 2))


def roofline(manifest: dict, params: dict[str, int], prompt: int, gen: int, decode_tok_s: float,
             read_gb_s: float | None) -> dict:
    per_token = bytes_per_token(manifest, params, prompt, gen)
    if not read_gb_s:
        return {"read_gb_s": None, "bytes_per_token": per_token, "ceiling_tok_s": None, "fraction": None}
    ceiling = read_gb_s * 1e9 / per_token
    return {"read_gb_s": round(read_gb_s, 3), "bytes_per_token": per_token, "ceiling_tok_s": round(ceiling, 3),
            "fraction": round(decode_tok_s / ceiling, 4)}
