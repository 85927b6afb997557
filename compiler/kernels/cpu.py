"""Tensor expressions for the model's own ops: linear over stored weights (float or int4),
embedding gather, and RoPE. Dequantization is part of each expression, so the weight is
decoded in registers inside the consuming kernel and never written out whole.

int4 layout (see quantization/q4.py): weight (n, k/8) uint32, eight 4-bit values per word, value
i of a row in bits 4*(i%8).. of word i//8, stored as q+8 for q in [-7, 7]; scales (n, k/G).
"""
from __future__ import annotations

from edgesmith.targets.tvm_api import te, tirx

F32 = "float32"


LANES = 16  # reduction elements per vector step; LLVM splits it into the target's registers

# Block names the CPU schedule rules (lowering/schedules_cpu.py) look for.
GEMV, GEMM = "linear_gemv", "linear_gemm"
Q4_WORD = "q4_gemv_word"  # decode: sum over the 8 nibbles of each packed word
WEIGHT_TILE = "linear_weight_tile"  # prefill: a (k, n-tile) strip of the weight, dequantized, as float32
Q4_WORDS_T, Q4_SCALES_T = "q4_gemm_words_t", "q4_gemm_scales_t"  # prefill: a strip's words, scales
X_PERMUTED = "linear_x_permuted"  # decode int4: x reordered like the packed words' lanes
X_WORD_SUM = "q4_gemv_xsum"
Q4_SCALES_F32 = "q4_gemv_scales"  # decode: a word block's scales as float32, in registers
X_PADDED = "linear_x_padded"  # prefill: tokens padded to a multiple of the row tile with zeros
GEMM_CROP = "linear_gemm_crop"  # prefill: the padded rows dropped
ROPE_TABLE = "rope_cos_sin"  # per (position, frequency) cos/sin: kept as its own loop, never inlined
# prefill's register tile of tokens (default; tuning.GemmParams): padding to it leaves the tile
# without bounds checks. The schedule (schedules.Linear) looks up the same params by shape.
ROW_TILE = 8


def _nibble(word, i):
    """Value i (0..7) of a packed uint32 word, 0..15, as float32 (stored q + 8)."""
    shifted = tirx.shift_right(word, (i * 4).astype("uint32"))
    return tirx.bitwise_and(shifted, tirx.const(15, "uint32")).astype(F32)


# Decode reads nibble n as the float 16 + n: its bits are n placed in the mantissa of 16.0
# (0x41800000 | n << 19), one shift and one and-or (vpternlogd) instead of shift, and, convert.
_BIAS = 16.0
_BIAS_BITS, _MANTISSA_SHIFT = 0x41800000, 19


def _nibble_biased(word, i: int):
    """16 + nibble i (0..7) of a packed uint32 word, as float32, exactly."""
    up = _MANTISSA_SHIFT - 4 * i
    moved = (tirx.shift_left(word, tirx.const(up, "uint32")) if up >= 0
             else tirx.shift_right(word, tirx.const(-up, "uint32")))
    bits = tirx.bitwise_or(tirx.bitwise_and(moved, tirx.const(15 << _MANTISSA_SHIFT, "uint32")),
                           tirx.const(_BIAS_BITS, "uint32"))
    return tirx.reinterpret(F32, bits)


def _q4_value(w, s, group: int, row, col):
    """Dequantized weight[row, col] as float32."""
    return (_nibble(w[row, col // 8], col % 8) - tirx.const(8.0, F32)) * s[row, col // group].astype(F32)


def _lanes(extent: int, align: int = 1) -> int:
    """Vector lanes over a reduction of `extent`: the largest power of two <= LANES dividing it
    that either divides `align` or is a multiple of it (so a lane step never splits a group)."""
    lanes = LANES
    while lanes > 1 and (extent % lanes or (lanes % align and align % lanes)):
        lanes //= 2
    return lanes


def _is_vector(x) -> bool:
    b, t = x.shape[0], x.shape[1]
    return all(isinstance(d, tirx.IntImm) and int(d) == 1 for d in (b, t))


def q4_linear(x, w, s, group: int, row_tile: int = ROW_TILE):
    """x (b, t, k) f32 @ dequant(w, s).T -> (b, t, n) f32.

    Decode reorders the reduction so that the vector lanes run over consecutive packed words
    (contiguous loads, shifts by a constant): element 8*(jb*L + l) + i of a row is nibble i of
    word jb*L + l, for lane l; x is permuted to match once per call (k floats). Prefill
    dequantizes a strip of the weight at a time and multiplies it as floats (_gemm).
    """
    if _is_vector(x):
        return _q4_gemv(x, w, s, group)
    return _q4_gemm(x, w, s, group, row_tile)


def _q4_gemv(x, w, s, group: int):
    """Decode: x (1, 1, k). Per word, sum_i x*(16 + nibble_i) (8 FMAs, no scale); per word
    again, (that - 24 * sum_i x) * scale, accumulated in L lanes; the lanes are summed at the end."""
    b, t, k_dim = x.shape
    n, words = w.shape
    wpg = group // 8
    lanes = _lanes(int(words), wpg)
    xp = te.compute((8, words), lambda i, j: x[0, 0, j * 8 + i], name=X_PERMUTED)
    ri = te.reduce_axis((0, 8), name="i")
    xsum = te.compute((words,), lambda j: te.sum(xp[ri, j], axis=ri), name=X_WORD_SUM)
    def word_dot(o, j):  # the 8 nibbles written out: each shift is a constant
        total = xp[0, j] * _nibble_biased(w[o, j], 0)
        for i in range(1, 8):
            total = total + xp[i, j] * _nibble_biased(w[o, j], i)
        return total

    per_word = te.compute((n, words), word_dot, name=Q4_WORD)
    s32 = te.compute(s.shape, lambda o, g: s[o, g].astype(F32), name=Q4_SCALES_F32)
    jb = te.reduce_axis((0, int(words) // lanes), name="jb")
    jl = te.reduce_axis((0, lanes), name="jl")

    def body(_b, _t, o):
        j = jb * lanes + jl
        centred = per_word[o, j] - tirx.const(_BIAS + 8.0, F32) * xsum[j]
        return te.sum(centred * s32[o, j // wpg], axis=[jb, jl])

    return te.compute((b, t, n), body, name=GEMV)


def _padded_rows(t, row_tile: int):
    return (t + row_tile - 1) // row_tile * row_tile


def _gemm(x, weight_t, n, row_tile: int = ROW_TILE):
    """Prefill: y (b, t, n) = x @ W.T with W.T given as weight_t(kk, o) -> f32.

    The weight is read through WEIGHT_TILE, a (k, n) float32 transpose the schedule computes
    one column strip at a time (never the whole weight), so that the register tile is an outer
    product: a token's x broadcast times a vector of consecutive outputs."""
    b, t, k_dim = x.shape
    xpad = te.compute((b, _padded_rows(t, row_tile), k_dim),
                      lambda i, j, kk: tirx.if_then_else(j < t, x[i, tirx.min(j, t - 1), kk], tirx.const(0.0, F32)),
                      name=X_PADDED)
    tile = te.compute((k_dim, n), weight_t, name=WEIGHT_TILE)
    rk = te.reduce_axis((0, k_dim), name="k")
    y = te.compute((b, _padded_rows(t, row_tile), n), lambda i, j, o: te.sum(xpad[i, j, rk] * tile[rk, o], axis=rk), name=GEMM)
    return te.compute((b, t, n), lambda i, j, o: y[i, j, o], name=GEMM_CROP)


def _q4_gemm(x, w, s, group: int, row_tile: int = ROW_TILE):
    """The strip is decoded from transposed copies of its packed words and scales (scalar
    copies, 1/8 and 1/group of the elements), so that decoding is vectorized over outputs."""
    n, words = w.shape
    w_t = te.compute((words, n), lambda j, o: w[o, j], name=Q4_WORDS_T)
    s_t = te.compute((s.shape[1], n), lambda g, o: s[o, g].astype(F32), name=Q4_SCALES_T)

    def value(kk, o):
        return (_nibble(w_t[kk // 8, o], kk % 8) - tirx.const(8.0, F32)) * s_t[kk // group, o]

    return _gemm(x, value, n, row_tile)


def float_linear(x, w, row_tile: int = ROW_TILE):
    """x (b, t, k) f32 @ w.T for w (n, k) of any float dtype -> (b, t, n) f32. Decode splits the
    reduction into (blocks, lanes) for the schedule to vectorize; prefill is _gemm."""
    b, t, k_dim = x.shape
    n = w.shape[0]
    lanes = _lanes(int(k_dim))
    rb = te.reduce_axis((0, int(k_dim) // lanes), name="kb")
    rl = te.reduce_axis((0, lanes), name="kl")
    if not _is_vector(x):
        return _gemm(x, lambda kk, o: w[o, kk].astype(F32), n, row_tile)
    return te.compute(
        (b, t, n),
        lambda i, j, o: te.sum(x[i, j, rb * lanes + rl] * w[o, rb * lanes + rl].astype(F32), axis=[rb, rl]),
        name=GEMV)


def step_order_word(j):
    """Where logical word j of a row lies when the row is stored in step order (quantization/q4.py:
    within every 16-word step, word jj of block i at 4 jj + i). j: an int or a TIR expression."""
    return j // 16 * 16 + j % 4 * 4 + j % 16 // 4


def q4_embedding(ids, w, s, group: int, steps: bool = False):
    """ids (b, t) int32 -> rows of dequant(w, s): (b, t, hidden) f32. steps: w's words are in step
    order (quantization/q4.py: word j of block i of a 16-word step at 4 j + i)."""
    b, t = ids.shape
    hidden = w.shape[1] * 8

    def value(row, h):
        if not steps:
            return _q4_value(w, s, group, row, h)
        return (_nibble(w[row, step_order_word(h // 8)], h % 8) - tirx.const(8.0, F32)) * s[row, h // group].astype(F32)

    return te.compute((b, t, hidden), lambda i, j, h: value(ids[i, j], h), name="q4_take")


def float_embedding(ids, w):
    b, t = ids.shape
    hidden = w.shape[1]
    return te.compute((b, t, hidden), lambda i, j, h: w[ids[i, j], h].astype(F32), name="take")


def last_token(h):
    """(b, t, hidden) -> (b, 1, hidden): prefill only needs the last position's logits."""
    b, t, hidden = h.shape
    return te.compute((b, 1, hidden), lambda i, _, c: h[i, t - 1, c], name="last_token")


def positions(input_ids, seq_pos):
    """(b, t) ids, the absolute position of their first token -> positions (t,) int32: RoPE's,
    from the caller, not the KV cache (a sliding cache reports window-relative ones:
    compiler/context.py)."""
    return te.compute((input_ids.shape[1],), lambda j: (seq_pos + j).astype("int32"), name="positions")


def rope(qkv, positions, factors, *, n_rot_heads: int, rotary_dim: int, theta: float,
         attention_factor: float, original_max_pos: int, factor_len=None, out_dtype: str = F32):
    """Rotary embedding as transformers' Phi-3 applies it (rotate_half, partial rotary).

    qkv (b, t, heads_q + 2*heads_kv, d) f32 -> the same shape in `out_dtype` (the KV cache's);
    the first `n_rot_heads` heads (q and k) get the first `rotary_dim` channels rotated.
    positions (t,) int32: each token's absolute position (`positions`).
    factors: None (default RoPE) or (2, rotary_dim/2) f32 — longrope's short and long
    divisors. transformers uses the long ones when the sequence length its forward sees (largest
    position + 1) exceeds original_max_pos, and scales cos/sin by `attention_factor`.
    `factor_len` is that length: a prompt prefilled in chunks passes the whole prompt's length
    (a scalar argument of prefill), so every chunk uses the factors of a one-forward prefill;
    None (decode) takes this forward's last position + 1.
    """
    b, t, heads, d = qkv.shape
    half = rotary_dim // 2
    if factor_len is None:
        factor_len = positions[t - 1] + 1

    def inv_freq(jj):
        # float32 like transformers: 1 / (factor * theta ** (2i / rotary_dim))
        exponent = (jj * 2).astype(F32) / tirx.const(float(rotary_dim), F32)
        freq = tirx.const(1.0, F32) / tirx.power(tirx.const(float(theta), F32), exponent)
        if factors is None:
            return freq
        use_long = (factor_len > original_max_pos).astype("int32")
        return freq / factors[use_long, jj]

    def cos_sin(j, which, jj):
        # (t, 2, half): cos (which 0) and sin (which 1) once per (position, frequency), not per
        # head and channel: 2*half transcendentals a token instead of 2*heads*rotary_dim.
        angle = positions[j].astype(F32) * inv_freq(jj)
        return tirx.if_then_else(which == 0, tirx.cos(angle), tirx.sin(angle)) * tirx.const(attention_factor, F32)

    table = te.compute((t, 2, half), cos_sin, name=ROPE_TABLE)

    def compute(i, j, h, c):
        x = qkv[i, j, h, c]
        jj = tirx.floormod(c, half)
        partner = tirx.if_then_else(c < half, -qkv[i, j, h, tirx.min(c + half, d - 1)],
                                    qkv[i, j, h, tirx.max(c - half, 0)])
        rotated = x * table[j, 0, jj] + partner * table[j, 1, jj]
        return tirx.if_then_else(tirx.all(h < n_rot_heads, c < rotary_dim), rotated, x).astype(out_dtype)

    return te.compute((b, t, heads, d), compute, name="rope")
