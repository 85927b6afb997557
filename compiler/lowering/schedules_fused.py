"""GPU schedules for the fused decode kernels dlight's rules do not take (kernels/gpu.py).

(SiLU(gate) * up as down_proj's prologue, kernels/gpu.q4_linear_silu_mul, goes here too: it reads
two elements of its input per value, which dlight's GEMV analysis refuses; the same schedule
without the sum of squares.)

NormGEMV: RMSNorm as the prologue of an int4 GEMV (kernels/gpu.q4_linear_normed), one token.
A PrimFunc with two reductions over k (the row's sum of squares, and the dot of each weight row
with x*g) and an epilogue scaling the dot by rsqrt(mean + eps). dlight's GEMV rule wants one
reduction, so this rule schedules it:
  - a work-group of THREADS items (fewer where k's words are not a multiple: _threads_for)
    computes ROWS rows; item tx takes every THREADS-th group of 8 values (one int4 word) of k, keeps ROWS partial dots in registers (x loaded once serves
    every row), and the items' partials are summed across the work-group (TVM's thread
    allreduce: warp shuffles on CUDA, local memory elsewhere);
  - the same items first sum x*x over the same split of k, also reduced across the work-group:
    every work-group recomputes it (k values against the ROWS*k weights it streams), so no
    separate RMSNorm kernel runs;
  - the dequantize and x*g are inlined into the dot (nibbles decoded in registers).
The rule applies to PrimFuncs holding a block named `norm_sumsq*` or `silu_mul*` and returns
None otherwise.
"""
from __future__ import annotations

from edgesmith.targets.tvm_api import Schedule

ROWS = 4      # rows per work-group (each item keeps ROWS partial dots)
THREADS = 64  # items per work-group splitting k
VALUES = 8    # k values an item takes per step: one uint32 word of eight nibbles


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == 2 for iv in sch.get(block).iter_vars)  # 2: CommReduce


def _threads_for(k: int) -> int:
    """Items splitting k: the largest power of two up to THREADS dividing k's words. (Splits
    that do not divide would need a guard, which compute_at drops when it rebuilds the loops.)"""
    words = max(1, k // VALUES)
    t = 1
    while t < THREADS and words % (2 * t) == 0:
        t *= 2
    return t


def _items_first(sch, block, threads: int):
    """The rfactor'd partial sums under bx: the items' loop (spatial, `threads` long) outermost and
    bound to threadIdx.x, the reduction loops next, the rows innermost (one x value serves every
    row), the accumulators initialised before the reduction."""
    loops = sch.get_loops(block)[1:]  # compute_at made one loop per block var, in their order
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    item, rest = loops[0], list(zip(loops[1:], kinds[1:]))
    reduce = [lp for lp, kind in rest if kind == 2]
    rows = [lp for lp, kind in rest if kind != 2]
    sch.reorder(item, *reduce, *rows)
    sch.bind(item, "threadIdx.x")
    sch.decompose_reduction(block, reduce[0])


def _cross_item_sum(sch, block, threads: int):
    """The write-back block rfactor left (a sum over the items' partials, under bx): its item loop
    (the one of `threads` iterations) bound to threadIdx.x, innermost (TVM's thread allreduce), the
    result in registers."""
    loops = sch.get_loops(block)[1:]
    items = [lp for lp in loops if int(sch.get(lp).extent) == threads and
             any(iv.iter_type == 2 for iv in sch.get(block).iter_vars)]
    item = items[0]
    rest = [lp for lp in loops if lp != item]
    if rest:
        sch.reorder(*rest, item)
    sch.bind(item, "threadIdx.x")
    if sch.get(block).name_hint != sch.get(_blocks(sch)[-1]).name_hint:  # not the function's output
        sch.set_scope(block, 0, "local")


def norm_gemv(func):
    """The func's Schedule, or None when `func` is not a NormGEMV."""
    sch = Schedule(func)
    names = {sch.get(b).name_hint: b for b in _blocks(sch)}
    sumsq = next((b for n, b in names.items() if n.startswith("norm_sumsq")), None)
    silu = any(n.startswith("silu_mul") for n in names)
    dot = next((b for n, b in names.items() if n.startswith("q4_matmul")), None)
    if dot is None or (sumsq is None and not silu):
        return None
    # inline every spatial block but the last (the output): the dequantize and x*g into the dot,
    # the epilogue's scale into whatever elementwise op FuseOps put after it
    blocks = _blocks(sch)
    for b in blocks[:-1]:
        if not _is_reduction(sch, b):
            sch.compute_inline(b)
    out = _blocks(sch)[-1]
    bare = _is_reduction(sch, out)  # the dot is the output: no epilogue (a GEMV with a prologue only)
    if bare and sch.get(out).name_hint != sch.get(dot).name_hint:
        return None

    # split k among the items (rfactor first, while each reduction is alone in its loop nest):
    # the dot: item tx takes words tx, tx + threads, ...; the sum of squares: values tx, tx + threads, ...
    *_, k = sch.get_loops(dot)
    threads = _threads_for(int(sch.get(k).extent))
    _, tx, _ = sch.split(k, [None, threads, VALUES])
    rf = sch.rfactor(tx, 0)
    partials = [(rf, dot)]
    if sumsq is not None:
        *_, k2 = sch.get_loops(sumsq)
        _, tx2 = sch.split(k2, [None, threads])
        partials.append((sch.rfactor(tx2, 0), sumsq))

    # the output's rows: blockIdx over groups of ROWS; everything else computed per work-group
    if bare:  # the dot's write-back is the output: its rows (all loops but the items') split
        *rows, item = sch.get_loops(dot)
        bx, inner = sch.split(sch.fuse(*rows), [None, ROWS])
        sch.bind(bx, "blockIdx.x")
        sch.compute_at(rf, bx, preserve_unit_loops=True)
    else:
        bx, _ = sch.split(sch.fuse(*sch.get_loops(out)), [None, ROWS])
        sch.bind(bx, "blockIdx.x")
        for partial, total in partials:
            sch.compute_at(total, bx, preserve_unit_loops=True)
            sch.compute_at(partial, bx, preserve_unit_loops=True)
    for partial, total in partials:
        _items_first(sch, partial, threads)
        sch.set_scope(partial, 0, "local")
        _cross_item_sum(sch, total, threads)
    return sch
