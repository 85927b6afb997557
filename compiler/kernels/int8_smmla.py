"""Prefill's q4 x int8 GEMM on Arm with i8mm: `smmla` (arm64-linux-i8mm).

`smmla vd.4s, vn.16b, vm.16b` multiplies a 2x8 int8 block (vn: 2 rows x 8 k) by an 8x2 one (vm:
2 tokens x 8 k) into a 2x2 int32 tile, lanes [r0 t0, r0 t1, r1 t0, r1 t1]: 32 products an
instruction, twice `sdot`'s. Here a register tile is 8 rows x `tokens` tokens (4 x tokens/2 tiles
of 2x2) and a block is 32 k:

x, once per call, per tile of tokens and block: x_pair ((t + rt - 1) // rt, blocks, 2, 2, tokens/2, 4) int32:
    [half][pair p][token pair] = words [t0 word 2p, t0 word 2p+1, t1 word 2p, t1 word 2p+1] of the
    token's int8 bytes, half 0 holding values 0,2,4,6 of each word and half 1 values 1,3,5,7 (the
    nibble order: byte b of word w has value 8w+2b low and 8w+2b+1 high), so one 16-byte load is
    the vm of one smmla; x_corr / x_scale ((t + rt - 1) // rt, blocks, tokens/2, 4): the pair's -8 * sum(x) and
    scale in the tile's lane order [t0, t1, t0, t1]
w, once per strip of 8 rows (up to 8 strips a task): w_p (k/16, 4, 4) words: [pair p][row pair c] = [r0 word 2p, r0 word
    2p+1, r1 word 2p, r1 word 2p+1] (read from step order where the bundle stores it), so its low
    nibbles (`and`) and high ones (`ushr .16b`) are each the vn of one smmla; s_p (blocks, 4, 4)
    the scales as float in lane order [r0, r0, r1, r1]
per strip, tile of tokens and block: the int32x4 accumulators start at the token pair's
    -8 * sum(x) (weights are stored as q + 8), take 4 smmla (2 word pairs x 2 halves) and end with
    the 2x2 tile's exact block dots; then acc_f += float(acc) * (s_p x x_scale): scvtf, fmul, fmla.

The integer dots are exact: the numpy int8 scheme's result up to float rounding order, as
kernels_int8.q4_gemm_i8 and int8_arm.q4_gemm_i8_lanes.
"""
from __future__ import annotations

from edgesmith.compiler.kernels.cpu import step_order_word

COLS = 8  # output rows per strip: 4 row pairs
STRIPS_PER_TASK = 8  # at most, strips a parallel task runs (as int8_arm's sdot GEMM)
SMMLA = "llvm.aarch64.neon.smmla.v4i32.v16i8"


def applies(isa, i8mm: bool, n: int, k: int, group: int) -> bool:
    """Arm dotprod with i8mm, groups of 32, output rows in strips of 8 (every Phi-3 layer)."""
    return i8mm and isa is not None and isa.name == "dotprod" and group == 32 and k % 32 == 0 and n % COLS == 0


def q4_gemm_i8_smmla(n: int, k: int, group: int, scale_dtype: str, isa, params=None, steps: bool = False):
    """PrimFunc (x (1,t,k) f32, w (n,k/8) u32, s (n,k/32) scale_dtype) -> y (1,t,n) f32, t dynamic.

    params.tokens: the token tile (rounded up to even: smmla takes tokens in pairs). steps: w is
    stored in step order (quantization/q4.py: word j of block i of every 16 words at 4 j + i).
    """
    from edgesmith.compiler.tuning import GemmI8Params
    from edgesmith.targets.tvm_api import tir_script as T

    assert applies(isa, True, n, k, group), (n, k, group)
    tokens = (params or GemmI8Params()).tokens
    rt = tokens + tokens % 2  # tokens per tile, in pairs
    tp_n = rt // 2
    words, blocks = k // 8, k // 32
    strips = n // COLS
    # a divisor of the strips, so every task is whole; its buffers are allocated once per task
    per_task = max(d for d in range(1, STRIPS_PER_TASK + 1) if strips % d == 0)

    def stored(j):
        """Where logical word j of a row lies in w (step order, or plain)."""
        return step_order_word(j) if steps else j

    @T.prim_func(private=True, s_tir=True)
    def gemm(x_handle: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, blocks), scale_dtype),
             y_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(x_handle, (1, t, k), "float32")
        y = T.match_buffer(y_handle, (1, t, n), "float32")
        x_pair = T.alloc_buffer(((t + rt - 1) // rt, blocks, 2, 2, tp_n, 4), "int32")
        x_corr = T.alloc_buffer(((t + rt - 1) // rt, blocks, tp_n, 4), "int32")  # -8 * the block's int8 x, per lane
        x_scale = T.alloc_buffer(((t + rt - 1) // rt, blocks, tp_n, 4), "float32")
        for tb in T.parallel((t + rt - 1) // rt):
            q = T.alloc_buffer((32,), "int32")
            for r, b in T.grid(rt, blocks):
                amax = T.alloc_buffer((1,), "float32")
                corr = T.alloc_buffer((1,), "int32")
                amax[0] = T.float32(0)
                for i in range(32):
                    amax[0] = T.max(amax[0], T.abs(x[0, T.min(tb * rt + r, t - 1), b * 32 + i]))
                if tb * rt + r >= t:
                    amax[0] = T.float32(0)  # padding tokens: all zero
                corr[0] = 0
                for i in range(32):
                    q[i] = T.Cast("int32", T.round(T.if_then_else(
                        amax[0] > T.float32(0),
                        x[0, T.min(tb * rt + r, t - 1), b * 32 + i] * (T.float32(127) / amax[0]), T.float32(0))))
                    corr[0] = corr[0] - 8 * q[i]
                for rp in range(2):  # the two lanes of token r: [t0, t1, t0, t1]
                    x_scale[tb, b, r // 2, rp * 2 + r % 2] = amax[0] / T.float32(127)
                    x_corr[tb, b, r // 2, rp * 2 + r % 2] = corr[0]
                for h, jw in T.grid(2, 4):  # word jw of the block: pair jw // 2, slot jw % 2 of the token
                    x_pair[tb, b, h, jw // 2, r // 2, (r % 2) * 2 + jw % 2] = (
                        (q[8 * jw + h] & 255) | ((q[8 * jw + h + 2] & 255) << 8)
                        | ((q[8 * jw + h + 4] & 255) << 16) | ((q[8 * jw + h + 6] & 255) << 24))
        for task in T.parallel(strips // per_task):
            # Per task, not per strip: a buffer allocated in a parallel loop is a workspace.
            w_p = T.alloc_buffer((words // 2, COLS // 2, 4), "int32")
            s_p = T.alloc_buffer((blocks, COLS // 2, 4), "float32")
            for si in range(per_task):
                o: T.let[T.int32] = (task * per_task + si) * COLS
                for p, c, i, jj in T.grid(words // 2, COLS // 2, 2, 2):
                    w_p[p, c, i * 2 + jj] = T.reinterpret(w[o + 2 * c + i, stored(2 * p + jj)], dtype="int32")
                for b, c, i, jj in T.grid(blocks, COLS // 2, 2, 2):
                    s_p[b, c, i * 2 + jj] = T.Cast("float32", s[o + 2 * c + i, b])
                for tb in range((t + rt - 1) // rt):
                    acc_f = T.alloc_buffer((tp_n, COLS // 2, 4), "float32")
                    acc_i = T.alloc_buffer((tp_n, COLS // 2, 4), "int32")
                    for tp in T.unroll(tp_n):
                        for c in T.unroll(COLS // 2):
                            acc_f[tp, c, T.ramp(0, 1, 4)] = T.broadcast(T.float32(0), 4)
                    for b in range(blocks):
                        for tp in T.unroll(tp_n):
                            for c in T.unroll(COLS // 2):
                                acc_i[tp, c, T.ramp(0, 1, 4)] = x_corr[tb, b, tp, T.ramp(0, 1, 4)]
                        for pp in T.unroll(2):
                            for c in T.unroll(COLS // 2):
                                packed = T.reinterpret(w_p[b * 2 + pp, c, T.ramp(0, 1, 4)], dtype="uint8x16")
                                low = T.reinterpret(T.bitwise_and(packed, T.broadcast(T.uint8(15), 16)), dtype="int8x16")
                                high = T.reinterpret(T.shift_right(packed, T.broadcast(T.uint8(4), 16)), dtype="int8x16")
                                for tp in T.unroll(tp_n):
                                    first = T.call_llvm_pure_intrin(
                                        "int32x4", SMMLA, acc_i[tp, c, T.ramp(0, 1, 4)], low,
                                        T.reinterpret(x_pair[tb, b, 0, pp, tp, T.ramp(0, 1, 4)], dtype="int8x16"))
                                    acc_i[tp, c, T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                                        "int32x4", SMMLA, first, high,
                                        T.reinterpret(x_pair[tb, b, 1, pp, tp, T.ramp(0, 1, 4)], dtype="int8x16"))
                        for tp in T.unroll(tp_n):
                            for c in T.unroll(COLS // 2):
                                acc_f[tp, c, T.ramp(0, 1, 4)] = acc_f[tp, c, T.ramp(0, 1, 4)] + T.Cast(
                                    "float32x4", acc_i[tp, c, T.ramp(0, 1, 4)]) * (
                                    s_p[b, c, T.ramp(0, 1, 4)] * x_scale[tb, b, tp, T.ramp(0, 1, 4)])
                    for tp, c, i, jj in T.grid(tp_n, COLS // 2, 2, 2):
                        if tb * rt + tp * 2 + jj < t:
                            y[0, tb * rt + tp * 2 + jj, o + 2 * c + i] = acc_f[tp, c, i * 2 + jj]

    return gemm
