"""GPU schedules for the fused decode kernels dlight's rules do not take (kernels/gpu.py).

(SiLU(gate) * up as down_proj's prologue, kernels/gpu.q4_linear_silu_mul, goes here too: it reads
two elements of its input per value, which dlight's GEMV analysis refuses; the same schedule
without the sum of squares.)

NormGEMV: RMSNorm as the prologue of an int4 GEMV (kernels/gpu.q4_linear_normed), one token.
A PrimFunc with two reductions over k (the row's sum of squares, and the dot of each weight row
with x*g) and an epilogue scaling the dot by rsqrt(mean + eps). dlight's GEMV rule wants one
reduction, so this rule schedules it:
  - a work-group of `threads` items (fewer where k's words are not a multiple: tuning.gpu_threads)
    computes `rows` rows; item tx takes every threads-th step of `words` consecutive int4 words
    (8 values each) of k, keeps `rows` partial dots in registers (x loaded once serves every row),
    and the items' partials are summed across the work-group (TVM's thread allreduce: warp
    shuffles on CUDA, local memory elsewhere);
  - words > 1: a step's words (rows x words) are first loaded into registers, `words` at a time
    as one vector load (vload4 / uint4 / vec4<u32>), then decoded from there;
  - the same items first sum x*x over the same split of k, also reduced across the work-group:
    every work-group recomputes it (k values against the rows*k weights it streams), so no
    separate RMSNorm kernel runs;
  - the dequantize and x*g are inlined into the dot (nibbles decoded in registers).
`threads`, `rows` and `words` are the kernel's GpuGemvParams (compiler/tuning.py), looked up by
its shape key (gemv_gpu:n:k:g:s:p, read off the buffers its blocks read) in the compile's Tuning;
the defaults (64 items, 4 rows, 1 word: the choices this schedule had before they were params)
where the record has no entry. The rule applies to PrimFuncs holding a block named `norm_sumsq*`
or `silu_mul*`, and to a plain one-token int4 GEMV (o_proj's: a `q4_matmul*` block alone) only
where the Tuning gives its shape params other than the defaults: by default dlight's gpu.GEMV
schedules that one (an untuned bundle is unchanged); tuned, this schedule with the tuned params.
None otherwise.
"""
from __future__ import annotations

from edgesmith.compiler.tuning import (DEFAULT, GEMV_VALUES as VALUES, GpuGemvParams, gpu_gemv_key, gpu_threads,
                                       gpu_words)
from edgesmith.targets.tvm_api import Schedule


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == 2 for iv in sch.get(block).iter_vars)  # 2: CommReduce


def shape_key(sch, prologue: str) -> str | None:
    """The kernel's gemv_gpu key, read off the buffers its blocks read: w (n, k/8) uint32, the
    scales (n, k/G) the other 2-d float buffer with n rows. None when the shapes are not static
    (then: the defaults)."""
    bufs = {}
    for block in _blocks(sch):
        for region in sch.get(block).reads:
            bufs.setdefault(region.source.name, region.source)  # a tensor (buffer) the block reads
    dims = lambda b: [int(d) if isinstance(d, int) or hasattr(d, "value") else None for d in b.shape]  # noqa: E731
    w = next((b for b in bufs.values() if str(b.dtype) == "uint32" and len(b.shape) == 2), None)
    if w is None or None in dims(w):
        return None
    n, words = dims(w)
    s = next((b for b in bufs.values() if not b.same_as(w) and len(b.shape) == 2 and str(b.dtype).startswith("float")
              and dims(b)[0] == n and dims(b)[1]), None)
    if s is None or None in dims(s) or (words * VALUES) % dims(s)[1]:
        return None
    return gpu_gemv_key(prologue, n, words * VALUES, words * VALUES // dims(s)[1], str(s.dtype))


def _one_token(sch, dot) -> bool:
    """The dot computes one token's rows (decode: every spatial extent static, all but the rows' 1),
    not a prefill's (a seq_len loop) nor a batch's."""
    spatial = [iv.dom.extent for iv in sch.get(dot).iter_vars if iv.iter_type != 2]
    if not all(hasattr(e, "value") for e in spatial):
        return False
    return sum(int(e.value) > 1 for e in spatial) <= 1


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


def norm_gemv(func, tuning=None):
    """The func's Schedule, or None when `func` is not a NormGEMV. tuning: compiler/tuning.Tuning
    (None: the defaults)."""
    sch = Schedule(func)
    names = {sch.get(b).name_hint: b for b in _blocks(sch)}
    sumsq = next((b for n, b in names.items() if n.startswith("norm_sumsq")), None)
    silu = any(n.startswith("silu_mul") for n in names)
    dot = next((b for n, b in names.items() if n.startswith("q4_matmul")), None)
    if dot is None:
        return None
    if sumsq is None and not silu:  # a plain int4 GEMV (o_proj's): dlight's GEMV unless tuned otherwise
        key = shape_key(sch, "plain") if _one_token(sch, dot) else None
        params = (tuning or DEFAULT).by_key(key) if key else GpuGemvParams()
        if params == GpuGemvParams():
            return None
    else:
        key = shape_key(sch, "norm" if sumsq is not None else "silu")
        params = (tuning or DEFAULT).by_key(key) if key else GpuGemvParams()
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
    # the dot: item tx takes word steps tx, tx + threads, ... (a step: `words` words); the sum of
    # squares: values tx, tx + threads, ...
    *_, k = sch.get_loops(dot)
    words = gpu_words(int(sch.get(k).extent), params.words)
    threads = gpu_threads(int(sch.get(k).extent) // words, params.threads)
    if words == 1:
        _, tx, _ = sch.split(k, [None, threads, VALUES])
    else:  # item tx takes `words` consecutive words a step: one vector load of them
        _, tx, _, _ = sch.split(k, [None, threads, words, VALUES])
    rf = sch.rfactor(tx, 0)
    partials = [(rf, dot)]
    if sumsq is not None:
        *_, k2 = sch.get_loops(sumsq)
        _, tx2 = sch.split(k2, [None, threads])
        partials.append((sch.rfactor(tx2, 0), sumsq))

    # the output's rows: blockIdx over groups of `rows`; everything else computed per work-group
    if bare:  # the dot's write-back is the output: its rows (all loops but the items') split
        *rows, item = sch.get_loops(dot)
        bx, inner = sch.split(sch.fuse(*rows), [None, params.rows])
        sch.bind(bx, "blockIdx.x")
        sch.compute_at(rf, bx, preserve_unit_loops=True)
    else:
        bx, _ = sch.split(sch.fuse(*sch.get_loops(out)), [None, params.rows])
        sch.bind(bx, "blockIdx.x")
        for partial, total in partials:
            sch.compute_at(total, bx, preserve_unit_loops=True)
            sch.compute_at(partial, bx, preserve_unit_loops=True)
    for partial, total in partials:
        _items_first(sch, partial, threads)
        sch.set_scope(partial, 0, "local")
        _cross_item_sum(sch, total, threads)
    if words > 1:
        _words_in_registers(sch, rf, words)
    return sch


def _words_in_registers(sch, rf, words: int):
    """The weight words an item's step reads (rows x `words`, consecutive in each row) loaded into
    registers first, `words` at a time as one vector load, then decoded from there."""
    loops = sch.get_loops(rf)  # bx, the item (threadIdx.x), the steps, the words, the values, the rows
    item = next(i for i, lp in enumerate(loops) if sch.get(lp).thread_binding is not None
                and sch.get(lp).thread_binding.thread_tag == "threadIdx.x")
    step = loops[item + 1]
    w_index = next(i for i, r in enumerate(sch.get(rf).reads) if str(r.source.dtype) == "uint32")
    cached = sch.cache_read(rf, w_index, "local")
    sch.compute_at(cached, step, preserve_unit_loops=True)
    *_, inner = sch.get_loops(cached)
    sch.vectorize(inner)
