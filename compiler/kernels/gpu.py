"""Tensor expressions for the linear layers on GPU targets, in the form dlight's GPU rules read.

The CPU expressions (kernels/cpu.py) reorder the reduction for SIMD lanes; on a GPU, dlight's
GEMV and Matmul rules want the textbook form instead: a dequantize block producing the
weight (n, k) and a plain reduction over k that reads it. The rules inline the dequantize
into the reduction (`try_inline_contiguous_spatial`), so the int4 words are decoded in
registers inside the GEMV/matmul kernel and the float weight is never written out.

int4 layout as in quantization/q4.py: w (n, k/8) uint32, value i of a row in bits 4*(i%8) of word
i//8, stored as q+8; s (n, k/G). Activations stay float32 (as on the CPU), so a GPU bundle
produces the same logits as the host's up to summation order.
"""
from __future__ import annotations

from edgesmith.targets.tvm_api import te, tirx

F32 = "float32"


def dequantize_q4(w, s, group: int):
    """(n, k/8) uint32 + (n, k/G) scales -> (n, k) float32."""
    n, words = w.shape

    def value(o, c):
        shift = ((c % 8) * 4).astype("uint32")
        nib = tirx.bitwise_and(tirx.shift_right(w[o, c // 8], shift), tirx.const(15, "uint32"))
        return (nib.astype(F32) - tirx.const(8.0, F32)) * s[o, c // group].astype(F32)

    return te.compute((n, words * 8), value, name="q4_dequantize")


def _matmul_nt(x, w, name: str):
    """x (b, t, k) @ w.T, w (n, k) f32 -> (b, t, n) f32. x of another float dtype (a float16 KV
    cache's attention output on decode: models/phi3/model.py) is widened as it is loaded, so no
    cast kernel runs before the GEMV. (Prefill keeps its cast kernel: a float16 x in the GEMM sends
    dlight's CUDA Matmul rule to tensor-core tensorization, which segfaults in TVM 0.27.)"""
    b, t, k_dim = x.shape
    n = w.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    load = (lambda i, j, c: x[i, j, c]) if x.dtype == F32 else (lambda i, j, c: x[i, j, c].astype(F32))
    return te.compute((b, t, n), lambda i, j, o: te.sum(load(i, j, k) * w[o, k], axis=k), name=name)


def q4_linear(x, w, s, group: int):
    """x (b, t, k) f32 @ dequant(w, s).T -> (b, t, n) f32."""
    return _matmul_nt(x, dequantize_q4(w, s, group), "q4_matmul")


def float_linear(x, w):
    """x (b, t, k) f32 @ w.T, w (n, k) of any float dtype -> (b, t, n) f32."""
    if w.dtype != F32:
        w = te.compute(w.shape, lambda o, c: w[o, c].astype(F32), name="weight_cast")
    return _matmul_nt(x, w, "matmul")


# ---------------------------------------------------------------------------- decode fusions
# What a decoded token does between the GEMVs, folded into them (one kernel instead of two). The
# unfused forms are TVM's rms_norm and the model's split/silu/multiply: the same values up to
# float rounding (tests/test_gpu_fusion.py holds the bundles within 1e-4 of each other).

def q4_linear_normed(x, g, w, s, group: int, eps: float, out_dtype: str = F32):
    """RMSNorm(x; g, eps) @ dequant(w, s).T, x (1, 1, k) f32 -> (1, 1, n) f32, in one kernel:
    y = rsqrt(mean(x*x) + eps) * sum_k x*g*W. Every work-group sums x*x over the row itself
    (k values, against the k*rows it streams from W: cheap), so no kernel runs before it; the
    schedule is lowering/schedules_fused.NormGEMV. out_dtype: y's (float16: a float16 KV cache's
    qkv, rounded once from the float32 result)."""
    b, t, k_dim = x.shape
    k = te.reduce_axis((0, k_dim), name="k")
    sumsq = te.compute((b, t), lambda i, j: te.sum(x[i, j, k] * x[i, j, k], axis=k), name="norm_sumsq")
    xg = te.compute(x.shape, lambda i, j, c: x[i, j, c] * g[c].astype(F32), name="norm_scale")
    acc = _matmul_nt(xg, dequantize_q4(w, s, group), "q4_matmul")
    inv = lambda i, j: tirx.rsqrt(sumsq[i, j] / tirx.const(float(int(k_dim)), F32) + tirx.const(eps, F32))  # noqa: E731
    return te.compute(acc.shape, lambda i, j, o: (acc[i, j, o] * inv(i, j)).astype(out_dtype), name="norm_out")


def q4_linear_silu_mul(gu, w, s, group: int):
    """(SiLU(gate) * up) @ dequant(w, s).T with gate, up the halves of gu (b, t, 2I) f32: the
    activation is computed as the GEMV loads it (dlight inlines it like the dequantize), so the
    (b, t, I) activation is never written."""
    b, t, two_i = gu.shape
    inter = two_i // 2
    act = te.compute((b, t, inter), lambda i, j, c: gu[i, j, c] * tirx.sigmoid(gu[i, j, c]) * gu[i, j, c + inter],
                     name="silu_mul")
    return _matmul_nt(act, dequantize_q4(w, s, group), "q4_matmul")
