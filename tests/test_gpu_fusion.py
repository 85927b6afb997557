"""GPU decode's fusions (issue #33), on PoCL: each fused kernel against numpy, the fused bundle
against the unfused one, and the kernels a decoded token launches.

Fused (kernels/gpu.py, kernels/rope_split.py, kernels/kv_append.py; lowering/schedules_fused.py):
  RMSNorm into the next int4 GEMV    qkv_proj, gate_up_proj, and the final norm with lm_head
  SiLU(gate) * up into down_proj     its prologue
  RoPE into the KV cache's split     plain RoPE, a cache that does not slide
  that split into the KV append      decode steps (kernels/kv_append.py + the runner's builtin)
  the residual adds                  o_proj's and down_proj's epilogue (FuseOps did that already)
  a float16 cache's casts          qkv_proj's epilogue (to float16), o_proj's loads (back, on decode)
The single kernels are built as a bundle builds them (test_pocl_kernels.py's helpers: the
android-opencl target, our GPU rules) and checked against numpy written here. The bundles: the
fused one is what `compile` makes; the unfused one is compile_bundle(gpu_fusion=False). The fused
bundle against the host bundle (greedy tokens, logits 1e-4): test_opencl_bundles.py.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from pocl import needs_pocl  # noqa: E402
from test_pocl_kernels import _schedule, quantize, run_kernel  # noqa: E402

from edgesmith.compiler.build import compile_bundle
from edgesmith.compiler.kernels import gpu as kernels_gpu
from edgesmith.compiler.kernels.kv_append import split_rope_append
from edgesmith.compiler.kernels.rope_split import split_rope
from edgesmith.runtime.session import run_runner
from edgesmith.targets.tvm_api import kv_cache_mod, te

pytestmark = needs_pocl

TINY = "random:tiny"
RNG = np.random.default_rng(33)


def _rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


# ------------------------------------------------------------------ single kernels vs numpy


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_norm_gemv_decode(scale_dtype):
    # rows not a multiple of the 4 a work-group takes, k's 80 words not a multiple of 64 items
    n, k, group, eps = 390, 640, 32, 1e-5
    w, s, deq = quantize(RNG.standard_normal((n, k)).astype(np.float32), group, scale_dtype)
    x = (3 * RNG.standard_normal((1, 1, k))).astype(np.float32)
    g = RNG.uniform(0.5, 1.5, k).astype(np.float32)
    xs, gs = te.placeholder((1, 1, k), "float32", name="x"), te.placeholder((k,), "float32", name="g")
    ws = te.placeholder((n, k // 8), "uint32", name="w")
    ss = te.placeholder((n, k // group), scale_dtype, name="s")
    y = kernels_gpu.q4_linear_normed(xs, gs, ws, ss, group, eps)
    func = _schedule(te.create_prim_func([xs, gs, ws, ss, y]))
    got = run_kernel(func, {"x": x, "g": g, "w": w, "s": s, "norm_out": np.zeros((1, 1, n), np.float32)},
                     out="norm_out")
    np.testing.assert_allclose(got, _rms(x, g, eps) @ deq.T, rtol=1e-4, atol=1e-4)


def test_silu_mul_gemv_decode():
    n, inter, group = 200, 320, 32
    w, s, deq = quantize(RNG.standard_normal((n, inter)).astype(np.float32), group, "float32")
    gu = RNG.standard_normal((1, 1, 2 * inter)).astype(np.float32)
    gus = te.placeholder((1, 1, 2 * inter), "float32", name="gu")
    ws = te.placeholder((n, inter // 8), "uint32", name="w")
    ss = te.placeholder((n, inter // group), "float32", name="s")
    y = kernels_gpu.q4_linear_silu_mul(gus, ws, ss, group)
    func = _schedule(te.create_prim_func([gus, ws, ss, y]))
    got = run_kernel(func, {"gu": gu, "w": w, "s": s, "q4_matmul": np.zeros((1, 1, n), np.float32)},
                     out="q4_matmul")
    gate, up = gu[..., :inter], gu[..., inter:]
    np.testing.assert_allclose(got, (gate / (1 + np.exp(-gate)) * up) @ deq.T, rtol=1e-4, atol=1e-4)


def _numpy_rope(qkv, pos, rot: int, theta: float):
    """transformers' rotate_half RoPE on the first `rot` channels of every head of qkv (t, heads, d)."""
    half = rot // 2
    inv = 1.0 / theta ** (np.arange(half) * 2 / rot)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.concatenate([np.cos(ang)] * 2, -1)[:, None], np.concatenate([np.sin(ang)] * 2, -1)[:, None]
    r = qkv[:, :, :rot]
    return np.concatenate([r * cos + np.concatenate([-r[..., half:], r[..., :half]], -1) * sin, qkv[:, :, rot:]], -1)


def test_split_with_rope_partial_rotary():
    """TVM's split kernel swapped for ours: q and k rotated (the first rotary_dim channels, as
    transformers' rotate_half), v copied, at the cache's positions."""
    t, hq, hkv, d, rot, theta = 5, 4, 2, 32, 24, 10000.0
    template = kv_cache_mod.llama_rope_with_position_map(theta, 1.0, d, hq, hkv, "float32", {}, d)
    func = _schedule(split_rope(template, {"rot_heads": hq + hkv, "rotary_dim": rot, "theta": theta,
                                           "attention_factor": 1.0}))
    qkv = RNG.standard_normal((t, hq + 2 * hkv, d)).astype(np.float32)
    pos = np.array([3, 4, 5, 6, 700], np.int32)
    arrays = {"qkv": qkv, "pos": pos, "q": np.zeros((t, hq, d), np.float32),
              "k": np.zeros((t, hkv, d), np.float32), "v": np.zeros((t, hkv, d), np.float32)}
    rotated = _numpy_rope(qkv, pos, rot, theta)
    for name, lo, hi in (("q", 0, hq), ("k", hq, hq + hkv)):
        got = run_kernel(func, arrays, {"seq_len": t}, out=name)
        np.testing.assert_allclose(got, rotated[:, lo:hi], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(run_kernel(func, arrays, {"seq_len": t}, out="v"), qkv[:, hq + hkv:])


def test_split_rope_append_writes_q_and_the_pages():
    """Our split + RoPE + KV append (kernels/kv_append.py) in place of TVM's split and append:
    q rotated into q; k rotated and v copied into the pages at the append positions (page
    p // 16, slot p % 16, k at [.., 0, ..], v at [.., 1, ..]); a position of -1 writes nothing;
    every other slot is left as it was. Partial rotary, positions far apart, five tokens."""
    t, hq, hkv, d, rot, theta, page = 5, 4, 2, 32, 24, 10000.0, 16
    split = kv_cache_mod.llama_rope_with_position_map(theta, 1.0, d, hq, hkv, "float32", {}, d)
    append = kv_cache_mod._kv_cache_transpose_append(hkv, d, "float32")
    func = _schedule(split_rope_append(split, append, {"rot_heads": hq + hkv, "rotary_dim": rot, "theta": theta,
                                                       "attention_factor": 1.0}))
    qkv = RNG.standard_normal((t, hq + 2 * hkv, d)).astype(np.float32)
    pos = np.array([3, 4, 5, 6, 700], np.int32)
    slots = np.array([17, 18, -1, 33, 63], np.int32)
    pages = RNG.standard_normal((4, 2, hkv, page, d)).astype(np.float32)
    arrays = {"qkv": qkv, "pos": pos, "q": np.zeros((t, hq, d), np.float32), "pages": pages, "append": slots}
    rotated = _numpy_rope(qkv, pos, rot, theta)
    scalars = {"seq_len": t, "num_pages": 4}
    np.testing.assert_allclose(run_kernel(func, arrays, scalars, out="q"), rotated[:, :hq], rtol=1e-4, atol=1e-4)
    want = pages.copy()
    for i, p in enumerate(slots):
        if p >= 0:
            want[p // page, 0, :, p % page] = rotated[i, hq:hq + hkv]
            want[p // page, 1, :, p % page] = qkv[i, hq + hkv:]
    np.testing.assert_allclose(run_kernel(func, arrays, scalars, out="pages"), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bundles: fused vs unfused


@pytest.fixture(scope="module")
def unfused(tmp_path_factory):
    return compile_bundle(TINY, "q4f32", "linux-opencl", tmp_path_factory.mktemp("unfused") / "b", gpu_fusion=False)


def _logits(bundle, tokens, prefill: int) -> np.ndarray:
    lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, tokens)),
                                "--prefill", str(prefill)], timeout=900)
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    return np.stack([np.frombuffer(base64.b64decode(r["logits_f32le_b64"]), "<f4") for r in rows])


def test_fused_bundle_matches_the_unfused_one(compiled, unfused):
    """A 5-token prefill (the fused prefill's last layer and head, RoPE in the split), then decode."""
    fused = compiled(TINY, "q4f32", "linux-opencl")
    tokens = [1, 45, 496, 7, 300, 7, 300, 41, 9, 128, 77, 3]
    a, b = _logits(fused, tokens, 5), _logits(unfused, tokens, 5)
    assert a.shape == b.shape == (len(tokens) - 4, 512)
    diff = np.abs(a - b).max(axis=1)
    assert (diff < 1e-4).all(), f"max |logit diff| per position: {diff}"
    assert (a.argmax(1) == b.argmax(1)).all()


def test_530_token_prompt_fused_unfused_and_host(compiled, unfused):
    """Two prefill chunks (the split and TVM's append, the attention between them), then decode
    steps on the fused kernel with the keys in the pages past the prompt's: logits within 1e-4 of
    the unfused bundle's, and greedy picks the host bundle's token at every step."""
    prompt = [(37 * i + 11) % 512 for i in range(530)]
    host_bundle = compiled(TINY, "q4f32")
    lines = run_runner(host_bundle, ["generate", str(host_bundle), "--tokens", ",".join(map(str, prompt)),
                                     "-n", "5"], timeout=900)  # no stop ids: five tokens
    host = next(l for l in lines if "output_ids" in l)["output_ids"]
    assert len(host) == 5
    tokens = prompt + host[:4]
    a, b = _logits(compiled(TINY, "q4f32", "linux-opencl"), tokens, 530), _logits(unfused, tokens, 530)
    assert a.shape == b.shape == (5, 512)
    diff = np.abs(a - b).max(axis=1)
    assert (diff < 1e-4).all(), f"max |logit diff| per position: {diff}"
    assert a.argmax(1).tolist() == host[:5]


def _launches(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["kernels"]["decode_launches"]


def test_kernels_per_decoded_token(compiled, unfused):
    """Counted by our OpenCL plug-in on PoCL (`runner profile`), equal to what the compiler
    derived; the fused bundle launches 6 a layer (the KV cache's: our split + RoPE + append, then the
    attention) + 2, the unfused 11 + 4 (TVM's split, append, attention)."""
    fused = compiled(TINY, "q4f32", "linux-opencl")
    counts = {}
    for name, bundle in (("fused", fused), ("unfused", unfused)):
        lines = run_runner(bundle, ["profile", str(bundle), "-p", "4", "-n", "3", "-r", "1", "--max-reps", "1",
                                    "--warmup", "0"], timeout=900)
        summary = next(l for l in lines if l.get("summary"))
        derived = _launches(bundle)
        assert summary["decode_launches"] == 3 * derived["total"], (name, summary, derived)
        counts[name] = derived
    print(f"kernels per decoded token on PoCL: fused {counts['fused']}, unfused {counts['unfused']}")
    assert counts["unfused"]["per_layer"] == [11, 11] and counts["unfused"]["head"] == 4
    assert counts["fused"]["per_layer"] == [6, 6] and counts["fused"]["head"] == 2
    assert counts["fused"]["kv_cache_per_layer"] == 2 and counts["unfused"]["kv_cache_per_layer"] == 3
    names = json.loads((fused / "manifest.json").read_text())["kernels"]["names"]
    assert any(n.startswith("q4_matmul_norm") for n in names) and any("q4_matmul_silu" in n for n in names)


def test_python_engine_refuses_a_gpu_bundle(compiled):
    """Only the runner registers the fused KV append's builtin (and TVM's Python has no OpenCL
    loader): the in-process engine says so in one line instead of failing inside TVM."""
    from edgesmith.errors import BundleError
    from edgesmith.runtime.engine import Engine

    with pytest.raises(BundleError, match=r"runs on a GPU \(opencl\).*drop --engine python"):
        Engine(compiled(TINY, "q4f32", "linux-opencl"))
