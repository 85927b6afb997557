"""Decode's int4 GEMV with float activations (q4f16, q4f32 on CPU targets), written in TIR.

The same arithmetic as kernels.q4_linear's decode expression (each nibble read as the float
16 + n by a shift and an and-or; per word, sum_i x_i * (16 + n_i) - 24 * sum_i x_i; times the
group's scale; lanes over consecutive words, x permuted once per call to match), laid out the
way the int8 kernel (kernels_int8) is, which a schedule of the expression cannot say:
  - rows in parallel tasks of params.rows (compiler/tuning.py), so per-task scratch is allocated once per task, not
    once per row (an allocation in a parallel loop is a workspace call);
  - a software prefetch of the weight params.prefetch_rows rows ahead (0: none): one core otherwise keeps
    too few misses in flight to stream at the memory's speed;
  - the lanes summed as a tree.
"""
from __future__ import annotations

from edgesmith.compiler.kernels import cpu as kernels
from edgesmith.compiler.tuning import GemvParams



def applies(k: int, group: int) -> bool:
    lanes = kernels._lanes(k // 8, group // 8)
    return k % group == 0 and group % 8 == 0 and lanes >= 4 and lanes % (group // 8) == 0


def q4_gemv(n: int, k: int, group: int, scale_dtype: str, params: GemvParams = GemvParams()):
    """PrimFunc (x (1,1,k) f32, w (n,k/8) u32, s (n,k/group) scale_dtype) -> y (1,1,n) f32."""
    from edgesmith.targets.tvm_api import tir_script as T

    words, groups = k // 8, k // group
    per_group = group // 8
    lanes = kernels._lanes(words, per_group)
    scales_per_vec = lanes // per_group
    blocks = words // lanes
    rows, ahead = params.rows, params.prefetch_rows
    vf32 = f"float32x{lanes}"
    mask = T.broadcast(T.uint32(15 << kernels._MANTISSA_SHIFT), lanes)
    bias = T.broadcast(T.uint32(kernels._BIAS_BITS), lanes)

    def nibble(packed, i: int):
        """16 + nibble i of each lane's word, as float32 (kernels._nibble_biased, vectorized)."""
        up = kernels._MANTISSA_SHIFT - 4 * i
        moved = (T.shift_left(packed, T.broadcast(T.uint32(up), lanes)) if up >= 0
                 else T.shift_right(packed, T.broadcast(T.uint32(-up), lanes)))
        return T.reinterpret(T.bitwise_or(T.bitwise_and(moved, mask), bias), dtype=vf32)

    def word_dot(x_perm, packed, jb):
        """Per lane: sum over the word's 8 values of x * (16 + nibble); 8 FMAs, unrolled here."""
        total = x_perm[0, T.ramp(jb * lanes, 1, lanes)] * nibble(packed, 0)
        for i in range(1, 8):
            total = total + x_perm[i, T.ramp(jb * lanes, 1, lanes)] * nibble(packed, i)
        return total

    @T.prim_func(private=True, s_tir=True)
    def gemv(x: T.Buffer((1, 1, k), "float32"), w: T.Buffer((n, words), "uint32"),
             s: T.Buffer((n, groups), scale_dtype), y: T.Buffer((1, 1, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        x_perm = T.alloc_buffer((8, words), "float32")  # x_perm[i, j] = x[8j + i]
        x_sum = T.alloc_buffer((words,), "float32")  # (16 + 8) * sum of the word's 8 x
        for i, j in T.grid(8, words):
            x_perm[i, j] = x[0, 0, 8 * j + i]
        for j in range(words):
            x_sum[j] = T.float32(kernels._BIAS + 8.0) * (
                x[0, 0, 8 * j] + x[0, 0, 8 * j + 1] + x[0, 0, 8 * j + 2] + x[0, 0, 8 * j + 3]
                + x[0, 0, 8 * j + 4] + x[0, 0, 8 * j + 5] + x[0, 0, 8 * j + 6] + x[0, 0, 8 * j + 7])
        for chunk in T.parallel((n + rows - 1) // rows):
            total = T.alloc_buffer((lanes,), "float32")
            dot = T.alloc_buffer((lanes,), "float32")
            w_scale = T.alloc_buffer((scales_per_vec,), "float32")
            for r in range(rows):
                if chunk * rows + r < n:
                    o: T.let[T.int32] = chunk * rows + r
                    for lane in T.vectorized(lanes):
                        total[lane] = T.float32(0)
                    for jb in range(blocks):
                        if ahead > 0:
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0",
                                                          T.address_of(w[T.min(o + ahead, n - 1), jb * lanes]),
                                                          T.int32(0), T.int32(3), T.int32(1)))
                        for c in T.vectorized(scales_per_vec):
                            w_scale[c] = T.Cast("float32", s[o, jb * scales_per_vec + c])
                        dot[T.ramp(0, 1, lanes)] = word_dot(x_perm, w[o, T.ramp(jb * lanes, 1, lanes)], jb)
                        for lane in T.vectorized(lanes):
                            total[lane] = total[lane] + (dot[lane] - x_sum[jb * lanes + lane]) * w_scale[lane // per_group]
                    if lanes == 16:
                        for lane in T.vectorized(8):
                            total[lane] = total[lane] + total[lane + 8]
                    if lanes >= 8:
                        for lane in T.vectorized(4):
                            total[lane] = total[lane] + total[lane + 4]
                    for lane in T.vectorized(2):
                        total[lane] = total[lane] + total[lane + 2]
                    y[0, 0, o] = total[0] + total[1]

    return gemv
