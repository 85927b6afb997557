"""`edgesmith tune` on a GPU device (issue #33): the fused decode GEMVs' choices (work-items splitting
k, rows per work-group: compiler/tuning.GpuGemvParams) as tuner parameters, on PoCL.

  - the candidate space: what a shape cannot honour is left out, never built as a wrong kernel;
  - a non-default kernel whose shapes divide by none of its params, against numpy (as a bundle
    builds it: our GPU rules, with a Tuning);
  - tune on a linux-opencl device (PoCL on this CPU) writes a record with the GPU GEMV keys; a
    bundle compiled with a record giving every GPU GEMV other params has other kernel sources
    (the params reached the schedule) and the default bundle's logits within 1e-5;
  - a GPU device without its API's library: one line, before anything is built.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pocl import needs_pocl  # noqa: E402
from test_pocl_kernels import TARGET, quantize, run_kernel  # noqa: E402

from edgesmith.compiler.tuning import (GpuGemvParams, Tuning, TuningError, TuningRecord, check_params, gpu_gemv_key,
                                       gpu_threads, params_from_dict, space)
from edgesmith.compiler.kernels import gpu as kernels_gpu
from edgesmith.compiler.lowering import schedules_gpu
from edgesmith.runtime.session import run_runner
from edgesmith.targets.tvm_api import dlight, te

TINY, QUANT, TARGET_NAME = "random:tiny", "q4f32", "linux-opencl"
RNG = np.random.default_rng(3333)


# ------------------------------------------------------------------ the space (no device)


def test_space_leaves_out_what_a_shape_cannot_honour():
    # k = 128: 16 words, so at most 16 items split it; the default (64 items) is a cap: 16 there.
    # A plain GEMV's default is dlight's kernel, so ours at 16 x 4 is a candidate of its own.
    assert GpuGemvParams(16, 4) in space(gpu_gemv_key("plain", 512, 128, 32, "float32"))
    key = gpu_gemv_key("norm", 512, 128, 32, "float32")
    cands = space(key)
    assert cands[0] == GpuGemvParams() and len(set(cands)) == len(cands)
    assert all(p == GpuGemvParams() or gpu_threads(128, p.threads) == p.threads for p in cands)
    assert GpuGemvParams(16, 4) not in cands  # the default's own kernel under another name
    assert {p.threads for p in cands} == {64, 16} and {p.rows for p in cands} == {1, 2, 4, 8}
    assert {p.words for p in cands} == {1}  # 4 words a step leave 4 steps: fewer than 16 items
    # Phi-3-mini's qkv (k = 3072: 384 words): up to 128 items at a word a step (256 do not divide
    # 384), up to 32 at 4 words (96 steps); its down (k = 8192: 1024 words) takes them all
    mini = space(gpu_gemv_key("norm", 9216, 3072, 32, "float16"))
    assert {p.threads for p in mini if p.words == 1} == {16, 32, 64, 128}
    assert {p.threads for p in mini if p.words == 4} == {16, 32}
    big = space(gpu_gemv_key("silu", 3072, 8192, 32, "float16"))
    assert len(big) == len(set(big)) == 40  # every candidate honoured, the default once
    for bad in ({"threads": 48, "rows": 4}, {"threads": 2048, "rows": 4}, {"threads": 64, "rows": 0},
                {"threads": 64, "rows": 4, "words": 3}):
        with pytest.raises(TuningError, match="out of range"):
            params_from_dict("gemv_gpu", bad)
    check_params("gemv_gpu", GpuGemvParams(256, 8))


def test_gpu_device_without_its_api_is_one_line():
    from edgesmith.runtime.devices import Device
    from edgesmith.runtime.tune.tuner import _check_gpu_api
    from edgesmith.targets.presets import get_preset

    phone = Device(name="phone", transport="local", target="android-opencl", workdir="/tmp")
    with pytest.raises(Exception) as err:
        _check_gpu_api(get_preset("android-opencl"), phone, {"gpu_apis": {"vulkan": ["/x/libvulkan.so"]}})
    msg = str(err.value)
    assert "\n" not in msg and "'phone' has no OpenCL" in msg and "libOpenCL.so" in msg, msg
    _check_gpu_api(get_preset("android-opencl"), phone, {"gpu_apis": {"opencl": ["/vendor/lib64/libOpenCL.so"]}})


# ------------------------------------------------------------------ a tuned kernel vs numpy


def _schedule(func, tuning):
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with TARGET:
        return dlight.ApplyDefaultSchedule(*schedules_gpu.rules(TARGET, tuning))(mod)["main"]


@needs_pocl
@pytest.mark.parametrize("params", [GpuGemvParams(128, 8), GpuGemvParams(16, 3, 4), GpuGemvParams(8, 5, 2)])
def test_tuned_norm_gemv_whose_shapes_divide_by_no_param(params):
    """n = 390 rows (not a multiple of 8, 3 or 5), k = 640 (80 words: 128 items cap at 16; at 4
    words a step 20 steps, so 16 items cap at 4)."""
    n, k, group, eps = 390, 640, 32, 1e-5
    w, s, deq = quantize(RNG.standard_normal((n, k)).astype(np.float32), group, "float32")
    x = (3 * RNG.standard_normal((1, 1, k))).astype(np.float32)
    g = RNG.uniform(0.5, 1.5, k).astype(np.float32)
    xs, gs = te.placeholder((1, 1, k), "float32", name="x"), te.placeholder((k,), "float32", name="g")
    ws, ss = te.placeholder((n, k // 8), "uint32", name="w"), te.placeholder((n, k // group), "float32", name="s")
    y = kernels_gpu.q4_linear_normed(xs, gs, ws, ss, group, eps)
    key = gpu_gemv_key("norm", n, k, group, "float32")
    tuning = Tuning.of({key: params})
    func = _schedule(te.create_prim_func([xs, gs, ws, ss, y]), tuning)
    assert tuning.used == {key}  # the schedule looked its shape up
    items = gpu_threads(k // params.words, params.threads)
    assert "blockIdx.x" in func.script() and f"T.thread_binding({items}" in func.script()
    if params.words > 1:  # the words loaded into registers, `words` at a time
        assert f"T.vectorized({params.words})" in func.script() and 'scope="local"' in func.script()
    got = run_kernel(func, {"x": x, "g": g, "w": w, "s": s, "norm_out": np.zeros((1, 1, n), np.float32)},
                     out="norm_out")
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g @ deq.T
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ tune on PoCL, the record applied


def _edgesmith(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _logits(bundle, tokens, prefill: int) -> np.ndarray:
    lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, tokens)),
                                "--prefill", str(prefill)], timeout=900)
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    return np.stack([np.frombuffer(base64.b64decode(r["logits_f32le_b64"]), "<f4") for r in rows])


def _kernel_sources(bundle) -> dict:
    return {p.name: p.read_text() for p in sorted((bundle / "kernels").glob("*.cl"))}


@needs_pocl
@pytest.mark.slow
def test_tune_on_pocl_and_a_tuned_bundle_gives_the_default_logits(tmp_path, compiled):
    """~1 minute: tune (4 shapes, 21 candidates), one compile (the default bundle is the session's)."""
    from edgesmith.compiler.build import compile_bundle

    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [{"name": "pocl", "transport": "local", "target": TARGET_NAME}]}))
    p = _edgesmith("tune", TINY, "--device", "pocl", "--devices", devices, "--quant", QUANT, "-r", "3", "--restart",
                   "-o", tmp_path / "rec.json")
    assert p.returncode == 0, p.stderr
    record = TuningRecord.read(tmp_path / "rec.json")
    # random:tiny: qkv (256 x 128), gate_up and the head (512 x 128) after their RMSNorm, o_proj (128 x 128)
    # alone, down (128 x 256) after SiLU*up
    assert set(record.kernels) == {gpu_gemv_key("norm", 256, 128, 32, "float32"),
                                   gpu_gemv_key("plain", 128, 128, 32, "float32"),
                                   gpu_gemv_key("norm", 512, 128, 32, "float32"),
                                   gpu_gemv_key("silu", 128, 256, 32, "float32")}, record.kernels
    assert record.target == TARGET_NAME and record.complete and not record.threads
    for key, entry in record.kernels.items():
        assert len(entry["candidates"]) == len(space(key)) and entry["median_us"] > 0

    # every GPU GEMV given other params than the defaults: another split of k (another summation order)
    # (4 items, fewer than any default; 2 rows; 2 words a step, one vector load)
    other = {key: GpuGemvParams(threads=4, rows=2, words=2) for key in record.kernels}
    record.kernels = {key: {"params": dataclasses.asdict(p)} for key, p in other.items()}
    record.write(tmp_path / "other.json")
    default = compiled(TINY, QUANT, TARGET_NAME)
    tuned = compile_bundle(TINY, QUANT, TARGET_NAME, tmp_path / "tuned", tuning=TuningRecord.read(tmp_path / "other.json"),
                           tuning_source=str(tmp_path / "other.json"))
    applied = json.loads((tuned / "manifest.json").read_text())["tuning"]
    assert applied["kernels"] == {k: dataclasses.asdict(p) for k, p in other.items()} and not applied["untuned"]
    a, b = _kernel_sources(default), _kernel_sources(tuned)
    assert set(a) == set(b)
    changed = {name for name in a if a[name] != b[name]}
    assert any("q4_matmul_norm" in n for n in changed) and any("silu" in n for n in changed), changed
    assert all("vload2(" in b[n] for n in changed if n != "module.cl"), changed  # 2 words, one load
    # o_proj: dlight's GEMV by default, ours with the params when tuned (its add is the residual)
    assert any(n.startswith("fused_q4_matmul") and "silu" not in n for n in changed), changed
    print("kernel sources the tuning changed:", sorted(changed), "max |logit diff|:", end=" ")
    tokens = [1, 45, 496, 7, 300, 7, 300, 41, 9]
    x, y = _logits(default, tokens, 4), _logits(tuned, tokens, 4)
    assert x.shape == y.shape == (len(tokens) - 3, 512)
    print(np.abs(x - y).max())
    assert np.abs(x - y).max() < 1e-5, np.abs(x - y).max(axis=1)
