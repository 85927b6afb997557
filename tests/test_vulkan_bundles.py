"""linux-vulkan bundles end to end on lavapipe (Mesa's Vulkan on this CPU): TVM's WebGPU (WGSL)
kernels, the bundle's own runner and our WebGPU plug-in (bin/libedgesmith_webgpu.so) over the
wgpu-native it ships, driven by the CLI as a user would.

The reference is the host bundle of the same checkpoint and quantization: another compile (CPU
schedules, our CPU attention kernels), another device runtime, checked on its own against numpy
and transformers (test_numerics.py). Same weights, so greedy tokens must be equal and logits
equal up to float rounding (q4f32: 1e-4); q4f16 computes in float16 on the GPU and the host in
float32, so its bound is wider (below).

Also here: an arm64 board bundle (runner, plug-in and the aarch64 wgpu-native cross-built or
fetched; under qemu there is no aarch64 Vulkan driver, which the runner says in one line), and
the failures a user meets: no WebGPU library, no adapter, no GPU adapter, a bundle that needs
float16 on an adapter without it, a kernel whose WGSL does not compile, a model the device
cannot bind.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from edgesmith.cli import main as cli_main
from edgesmith.compiler.build import compile_bundle
from edgesmith.errors import BundleError
from edgesmith.runtime.session import run_runner

from lavapipe import needs_lavapipe  # noqa: E402

pytestmark = needs_lavapipe

TINY = "random:tiny"
PHI = "random:phi-3-mini-4k:layers=2"
VOCAB = {TINY: 512, PHI: 32064}
TIMEOUT = 900
# q4f16 on the GPU (float16 activations and scales) against the host's q4f16 (float16 scales,
# float32 arithmetic): on lavapipe at most 2.2e-4 (tiny) and 4.8e-3 (phi-3 width, 2 layers) over
# prompts of 7 and 530 tokens and two decode steps; the bound leaves room for other drivers'
# rounding and stays far below a wrong kernel's error (a logit of random weights is ~1).
F16_BOUND = {TINY: 1e-3, PHI: 2e-2}


def _prompt(model: str, n: int) -> list[int]:
    return [(37 * i + 11) % VOCAB[model] for i in range(n)]


def _run_json(capsys, bundle, prompt, n=8) -> dict:
    code = cli_main(["run", str(bundle), "--tokens", ",".join(map(str, prompt)), "-n", str(n), "--json",
                     "--ignore-eos", "--timeout", str(TIMEOUT)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _logits(bundle, tokens, prefill) -> np.ndarray:
    """Logits at positions prefill-1 .. len(tokens)-1: the prompt prefilled at once, then one decode each."""
    lines = run_runner(bundle, ["logits", str(bundle), "--tokens", ",".join(map(str, tokens)),
                                "--prefill", str(prefill)], timeout=TIMEOUT)
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


@pytest.mark.parametrize("model", [TINY, PHI])
@pytest.mark.parametrize("length", [1, 7, 530])  # 530: two prefill chunks (paged prefill + merge)
def test_tokens_and_logits_match_the_host(compiled, capsys, model, length):
    prompt = _prompt(model, length)
    host_bundle, vk_bundle = compiled(model, "q4f32"), compiled(model, "q4f32", "linux-vulkan")
    host = _run_json(capsys, host_bundle, prompt)["output_ids"]
    assert len(host) == 8
    if length < 512:  # the CLI's greedy run (at 530 the teacher-forced argmax below says the same)
        assert _run_json(capsys, vk_bundle, prompt)["output_ids"] == host
    tokens = prompt + host[:5]  # the prompt prefilled at once, then five decode steps on the greedy path
    want, got = _logits(host_bundle, tokens, length), _logits(vk_bundle, tokens, length)
    assert got.shape == want.shape == (6, VOCAB[model])
    diff = np.abs(got - want).max(axis=1)
    assert (diff < 1e-4).all(), f"max |logit diff| per position: {diff}"
    # greedy on the Vulkan bundle picks the host's token at every step of the path
    assert got.argmax(axis=1).tolist() == host[:6]


@pytest.mark.parametrize("model", [TINY, PHI])
def test_q4f16_runs_within_its_bound(compiled, capsys, model):
    prompt = _prompt(model, 7)
    host_bundle, vk_bundle = compiled(model, "q4f16"), compiled(model, "q4f16", "linux-vulkan")
    tokens = prompt + [5, 9, 200, 3]
    want, got = _logits(host_bundle, tokens, 7), _logits(vk_bundle, tokens, 7)
    diff = np.abs(got - want).max(axis=1)
    assert (diff < F16_BOUND[model]).all(), f"max |logit diff| per position: {diff}"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.8
    manifest = json.loads((vk_bundle / "manifest.json").read_text())
    assert manifest["quant"] == "q4f16"
    if model == TINY:  # a float16 cache decodes in as many kernels as a float32 one: 6 a layer + 2,
        # counted by our WebGPU plug-in (o_proj widens the attention's float16 output as it loads it)
        lines = run_runner(vk_bundle, ["profile", str(vk_bundle), "-p", "4", "-n", "3", "-r", "1",
                                       "--max-reps", "1", "--warmup", "0"], timeout=TIMEOUT)
        summary = next(l for l in lines if l.get("summary"))
        launches = manifest["kernels"]["decode_launches"]
        assert launches["per_layer"] == [6, 6] and launches["head"] == 2, launches
        assert summary["decode_launches"] == 3 * launches["total"], summary


def test_every_kernel_fits_the_presets_limits(compiled):
    """What the README says a driver needs (workgroups of 256, 32 KiB of workgroup memory, 10
    storage buffers a kernel), read off each kernel's WGSL."""
    sizes = {"f32": 4, "i32": 4, "u32": 4, "f16": 2}
    for model, quant in ((TINY, "q4f16"), (PHI, "q4f32"), (PHI, "q4f16")):
        kernels = compiled(model, quant, "linux-vulkan") / "kernels"
        shaders = [p for p in kernels.glob("*.wgsl") if p.name != "module.wgsl"]
        assert len(shaders) > 20
        for path in shaders:
            wgsl = path.read_text()
            x, y, z = map(int, re.search(r"@workgroup_size\((\d+), (\d+), (\d+)\)", wgsl).groups())
            assert x * y * z <= 256, path.name
            shared = sum(int(n) * sizes[t] * int(lanes or 1) for lanes, t, n in
                         re.findall(r"var<workgroup> \w+ : array<(?:vec(\d)<)?(\w+)>?, (\d+)>", wgsl))
            assert shared <= 32768, (path.name, shared)
            assert "// Function: " not in wgsl.split("\n", 3)[3], path.name  # one kernel a file
            # TVM's paged prefill attention binds 10 storage buffers, over WebGPU's portable default
            # of 8 (the runtime asks for the adapter's own limit: lavapipe 32); 10 is what the
            # README promises a driver needs
            assert len(re.findall(r"var<storage,", wgsl)) <= 10, path.name


@pytest.mark.parametrize("timing", ["timestamp queries", "per-dispatch waits"])
def test_profile_checks_accuracy_and_lists_webgpu_kernels(compiled, capsys, monkeypatch, timing):
    if timing == "per-dispatch waits":  # as on an adapter without timestamp queries
        monkeypatch.setenv("EDGESMITH_WEBGPU_NO_TIMESTAMPS", "1")
    bundle = compiled(TINY, "q4f32", "linux-vulkan")
    code = cli_main(["profile", str(bundle), "-p", "8", "-n", "4", "-r", "1", "--max-reps", "1", "--check",
                     "--kernels", "40", "--cool-below", "off", "--format", "json", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    (record,) = json.loads(out)
    assert record["check"]["passed"] and record["check"]["max_abs_diff"] < 1e-4
    assert record["pp"]["mean"] > 0 and record["tg"]["mean"] > 0
    k = record["kernels"]
    assert k["timing"] == timing
    names = {row["kernel"] for row in k["top"]}
    # the WGSL kernels themselves (host launch glue is "other"): attention, int4 matmuls, norms
    assert all(name.endswith("_kernel") for name in names), names
    for kernel in ("batch_decode_paged_kv_kernel", "batch_prefill_ragged_kv_kernel", "rms_norm_kernel"):
        assert kernel in names, names
    # every decode step runs each layer's kernels: 4 steps, 2 layers
    calls = {(r["kernel"], r["phase"]): r["calls"] for r in k["top"]}
    assert calls[("batch_decode_paged_kv_kernel", "decode")] == 4 * 2
    assert 0 < sum(r["total_s"] for r in k["top"] if r["phase"] == "decode") <= k["decode_s"]
    # kernels per decoded token: dispatches counted by our WebGPU plug-in, as the compiler derived them
    launches = json.loads((bundle / "manifest.json").read_text())["kernels"]["decode_launches"]
    assert record["tg"]["kernels_per_token"] == launches["total"] == sum(launches["per_layer"]) + launches["head"]
    # dispatches batched, no host sync between them: one wait on queued kernels a token (its logits)
    assert record["tg"]["stalls_per_token"] == 1, record["tg"]


def test_interactive_second_reply_equals_a_one_shot_generate(compiled):
    bundle = compiled(TINY, "q4f32", "linux-vulkan")
    turns = "1,45,496\n7,300\n"
    p = subprocess.run([sys.executable, "-m", "edgesmith", "run", str(bundle), "--interactive", "-n", "5",
                        "--ignore-eos", "--json"], input=turns, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    replies = [json.loads(l) for l in p.stdout.strip().splitlines()]
    assert len(replies) == 2
    first = replies[0]["output_ids"]
    # the second turn continues the conversation: prompt + reply + (last reply token fed) + new ids
    whole = [1, 45, 496] + first + [7, 300]
    one = run_runner(bundle, ["generate", str(bundle), "--tokens", ",".join(map(str, whole)), "-n", "5"],
                     timeout=TIMEOUT)
    assert replies[1]["output_ids"] == next(l for l in one if "output_ids" in l)["output_ids"]


# ------------------------------------------------------------------ ARM boards


def test_arm64_board_bundle_runs_under_qemu_on_debians_arm64_lavapipe(compiled, capsys, monkeypatch):
    from edgesmith.targets.runtime_libs import arm64_vulkan_root

    assert arm64_vulkan_root(fetch=True) is not None  # install.sh fetched it; else apt does it now
    bundle = compiled(TINY, "q4f32", "arm64-linux-vulkan")
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["arch"] == "aarch64" and m["device"]["api"] == "webgpu" and m["device"]["dl_device_type"] == 15
    assert m["device"]["runtime_libs"] == ["libedgesmith_webgpu.so"] and "runtime_missing" not in m["device"]
    for name in ("runner", "libedgesmith_webgpu.so", "libwgpu_native.so", "libtvm_runtime.so", "libstdc++.so.6"):
        head = (bundle / "bin" / name).read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[18] == 183, name  # e_machine EM_AARCH64
    # the aarch64 runner, plug-in, wgpu-native and Debian's arm64 Mesa, all under qemu
    prompt = _prompt(TINY, 7)
    host = _run_json(capsys, compiled(TINY, "q4f32"), prompt)
    arm = _run_json(capsys, bundle, prompt)
    assert arm["output_ids"] == host["output_ids"] and arm["emulated"]
    # arm64 lavapipe (128-bit vectors) has no shader-f16: a q4f16 bundle refuses at load, in one line
    line = _one_line_error(capsys, compiled(TINY, "q4f16", "arm64-linux-vulkan"), env={}, monkeypatch=monkeypatch)
    assert "WebGPU adapter 'llvmpipe (LLVM 15.0.6, 128 bits)' has no shader-f16" in line
    assert line.endswith("compile the bundle with --quant q4f32")


# ------------------------------------------------------------------ failures, one line each


@pytest.fixture(scope="module")
def tiny_vk(compiled):
    return compiled(TINY, "q4f32", "linux-vulkan")


def test_no_webgpu_library(tiny_vk, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_vk, env={"EDGESMITH_WGPU_LIBRARY": "/nonexistent/libwgpu_native.so"},
                           monkeypatch=monkeypatch)
    assert line.startswith("edgesmith: error: WebGPU: no WebGPU library (wgpu-native): /nonexistent/libwgpu_native.so")


def test_no_vulkan_driver(tiny_vk, capsys, monkeypatch, tmp_path):
    none = str(tmp_path / "none.json")
    line = _one_line_error(capsys, tiny_vk, env={"VK_ICD_FILENAMES": none, "VK_DRIVER_FILES": none},
                           monkeypatch=monkeypatch)
    assert "WebGPU: no WebGPU adapter: wgpu-native found no Vulkan device" in line and "mesa-vulkan-drivers" in line


def test_no_gpu_adapter(tiny_vk, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_vk, env={"EDGESMITH_WEBGPU_ADAPTER": "gpu"}, monkeypatch=monkeypatch)
    assert "no WebGPU adapter matches EDGESMITH_WEBGPU_ADAPTER='gpu'" in line and "(cpu)" in line


def test_float16_bundle_on_an_adapter_without_shader_f16(compiled, capsys, monkeypatch):
    line = _one_line_error(capsys, compiled(TINY, "q4f16", "linux-vulkan"), env={"EDGESMITH_WEBGPU_F16": "off"},
                           monkeypatch=monkeypatch)
    assert "compute in float16" in line and "has no shader-f16: compile the bundle with --quant q4f32" in line


def test_a_model_the_device_cannot_bind(tmp_path_factory, capsys, monkeypatch):
    # a float embedding of Phi-3 width: 375.8 MiB in one buffer, over lavapipe's 128 MiB a binding
    bundle = compile_bundle("random:phi-3-mini-4k:layers=1", "q4f32", "linux-vulkan",
                            tmp_path_factory.mktemp("float-embedding") / "b", quantize_embedding=False)
    line = _one_line_error(capsys, bundle, env={}, monkeypatch=monkeypatch)
    assert "binds a buffer of 375.8 MiB" in line and "binds at most 128.0 MiB (maxStorageBufferBindingSize)" in line


def test_runner_errors_reach_python_as_bundle_errors(tiny_vk, monkeypatch):
    monkeypatch.setenv("EDGESMITH_WEBGPU_ADAPTER", "gpu")
    with pytest.raises(BundleError, match="^WebGPU: no WebGPU adapter matches"):
        run_runner(tiny_vk, ["generate", str(tiny_vk), "--tokens", "1", "-n", "1"], timeout=TIMEOUT)
