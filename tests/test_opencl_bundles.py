"""linux-opencl bundles end to end on PoCL (OpenCL on this CPU): the bundle's own runner and our
OpenCL plug-in (bin/libedgesmith_opencl.so), driven by the CLI as a user would.

The reference is the host bundle of the same checkpoint and quantization: another compile (CPU
schedules, our CPU attention kernels), another device runtime, checked on its own against numpy
and transformers (test_numerics.py). Same weights, so greedy tokens must be equal and logits
equal up to float rounding. q4f32 runs on PoCL exactly as generated (PoCL has no cl_khr_fp16).

Also here: an arm64 board bundle (runner and plug-in cross-compiled; under qemu there is no
aarch64 OpenCL, which the runner says in one line), and the failures a user meets: no OpenCL
library, no platform, no GPU, a kernel that does not build, a model the device cannot hold.
"""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest

from edgesmith.cli import main as cli_main
from edgesmith.compiler.build import compile_bundle
from edgesmith.errors import BundleError
from edgesmith.runtime.session import run_runner

from pocl import needs_pocl  # noqa: E402


pytestmark = needs_pocl

TINY = "random:tiny"
PHI = "random:phi-3-mini-4k:layers=2"
PROMPTS = {
    TINY: [1, 45, 496, 7, 300],
    "tiny-long": [(7 * i + 3) % 512 for i in range(530)],  # two prefill chunks: paged prefill + merge
    PHI: [1, 450, 4996, 17354, 1701, 432],
}
TIMEOUT = 900


@pytest.fixture(scope="module", autouse=True)
def program_cache(tmp_path_factory):
    """One program cache for the module's runs (the first run compiles, the rest load)."""
    old = os.environ.get("EDGESMITH_OPENCL_CACHE")
    os.environ["EDGESMITH_OPENCL_CACHE"] = str(tmp_path_factory.mktemp("opencl-programs"))
    yield
    if old is None:
        os.environ.pop("EDGESMITH_OPENCL_CACHE")
    else:
        os.environ["EDGESMITH_OPENCL_CACHE"] = old


def _run_json(capsys, bundle, prompt, n=8) -> dict:
    code = cli_main(["run", str(bundle), "--tokens", ",".join(map(str, prompt)), "-n", str(n), "--json",
                     "--ignore-eos", "--timeout", str(TIMEOUT)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _logits(bundle, tokens) -> np.ndarray:
    lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, tokens))], timeout=TIMEOUT)
    rows = sorted((l for l in lines if "logits_f32le_b64" in l), key=lambda l: l["position"])
    return np.stack([np.frombuffer(base64.b64decode(r["logits_f32le_b64"]), "<f4") for r in rows])


def _one_line_error(capsys, bundle, *, env: dict, monkeypatch) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli_main(["run", str(bundle), "--tokens", "1,2", "-n", "2", "--timeout", str(TIMEOUT)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ same results as the host


@pytest.mark.parametrize("model,prompt", [(TINY, TINY), (TINY, "tiny-long"), (PHI, PHI)])
def test_run_gives_the_host_bundles_greedy_tokens(compiled, capsys, model, prompt):
    host = _run_json(capsys, compiled(model, "q4f32"), PROMPTS[prompt])
    ocl = _run_json(capsys, compiled(model, "q4f32", "linux-opencl"), PROMPTS[prompt])
    assert len(host["output_ids"]) == 8
    assert ocl["output_ids"] == host["output_ids"]


@pytest.mark.parametrize("model", [TINY, PHI])
def test_logits_match_the_host_at_every_position(compiled, model):
    tokens = PROMPTS[model] + [7, 300, 41, 9, 128, 77]
    host = _logits(compiled(model, "q4f32"), tokens)
    ocl = _logits(compiled(model, "q4f32", "linux-opencl"), tokens)
    assert ocl.shape == host.shape == (len(tokens), host.shape[1])
    diff = np.abs(ocl - host).max(axis=1)
    assert (diff < 1e-4).all(), f"max |logit diff| per position: {diff}"


def test_profile_checks_accuracy_and_lists_opencl_kernels(compiled, capsys):
    bundle = compiled(TINY, "q4f32", "linux-opencl")
    code = cli_main(["profile", str(bundle), "-p", "8", "-n", "4", "-r", "1", "--max-reps", "1", "--check",
                     "--kernels", "40", "--cool-below", "off", "--format", "json", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    (record,) = json.loads(out)
    assert record["check"]["passed"] and record["check"]["max_abs_diff"] < 1e-4
    assert record["pp"]["mean"] > 0 and record["tg"]["mean"] > 0
    names = {row["kernel"] for row in record["kernels"]["top"]}
    # the OpenCL kernels themselves (host launch glue is "other"): attention, int4 matmuls, norms
    assert all(name.endswith("_kernel") for name in names), names
    for kernel in ("batch_decode_paged_kv_kernel", "batch_prefill_ragged_kv_kernel", "rms_norm_kernel"):
        assert kernel in names, names
    assert any(name.startswith(("q4_matmul", "fused_q4_matmul")) for name in names)
    # kernels per decoded token: counted by our OpenCL plug-in on PoCL (exact), equal to what the
    # compiler derived from the lowered decode (manifest; `inspect` prints it)
    launches = json.loads((bundle / "manifest.json").read_text())["kernels"]["decode_launches"]
    layers = launches["per_layer"]
    print(f"random:tiny on PoCL: {record['tg']['kernels_per_token']:g} kernels per decoded token "
          f"({layers} per layer + head {launches['head']})")
    assert record["tg"]["kernels_per_token"] == launches["total"] == sum(layers) + launches["head"]
    assert len(layers) == 2 and launches["kv_cache_per_layer"] == 2  # split + RoPE + append, attention
    # one in-order queue and no host sync between kernels: the host waits on queued kernels once a
    # decoded token (reading its logits back); the KV cache's index copies, synced after the
    # token's first kernels are queued, are queued too (they made a second stall a token before)
    print(f"host waits per decoded token: {record['tg']['host_waits_per_token']:g}, "
          f"{record['tg']['stalls_per_token']:g} on queued kernels")
    assert record["tg"]["stalls_per_token"] == 1, record["tg"]
    assert record["tg"]["host_waits_per_token"] >= 1
    assert cli_main(["inspect", str(bundle)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("decode "))
    assert f"{launches['total']} kernels per token: {layers[0]} per layer x 2 layers" in line


def test_a_second_start_loads_the_compiled_programs(compiled, tmp_path):
    bundle = compiled(TINY, "q4f32", "linux-opencl")
    os.environ["EDGESMITH_OPENCL_CACHE"] = str(tmp_path / "fresh")  # the module fixture restores it
    reports = []
    for _ in range(2):
        lines = run_runner(bundle, ["generate", str(bundle), "--tokens", "1,2,3", "-n", "4"], timeout=TIMEOUT)
        reports.append(next(l["opencl"] for l in lines if "opencl" in l))
    first, second = reports[0]["programs"], reports[1]["programs"]
    assert first["built"] > 10 and first["from_cache"] == 0 and first["cache_writes"] == first["built"]
    assert second["built"] == 0 and second["from_cache"] == first["built"]
    assert reports[0]["device"]["platform"] == "Portable Computing Language"


# ------------------------------------------------------------------ ARM boards


@pytest.mark.parametrize("target", ["arm64-linux-mali", "arm64-linux-adreno"])
def test_arm64_board_bundle_ships_a_cross_built_runner_and_plugin(compiled, capsys, monkeypatch, target):
    bundle = compiled(TINY, "q4f32", target)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["arch"] == "aarch64" and m["device"]["api"] == "opencl"
    assert m["device"]["runtime_libs"] == ["libedgesmith_opencl.so"] and "runtime_missing" not in m["device"]
    for name in ("runner", "libedgesmith_opencl.so", "libtvm_runtime.so", "libtvm_ffi.so", "libstdc++.so.6"):
        head = (bundle / "bin" / name).read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[18] == 183, name  # e_machine EM_AARCH64
    # under qemu: the aarch64 runner loads the plug-in and the model; this machine has no
    # aarch64 OpenCL, which is one line (Debian's arm64 PoCL would need arm64 clang/LLVM 15 here)
    line = _one_line_error(capsys, bundle, env={}, monkeypatch=monkeypatch)
    assert "OpenCL: no OpenCL library on this machine" in line and "libOpenCL.so.1" in line


# ------------------------------------------------------------------ failures, one line each


@pytest.fixture(scope="module")
def tiny_ocl(compiled):
    return compiled(TINY, "q4f32", "linux-opencl")


def test_no_opencl_library(tiny_ocl, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_ocl, env={"EDGESMITH_OPENCL_LIBRARY": "/nonexistent/libOpenCL.so.1"},
                           monkeypatch=monkeypatch)
    assert line.startswith("edgesmith: error: OpenCL: cannot load the OpenCL library")
    assert "/nonexistent/libOpenCL.so.1" in line


def test_no_opencl_platform(tiny_ocl, capsys, monkeypatch, tmp_path):
    line = _one_line_error(capsys, tiny_ocl, env={"OCL_ICD_VENDORS": str(tmp_path)}, monkeypatch=monkeypatch)
    assert "OpenCL: no OpenCL platform" in line and f"OCL_ICD_VENDORS={tmp_path}" in line


def test_no_gpu_device(tiny_ocl, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_ocl, env={"EDGESMITH_OPENCL_DEVICE": "gpu"}, monkeypatch=monkeypatch)
    assert "no GPU OpenCL device" in line and "(cpu, Portable Computing Language)" in line


def test_float16_kernels_on_a_device_without_fp16_fail_with_the_compilers_log(compiled, capsys, monkeypatch):
    line = _one_line_error(capsys, compiled(TINY, "q4f16", "linux-opencl"), env={}, monkeypatch=monkeypatch)
    assert "building OpenCL kernel '" in line and "CL_BUILD_PROGRAM_FAILURE" in line
    assert "Half precision floating point not supported" in line  # PoCL's compiler, from the kernel's #error
    assert "has no cl_khr_fp16: compile the bundle with --quant q4f32" in line


def test_a_model_the_device_cannot_hold(tmp_path_factory, capsys, monkeypatch):
    # float embedding + lm_head of Phi-3 width: 376 MiB each, over the 256 MiB one buffer may
    # take when PoCL reports 1 GiB (its POCL_MEMORY_LIMIT)
    bundle = compile_bundle("random:phi-3-mini-4k:layers=1", "q4f32", "linux-opencl",
                            tmp_path_factory.mktemp("float-embedding") / "b", quantize_embedding=False)
    line = _one_line_error(capsys, bundle, env={"POCL_MEMORY_LIMIT": "1"}, monkeypatch=monkeypatch)
    assert "OpenCL: out of device memory on 'pthread" in line and "375.8 MiB more" in line
    assert "largest single buffer 256.0 MiB" in line


def test_runner_errors_reach_python_as_bundle_errors(tiny_ocl, monkeypatch, tmp_path):
    monkeypatch.setenv("OCL_ICD_VENDORS", str(tmp_path))
    with pytest.raises(BundleError, match="^OpenCL: no OpenCL platform"):
        run_runner(tiny_ocl, ["generate", str(tiny_ocl), "--tokens", "1", "-n", "1"], timeout=TIMEOUT)
