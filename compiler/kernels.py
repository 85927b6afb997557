"""Tensor expressions for the model's own ops: linear over stored weights (float or int4),
embedding gather, and RoPE. Dequantization is part of each expression, so the weight is
decoded in registers inside the consuming kernel and never written out whole.

int4 layout (see quantize.py): weight (n, k/8) uint32, eight 4-bit values per word, value
i of a row in bits 4*(i%8).. of word i//8, stored as q+8 for q in [-7, 7]; scales (n, k/G).
"""
from __future__ import annotations

from edgesmith.targets.tvm_api import te, tirx

F32 = "float32"


def _q4_value(w, s, group: int, row, col):
    """Dequantized weight[row, col] as float32."""
    word = w[row, col // 8]
    shift = ((col % 8) * 4).astype("uint32")
    nib = tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const(15, "uint32"))
    return (nib.astype(F32) - tirx.const(8.0, F32)) * s[row, col // group].astype(F32)


def q4_linear(x, w, s, group: int):
    """x (b, t, k) f32 @ dequant(w, s).T -> (b, t, n) f32."""
    b, t, k_dim = x.shape
    n = w.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    return te.compute(
        (b, t, n),
        lambda i, j, o: te.sum(x[i, j, k] * _q4_value(w, s, group, o, k), axis=k),
        name="q4_matmul",
    )


def float_linear(x, w):
    """x (b, t, k) f32 @ w.T for w (n, k) of any float dtype -> (b, t, n) f32."""
    b, t, k_dim = x.shape
    n = w.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    return te.compute(
        (b, t, n),
        lambda i, j, o: te.sum(x[i, j, k] * w[o, k].astype(F32), axis=k),
        name="matmul",
    )


def q4_embedding(ids, w, s, group: int):
    """ids (b, t) int32 -> rows of dequant(w, s): (b, t, hidden) f32."""
    b, t = ids.shape
    hidden = w.shape[1] * 8
    return te.compute((b, t, hidden), lambda i, j, h: _q4_value(w, s, group, ids[i, j], h), name="q4_take")


def float_embedding(ids, w):
    b, t = ids.shape
    hidden = w.shape[1]
    return te.compute((b, t, hidden), lambda i, j, h: w[ids[i, j], h].astype(F32), name="take")


def last_token(h):
    """(b, t, hidden) -> (b, 1, hidden): prefill only needs the last position's logits."""
    b, t, hidden = h.shape
    return te.compute((b, 1, hidden), lambda i, _, c: h[i, t - 1, c], name="last_token")


def rope(qkv, positions, factors, *, n_rot_heads: int, rotary_dim: int, theta: float,
         attention_factor: float, original_max_pos: int):
    """Rotary embedding as transformers' Phi-3 applies it (rotate_half, partial rotary).

    qkv (b, t, heads_q + 2*heads_kv, d); the first `n_rot_heads` heads (q and k) get the first
    `rotary_dim` channels rotated. positions (t,) int32 from the KV cache.
    factors: None (default RoPE) or (2, rotary_dim/2) f32 — longrope's short and long
    divisors. As in transformers, the long ones are used when the largest position in this
    forward reaches original_max_pos (one sequence per forward: the last position is the max),
    and cos/sin are scaled by `attention_factor`.
    """
    b, t, heads, d = qkv.shape
    half = rotary_dim // 2

    def inv_freq(jj):
        # float32 like transformers: 1 / (factor * theta ** (2i / rotary_dim))
        exponent = (jj * 2).astype(F32) / tirx.const(float(rotary_dim), F32)
        freq = tirx.const(1.0, F32) / tirx.power(tirx.const(float(theta), F32), exponent)
        if factors is None:
            return freq
        use_long = (positions[t - 1] + 1 > original_max_pos).astype("int32")
        return freq / factors[use_long, jj]

    def compute(i, j, h, c):
        x = qkv[i, j, h, c]
        jj = tirx.floormod(c, half)
        angle = positions[j].astype(F32) * inv_freq(jj)
        cos = tirx.cos(angle) * tirx.const(attention_factor, F32)
        sin = tirx.sin(angle) * tirx.const(attention_factor, F32)
        partner = tirx.if_then_else(c < half, -qkv[i, j, h, tirx.min(c + half, d - 1)],
                                    qkv[i, j, h, tirx.max(c - half, 0)])
        rotated = x * cos + partner * sin
        return tirx.if_then_else(tirx.all(h < n_rot_heads, c < rotary_dim), rotated, x)

    return te.compute((b, t, heads, d), compute, name="rope")
