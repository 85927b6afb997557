"""An independent numpy Phi-3 for the tests: reads a bundle's weight shards itself (not through
TVM), unpacks int4 with its own bit arithmetic, and runs the forward pass with its own KV cache.

Written from transformers' Phi-3 definition (rotate-half RoPE with partial rotary and longrope
factor choice by the largest position in each forward, GQA, SiLU-gated MLP), not from our model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_tensor_cache(params_dir: Path) -> dict[str, np.ndarray]:
    index = json.loads((Path(params_dir) / "tensor-cache.json").read_text())
    out = {}
    for shard in index["records"]:
        blob = (Path(params_dir) / shard["dataPath"]).read_bytes()
        for r in shard["records"]:
            raw = blob[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            out[r["name"]] = np.frombuffer(raw, dtype=np.dtype(r["dtype"])).reshape(r["shape"]).copy()
    return out


def unpack_int4(words: np.ndarray) -> np.ndarray:
    """(n, k/8) uint32 -> (n, k) int in [-8, 7]: nibble i of a word is element 8*word + i."""
    n, w = words.shape
    out = np.empty((n, w * 8), dtype=np.int64)
    for i in range(8):
        out[:, i::8] = ((words.astype(np.int64) >> (4 * i)) & 0xF) - 8
    return out


def dequantized_weights(params: dict[str, np.ndarray], group: int = 32) -> dict[str, np.ndarray]:
    """Every HF weight as float64: int4 ones rebuilt from q_weight and q_scale."""
    out = {}
    for name, arr in params.items():
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            q = unpack_int4(arr).astype(np.float64)
            scale = np.repeat(params[base + ".q_scale"].astype(np.float64), group, axis=1)
            out[base + ".weight"] = q * scale
        elif not name.endswith(".q_scale"):
            out[name] = arr.astype(np.float64)
    return out


class NumpyPhi3:
    def __init__(self, cfg: dict, w: dict[str, np.ndarray]):
        self.c, self.w = cfg, w
        self.k = [[] for _ in range(cfg["num_hidden_layers"])]
        self.v = [[] for _ in range(cfg["num_hidden_layers"])]
        self.pos = 0

    def _norm(self, x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.c["rms_norm_eps"]) * weight

    def _rope(self, x, positions):  # x (t, heads, d)
        c = self.c
        rd = c["rotary_dim"]
        inv = 1.0 / (c["rope_theta"] ** (np.arange(0, rd, 2, dtype=np.float64) / rd))
        scale = 1.0
        if c["rope_type"] == "longrope":
            use_long = positions.max() + 1 > c["original_max_position_embeddings"]
            inv = inv / np.array(c["rope_long_factor"] if use_long else c["rope_short_factor"])
            scale = c["rope_attention_factor"]
        ang = positions[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :] * scale
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :] * scale
        rot, rest = x[..., :rd], x[..., rd:]
        half = rd // 2
        rotated = np.concatenate([-rot[..., half:], rot[..., :half]], -1)
        return np.concatenate([rot * cos + rotated * sin, rest], -1)

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the sequence; logits (vocab,) of the last one."""
        c, w = self.c, self.w
        hq, hkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        t = len(ids)
        positions = np.arange(self.pos, self.pos + t, dtype=np.float64)
        h = w["model.embed_tokens.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = self._norm(h, w[p + "input_layernorm.weight"])
            qkv = x @ w[p + "self_attn.qkv_proj.weight"].T
            q = self._rope(qkv[:, : hq * d].reshape(t, hq, d), positions)
            k = self._rope(qkv[:, hq * d: (hq + hkv) * d].reshape(t, hkv, d), positions)
            v = qkv[:, (hq + hkv) * d:].reshape(t, hkv, d)
            self.k[i].append(k)
            self.v[i].append(v)
            K, V = np.concatenate(self.k[i]), np.concatenate(self.v[i])  # (total, hkv, d)
            total = K.shape[0]
            group = hq // hkv
            out = np.empty((t, hq, d))
            for head in range(hq):
                s = q[:, head] @ K[:, head // group].T / np.sqrt(d)  # (t, total)
                causal = np.arange(total)[None, :] > (positions[:, None])
                s = np.where(causal, -np.inf, s)
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, head] = (s / s.sum(-1, keepdims=True)) @ V[:, head // group]
            h = h + out.reshape(t, hq * d) @ w[p + "self_attn.o_proj.weight"].T
            x = self._norm(h, w[p + "post_attention_layernorm.weight"])
            gate, up = np.split(x @ w[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
            h = h + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        self.pos += t
        h = self._norm(h[-1], w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
        return head @ h
