"""Decode is memory-bound: every generated token reads every weight once (the embedding table
only one row, unless lm_head shares it) and the KV cache up to the current position. With the
device's measured read bandwidth B, no decode can beat B / bytes-per-token tokens/sec; the
fraction of that ceiling a run reaches says how much is left to win."""
from __future__ import annotations

from edgesmith.runtime.profile.fit import kv_bytes_per_token


def bytes_per_token(manifest: dict, params: dict[str, int], prompt: int, gen: int) -> int:
    """Bytes read per decoded token, averaged over a decode of `gen` tokens after `prompt`."""
    tied = not any(name.startswith("lm_head.") for name in params)
    weights = sum(b for name, b in params.items() if tied or not name.startswith("model.embed_tokens."))
    vocab = manifest["model"]["config"]["vocab_size"]
    if not tied:  # one row of the (possibly quantized) embedding table
        weights += sum(b for name, b in params.items() if name.startswith("model.embed_tokens.")) // vocab
    # KV read per token, in the cache's dtype: every key and value the new token attends to, the
    # whole sequence so far or the last `sliding_window` of it, averaged over the decode.
    per_position = kv_bytes_per_token(manifest)
    window = manifest["kv_cache"].get("sliding_window") or 0
    seen = [prompt + i + 1 for i in range(gen)]
    mean_seen = sum(min(n, window) if window else n for n in seen) / max(gen, 1)
    return int(weights + per_position * mean_seen)


def roofline(manifest: dict, params: dict[str, int], prompt: int, gen: int, decode_tok_s: float,
             read_gb_s: float | None) -> dict:
    per_token = bytes_per_token(manifest, params, prompt, gen)
    if not read_gb_s:
        return {"read_gb_s": None, "bytes_per_token": per_token, "ceiling_tok_s": None, "fraction": None,
                "kv_dtype": manifest["kv_cache"].get("dtype", "float32")}
    ceiling = read_gb_s * 1e9 / per_token
    return {"read_gb_s": round(read_gb_s, 3), "bytes_per_token": per_token, "ceiling_tok_s": round(ceiling, 3),
            "fraction": round(decode_tok_s / ceiling, 4), "kv_dtype": manifest["kv_cache"].get("dtype", "float32")}
