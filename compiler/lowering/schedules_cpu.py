"""CPU schedules: our rules for the linear layers, row reductions (norms) and everything else.

dlight's CPU rules are not used: GEMV's auto-unroll makes compiles minutes long (TVM-NOTES)
and leaves prefill matmuls serial; Reduction, on rms_norm, parallelizes the weight's cast and
recomputes the whole row's sum inside it (quadratic: 19 ms for one 3072-wide decode norm).
A rule returns None when it does not apply.

The linear rule finds its blocks by the names kernels/cpu.py gives them. Every linear reduces
over (blocks, lanes) with `lanes` the innermost axis; the lanes become a vector accumulator
(rfactor), summed once per output at the end: LLVM does not vectorize a float reduction by
itself (no fast-math), but it does vectorize this.
"""
from __future__ import annotations

from edgesmith.compiler.kernels import cpu as kernels
from edgesmith.compiler.tuning import DEFAULT, Tuning
from edgesmith.targets.tvm_api import SBlockRealize, Schedule, collect_vars_used_in_prim_expr, dlight, tirx  # noqa: E501

_SPATIAL, _REDUCE = 0, 2
# Blocks computed into their own buffer although inlining would be legal: inlined, RoPE's
# cos/sin table would be recomputed for every head and channel again.
_MATERIALIZED = (kernels.ROPE_TABLE,)


def _is_scheduled(func) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _root_blocks(sch: Schedule) -> list:
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - no root block: not a function of ours
        return []
    return list(sch.get_child_blocks(root))


def _is_reduction(sch: Schedule, block) -> bool:
    return any(iv.iter_type == _REDUCE for iv in sch.get(block).iter_vars)


def _inline_intermediates(sch: Schedule) -> list:
    """Inline every elementwise block whose result feeds another block (FuseTIR leaves each
    op of a fused function its own loop nest and buffer); the remaining blocks, in order."""
    for block in reversed(_root_blocks(sch)[:-1]):
        if _is_reduction(sch, block) or sch.get(block).name_hint.startswith(_MATERIALIZED):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable (e.g. read with a reduction's layout)
            pass
    return _root_blocks(sch)


def _work(sch: Schedule, loops) -> int | None:
    """Static trip count of a loop nest (None when any extent is dynamic)."""
    total = 1
    for loop in loops:
        extent = _static(sch.get(loop).extent)
        if extent is None:
            return None
        total *= extent
    return total


# Below this many inner iterations a kernel runs on one thread: a parallel launch is a
# barrier, microseconds on a quiet machine and a scheduler time slice on a busy one, and a
# decode step has ~15 small kernels per layer.
_PARALLEL_MIN_WORK = 1 << 15


def _parallel_if_large(sch: Schedule, block, loops) -> None:
    """Fuse `loops` (leading spatial loops of `block`) and run them in parallel, unless the
    whole nest under them is small and static."""
    if len(loops) > 1 and (_static(sch.get(loops[-1]).extent) or 0) >= 16:
        loops = loops[:-1]  # a long innermost loop stays serial, for LLVM to vectorize
    if not loops:
        return
    work = _work(sch, sch.get_loops(block))
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work is None or work >= _PARALLEL_MIN_WORK:
        sch.parallel(fused)


def _leading_spatial(sch: Schedule, block) -> list:
    """The loops above `block` that feed none of its reduction iterators, outermost first."""
    realize = _block_realize(sch, block)
    reduce_vars = set()
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):  # noqa: B905
        if iv.iter_type == _REDUCE:
            reduce_vars |= {v.name for v in collect_vars_used_in_prim_expr(value)}
    out = []
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var.name in reduce_vars:
            break
        out.append(loop)
    return out


def _block_realize(sch: Schedule, block):
    """The SBlockRealize of `block`: its innermost loop's body, or one statement of it."""
    target = sch.get(block)
    body = sch.get(sch.get_loops(block)[-1]).body
    for stmt in getattr(body, "seq", [body]):
        if isinstance(stmt, SBlockRealize) and stmt.block.same_as(target):
            return stmt
    raise ValueError(f"block {target.name_hint} is not directly under its innermost loop")


class Elementwise(dlight.ScheduleRule):
    """Fallback: intermediates inlined, then each remaining loop nest runs its leading spatial
    loops fused, in parallel when the nest is large."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            return None
        sch = Schedule(func)
        if not _root_blocks(sch):
            return None
        for block in _inline_intermediates(sch):
            try:
                _parallel_if_large(sch, block, _leading_spatial(sch, block))
            except Exception:  # noqa: BLE001 - an unusual nest keeps its serial loops
                continue
        return sch


class RowReduction(dlight.ScheduleRule):
    """Norms and the like: blocks that reduce each row of the output (rms_norm: sum of
    squares, rsqrt, scale). Everything is computed row by row under the output's row loops,
    rows in parallel when there are many (prefill), serial for one token (decode)."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            return None
        sch = Schedule(func)
        blocks = _root_blocks(sch)
        if not blocks or not any(_is_reduction(sch, b) for b in blocks) or _is_reduction(sch, blocks[-1]):
            return None
        blocks = _inline_intermediates(sch)
        out = blocks[-1]
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        # The reduction's spatial iterators are the rows; the output has one more (the row's items).
        rows = len([iv for iv in sch.get(reductions[0]).iter_vars if iv.iter_type != _REDUCE])
        out_loops = sch.get_loops(out)
        if rows == 0 or len(out_loops) != rows + 1:
            return None
        try:
            row = sch.fuse(*out_loops[:rows]) if rows > 1 else out_loops[0]
            for block in reversed(blocks[:-1]):
                sch.compute_at(block, row)
        except Exception:  # noqa: BLE001 - not row-shaped after all
            return None
        if _work(sch, [row]) is None or _work(sch, sch.get_loops(out)) >= _PARALLEL_MIN_WORK:
            sch.parallel(row)
        return sch


def _vector_bits(target) -> int:
    from tvm.target import codegen

    try:
        return int(codegen.llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: assume 128-bit SIMD
        return 128


def _rfactor_lanes(sch: Schedule, block):
    """rfactor over the innermost (lane) loop: a block of per-lane partial sums, the lanes last
    so that they are contiguous, kept in registers (local)."""
    out_ndim = len(sch.get(block).writes[0].region)
    rf = sch.rfactor(sch.get_loops(block)[-1], factor_axis=out_ndim)
    return rf


class Linear(dlight.ScheduleRule):
    """kernels.q4_linear / float_linear, with what FuseOps put after them (residual adds).

    Decode (GEMV, one token): output rows in parallel, each row's packed words streamed once
    with a vector accumulator of L lanes. Prefill (GEMM, t tokens): strips of 2 vectors of
    outputs in parallel; each strip of the weight is dequantized (or cast) once into a (k, cols)
    float buffer, then every R tokens accumulate an R x cols register tile by outer products (x
    broadcast times a weight vector). R: the tuning's GemmParams.tokens for the layer's (n, k),
    the same value kernels._gemm padded the tokens to.
    """

    def __init__(self, tuning: Tuning = DEFAULT):
        super().__init__()
        self.tuning = tuning

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            return None
        sch = Schedule(func)
        names = {sch.get(b).name_hint: b for b in _root_blocks(sch)}
        if kernels.GEMV in names:
            return self._gemv(sch, names)
        if kernels.GEMM in names:
            return self._gemm(sch, names, target)
        return None

    @staticmethod
    def _epilogue(sch: Schedule, names: dict, main: str) -> list:
        """Blocks after the linear (FuseOps' elementwise consumers), in order."""
        order = list(names)
        return [names[n] for n in order[order.index(main) + 1:]]

    def _gemv(self, sch: Schedule, names: dict):
        block = names[kernels.GEMV]
        rf = _rfactor_lanes(sch, block)
        rf_loops = sch.get_loops(rf)  # b, t, o, kb, kl (kl spatial in rf)
        row = rf_loops[2]
        word = names.get(kernels.Q4_WORD)
        if word is not None:
            sch.compute_at(word, rf_loops[3])
        sch.reverse_compute_at(block, row)
        for epi in self._epilogue(sch, names, kernels.GEMV):
            sch.reverse_compute_at(epi, row)
        sch.parallel(row)
        if word is not None:
            sch.vectorize(sch.get_loops(word)[-1])
        scales = names.get(kernels.Q4_SCALES_F32)
        if scales is not None:  # the block's few scales, converted together, kept in registers
            sch.compute_at(scales, rf_loops[3])
            sch.vectorize(sch.get_loops(scales)[-1])
        sch.vectorize(sch.get_loops(rf)[-1])
        sch.decompose_reduction(rf, sch.get_loops(rf)[3])
        return sch

    def _gemm(self, sch: Schedule, names: dict, target):
        block = names[kernels.GEMM]
        b, t, o, k = sch.get_loops(block)
        n = _static(sch.get(o).extent)
        row_tile = self.tuning.params("gemm", n, _static(sch.get(k).extent)).tokens
        lanes = _vector_bits(target) // 32
        cols = 2 * lanes  # register tile: row_tile tokens x 2 vectors of outputs
        while n % cols:
            cols //= 2
        vec = min(lanes, cols)
        m = sch.fuse(b, t)
        mo, mi = sch.split(m, [None, row_tile])
        oo, oi = sch.split(o, [None, cols])
        ovo, ov = sch.split(oi, [None, vec])
        sch.reorder(oo, mo, k, mi, ovo, ov)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, mo)
        tile = names[kernels.WEIGHT_TILE]
        sch.compute_at(tile, oo)
        for name in (kernels.Q4_WORDS_T, kernels.Q4_SCALES_T):
            if name in names:
                sch.compute_at(names[name], oo)
        for epi in self._epilogue(sch, names, kernels.GEMM):
            sch.reverse_compute_at(epi, mo)
        sch.parallel(oo)
        xpad = names[kernels.X_PADDED]
        sch.parallel(sch.fuse(*sch.get_loops(xpad)[:2]))
        # The strip of the weight: (k, cols), vectorized over the columns (a gather of `vec`
        # rows' words), the 8 nibbles of a word unrolled so the gather is shared.
        kk, to = sch.get_loops(tile)[-2:]
        if _static(sch.get(kk).extent) % 8 == 0:
            kw, nib = sch.split(kk, [None, 8])
            sch.reorder(kw, nib, to)
            sch.unroll(nib)
        sch.vectorize(sch.split(to, [None, vec])[1])
        sch.unroll(mi)
        sch.unroll(ovo)
        sch.vectorize(ov)
        sch.decompose_reduction(block, k)
        return sch


def apply(target, tuning: Tuning = DEFAULT):
    return dlight.ApplyDefaultSchedule(Linear(tuning), RowReduction(), Elementwise())
