"""Our CPU attention kernels (compiler/kernels/attention_cpu.py) against numpy and against TVM's own.

Hand-built pages, page tables and indptrs: several sequences per batch, lengths that are not
multiples of 16 and cross page boundaries, shuffled page numbers, a GQA case, causal and
non-causal prefill, and a prompt longer than its keys (rows that see no key: TVM's masked-score
semantics). The numpy reference is softmax attention written out with TVM's conventions:
base-2 lse = m + log2(d), m starting at -5e4 and d at 1, masked keys scored -5e4*log2(e)*sm_scale
(ragged) or -5e4 (paged).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import tvm  # a hard dependency (requirements.lock): missing, the test fails

from edgesmith.compiler.kernels import attention_cpu as ac  # noqa: E402
from edgesmith.compiler.lowering import attention_swap  # noqa: E402
from edgesmith.targets.tvm_api import tirx  # noqa: E402

LOG2E = math.log2(math.e)
RTOL, ATOL = 1e-5, 1e-5
SHAPES = [  # (h_kv, h_q, d)
    (4, 4, 96),  # Phi-3-mini's head_dim, MHA
    (2, 8, 128),  # GQA 4:1 (Phi-3-medium's ratio), head_dim 128
]


@functools.lru_cache(maxsize=None)
def _target():
    from edgesmith.targets import presets

    return tvm.target.Target(presets.get_preset("host").tvm_target())


@functools.lru_cache(maxsize=None)
def _build(kind: str, ours: bool, h_kv: int, h_q: int, d: int, dtype: str = "float32", window: int = 0,
           tile: tuple | None = None):
    """tile (rows, keys): our prefill kernels with that AttentionParams (what `edgesmith tune` varies)."""
    from edgesmith.compiler.tuning import AttentionParams
    from edgesmith.targets.tvm_api import kv_cache_mod as kvc

    extra = {"params": AttentionParams(*tile)} if tile else {}
    if kind == "decode":
        f = (ac.attention_decode_cpu(h_kv, h_q, d, dtype, window=window) if ours
             else kvc._attention_decode_cpu(h_kv, h_q, d, dtype, False, {}))
    elif kind == "ragged":
        f = (ac.attention_prefill_ragged_cpu(h_kv, h_q, d, d, dtype, window=window, **extra) if ours
             else kvc._attention_prefill_ragged_cpu(h_kv, h_q, d, d, dtype, {}))
    else:
        f = (ac.attention_prefill_paged_cpu(h_kv, h_q, d, dtype, window=window, **extra) if ours
             else kvc._attention_prefill_cpu(h_kv, h_q, d, dtype, False, {}))
    name = str(f.attrs["global_symbol"])
    ex = tvm.compile(tvm.IRModule({name: f}), target=_target())
    return ex[name]


def _t(a):
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def _ref(q, keys, vals, visible, masked_score, sm_scale, absent=None):
    """One row of one head: float64 softmax attention with TVM's init and masking conventions.
    `absent`: keys that do not count at all (outside a sliding window)."""
    if absent is not None:
        keys, vals, visible = keys[~absent], vals[~absent], visible[~absent]
    s = (keys @ q.astype(np.float64)) * sm_scale * LOG2E
    s = np.where(visible, s, masked_score)
    m = max(-5e4, s.max()) if len(s) else -5e4
    p = np.exp2(s - m)
    den = np.exp2(-5e4 - m) + p.sum()
    return (p @ vals) / den, m + math.log2(den)


def _paged(rng, lens, h_kv, d, extra_pages=3, dtype="float32"):
    """Pages holding `lens` keys per sequence at shuffled page numbers, garbage in unused slots."""
    npages = [(n + 15) // 16 for n in lens]
    total = sum(npages) + extra_pages
    pages = rng.standard_normal((total, 2, h_kv, 16, d)).astype(dtype)
    order = rng.permutation(total)[: sum(npages)].astype("int32")
    indptr = np.concatenate([[0], np.cumsum(npages)]).astype("int32")
    last = np.array([n - 16 * (p - 1) if p else 0 for n, p in zip(lens, npages)], "int32")
    kv = []  # (keys, values) per sequence, [n, h_kv, d]
    for i, n in enumerate(lens):
        pg = order[indptr[i]:indptr[i + 1]]
        kk = pages[pg, 0].transpose(0, 2, 1, 3).reshape(-1, h_kv, d)[:n].copy()
        vv = pages[pg, 1].transpose(0, 2, 1, 3).reshape(-1, h_kv, d)[:n].copy()
        kv.append((kk, vv))
    # unused pages and the slots past each sequence's end hold NaN: they must never get through
    pages[np.setdiff1d(np.arange(total), order)] = np.nan
    for i, n in enumerate(lens):
        if npages[i] and n % 16:
            pages[order[indptr[i + 1] - 1], :, :, n % 16:, :] = np.nan
    return pages, indptr, order, last, kv


def _check(out, lse, ref_out, ref_lse):
    np.testing.assert_allclose(out, ref_out, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lse, ref_lse, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("h_kv,h_q,d", SHAPES)
def test_decode(h_kv, h_q, d):
    rng = np.random.default_rng(0)
    lens = [1, 37, 16, 0, 70]  # one page, crossing pages, exactly a page, empty, several
    sm_scale = d ** -0.5
    pages, indptr, values, last, kv = _paged(rng, lens, h_kv, d)
    B = len(lens)
    q = rng.standard_normal((B, h_q, d)).astype("float32") * 2
    g = h_q // h_kv
    ref_out = np.zeros((B, h_q, d))
    ref_lse = np.zeros((B, h_q))
    for b, n in enumerate(lens):
        for h in range(h_q):
            kk, vv = kv[b][0][:, h // g], kv[b][1][:, h // g]
            ref_out[b, h], ref_lse[b, h] = _ref(q[b, h], kk, vv, np.ones(n, bool), 0.0, sm_scale)

    zeros = np.zeros(B, "int32")
    results = {}
    for ours in (True, False):
        out, lse = np.zeros((B, h_q, d), "float32"), np.zeros((B, h_q), "float32")
        to, tl = _t(out), _t(lse)
        _build("decode", ours, h_kv, h_q, d)(
            _t(q), _t(pages), _t(indptr), _t(values), _t(last), _t(zeros), _t(zeros), to, tl,
            0, 1.0, 10000.0, sm_scale)
        results[ours] = to.numpy(), tl.numpy()
    _check(*results[True], ref_out, ref_lse)
    # TVM's kernel: NaN in the unused slots would not reach it either; same answer
    _check(*results[True], *results[False])


def _prefill_ref(q, qo_lens, kv, h_q, g, causal, masked_score, sm_scale, window=0):
    """With a window W, row i sees keys after its position p minus W: p = nk - nq + i (causal),
    p = nk + i (non-causal: the queries follow the cached keys)."""
    total = sum(qo_lens)
    d = q.shape[-1]
    out = np.zeros((total, h_q, d))
    lse = np.zeros((total, h_q))
    row = 0
    for b, nq in enumerate(qo_lens):
        kk_all, vv_all = kv[b]
        nk = len(kk_all)
        for i in range(nq):
            vis = np.arange(nk) < (min(nk, nk - nq + i + 1) if causal else nk)
            pos = nk - nq + i if causal else nk + i
            absent = np.arange(nk) <= pos - window if window else None
            for h in range(h_q):
                out[row, h], lse[row, h] = _ref(q[row, h], kk_all[:, h // g].astype(np.float64),
                                                vv_all[:, h // g].astype(np.float64), vis, masked_score,
                                                sm_scale, absent)
            row += 1
    return out, lse


RAGGED_CASES = [  # (qo_lens, kv_lens)
    ([19, 1, 40], [19, 1, 40]),  # a prompt per sequence: the cache's use
    ([5, 23], [30, 23]),  # more keys than queries: rows aligned to the end
    ([20], [7]),  # more queries than keys: the first rows see no key
]


TILES = [None, (16, 4)]  # the default tile (32 rows, blocks of 8 keys), and the other corner of tune's space


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("h_kv,h_q,d", SHAPES)
@pytest.mark.parametrize("causal", [1, 0])
@pytest.mark.parametrize("case", range(len(RAGGED_CASES)))
def test_prefill_ragged(h_kv, h_q, d, causal, case, tile):
    qo_lens, kv_lens = RAGGED_CASES[case]
    rng = np.random.default_rng(case)
    sm_scale = d ** -0.5
    g = h_q // h_kv
    q = rng.standard_normal((sum(qo_lens), h_q, d)).astype("float32") * 2
    k = rng.standard_normal((sum(kv_lens), h_kv, d)).astype("float32")
    v = rng.standard_normal((sum(kv_lens), h_kv, d)).astype("float32")
    q_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype("int32")
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype("int32")
    kv = [(k[kv_indptr[b]:kv_indptr[b + 1]], v[kv_indptr[b]:kv_indptr[b + 1]]) for b in range(len(kv_lens))]
    ref = _prefill_ref(q, qo_lens, kv, h_q, g, causal, -5e4 * LOG2E * sm_scale, sm_scale)

    results = {}
    for ours in (True, False):
        out = np.zeros((sum(qo_lens), h_q, d), "float32")
        lse = np.zeros((sum(qo_lens), h_q), "float32")
        to, tl = _t(out), _t(lse)
        _build("ragged", ours, h_kv, h_q, d, tile=tile if ours else None)(
            _t(q), _t(q_indptr), _t(k), _t(v), _t(kv_indptr), _t(np.zeros(sum(qo_lens), "int32")),
            _t(np.zeros(len(qo_lens), "int32")), to, tl, causal, 0, 1.0, 10000.0, sm_scale)
        results[ours] = to.numpy(), tl.numpy()
    _check(*results[True], *ref)
    _check(*results[True], *results[False])


PAGED_CASES = [  # (qo_lens, kv_lens): kv are the cached prefix
    ([17, 3], [45, 16]),
    ([1, 33, 2], [1, 20, 0]),
]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("h_kv,h_q,d", SHAPES)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("case", range(len(PAGED_CASES)))
def test_prefill_paged(h_kv, h_q, d, causal, case, tile):
    qo_lens, kv_lens = PAGED_CASES[case]
    rng = np.random.default_rng(10 + case)
    sm_scale = d ** -0.5
    g = h_q // h_kv
    pages, page_indptr, page_values, last, kv = _paged(rng, kv_lens, h_kv, d)
    q = rng.standard_normal((sum(qo_lens), h_q, d)).astype("float32") * 2
    q_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype("int32")
    ref = _prefill_ref(q, qo_lens, kv, h_q, g, causal, -5e4, sm_scale)

    # TVM's kernel is only run as the cache runs it (causal=0): its masked branch leaves the
    # running max unset, and it reads NaN from the unused page slots it multiplies by zero
    runs = (True, False) if causal == 0 else (True,)
    if causal == 0:
        pages = np.nan_to_num(pages, nan=0.0)
    results = {}
    for ours in runs:
        out = np.zeros((sum(qo_lens), h_q, d), "float32")
        lse = np.zeros((sum(qo_lens), h_q), "float32")
        to, tl = _t(out), _t(lse)
        _build("paged", ours, h_kv, h_q, d, tile=tile if ours else None)(
            _t(q), _t(q_indptr), _t(pages), _t(page_indptr), _t(page_values), _t(last),
            _t(np.zeros(len(qo_lens), "int32")), _t(np.zeros(sum(qo_lens), "int32")), to, tl,
            causal, 0, 1.0, 10000.0, sm_scale)
        results[ours] = to.numpy(), tl.numpy()
    _check(*results[True], *ref)
    if False in results:
        _check(*results[True], *results[False])


# ---------------------------------------------------------------- sliding window, float16 KV

# float16: inputs are exactly representable (the reference reads the same halves); the output
# is rounded to float16 once (relative 2^-11), the lse stays float32
TOL = {"float32": (RTOL, ATOL), "float16": (2e-3, 2e-3)}
WINDOWS = [5, 20, 64]  # shorter than a page, across pages, four pages


def _check_dtype(out, lse, ref_out, ref_lse, dtype):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=rtol, atol=atol)
    np.testing.assert_allclose(lse, ref_lse, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("window", [0] + WINDOWS)
def test_decode_window_and_dtype(dtype, window):
    """The query is the last key (position kv_len - 1): it sees the last `window` keys."""
    h_kv, h_q, d = 2, 8, 96
    rng = np.random.default_rng(window)
    lens = [1, 37, 16, 0, 70, 130]
    sm_scale = d ** -0.5
    pages, indptr, values, last, kv = _paged(rng, lens, h_kv, d, dtype=dtype)
    B, g = len(lens), h_q // h_kv
    q = (rng.standard_normal((B, h_q, d)) * 2).astype(dtype)
    ref_out, ref_lse = np.zeros((B, h_q, d)), np.zeros((B, h_q))
    for b, n in enumerate(lens):
        absent = np.arange(n) < n - window if window else None
        for h in range(h_q):
            kk, vv = kv[b][0][:, h // g].astype(np.float64), kv[b][1][:, h // g].astype(np.float64)
            ref_out[b, h], ref_lse[b, h] = _ref(q[b, h], kk, vv, np.ones(n, bool), 0.0, sm_scale, absent)
    zeros = np.zeros(B, "int32")
    to, tl = _t(np.zeros((B, h_q, d), dtype)), _t(np.zeros((B, h_q), "float32"))
    _build("decode", True, h_kv, h_q, d, dtype, window)(
        _t(q), _t(pages), _t(indptr), _t(values), _t(last), _t(zeros), _t(zeros), to, tl, 0, 1.0, 10000.0, sm_scale)
    _check_dtype(to.numpy(), tl.numpy(), ref_out, ref_lse, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("window", WINDOWS)
def test_prefill_ragged_window(dtype, window):
    """A chunk's causal self-attention: rows far into a 70-token chunk see only their window."""
    h_kv, h_q, d = 2, 8, 96
    qo_lens = kv_lens = [70, 3, 33]
    rng = np.random.default_rng(window + 1)
    sm_scale = d ** -0.5
    q = (rng.standard_normal((sum(qo_lens), h_q, d)) * 2).astype(dtype)
    k = rng.standard_normal((sum(kv_lens), h_kv, d)).astype(dtype)
    v = rng.standard_normal((sum(kv_lens), h_kv, d)).astype(dtype)
    q_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype("int32")
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype("int32")
    kv = [(k[kv_indptr[b]:kv_indptr[b + 1]], v[kv_indptr[b]:kv_indptr[b + 1]]) for b in range(len(kv_lens))]
    ref = _prefill_ref(q, qo_lens, kv, h_q, h_q // h_kv, 1, -5e4 * LOG2E * sm_scale, sm_scale, window)
    to = _t(np.zeros((sum(qo_lens), h_q, d), dtype))
    tl = _t(np.zeros((sum(qo_lens), h_q), "float32"))
    _build("ragged", True, h_kv, h_q, d, dtype, window)(
        _t(q), _t(q_indptr), _t(k), _t(v), _t(kv_indptr), _t(np.zeros(sum(qo_lens), "int32")),
        _t(np.zeros(len(qo_lens), "int32")), to, tl, 1, 0, 1.0, 10000.0, sm_scale)
    _check_dtype(to.numpy(), tl.numpy(), *ref, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("causal", [0, 1])
def test_prefill_paged_window(dtype, window, causal):
    """Non-causal: the cache's cross-attention of a chunk over the cached prefix; rows whose
    window starts past the prefix see no key (output 0, lse -5e4: TVM's merge weighs it 0)."""
    h_kv, h_q, d = 2, 8, 96
    qo_lens, kv_lens = [40, 3, 90], [45, 16, 30]
    rng = np.random.default_rng(100 + window)
    sm_scale = d ** -0.5
    pages, page_indptr, page_values, last, kv = _paged(rng, kv_lens, h_kv, d, dtype=dtype)
    q = (rng.standard_normal((sum(qo_lens), h_q, d)) * 2).astype(dtype)
    q_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype("int32")
    ref = _prefill_ref(q, qo_lens, kv, h_q, h_q // h_kv, causal, -5e4, sm_scale, window)
    to = _t(np.zeros((sum(qo_lens), h_q, d), dtype))
    tl = _t(np.zeros((sum(qo_lens), h_q), "float32"))
    _build("paged", True, h_kv, h_q, d, dtype, window)(
        _t(q), _t(q_indptr), _t(pages), _t(page_indptr), _t(page_values), _t(last),
        _t(np.zeros(len(qo_lens), "int32")), _t(np.zeros(sum(qo_lens), "int32")), to, tl,
        causal, 0, 1.0, 10000.0, sm_scale)
    _check_dtype(to.numpy(), tl.numpy(), *ref, dtype)


def test_bad_window_and_dtype_are_refused():
    with pytest.raises(ValueError, match="window -1"):
        ac.attention_decode_cpu(2, 4, 16, "float32", window=-1)
    with pytest.raises(ValueError, match="bfloat16"):
        ac.attention_prefill_ragged_cpu(2, 4, 16, 16, "bfloat16")


def test_head_dim_not_multiple_of_16():
    """head_dim 40: decode falls back to 8 lanes, prefill to chunks of 8; still exact."""
    test_decode(2, 4, 40)
    test_prefill_ragged(2, 4, 40, 1, 0, None)
    test_prefill_ragged(2, 4, 40, 1, 0, (16, 4))


def test_rotary_mode_is_refused():
    f = _build("decode", True, 2, 4, 40)
    z = _t(np.zeros(1, "int32"))
    with pytest.raises(Exception, match="rotary_mode"):
        f(_t(np.zeros((1, 4, 40), "float32")), _t(np.zeros((1, 2, 2, 16, 40), "float32")),
          _t(np.array([0, 1], "int32")), z, _t(np.ones(1, "int32")), z, z,
          _t(np.zeros((1, 4, 40), "float32")), _t(np.zeros((1, 4), "float32")), 1, 1.0, 10000.0, 0.1)


def _cache_module(rope_mode, dtype="float32"):
    from edgesmith.targets.tvm_api import kv_cache_mod, nn, relax

    TIRPagedKVCache = kv_cache_mod.TIRPagedKVCache

    class M(nn.Module):
        def create_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
                                  support_sliding_window):
            return TIRPagedKVCache(
                attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size, page_size=page_size,
                support_sliding_window=support_sliding_window, layer_partition=relax.ShapeExpr([0, 2]),
                num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, qk_head_dim=64,
                v_head_dim=64, mla_original_qk_head_dim=0, mla_original_v_head_dim=0,
                rope_mode=rope_mode, rope_scale=1, rope_theta=10000, rope_scaling={},
                rope_ext_factors=relax.prim_value(0), rotary_dim=64, enable_disaggregation=False,
                dtype=dtype, target=_target())

    spec = {"create_paged_kv_cache": {
        "max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int, "page_size": int,
        "support_sliding_window": int, "$": {"param_mode": "none", "effect_mode": "none"}}}
    return M().export_tvm(spec=spec)[0]


def test_pipeline_hook_replaces_only_without_rope():
    from edgesmith.targets.tvm_api import kv_cache_mod

    RopeMode = kv_cache_mod.RopeMode

    mod = _cache_module(RopeMode.NONE)
    new = attention_swap.replace_cpu_attention(mod)
    swapped = set()
    for gv, f in mod.functions.items():
        if not isinstance(f, tirx.PrimFunc):
            continue
        g = new[gv]  # same GlobalVar
        assert str(g.attrs["global_symbol"]) == str(f.attrs["global_symbol"])
        if not g.same_as(f):
            swapped.add(str(f.attrs["global_symbol"]))
            assert g.attrs["tirx.noalias"] and g.attrs["tirx.is_scheduled"]
            assert len(g.params) == len(f.params)
    # the sliding-window variants too (what a cache that slides calls: compiler/context.py)
    assert swapped == {ac.DECODE, ac.PREFILL_RAGGED, ac.PREFILL_PAGED, ac.DECODE + ac.SLIDING,
                       ac.PREFILL_PAGED + ac.SLIDING}

    mod = _cache_module(RopeMode.NORMAL)
    new = attention_swap.replace_cpu_attention(mod)
    assert all(new[gv].same_as(f) for gv, f in mod.functions.items())
    # a sliding window only our kernels apply: refusing beats running TVM's without it
    with pytest.raises(ValueError, match="sliding window 64"):
        attention_swap.replace_cpu_attention(mod, window=64)


def test_pipeline_hook_swaps_float16_caches():
    from edgesmith.targets.tvm_api import kv_cache_mod

    RopeMode = kv_cache_mod.RopeMode

    mod = _cache_module(RopeMode.NONE, dtype="float16")
    new = attention_swap.replace_cpu_attention(mod, window=64)
    swapped = {str(f.attrs["global_symbol"]) for gv, f in mod.functions.items()
               if isinstance(f, tirx.PrimFunc) and not new[gv].same_as(f)}
    assert swapped == {ac.DECODE, ac.PREFILL_RAGGED, ac.PREFILL_PAGED, ac.DECODE + ac.SLIDING,
                       ac.PREFILL_PAGED + ac.SLIDING}
