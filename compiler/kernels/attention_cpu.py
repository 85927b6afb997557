"""CPU attention kernels for TVM's paged KV cache (`TIRPagedKVCache` on an llvm target).

TVM's own CPU kernels (`tvm.relax.frontend.nn.llm.kv_cache._attention_decode_cpu`,
`_attention_prefill_ragged_cpu`, `_attention_prefill_cpu`) are scalar and serial. These are
drop-in replacements with the same PrimFunc signatures (parameters, buffer shapes, elem_offset
conventions) and the same outputs: `output` and a base-2 `lse` = m + log2(d), where scores are
q.k * sm_scale * log2(e), m starts at -5e4 and d at 1.0 (so an empty row gives output 0 and
lse -5e4), and masked keys count with TVM's masked score (-5e4 * log2(e) * sm_scale in the ragged
kernel, -5e4 in the paged ones), which only matters when a row has no visible key at all.

Limits:
- rotary_mode must be 0: the kernels never apply RoPE (`rope_scale`, `rope_theta` and the RoPE
  position buffers are accepted and ignored) and fail at run time on any other rotary_mode. The
  pipeline hook (`replace_cpu_attention`, compiler/lowering/attention_swap.py) only swaps them
  into a module whose every paged KV cache is created with rope_mode NONE, so that failure is not
  reachable from our models.
- float32 or float16 q/k/v/pages/output (the cache's dtype); every product and sum is float32.
- any head_dim: vectors of 16 lanes where head_dim allows, else 8, 4, 2 or 1 (decode); prefill
  vectorizes over query rows, so head_dim only sets loop lengths.

Sliding window (`window` W > 0, a constant of the kernel): a query at position p sees the keys
at positions p - W < k <= p, as transformers' Phi-3 does (`kv_idx > q_idx - sliding_window`).
The kernels skip the pages and blocks before the window and mask inside it. Keys outside the
window do not count at all (a row that sees none gives output 0 and lse -5e4, which TVM's merge
weighs 0). Positions, in the key numbering of each call: decode, p = kv_len - 1 (its own key is
in the pages); causal prefill, row r of nq against nk keys, p = nk - nq + r; non-causal prefill
(the cache's cross-attention over the cached prefix, with this chunk's own keys in the ragged
call), p = nk + r.

A sliding cache (`sliding=True`: the `_sliding_window` kernels TVM's cache calls once it may
slide, compiler/context.py): the length info is (3, batch) = (last page's length, the window's
offset in the first page, attention sink length), the keys start `offset` slots into the first
page, and the cache appends after attention, so decode's query follows its keys: p = kv_len.
The sink must be 0 (our caches set none; a run-time assert says so otherwise).

Structure (all tasks in one `T.parallel` loop; per-task scratch is allocated inside it):
- decode (`batch_decode_paged_kv_cpu`): a task per (sequence, kv head), holding the group's query
  heads. A page (16 keys) at a time: each score a dot product vectorized over head_dim (partial
  sums in VL lanes, then a tree sum), online softmax per page, V accumulated vectorized over
  head_dim into the output row, normalized at the end.
- prefill (`batch_prefill_ragged_kv`, `batch_prefill_paged_kv_cpu`): a task per (query head,
  sequence); 32 query rows at a time held as vector lanes (q transposed to [head_dim, 32 rows],
  the accumulator as [head_dim, 32 rows]), so scores, the causal mask, max, exp2 and rescaling are
  all plain vector ops with the key scalar broadcast (an FMA with a broadcast memory operand).
  Keys in blocks of 8: a block's 8 x 32 scores (16 vector accumulators) and a 4-column slice of
  the accumulator stay in registers. Causal rows only visit the key blocks visible to the tile's
  last row.
exp2 inside the loops is a polynomial (Cephes exp2f, relative error ~2e-7) so it vectorizes;
the final lse uses the exact log2.
"""
from __future__ import annotations

import math

from edgesmith.compiler.tuning import AttentionParams
from edgesmith.targets.tvm_api import tirx
from edgesmith.targets.tvm_api import tir_script as T

LOG2E = math.log2(math.e)
NEG_INIT = -5e4  # TVM's initial running max; also the paged kernels' masked score
OFF = -3.0e38  # a lane's score when its key is masked inside a block: drops out of max and exp2
# The prefill tile's defaults (compiler/tuning.AttentionParams, which `edgesmith tune` varies):
ROWS = 32  # query rows per prefill tile (two 16-lane vectors)
KB = 8  # keys per prefill block
PAGE = 16

DECODE = "batch_decode_paged_kv_cpu"
PREFILL_RAGGED = "batch_prefill_ragged_kv"
PREFILL_PAGED = "batch_prefill_paged_kv_cpu"
SLIDING = "_sliding_window"  # TVM's suffix for the kernels a sliding cache calls (DECODE + SLIDING, ...)
KV_CACHE_CREATE = "vm.builtin.paged_attention_kv_cache_create"

# Cephes exp2f: 2^f = 1 + f * P(f) on [-0.5, 0.5]
_EXP2_P = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
           5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1)


def _f32(v):
    return tirx.const(v, "float32")


def fast_exp2(x):
    """2**x for float32 x as plain arithmetic (vectorizes); 0 below -126."""
    xc = tirx.max(tirx.min(x, _f32(127.0)), _f32(-127.0))
    k = tirx.round(xc)
    f = xc - k
    p = _f32(_EXP2_P[0])
    for c in _EXP2_P[1:]:
        p = p * f + _f32(c)
    p = p * f + _f32(1.0)
    two_k = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", k) + 127, 23))
    return tirx.Select(x < _f32(-126.0), _f32(0.0), p * two_k)


def _lanes(n: int) -> int:
    """The widest vector (16, 8, 4, 2 or 1 lanes) that divides n."""
    return next(v for v in (16, 8, 4, 2, 1) if n % v == 0)


def _chunk(n: int) -> int:
    return next(v for v in (4, 2, 1) if n % v == 0)


def _check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "float16"):
        raise ValueError(f"CPU attention for a {dtype} KV cache: float32 or float16 only")


def _window_start(window: int):
    """end -> the first key a query at position end - 1 sees: end - W (at least 0), or 0 without
    a window."""
    if window < 0:
        raise ValueError(f"sliding window {window}: it must be >= 0 (0: none)")
    if window == 0:
        return lambda end: tirx.const(0, "int32")
    return lambda end: tirx.max(end - tirx.const(window, "int32"), tirx.const(0, "int32"))


def _attrs(symbol: str) -> dict:
    return {"global_symbol": symbol, "tirx.is_scheduled": True, "tirx.noalias": True}


# ----------------------------------------------------------------------------------------------
# decode


def attention_decode_cpu(num_kv_heads: int, num_qo_heads: int, head_dim: int, qkv_dtype: str,
                         page_size: int = PAGE, window: int = 0, sliding: bool = False) -> tirx.PrimFunc:
    """`batch_decode_paged_kv_cpu` (rotary_mode 0 only; `window` > 0: sliding window; `sliding`:
    `batch_decode_paged_kv_cpu_sliding_window`, over a sliding cache)."""
    _check_dtype(qkv_dtype)
    if num_qo_heads % num_kv_heads:
        raise ValueError(f"{num_qo_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    H_qo, H_kv, D, P = num_qo_heads, num_kv_heads, head_dim, page_size
    G = H_qo // H_kv
    VL = _lanes(D)
    NC = D // VL
    log2e = _f32(LOG2E)
    # float32: the running output is accumulated in `output` itself (a scratch accumulator was
    # promoted to registers live across the page loop, then spilled); float16: in a float32
    # scratch per task, (G, D)
    in_place = qkv_dtype == "float32"
    OD = 1 if in_place else D
    window_start = _window_start(window)
    # a sliding cache appends after attention: the query's position is kv_len, not kv_len - 1
    after = 1 if sliding else 0

    @T.macro
    def hsum(acc, dst):
        # tree sum of the VL lanes of acc into the scalar dst[0]
        if VL >= 16:
            for i in T.vectorized(8):
                acc[i] = acc[i] + acc[i + 8]
        if VL >= 8:
            for i in T.vectorized(4):
                acc[i] = acc[i] + acc[i + 4]
        if VL >= 4:
            for i in T.vectorized(2):
                acc[i] = acc[i] + acc[i + 2]
        if VL >= 2:
            dst[0] = acc[0] + acc[1]
        else:
            dst[0] = acc[0]

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr(_attrs(DECODE + SLIDING if sliding else DECODE))
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, H_qo, D), qkv_dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, H_kv, P, D), qkv_dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, H_qo, D), qkv_dtype)
        lse = T.match_buffer(lse_handle, (B, H_qo), "float32")
        length_info = T.match_buffer(var_length_info, (3, B) if sliding else (B,), "int32",
                                     elem_offset=length_info_elem_offset)

        assert rotary_mode == 0, "edgesmith CPU attention: RoPE in the kernel (rotary_mode != 0) is not supported"
        if sliding:
            for b in range(B):
                assert length_info[2, b] == 0, "edgesmith CPU attention: a sliding cache with an attention sink"
        for task in T.parallel(B * H_kv):
            qs = T.alloc_buffer((G, D), "float32")  # q times sm_scale*log2(e)
            oacc = T.alloc_buffer((G, OD), "float32")
            s = T.alloc_buffer((G, P), "float32")
            m = T.alloc_buffer((G,), "float32")
            den = T.alloc_buffer((G,), "float32")
            acc = T.alloc_buffer((VL,), "float32")
            tot = T.alloc_buffer((1,), "float32")
            mx = T.alloc_buffer((1,), "float32")
            sc = T.alloc_buffer((1,), "float32")
            b: T.let[T.int32] = task // H_kv
            hk: T.let[T.int32] = task % H_kv
            pbeg: T.let[T.int32] = page_table_indptr[b]
            npages: T.let[T.int32] = page_table_indptr[b + 1] - pbeg
            # keys are slots off .. off + kv_len of the pages (off > 0: a sliding cache's window offset)
            off: T.let[T.int32] = length_info[1, b] if sliding else 0
            last: T.let[T.int32] = length_info[0, b] if sliding else length_info[b]
            kv_len: T.let[T.int32] = T.if_then_else(npages > 0, (npages - 1) * P + last - off, 0)
            # first visible slot: the window's start (the query's position is kv_len - 1 + after)
            lo: T.let[T.int32] = off + window_start(kv_len + after)
            end: T.let[T.int32] = off + kv_len
            for g in range(G):
                for d in T.vectorized(D):
                    qs[g, d] = T.Cast("float32", Q[b, hk * G + g, d]) * (sm_scale * log2e)
                    if in_place:
                        output[b, hk * G + g, d] = T.Cast(qkv_dtype, T.float32(0))
                    else:
                        oacc[g, d] = T.float32(0)
                m[g] = T.float32(NEG_INIT)
                den[g] = T.float32(1)
            for pi in range(lo // P, npages):
                # int64 page index: one pointer per key row (int32 index math left a sign
                # extension per load)
                page: T.let[T.int64] = T.Cast("int64", page_table_values[pbeg + pi])
                n: T.let[T.int32] = T.min(P, end - pi * P)
                j0: T.let[T.int32] = lo - pi * P  # slots j < j0 of this page are before the window
                if n > 0:
                    for g in range(G):
                        for j in T.unroll(P):
                            # outside the keys (past the end, before a sliding cache's offset): read a
                            # key (finite), score masked
                            jj: T.let[T.int32] = T.max(T.min(j, n - 1), j0) if sliding else T.min(j, n - 1)
                            for i in T.vectorized(VL):
                                acc[i] = qs[g, i] * T.Cast("float32", pages[page, 0, hk, jj, i])
                            for c in T.unroll(1, NC):
                                for i in T.vectorized(VL):
                                    acc[i] = acc[i] + qs[g, c * VL + i] * T.Cast("float32", pages[page, 0, hk, jj, c * VL + i])
                            hsum(acc, tot)
                            s[g, j] = T.Select(T.And(j < n, j >= j0), tot[0], T.float32(OFF))
                        mx[0] = m[g]
                        for j in range(P):
                            mx[0] = T.max(mx[0], s[g, j])
                        sc[0] = fast_exp2(m[g] - mx[0])
                        m[g] = mx[0]
                        for j in T.vectorized(P):
                            s[g, j] = fast_exp2(s[g, j] - mx[0])
                        tot[0] = T.float32(0)
                        for j in range(P):
                            tot[0] = tot[0] + s[g, j]
                        den[g] = den[g] * sc[0] + tot[0]
                        for c in range(NC):
                            if in_place:
                                for i in T.vectorized(VL):
                                    acc[i] = output[b, hk * G + g, c * VL + i] * sc[0]
                            else:
                                for i in T.vectorized(VL):
                                    acc[i] = oacc[g, c * VL + i] * sc[0]
                            for j in T.unroll(P):
                                for i in T.vectorized(VL):
                                    acc[i] = acc[i] + s[g, j] * T.Cast("float32", pages[page, 1, hk, T.max(T.min(j, n - 1), j0) if sliding else T.min(j, n - 1), c * VL + i])
                            if in_place:
                                for i in T.vectorized(VL):
                                    output[b, hk * G + g, c * VL + i] = acc[i]
                            else:
                                for i in T.vectorized(VL):
                                    oacc[g, c * VL + i] = acc[i]
            for g in range(G):
                for d in T.vectorized(D):
                    if in_place:
                        output[b, hk * G + g, d] = output[b, hk * G + g, d] * (T.float32(1) / den[g])
                    else:
                        output[b, hk * G + g, d] = T.Cast(qkv_dtype, oacc[g, d] * (T.float32(1) / den[g]))
                lse[b, hk * G + g] = m[g] + T.log2(den[g])

    return batch_decode_paged_kv


# ----------------------------------------------------------------------------------------------
# prefill: shared tile loop


def _tile_macro(h_kv: int, h_q: int, d_qk: int, d_v: int, dtype: str, paged: bool, window: int = 0,
                params: AttentionParams = AttentionParams(), sliding: bool = False):
    """The per-(head, sequence) loop over query tiles of params.rows rows (ROWS by default) and
    key blocks of params.keys (KB), for the ragged or the paged kernel.

    Keys are addressed by slot: key kk is slot kk + koff (koff > 0 only in a sliding cache,
    `sliding`), read as ragged: k[kv_base + slot, hk, dd]; paged: pages[page_values[pbeg +
    slot // 16], 0|1, hk, slot % 16, dd]. Blocks of keys are aligned to slots, so none crosses a
    page.
    """
    G = h_q // h_kv
    R, V, KB = params.rows, params.rows // 2, params.keys  # noqa: N806 (the module's names for them)
    DC = _chunk(d_v)
    log2e = _f32(LOG2E)
    window_start = _window_start(window)

    def first_key(row, nq, nk, causal):
        # the first key row `row` sees: its position p (module docstring), then p + 1 - W
        pos = tirx.if_then_else(causal > 0, nk - nq + row, nk + row)
        return window_start(pos + 1)

    def visible(kk, row, nq, nk, causal):
        # key kk for query row `row`: in the sequence, not after the query (causal), in the window
        cond = tirx.And(kk < nk, tirx.Or(causal <= 0, kk < nk - nq + row + 1))
        if sliding:  # slots before the sliding cache's offset hold no key of the sequence
            cond = tirx.And(cond, kk >= 0)
        return tirx.And(cond, kk >= first_key(row, nq, nk, causal)) if window else cond

    def slot(k0, j, koff, nk):
        # the slot read for key slot k0 + j: clamped into the keys' slots (finite values; the
        # score is masked)
        last = tirx.min(k0 + j, nk + koff - 1)
        return tirx.max(last, koff) if sliding else last

    def v_at(vbuf, kv_base, pvals, hk, kk, dd):
        if paged:
            return T.Cast("float32", vbuf[pvals[kv_base + kk // PAGE], 1, hk, kk % PAGE, dd])
        return T.Cast("float32", vbuf[kv_base + kk, hk, dd])

    # inside a block of KB keys starting at k0 (never crossing a page): the page is read once per
    # block, and the row index is int64 (with int32 index math LLVM kept a sign extension per load
    # in the inner loops instead of one pointer per key)
    def block_page(pvals, kv_base, k0):
        return pvals[kv_base + k0 // PAGE] if paged else T.int32(0)

    def k_blk(kbuf, kv_base, pg, hk, k0, kk, dd):
        if paged:
            return T.Cast("float32", kbuf[T.Cast("int64", pg), 0, hk, kk - k0 // PAGE * PAGE, dd])
        return T.Cast("float32", kbuf[T.Cast("int64", kv_base + kk), hk, dd])

    def v_blk(vbuf, kv_base, pg, hk, k0, kk, dd):
        if paged:
            return T.Cast("float32", vbuf[T.Cast("int64", pg), 1, hk, kk - k0 // PAGE * PAGE, dd])
        return T.Cast("float32", vbuf[T.Cast("int64", kv_base + kk), hk, dd])

    @T.macro
    def tiles(q, output, lse, kbuf, vbuf, pvals, kv_base, h, qb, nq, nk, causal, sm_scale, masked, koff):
        hk: T.let[T.int32] = h // G
        qt = T.alloc_buffer((d_qk, R), "float32")  # this tile's q, transposed, times sm_scale*log2(e)
        ot = T.alloc_buffer((d_v, R), "float32")  # the output accumulator, transposed
        # a block's scores, then probabilities, rows [0, 16) and [16, 32): two buffers, as each
        # must stay under TVM's 1 KiB stack limit to live in registers
        s0 = T.alloc_buffer((KB, V), "float32")
        s1 = T.alloc_buffer((KB, V), "float32")
        acc = T.alloc_buffer((DC, R), "float32")
        m = T.alloc_buffer((R,), "float32")
        den = T.alloc_buffer((R,), "float32")
        mn = T.alloc_buffer((R,), "float32")
        sc = T.alloc_buffer((R,), "float32")
        qscale: T.let[T.float32] = sm_scale * log2e
        for tile in range((nq + R - 1) // R):
            r0: T.let[T.int32] = tile * R
            nr: T.let[T.int32] = T.min(R, nq - r0)
            for r in range(R):
                for dd in range(d_qk):
                    qt[dd, r] = T.Select(
                        r < nr, T.Cast("float32", q[qb + T.min(r0 + r, nq - 1), h, dd]) * qscale, T.float32(0))
            for r in T.vectorized(R):
                m[r] = T.float32(NEG_INIT)
                den[r] = T.float32(1)
            for dd in range(d_v):
                for r in T.vectorized(R):
                    ot[dd, r] = T.float32(0)
            # keys visible to row r: [0, min(nk, nk - nq + r + 1)) if causal, else [0, nk), and
            # with a window from first_key(r) on (which grows with r: the tile's first row's is lowest)
            kv_hi: T.let[T.int32] = T.if_then_else(causal > 0, T.max(T.min(nk, nk - nq + r0 + nr), 0), nk)
            blk_end: T.let[T.int32] = (kv_hi + koff + KB - 1) // KB  # blocks of slots
            for blk in range(T.min((first_key(r0, nq, nk, causal) + koff) // KB, blk_end), blk_end):
                k0: T.let[T.int32] = blk * KB
                pg: T.let[T.int32] = block_page(pvals, kv_base, k0)
                # scores: s[j, r] = qt[:, r] . k[k0 + j]
                for j in T.unroll(KB):
                    for r in T.vectorized(V):
                        s0[j, r] = T.float32(0)
                        s1[j, r] = T.float32(0)
                for dd in range(d_qk):
                    for j in T.unroll(KB):
                        for r in T.vectorized(V):
                            s0[j, r] = s0[j, r] + qt[dd, r] * k_blk(kbuf, kv_base, pg, hk, k0, slot(k0, j, koff, nk), dd)
                            s1[j, r] = s1[j, r] + qt[dd, V + r] * k_blk(kbuf, kv_base, pg, hk, k0, slot(k0, j, koff, nk), dd)
                for j in T.unroll(KB):
                    for r in T.vectorized(V):
                        s0[j, r] = T.Select(visible(k0 + j - koff, r0 + r, nq, nk, causal), s0[j, r], T.float32(OFF))
                        s1[j, r] = T.Select(visible(k0 + j - koff, r0 + V + r, nq, nk, causal), s1[j, r], T.float32(OFF))
                for r in T.vectorized(R):
                    mn[r] = m[r]
                for j in T.unroll(KB):
                    for r in T.vectorized(V):
                        mn[r] = T.max(mn[r], s0[j, r])
                        mn[V + r] = T.max(mn[V + r], s1[j, r])
                for r in T.vectorized(R):
                    sc[r] = fast_exp2(m[r] - mn[r])
                    den[r] = den[r] * sc[r]
                    m[r] = mn[r]
                for j in T.unroll(KB):
                    for r in T.vectorized(V):
                        s0[j, r] = fast_exp2(s0[j, r] - mn[r])
                        den[r] = den[r] + s0[j, r]
                        s1[j, r] = fast_exp2(s1[j, r] - mn[V + r])
                        den[V + r] = den[V + r] + s1[j, r]
                for dc in range(d_v // DC):
                    for c in T.unroll(DC):
                        for r in T.vectorized(R):
                            acc[c, r] = ot[dc * DC + c, r] * sc[r]
                    for j in T.unroll(KB):
                        for c in T.unroll(DC):
                            for r in T.vectorized(V):
                                acc[c, r] = acc[c, r] + s0[j, r] * v_blk(vbuf, kv_base, pg, hk, k0, slot(k0, j, koff, nk), dc * DC + c)
                                acc[c, V + r] = acc[c, V + r] + s1[j, r] * v_blk(vbuf, kv_base, pg, hk, k0, slot(k0, j, koff, nk), dc * DC + c)
                    for c in T.unroll(DC):
                        for r in T.vectorized(R):
                            ot[dc * DC + c, r] = acc[c, r]
            for r in range(nr):
                row: T.let[T.int32] = qb + r0 + r
                nvis: T.let[T.int32] = T.if_then_else(causal > 0, T.max(T.min(nk, nk - nq + r0 + r + 1), 0), nk)
                if nvis < nk:
                    # TVM counts masked keys with score `masked`: only visible when no key is
                    mf: T.let[T.float32] = T.max(m[r], masked)
                    keep: T.let[T.float32] = T.exp2(m[r] - mf)
                    w: T.let[T.float32] = T.exp2(masked - mf)
                    den[r] = den[r] * keep + T.Cast("float32", nk - nvis) * w
                    m[r] = mf
                    if w > T.float32(0) or keep != T.float32(1):
                        for dd in range(d_v):
                            ot[dd, r] = ot[dd, r] * keep
                        if w > T.float32(0):
                            for kk in range(nvis, nk):
                                for dd in range(d_v):
                                    ot[dd, r] = ot[dd, r] + w * v_at(vbuf, kv_base, pvals, hk, kk + koff, dd)
                inv: T.let[T.float32] = T.float32(1) / den[r]
                for dd in range(d_v):
                    output[row, h, dd] = T.Cast(dtype, ot[dd, r] * inv)
                lse[row, h] = m[r] + T.log2(den[r])

    return tiles


def attention_prefill_ragged_cpu(h_kv: int, h_q: int, d_qk: int, d_v: int, dtype: str,
                                 window: int = 0, params: AttentionParams = AttentionParams()) -> tirx.PrimFunc:
    """`batch_prefill_ragged_kv` (rotary_mode 0 only; `window` > 0: sliding window)."""
    _check_dtype(dtype)
    if h_q % h_kv:
        raise ValueError(f"{h_q} query heads are not a multiple of {h_kv} kv heads")
    tiles = _tile_macro(h_kv, h_q, d_qk, d_v, dtype, paged=False, window=window, params=params)
    masked_score = _f32(NEG_INIT * LOG2E)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        var_kv_indptr: T.handle,
        var_q_rope_position: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr(_attrs(PREFILL_RAGGED))
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()

        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        assert rotary_mode == 0, "edgesmith CPU attention: RoPE in the kernel (rotary_mode != 0) is not supported"
        for task in T.parallel(h_q * batch_size):
            h: T.let[T.int32] = task // batch_size
            b: T.let[T.int32] = task % batch_size
            qb: T.let[T.int32] = q_indptr[b]
            nq: T.let[T.int32] = q_indptr[b + 1] - qb
            kb: T.let[T.int32] = kv_indptr[b]
            nk: T.let[T.int32] = kv_indptr[b + 1] - kb
            masked: T.let[T.float32] = masked_score * sm_scale
            tiles(q, output, lse, k, v, kv_indptr, kb, h, qb, nq, nk, causal, sm_scale, masked, 0)

    return batch_prefill_ragged_kv


def attention_prefill_paged_cpu(h_kv: int, h_q: int, d: int, dtype: str, page_size: int = PAGE,
                                window: int = 0, params: AttentionParams = AttentionParams(),
                                sliding: bool = False) -> tirx.PrimFunc:
    """`batch_prefill_paged_kv_cpu` (rotary_mode 0 only; `window` > 0: sliding window; `sliding`:
    `batch_prefill_paged_kv_cpu_sliding_window`, over a sliding cache)."""
    _check_dtype(dtype)
    if h_q % h_kv:
        raise ValueError(f"{h_q} query heads are not a multiple of {h_kv} kv heads")
    if page_size != PAGE:
        raise ValueError(f"page size {page_size}: the CPU kernels use {PAGE}")
    tiles = _tile_macro(h_kv, h_q, d, d, dtype, paged=True, window=window, params=params, sliding=sliding)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_pages: T.handle,
        var_page_indptr: T.handle,
        var_page_values: T.handle,
        var_length_info: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr(_attrs(PREFILL_PAGED + SLIDING if sliding else PREFILL_PAGED))
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_elem_offset = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, PAGE, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        length_info = T.match_buffer(var_length_info, (3, batch_size) if sliding else (batch_size,), "int32",
                                     elem_offset=length_info_elem_offset)

        assert rotary_mode == 0, "edgesmith CPU attention: RoPE in the kernel (rotary_mode != 0) is not supported"
        if sliding:
            for b in range(batch_size):
                assert length_info[2, b] == 0, "edgesmith CPU attention: a sliding cache with an attention sink"
        for task in T.parallel(h_q * batch_size):
            h: T.let[T.int32] = task // batch_size
            b: T.let[T.int32] = task % batch_size
            qb: T.let[T.int32] = q_indptr[b]
            nq: T.let[T.int32] = q_indptr[b + 1] - qb
            pbeg: T.let[T.int32] = page_indptr[b]
            npages: T.let[T.int32] = page_indptr[b + 1] - pbeg
            # keys are slots koff .. koff + nk of the pages (koff > 0: a sliding cache's window offset)
            koff: T.let[T.int32] = length_info[1, b] if sliding else 0
            last: T.let[T.int32] = length_info[0, b] if sliding else length_info[b]
            nk: T.let[T.int32] = T.if_then_else(npages > 0, (npages - 1) * PAGE + last - koff, 0)
            masked: T.let[T.float32] = T.float32(NEG_INIT)
            tiles(q, output, lse, pages, pages, page_values, pbeg, h, qb, nq, nk, causal, sm_scale, masked, koff)

    return batch_prefill_paged_kv_cpu
