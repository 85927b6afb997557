"""An independent numpy Phi-3 for the tests: reads a bundle's weight shards itself (not through
TVM), unpacks int4 with its own bit arithmetic, and runs the forward pass with its own KV cache.

Written from transformers' Phi-3 definition (rotate-half RoPE with partial rotary and longrope
factor choice by the largest position in each forward, GQA, sliding window, SiLU-gated MLP), not
from our model.

Options for what a bundle computes beyond the float model over its weights:
- int8 activations (q4f16i8 / q4f32i8, `int8_layers`): every int4 matmul takes x as float32,
  quantized per token in blocks of 32 (scale max|x| / 127, x * (127 / max|x|) rounded half away
  from zero, as llama.cpp's Q8_0), integer dot products with the int4 codes per group, then times
  both scales. The scheme as README states it, written here from that statement.
- a float16 KV cache (`kv_float16`): attention works in the cache's dtype, so q, k (after RoPE)
  and v are rounded to float16, and so is its output; products and sums stay wide.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_tensor_cache(params_dir: Path) -> dict[str, np.ndarray]:
    """{name: array} of a bundle's params folder, int4 words in their plain order (value i at bit
    4*(i % 8) of word i // 8) whatever order the bundle stores them in: the manifest beside the
    folder names the weights stored in step order (README: within every 16 words of a row, word j
    of the 4-word block i at 4 j + i), which are put back here."""
    index = json.loads((Path(params_dir) / "tensor-cache.json").read_text())
    out = {}
    for shard in index["records"]:
        blob = (Path(params_dir) / shard["dataPath"]).read_bytes()
        for r in shard["records"]:
            raw = blob[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            out[r["name"]] = np.frombuffer(raw, dtype=np.dtype(r["dtype"])).reshape(r["shape"]).copy()
    manifest = Path(params_dir).parent / "manifest.json"
    stepped = json.loads(manifest.read_text()).get("int4_step_order", []) if manifest.is_file() else []
    for name in stepped:
        words = out[name]
        plain = np.empty_like(words)
        for i in range(4):  # block i of each step
            for j in range(4):  # its word j, stored at 4 j + i
                plain[:, 4 * i + j::16] = words[:, 4 * j + i::16]
        out[name] = plain
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


def int8_layers(params: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF weight name: (int4 codes (n, k) int64 in [-8, 7], scales (n, k/32) float32)} of every int4
    weight: what NumpyPhi3(int8=...) multiplies with int8 activations."""
    return {name[: -len(".q_weight")] + ".weight": (unpack_int4(arr), params[name[: -len(".q_weight")] + ".q_scale"]
                                                    .astype(np.float32))
            for name, arr in params.items() if name.endswith(".q_weight")}


def int8_matmul(x: np.ndarray, codes: np.ndarray, scale: np.ndarray, group: int = 32) -> np.ndarray:
    """x (t, k) @ W.T with x quantized to int8 per token and block of `group`: (t, n) float64."""
    t, k = x.shape
    blocks = x.astype(np.float32).reshape(t, k // group, group)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    x_scale = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    scaled = blocks * inv  # float32: x * (127 / max|x|)
    xq = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))  # half away from zero
    n = codes.shape[0]
    dots = np.einsum("tgi,ngi->tng", xq.astype(np.int64), codes.reshape(n, k // group, group))  # exact
    return (dots * x_scale[:, None, :, 0].astype(np.float64) * scale[None].astype(np.float64)).sum(-1)


class NumpyPhi3:
    def __init__(self, cfg: dict, w: dict[str, np.ndarray], *, int8: dict | None = None, kv_float16: bool = False):
        self.c, self.w = cfg, w
        self.int8, self.kv_float16 = int8 or {}, kv_float16
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

    def _linear(self, x, name):  # x (t, k) -> (t, n)
        if name in self.int8:
            return int8_matmul(x, *self.int8[name])
        return x @ self.w[name].T

    def _kv_dtype(self, x):
        return x.astype(np.float16).astype(np.float64) if self.kv_float16 else x

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the sequence; logits (vocab,) of the last one."""
        c, w = self.c, self.w
        hq, hkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        t = len(ids)
        positions = np.arange(self.pos, self.pos + t, dtype=np.float64)
        h = w["model.embed_tokens.weight"][ids]
        window = c.get("sliding_window")
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = self._norm(h, w[p + "input_layernorm.weight"])
            qkv = self._linear(x, p + "self_attn.qkv_proj.weight")
            q = self._rope(qkv[:, : hq * d].reshape(t, hq, d), positions)
            k = self._rope(qkv[:, hq * d: (hq + hkv) * d].reshape(t, hkv, d), positions)
            v = qkv[:, (hq + hkv) * d:].reshape(t, hkv, d)
            q, k, v = self._kv_dtype(q), self._kv_dtype(k), self._kv_dtype(v)
            self.k[i].append(k)
            self.v[i].append(v)
            K, V = np.concatenate(self.k[i]), np.concatenate(self.v[i])  # (total, hkv, d)
            total = K.shape[0]
            group = hq // hkv
            out = np.empty((t, hq, d))
            for head in range(hq):
                s = q[:, head] @ K[:, head // group].T / np.sqrt(d)  # (t, total)
                hidden = np.arange(total)[None, :] > positions[:, None]  # causal
                if window:  # transformers' sliding window: position p sees keys p - W < k <= p
                    hidden |= np.arange(total)[None, :] <= positions[:, None] - window
                s = np.where(hidden, -np.inf, s)
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, head] = (s / s.sum(-1, keepdims=True)) @ V[:, head // group]
            out = self._kv_dtype(out)
            h = h + self._linear(out.reshape(t, hq * d), p + "self_attn.o_proj.weight")
            x = self._norm(h, w[p + "post_attention_layernorm.weight"])
            gate, up = np.split(self._linear(x, p + "mlp.gate_up_proj.weight"), 2, axis=-1)
            h = h + self._linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj.weight")
        self.pos += t
        h = self._norm(h[-1], w["model.norm.weight"])
        head = "model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight"
        return self._linear(h[None], head)[0]
