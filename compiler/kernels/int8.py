"""Decode's int4 GEMV with int8 activations, on the CPU's int8 dot-product instructions.

x (1, 1, k) float32 is quantized once per call in blocks of the weights' group size (like
llama.cpp's Q8_0: scale max|x| / 127, round to nearest), then every output row is a sum of
int8 x int4 products in int32 lanes, four bytes per lane per instruction:

    x86 AVX512-VNNI   vpdpbusd zmm   16 lanes  (unsigned weight bytes x signed x bytes)
    x86 AVX-VNNI      vpdpbusd ymm    8 lanes
    Arm dotprod       sdot v.4s       4 lanes  (signed x signed; nibbles 0..15 fit)
    Armv8-A NEON      emulated        4 lanes  (smull/smull2, saddlp, addp: `dot`)

A lane holds one packed weight word (eight 4-bit values): its low nibbles (values 0, 2, 4, 6)
and high nibbles (1, 3, 5, 7) each make four bytes with `& 0x0F0F0F0F`, dotted with x's
matching bytes, which are packed in that order once per call. Weights are stored as q + 8:
the -8 * sum(x) correction starts each lane's accumulator. Per lane, the int32 sum becomes
float times x's block scale times the weight group's scale; the lanes are summed at the end.

A target without these instructions (or a shape they do not tile) keeps the float kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.tuning import GemmI8Params, GemvParams

# The choices below are parameters (compiler/tuning.py); their defaults are these values, measured
# on one x86 host: 16 output rows per parallel task, the weight prefetched 2 rows ahead
# (llvm.prefetch: read, keep in all caches), a prefill tile of 4 tokens x 2 vectors.
GEMV_ROWS = GemvParams().rows
GEMV_PREFETCH_ROWS = GemvParams().prefetch_rows


@dataclass(frozen=True)
class DotISA:
    name: str
    features: tuple[str, ...]  # LLVM features, any of which provides the instruction
    lanes: int  # int32 lanes per instruction
    intrinsic: str  # LLVM intrinsic: (acc i32 x lanes, a i8 x 4*lanes, b i8 x 4*lanes); "": emulated (dot)


# Widest first. The 256-bit vpdpbusd exists with AVX-VNNI or with AVX512-VNNI (+VL). Plain Armv8-A
# (every arm64 core: NEON) has no dot product; llama.cpp emulates it there with smull/sadalp and
# so do we (`dot`; kernels/int8_arm.py's GEMV with cheaper int16 sums): int8 activations beat
# dequantizing the nibbles to float there too (bench/arm_cost.py).
ISAS = (
    DotISA("avx512vnni", ("avx512vnni",), 16, "llvm.x86.avx512.vpdpbusd.512"),
    DotISA("avxvnni", ("avxvnni", "avx512vnni"), 8, "llvm.x86.avx512.vpdpbusd.256"),
    DotISA("dotprod", ("dotprod",), 4, "llvm.aarch64.neon.sdot.v4i32.v16i8"),
    DotISA("neon", ("neon",), 4, ""),
)

SMULL = "llvm.aarch64.neon.smull.v8i16"  # int8x8 x int8x8 -> int16x8 (smull2 on high halves)
SADDLP = "llvm.aarch64.neon.saddlp.v4i32.v8i16"  # int16x8 -> int32x4, adjacent pairs summed
ADDP = "llvm.aarch64.neon.addp.v4i32"  # (a, b) int32x4 -> [a0+a1, a2+a3, b0+b1, b2+b3]


def dot(isa: DotISA, acc, a, b):
    """acc (int32 x lanes) + per lane the dot product of a's and b's 4 bytes there (int8 x 4 lanes):
    the ISA's one instruction, or on plain NEON smull + smull2 (int16 products: |w| <= 15 times
    |x| <= 127 fits), saddlp each (pairs -> int32) and addp (pairs of pairs): sdot's exact lanes."""
    from edgesmith.targets.tvm_api import tir_script as T

    if isa.intrinsic:
        return T.call_llvm_pure_intrin(f"int32x{isa.lanes}", isa.intrinsic, acc, a, b)
    halves = [[T.Shuffle([v], list(range(h * 8, h * 8 + 8))) for v in (a, b)] for h in (0, 1)]
    pairs = [T.call_llvm_pure_intrin("int32x4", SADDLP, T.call_llvm_pure_intrin("int16x8", SMULL, *h))
             for h in halves]
    return acc + T.call_llvm_pure_intrin("int32x4", ADDP, *pairs)


def has_feature(target, feature: str) -> bool:
    """Whether an LLVM CPU target has `feature` (LLVM's name: "dotprod", "i8mm", "avx512vnni" ...)."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # noqa: BLE001 - a feature this LLVM target does not know
        return False


def dot_isas(target) -> list[DotISA]:
    """The int8 dot-product instructions an LLVM CPU target has, widest first."""
    return [isa for isa in ISAS if any(has_feature(target, f) for f in isa.features)]


def pick(isas: list[DotISA], k: int, group: int) -> DotISA | None:
    """The widest instruction that tiles a reduction of k: whole vectors of words, whole
    groups in a vector. None: this layer keeps float activations."""
    if group % 8 or k % group:
        return None
    words, per_group = k // 8, group // 8
    for isa in isas:
        if words % isa.lanes == 0 and isa.lanes % per_group == 0:
            return isa
    return None


def q4_gemv_i8(n: int, k: int, group: int, scale_dtype: str, isa: DotISA, params: GemvParams = GemvParams()):
    """PrimFunc (x (1,1,k) f32, w (n,k/8) u32, s (n,k/group) scale_dtype) -> y (1,1,n) f32."""
    from edgesmith.targets.tvm_api import tir_script as T

    words, groups, lanes = k // 8, k // group, isa.lanes
    per_group = group // 8  # words per group
    scales_per_vec = lanes // per_group
    blocks = words // lanes
    rows, ahead = params.rows, params.prefetch_rows
    vbytes = f"int8x{4 * lanes}"
    vi32 = f"int32x{lanes}"
    nibbles = 0x0F0F0F0F

    @T.prim_func(private=True, s_tir=True)
    def gemv(x: T.Buffer((1, 1, k), "float32"), w: T.Buffer((n, words), "uint32"),
             s: T.Buffer((n, groups), scale_dtype), y: T.Buffer((1, 1, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        q = T.alloc_buffer((k,), "int32")
        x_scale = T.alloc_buffer((groups,), "float32")
        x_bytes = T.alloc_buffer((2, words), "int32")  # [0]: values 0,2,4,6 of each word; [1]: 1,3,5,7
        x_corr = T.alloc_buffer((words,), "int32")  # -8 * the word's 8 values (weights are q + 8)
        x_lane_scale = T.alloc_buffer((words,), "float32")
        for g in range(groups):
            amax = T.alloc_buffer((1,), "float32")
            amax[0] = T.float32(0)
            for i in range(group):
                amax[0] = T.max(amax[0], T.abs(x[0, 0, g * group + i]))
            x_scale[g] = amax[0] / T.float32(127)
            for i in range(group):
                q[g * group + i] = T.Cast("int32", T.round(T.if_then_else(
                    amax[0] > T.float32(0), x[0, 0, g * group + i] * (T.float32(127) / amax[0]), T.float32(0))))
        for j in range(words):
            x_bytes[0, j] = ((q[8 * j] & 255) | ((q[8 * j + 2] & 255) << 8) | ((q[8 * j + 4] & 255) << 16)
                             | ((q[8 * j + 6] & 255) << 24))
            x_bytes[1, j] = ((q[8 * j + 1] & 255) | ((q[8 * j + 3] & 255) << 8) | ((q[8 * j + 5] & 255) << 16)
                             | ((q[8 * j + 7] & 255) << 24))
            x_corr[j] = -8 * (q[8 * j] + q[8 * j + 1] + q[8 * j + 2] + q[8 * j + 3] + q[8 * j + 4]
                              + q[8 * j + 5] + q[8 * j + 6] + q[8 * j + 7])
            x_lane_scale[j] = x_scale[j // per_group]
        for chunk in T.parallel((n + rows - 1) // rows):
            # Per task, not per row: a buffer allocated in a parallel loop is a workspace
            # allocation (two calls per row cost as much as streaming the row itself).
            total = T.alloc_buffer((lanes,), "float32")
            acc = T.alloc_buffer((lanes,), "int32")
            w_scale = T.alloc_buffer((scales_per_vec,), "float32")
            for r in range(rows):
                if chunk * rows + r < n:
                    o: T.let[T.int32] = chunk * rows + r
                    for lane in T.vectorized(lanes):
                        total[lane] = T.float32(0)
                    for jb in range(blocks):
                        # The same place `ahead` rows on: one core alone keeps few enough misses in
                        # flight that it streamed 6.8 GB/s; prefetched, 10-12 (19 on two cores).
                        if ahead > 0:
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0",
                                                          T.address_of(w[T.min(o + ahead, n - 1), jb * lanes]),
                                                          T.int32(0), T.int32(3), T.int32(1)))
                        packed = T.reinterpret(w[o, T.ramp(jb * lanes, 1, lanes)], dtype=vi32)
                        low = T.bitwise_and(packed, T.broadcast(T.int32(nibbles), lanes))
                        high = T.bitwise_and(T.shift_right(packed, T.broadcast(T.int32(4), lanes)),
                                             T.broadcast(T.int32(nibbles), lanes))
                        first = dot(isa, x_corr[T.ramp(jb * lanes, 1, lanes)], T.reinterpret(low, dtype=vbytes),
                                    T.reinterpret(x_bytes[0, T.ramp(jb * lanes, 1, lanes)], dtype=vbytes))
                        acc[T.ramp(0, 1, lanes)] = dot(
                            isa, first, T.reinterpret(high, dtype=vbytes),
                            T.reinterpret(x_bytes[1, T.ramp(jb * lanes, 1, lanes)], dtype=vbytes))
                        for c in T.vectorized(scales_per_vec):
                            w_scale[c] = T.Cast("float32", s[o, jb * scales_per_vec + c])
                        for lane in T.vectorized(lanes):
                            total[lane] = total[lane] + (T.Cast("float32", acc[lane])
                                                         * x_lane_scale[jb * lanes + lane] * w_scale[lane // per_group])
                    # The lanes summed as a tree (a serial sum is a chain of 16 dependent adds).
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


def gemv_kernel(n: int, k: int, group: int, scale_dtype: str, isa: DotISA, params: GemvParams = GemvParams(),
                steps: bool = False):
    """Decode's int8 GEMV for this shape and instruction: on Arm (sdot or NEON) four rows at a time where
    the shape allows (kernels/int8_arm.py), else one row at a time (q4_gemv_i8). The same
    x (1,1,k), w (n,k/8), s (n,k/group) -> y (1,1,n) either way. steps: w's words are in step order
    (quantization/q4.py; only where int8_arm's kernels run the layer)."""
    from edgesmith.compiler.kernels import int8_arm

    if int8_arm.applies(isa, n, k, group):
        return int8_arm.q4_gemv_i8_rows4(n, k, group, scale_dtype, isa, params, steps=steps)
    assert not steps, (n, k, group)
    return q4_gemv_i8(n, k, group, scale_dtype, isa, params)


GEMM_TOKENS = GemmI8Params().tokens  # register tile: tokens x 2 vectors of outputs, int32 and float accumulators


def gemm_applies(isa: DotISA | None, n: int, k: int, group: int) -> bool:
    return isa is not None and pick([isa], k, group) is isa and n % (2 * isa.lanes) == 0


def gemm_kernel(n: int, k: int, group: int, scale_dtype: str, isa: DotISA, params: GemmI8Params = GemmI8Params(),
                steps: bool = False, i8mm: bool = False):
    """Prefill's int8 GEMM for this shape and instruction: on Arm with i8mm (the target's +i8mm:
    KernelFamily.i8mm) `smmla` (kernels/int8_smmla.py), on Arm dotprod `sdot` by element over
    4 rows (kernels/int8_arm.py) where the shape allows, else q4_gemm_i8 (x86 VNNI, plain NEON).
    The same x (1,t,k), w (n,k/8), s (n,k/group) -> y (1,t,n) either way. steps: as gemv_kernel's."""
    from edgesmith.compiler.kernels import int8_arm, int8_smmla

    if int8_smmla.applies(isa, i8mm, n, k, group):
        return int8_smmla.q4_gemm_i8_smmla(n, k, group, scale_dtype, isa, params, steps=steps)
    if int8_arm.gemm_applies(isa, n, k, group):
        return int8_arm.q4_gemm_i8_lanes(n, k, group, scale_dtype, isa, params, steps=steps)
    assert not steps, (n, k, group)
    return q4_gemm_i8(n, k, group, scale_dtype, isa, params)


def q4_gemm_i8(n: int, k: int, group: int, scale_dtype: str, isa: DotISA, params: GemmI8Params = GemmI8Params()):
    """Prefill: PrimFunc (x (1,t,k) f32, w (n,k/8) u32, s (n,k/group)) -> y (1,t,n) f32, t dynamic.

    x is quantized per token as in the GEMV (its bytes in the words' nibble order), once per
    call. Then per strip of 2 vectors of outputs (in parallel): the strip's words transposed
    (k/8, cols), its scales (groups, cols) as float; for every GEMM_TOKENS tokens and every
    group, int32 tiles of token x output dot products (one instruction: the strip's 4 bytes
    per output times a token's 4 x bytes, broadcast), then into float with both scales.
    """
    from edgesmith.targets.tvm_api import tir_script as T

    words, groups, lanes = k // 8, k // group, isa.lanes
    per_group = group // 8
    cols = 2 * lanes
    strips = n // cols
    rt = params.tokens
    vbytes, vi32 = f"int8x{4 * lanes}", f"int32x{lanes}"
    nibbles = 0x0F0F0F0F

    @T.prim_func(private=True, s_tir=True)
    def gemm(x_handle: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), scale_dtype),
             y_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(x_handle, (1, t, k), "float32")
        y = T.match_buffer(y_handle, (1, t, n), "float32")
        x_bytes = T.alloc_buffer(((t + rt - 1) // rt * rt, 2, words), "int32")
        x_corr = T.alloc_buffer(((t + rt - 1) // rt * rt, groups), "int32")  # -8 * sum of the group's int8 x
        x_scale = T.alloc_buffer(((t + rt - 1) // rt * rt, groups), "float32")
        for tok in T.parallel((t + rt - 1) // rt * rt):
            q = T.alloc_buffer((group,), "int32")
            for g in range(groups):
                amax = T.alloc_buffer((1,), "float32")
                amax[0] = T.float32(0)
                for i in range(group):
                    amax[0] = T.max(amax[0], T.abs(x[0, T.min(tok, t - 1), g * group + i]))
                if tok >= t:
                    amax[0] = T.float32(0)  # padding tokens: all zero
                x_scale[tok, g] = amax[0] / T.float32(127)
                for i in range(group):
                    q[i] = T.Cast("int32", T.round(T.if_then_else(
                        amax[0] > T.float32(0),
                        x[0, T.min(tok, t - 1), g * group + i] * (T.float32(127) / amax[0]), T.float32(0))))
                x_corr[tok, g] = 0
                for i in range(group):
                    x_corr[tok, g] = x_corr[tok, g] - 8 * q[i]
                for jw in range(per_group):
                    x_bytes[tok, 0, g * per_group + jw] = (
                        (q[8 * jw] & 255) | ((q[8 * jw + 2] & 255) << 8) | ((q[8 * jw + 4] & 255) << 16)
                        | ((q[8 * jw + 6] & 255) << 24))
                    x_bytes[tok, 1, g * per_group + jw] = (
                        (q[8 * jw + 1] & 255) | ((q[8 * jw + 3] & 255) << 8) | ((q[8 * jw + 5] & 255) << 16)
                        | ((q[8 * jw + 7] & 255) << 24))
        for strip in T.parallel(strips):
            w_t = T.alloc_buffer((words, cols), "int32")
            s_t = T.alloc_buffer((groups, cols), "float32")
            for j, c in T.grid(words, cols):
                w_t[j, c] = T.reinterpret(w[strip * cols + c, j], dtype="int32")
            for g, c in T.grid(groups, cols):
                s_t[g, c] = T.Cast("float32", s[strip * cols + c, g])
            for tb in range((t + rt - 1) // rt):
                acc_f = T.alloc_buffer((rt, cols), "float32")
                acc_i = T.alloc_buffer((rt, cols), "int32")
                for r in T.unroll(rt):
                    for c in T.vectorized(cols):
                        acc_f[r, c] = T.float32(0)
                for g in range(groups):
                    for r in T.unroll(rt):
                        for c in T.vectorized(cols):
                            acc_i[r, c] = x_corr[tb * rt + r, g]
                    for jw in T.unroll(per_group):
                        for half in T.unroll(2):
                            packed = w_t[g * per_group + jw, T.ramp(half * lanes, 1, lanes)]
                            low = T.bitwise_and(packed, T.broadcast(T.int32(nibbles), lanes))
                            high = T.bitwise_and(T.shift_right(packed, T.broadcast(T.int32(4), lanes)),
                                                 T.broadcast(T.int32(nibbles), lanes))
                            for r in T.unroll(rt):
                                first = dot(
                                    isa, acc_i[r, T.ramp(half * lanes, 1, lanes)], T.reinterpret(low, dtype=vbytes),
                                    T.reinterpret(T.broadcast(x_bytes[tb * rt + r, 0, g * per_group + jw], lanes),
                                                  dtype=vbytes))
                                acc_i[r, T.ramp(half * lanes, 1, lanes)] = dot(
                                    isa, first, T.reinterpret(high, dtype=vbytes),
                                    T.reinterpret(T.broadcast(x_bytes[tb * rt + r, 1, g * per_group + jw], lanes),
                                                  dtype=vbytes))
                    for r in T.unroll(rt):
                        for c in T.vectorized(cols):
                            acc_f[r, c] = acc_f[r, c] + (T.Cast("float32", acc_i[r, c]) * s_t[g, c]
                                                         * x_scale[tb * rt + r, g])
                for r, c in T.grid(rt, cols):
                    if tb * rt + r < t:
                        y[0, tb * rt + r, strip * cols + c] = acc_f[r, c]

    return gemm
