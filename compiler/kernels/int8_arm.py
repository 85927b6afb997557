"""Decode's q4 x int8 GEMV on Arm (dotprod `sdot`; plain NEON: smull/smlal), four rows at a time;
and prefill's GEMM with `sdot` by element (q4_gemm_i8_lanes, at the end).

kernels_int8.q4_gemv_i8 runs one row and one 32-weight block at a time: it reloads x's bytes per
row, keeps four float lanes per row and converts one fp16 scale per row and block with scalar
loads. Here a step is 4 blocks (a row's 64-byte line) of 4 rows:

    x (per step, shared by the 4 rows): 8 int8x16 registers, x's bytes in the order below
         (written once per call), the 4 blocks' -8 * sum(x) and their 4 scales
    row r: its 16 words split by position in the block: part j = word j of blocks 0..3, so sdot
         lane i stays inside block i. On dotprod the bundle stores the words that way (step order,
         quantization/q4.py: word j of block i at 4 j + i), so part j is one plain 16-byte load;
         on plain NEON (the stored order) one `ld4` splits them, at 4 vector-pipe micro-ops a row
         and step (what kept the dotprod loop over llama.cpp's cycles on the N1/V1/N2 models).
         Low nibbles `& 0x0f`, high `>> 4` (bytes 0..15), 8 sdot into ONE int32x4 that starts at
         the -8 * sum(x) correction (weights are stored as q + 8) and ends holding the 4 blocks'
         exact integer dots; -> float, times (its 4 fp16 scales: one 8-byte load, one fcvtl) x
         (x's 4 block scales), added to the row's float32x4; the 4 lanes summed once at the end.

Per step of 4 rows x 4 blocks, 117 instructions on dotprod (LLVM 19; 91 vector-pipe micro-ops
on the N1 model: 2.85 cycles a block, llama.cpp's repacked 4x4 gemv 3.14): no zeroing,
no per-block lane reduction, no scalar scale conversion. The integer part is exact, as in
kernels_int8: the result is the numpy int8 scheme's up to float rounding order.

It needs groups of 32, k % 128 == 0 and n % 4 == 0 (every Phi-3 layer); kernels_int8.gemv_kernel
picks it, else the one-row kernel.
"""
from __future__ import annotations

from edgesmith.compiler.kernels.cpu import step_order_word
from edgesmith.compiler.tuning import GemvParams

ROWS = 4  # rows sharing the activation registers of a step
STEP = 4  # blocks per step: one 64-byte line of a row, one int32x4 of block sums
SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"


def applies(isa, n: int, k: int, group: int) -> bool:
    """Arm (dotprod or plain NEON), groups of 32, whole steps of 4 blocks along k, rows in fours."""
    return isa is not None and isa.name in ("dotprod", "neon") and group == 32 and k % (32 * STEP) == 0 and n % ROWS == 0


def q4_gemv_i8_rows4(n: int, k: int, group: int, scale_dtype: str, isa, params: GemvParams = GemvParams(),
                     steps: bool = False):
    """PrimFunc (x (1,1,k) f32, w (n,k/8) u32, s (n,k/32) scale_dtype) -> y (1,1,n) f32.

    params.rows: output rows per parallel task (rounded to a multiple of 4); params.prefetch_rows:
    prefetch the weights this many groups of 4 rows ahead (0: none), a line per row and step.
    steps: w is stored in step order (quantization/q4.py: word j of block i of a step at 4 j + i),
    so part j of a step is its words 4 j .. 4 j + 3, four plain 16-byte loads (dotprod only): the
    `ld4` deinterleave of the stored order costs 4 vector-pipe micro-ops per row and step on the
    N1/V1/N2 models (bench/arm_cost.py), which is what kept this loop over llama.cpp's there.
    """
    from edgesmith.targets.tvm_api import tir_script as T

    from edgesmith.compiler.kernels.int8 import ADDP, SADDLP, SMULL

    assert isa.name in ("dotprod", "neon") and group == 32 and k % (32 * STEP) == 0 and n % ROWS == 0, (n, k, group)
    assert not steps or isa.name == "dotprod", "step order is stored for the dotprod kernels only"
    words, blocks = k // 8, k // 32
    rows = max(ROWS, params.rows // ROWS * ROWS)
    ahead = params.prefetch_rows * ROWS

    def xi(half: int, b4, at):
        """Index in x_perm of word `at` (0..15, word j of block i at 4 j + i, the order step_dot's
        parts read) of step b4's half `half` (0: x's values 0,2,4,6 of each word; 1: 1,3,5,7). On
        dotprod a step's two halves are adjacent (128 bytes: 4 `ldp` from one address, beside the
        words' loads); the NEON loop keeps them apart (words apart: fewer cycles there on N2)."""
        if isa.name == "dotprod":
            return b4 * 32 + half * 16 + at
        return half * words + b4 * 16 + at

    def step_dot_sdot(w, x_perm, x_corr, row, b4):
        """int32x4: lane i = row `row`'s block 4 b4 + i dotted with x's, exactly (the -8 correction in).

        The step's 16 words are loaded as one vector and split by word position (LLVM's
        interleaved-access pass makes that one `ld4`): part j holds word j of the 4 blocks, so
        each sdot lane stays within one block and one accumulator ends with the 4 block sums.
        """
        words16 = w[row, T.ramp(b4 * 16, 1, 16)]
        acc = x_corr[T.ramp(b4 * STEP, 1, STEP)]
        for j in range(4):
            if steps:  # stored in step order: part j is 4 words in a row
                part = T.reinterpret(w[row, T.ramp(b4 * 16 + 4 * j, 1, 4)], dtype="uint8x16")
            else:
                part = T.reinterpret(T.Shuffle([words16], [j, j + 4, j + 8, j + 12]), dtype="uint8x16")
            low = T.reinterpret(T.bitwise_and(part, T.broadcast(T.uint8(15), 16)), dtype="int8x16")
            high = T.reinterpret(T.shift_right(part, T.broadcast(T.uint8(4), 16)), dtype="int8x16")
            acc = T.call_llvm_pure_intrin("int32x4", SDOT, acc, low,
                                          T.reinterpret(x_perm[T.ramp(xi(0, b4, 4 * j), 1, 4)], dtype="int8x16"))
            acc = T.call_llvm_pure_intrin("int32x4", SDOT, acc, high,
                                          T.reinterpret(x_perm[T.ramp(xi(1, b4, 4 * j), 1, 4)], dtype="int8x16"))
        return acc

    def step_dot_neon(w, x_perm, x_corr, row, b4):
        """The same 4 block sums without sdot (plain Armv8-A): the products of a step's low 8
        bytes (blocks 0, 1) and high 8 (blocks 2, 3) summed in int16 with smull/smlal(2) (8
        products a lane: 8 x 15 x 127 fits), then saddlp and one addp into the 4 block lanes."""
        words16 = w[row, T.ramp(b4 * 16, 1, 16)]
        sums = [None, None]
        for j in range(4):
            part = T.reinterpret(T.Shuffle([words16], [j, j + 4, j + 8, j + 12]), dtype="uint8x16")
            nibbles = (T.reinterpret(T.bitwise_and(part, T.broadcast(T.uint8(15), 16)), dtype="int8x16"),
                       T.reinterpret(T.shift_right(part, T.broadcast(T.uint8(4), 16)), dtype="int8x16"))
            for half in range(2):
                xv = T.reinterpret(x_perm[T.ramp(xi(half, b4, 4 * j), 1, 4)], dtype="int8x16")
                for h in range(2):
                    lanes8 = list(range(8 * h, 8 * h + 8))
                    prod = T.call_llvm_pure_intrin("int16x8", SMULL, T.Shuffle([nibbles[half]], lanes8),
                                                   T.Shuffle([xv], lanes8))
                    sums[h] = prod if sums[h] is None else sums[h] + prod
        pairs = [T.call_llvm_pure_intrin("int32x4", SADDLP, v) for v in sums]
        return x_corr[T.ramp(b4 * STEP, 1, STEP)] + T.call_llvm_pure_intrin("int32x4", ADDP, *pairs)

    step_dot = step_dot_sdot if isa.name == "dotprod" else step_dot_neon

    @T.prim_func(private=True, s_tir=True)
    def gemv(x: T.Buffer((1, 1, k), "float32"), w: T.Buffer((n, words), "uint32"),
             s: T.Buffer((n, blocks), scale_dtype), y: T.Buffer((1, 1, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        q = T.alloc_buffer((k,), "int32")
        x_scale = T.alloc_buffer((blocks,), "float32")
        x_corr = T.alloc_buffer((blocks,), "int32")  # -8 * the block's 32 int8 values
        # x's int8 bytes as words (xi: where half h, step b4, word `at` of the step lies)
        x_perm = T.alloc_buffer((2 * words,), "int32")
        for b in range(blocks):
            amax = T.alloc_buffer((1,), "float32")
            amax[0] = T.float32(0)
            for i in range(32):
                amax[0] = T.max(amax[0], T.abs(x[0, 0, b * 32 + i]))
            x_scale[b] = amax[0] / T.float32(127)
            x_corr[b] = 0
            for i in range(32):
                q[b * 32 + i] = T.Cast("int32", T.round(T.if_then_else(
                    amax[0] > T.float32(0), x[0, 0, b * 32 + i] * (T.float32(127) / amax[0]), T.float32(0))))
                x_corr[b] = x_corr[b] - 8 * q[b * 32 + i]
        for b4, i, j in T.grid(blocks // STEP, STEP, 4):
            src: T.let[T.int32] = (b4 * 16 + 4 * i + j) * 8  # x's index of word j of block 4 b4 + i
            x_perm[xi(0, b4, 4 * j + i)] = ((q[src] & 255) | ((q[src + 2] & 255) << 8)
                                               | ((q[src + 4] & 255) << 16) | ((q[src + 6] & 255) << 24))
            x_perm[xi(1, b4, 4 * j + i)] = ((q[src + 1] & 255) | ((q[src + 3] & 255) << 8)
                                               | ((q[src + 5] & 255) << 16) | ((q[src + 7] & 255) << 24))
        for chunk in T.parallel((n + rows - 1) // rows):
            # Per task, not per row group: a buffer allocated in a parallel loop is a workspace.
            total = T.alloc_buffer((ROWS, STEP), "float32")  # per row: a float lane per block of the step
            for g4 in range(rows // ROWS):
                if chunk * rows + g4 * ROWS < n:
                    o: T.let[T.int32] = chunk * rows + g4 * ROWS
                    for r, c in T.grid(ROWS, STEP):
                        total[r, c] = T.float32(0)
                    for b4 in range(blocks // STEP):
                        if ahead > 0:
                            # One 64-byte line (4 blocks) of each of the 4 rows `ahead` rows on.
                            # prfm never faults, so no clamp at the last rows.
                            for r in T.unroll(ROWS):
                                T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                                    w[o + ahead + r, b4 * STEP * 4]), T.int32(0), T.int32(3), T.int32(1)))
                        for r in T.unroll(ROWS):
                            sums = T.meta_var(step_dot(w, x_perm, x_corr, o + r, b4))  # row o + r, 4 blocks
                            lanes = T.meta_var(T.ramp(b4 * STEP, 1, STEP))  # the step's 4 blocks
                            total[r, T.ramp(0, 1, STEP)] = total[r, T.ramp(0, 1, STEP)] + T.Cast(
                                "float32x4", sums) * (T.Cast("float32x4", s[o + r, lanes]) * x_scale[lanes])
                    for r in range(ROWS):
                        y[0, 0, o + r] = (total[r, 0] + total[r, 1]) + (total[r, 2] + total[r, 3])

    return gemv


# ------------------------------------------------------------------ prefill: sdot by element

COLS = 8  # output rows per strip: two int32x4 of 4 rows each
STRIPS_PER_TASK = 8  # at most, strips a parallel task runs: its transposed words are allocated once per task


def gemm_applies(isa, n: int, k: int, group: int) -> bool:
    """Arm dotprod, groups of 32, output rows in strips of 8 (every Phi-3 layer)."""
    return isa is not None and isa.name == "dotprod" and group == 32 and k % 32 == 0 and n % COLS == 0


def q4_gemm_i8_lanes(n: int, k: int, group: int, scale_dtype: str, isa, params=None, steps: bool = False):
    """Prefill on Arm dotprod: PrimFunc (x (1,t,k) f32, w (n,k/8) u32, s (n,k/32)) -> y (1,t,n) f32, t dynamic.

    kernels_int8.q4_gemm_i8 broadcasts one activation word per `sdot` (an `ld1r` and its address
    arithmetic each: about 2.5 instructions per `sdot`). Here `sdot` by element
    (`sdot vd.4s, vn.16b, vm.4b[j]`) feeds 4 output rows from one register of a token's bytes:

    x, once per call, per tile of `tokens` tokens and per block: x_perm (tiles, blocks, 2, tokens*4)
        int32: [0] values 0,2,4,6 / [1] values 1,3,5,7 of the block's 4 words, a token's 4 words in
        one vector (lane j = word j); x_corr / x_scale (tiles, blocks, max(tokens, 4)): -8 * sum and scale
    w, once per task of 8 strips: w_t (k/8, 8) words transposed, so w_t[j, 4c:4c+4] is word j of
        4 rows: its low nibbles (`and`) and high ones (`ushr .16b`) are 4 rows x 4 bytes, the vn of
        `sdot` by element; s_t (blocks, 8) the scales as float
    per strip, tile of tokens and block: each of the strip's 8 nibble vectors feeds `tokens` x 2
        sdot (lane j of the token's x_perm register); the int32x4 accumulators start at the token's
        -8 * sum(x) (weights are stored as q + 8) and end with 4 rows' exact block dots; then
        acc_f += float(acc) * (s_t x the token's x scale): scvtf, fmul by element, fadd

    Per block of 8 rows x 4 tokens the loop is 129 instructions (LLVM 19, arm64-linux-dotprod):
    64 sdot, 16 to unpack the nibbles (and, ushr), 11 loads (ldp, ldr) of words, activations,
    corrections and scales, 8 accumulator starts (dup by element, mov), 24 for the scales (scvtf,
    fmul by element, fmla), 4 of loop control: 4.0 per 32 weight x token products, as llama.cpp's repacked
    gemm_q4_0_4x4 (bench/arm_cost.py). The integer dots are exact: the numpy int8 scheme's result
    up to float rounding order, as kernels_int8.q4_gemm_i8.

    steps: w is stored in step order (quantization/q4.py); the transposition into w_t reads word
    j from where that order put it (once per strip, outside the block loop).
    """
    from edgesmith.compiler.tuning import GemmI8Params
    from edgesmith.targets.tvm_api import tir_script as T

    assert gemm_applies(isa, n, k, group), (n, k, group)
    rt = (params or GemmI8Params()).tokens
    words, blocks = k // 8, k // 32
    strips = n // COLS
    rv = max(rt, 4)  # x_corr / x_scale lanes a tile loads at once (a Shuffle cannot widen a vector)
    # a divisor of the strips, so every task is whole (no part-filled last task to get wrong)
    per_task = max(d for d in range(1, STRIPS_PER_TASK + 1) if strips % d == 0)

    def lane(vec, i: int, lanes: int = 4):
        """Lane i of vec, repeated `lanes` times (a dup by element, or folded into the instruction)."""
        return T.Shuffle([vec], [i] * lanes)

    @T.prim_func(private=True, s_tir=True)
    def gemm(x_handle: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, blocks), scale_dtype),
             y_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(x_handle, (1, t, k), "float32")
        y = T.match_buffer(y_handle, (1, t, n), "float32")
        x_perm = T.alloc_buffer(((t + rt - 1) // rt, blocks, 2, rt * 4), "int32")
        x_corr = T.alloc_buffer(((t + rt - 1) // rt, blocks, rv), "int32")  # -8 * the block's int8 x
        x_scale = T.alloc_buffer(((t + rt - 1) // rt, blocks, rv), "float32")
        for tb in T.parallel((t + rt - 1) // rt):
            q = T.alloc_buffer((32,), "int32")
            for r, b in T.grid(rt, blocks):
                amax = T.alloc_buffer((1,), "float32")
                amax[0] = T.float32(0)
                for i in range(32):
                    amax[0] = T.max(amax[0], T.abs(x[0, T.min(tb * rt + r, t - 1), b * 32 + i]))
                if tb * rt + r >= t:
                    amax[0] = T.float32(0)  # padding tokens: all zero
                x_scale[tb, b, r] = amax[0] / T.float32(127)
                x_corr[tb, b, r] = 0
                for i in range(32):
                    q[i] = T.Cast("int32", T.round(T.if_then_else(
                        amax[0] > T.float32(0),
                        x[0, T.min(tb * rt + r, t - 1), b * 32 + i] * (T.float32(127) / amax[0]), T.float32(0))))
                    x_corr[tb, b, r] = x_corr[tb, b, r] - 8 * q[i]
                for jw in range(4):
                    x_perm[tb, b, 0, r * 4 + jw] = ((q[8 * jw] & 255) | ((q[8 * jw + 2] & 255) << 8)
                                                    | ((q[8 * jw + 4] & 255) << 16) | ((q[8 * jw + 6] & 255) << 24))
                    x_perm[tb, b, 1, r * 4 + jw] = ((q[8 * jw + 1] & 255) | ((q[8 * jw + 3] & 255) << 8)
                                                    | ((q[8 * jw + 5] & 255) << 16) | ((q[8 * jw + 7] & 255) << 24))
        for task in T.parallel(strips // per_task):
            # Per task, not per strip: a buffer allocated in a parallel loop is a workspace.
            w_t = T.alloc_buffer((words, COLS), "int32")
            s_t = T.alloc_buffer((blocks, COLS), "float32")
            for si in range(per_task):
                o: T.let[T.int32] = (task * per_task + si) * COLS
                for j, c in T.grid(words, COLS):
                    if steps:  # word j (of block j // 4 in its step) where step order keeps it
                        w_t[j, c] = T.reinterpret(w[o + c, step_order_word(j)], dtype="int32")
                    else:
                        w_t[j, c] = T.reinterpret(w[o + c, j], dtype="int32")
                for b, c in T.grid(blocks, COLS):
                    s_t[b, c] = T.Cast("float32", s[o + c, b])
                for tb in range((t + rt - 1) // rt):
                    acc_f = T.alloc_buffer((rt, COLS), "float32")
                    acc_i = T.alloc_buffer((rt, COLS), "int32")
                    for r in T.unroll(rt):
                        for c in T.vectorized(COLS):
                            acc_f[r, c] = T.float32(0)
                    for b in range(blocks):
                        for r in T.unroll(rt):
                            for c4 in T.unroll(2):
                                acc_i[r, T.ramp(c4 * 4, 1, 4)] = lane(x_corr[tb, b, T.ramp(0, 1, rv)], r)
                        for jw in T.unroll(4):
                            for c4 in T.unroll(2):
                                packed = T.reinterpret(w_t[b * 4 + jw, T.ramp(c4 * 4, 1, 4)], dtype="uint8x16")
                                low = T.reinterpret(T.bitwise_and(packed, T.broadcast(T.uint8(15), 16)),
                                                    dtype="int8x16")
                                high = T.reinterpret(T.shift_right(packed, T.broadcast(T.uint8(4), 16)),
                                                     dtype="int8x16")
                                for r in T.unroll(rt):
                                    first = T.call_llvm_pure_intrin(
                                        "int32x4", SDOT, acc_i[r, T.ramp(c4 * 4, 1, 4)], low,
                                        T.reinterpret(lane(x_perm[tb, b, 0, T.ramp(r * 4, 1, 4)], jw),
                                                      dtype="int8x16"))
                                    acc_i[r, T.ramp(c4 * 4, 1, 4)] = T.call_llvm_pure_intrin(
                                        "int32x4", SDOT, first, high,
                                        T.reinterpret(lane(x_perm[tb, b, 1, T.ramp(r * 4, 1, 4)], jw),
                                                      dtype="int8x16"))
                        for r in T.unroll(rt):
                            for c4 in T.unroll(2):
                                acc_f[r, T.ramp(c4 * 4, 1, 4)] = acc_f[r, T.ramp(c4 * 4, 1, 4)] + T.Cast(
                                    "float32x4", acc_i[r, T.ramp(c4 * 4, 1, 4)]) * (
                                    s_t[b, T.ramp(c4 * 4, 1, 4)] * lane(x_scale[tb, b, T.ramp(0, 1, rv)], r))
                    for r in range(rt):
                        if tb * rt + r < t:
                            for c in T.vectorized(COLS):
                                y[0, tb * rt + r, o + c] = acc_f[r, c]

    return gemm
