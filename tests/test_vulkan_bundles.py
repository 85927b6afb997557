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
# float32 arithmetic): measured 3e-3 (tiny) and 2e-2 (phi-3 width, 2 layers) at most over these
# positions; the bound leaves room for other drivers' rounding, far below a wrong kernel's error.
F16_BOUND = {TINY: 1e-2, PHI: 5e-2}


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
    host = _run_json(capsys, host_bundle, prompt)
    vk = _run_json(capsys, vk_bundle, prompt)
    assert len(host["output_ids"]) == 8 and vk["output_ids"] == host["output_ids"]
    tokens = prompt + host["output_ids"][:5]  # then five decode steps on the greedy path
    want, got = _logits(host_bundle, tokens, length), _logits(vk_bundle, tokens, length)
    assert got.shape == want.shape == (6, VOCAB[model])
    diff = np.abs(got - want).max(axis=1)
    assert (diff < 1e-4).all(), f"max |logit diff| per position: {diff}"


@pytest.mark.parametrize("model", [TINY, PHI])
def test_q4f16_runs_within_its_bound(compiled, capsys, model):
    prompt = _prompt(model, 7)
    host_bundle, vk_bundle = compiled(model, "q4f16"), compiled(model, "q4f16", "linux-vulkan")
    tokens = prompt + [5, 9, 200, 3]
    want, got = _logits(host_bundle, tokens, 7), _logits(vk_bundle, tokens, 7)
    diff = np.abs(got - want).max(axis=1)
    assert (diff < F16_BOUND[model]).all(), f"max |logit diff| per position: {diff}"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.8
    assert json.loads((vk_bundle / "manifest.json").read_text())["quant"] == "q4f16"
