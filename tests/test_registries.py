"""The registries are the extension points: a new quantization scheme, model architecture, target
and transport are each registered from this file (one entry), with their own code here or in one
file beside it, and compile and run without a line changed in edgesmith's modules.

- toy quantization `q4f32toy`: q4f32's storage (the same int4 codes and float32 scales) computed
  by a kernel written here (dequantize, then a plain matmul), instead of the registry's q4
  kernels. Checked against the numpy model over the bundle's own dequantized weights, and
  against the q4f32 bundle's logits.
- toy architecture `LlamaForCausalLM` (tests/toy_llama.py, one file and one `register`): a model
  of its own (q, k and v as three linears; gate and up fused by its name map), and its own answers
  to what the runtime asks (linear layers for tune, bytes per token for the fit check, inspect's
  line). Checked against transformers' LlamaForCausalLM on the same weights, through the Python VM
  and the C++ runner.
- toy target `toy-arm64-crc`: one preset; compiled for it, run here under the qemu its layout names,
  checked against the numpy Phi-3 over the bundle's own weights.
- toy transport `folder` (tests/toy_transport.py, one file and one entry): a device that is a folder
  reached by copying; devices.yaml reads its section, the session pushes and runs the bundle there
  (the tokens of a run in place), the probe works, and one without a POSIX shell is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import toy_llama as toy_llama_module
from numpy_phi3 import NumpyPhi3, dequantized_weights, read_tensor_cache
from test_numerics import DECODE_STEPS, PROMPT, engine_greedy_logits
from toy_llama import TOY_LLAMA

from edgesmith.compiler import models
from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.quantization import registry as quantize
from edgesmith.compiler.quantization.q4 import GroupQ4
from edgesmith.compiler.quantization.registry import get_quantization

ARCH = TOY_LLAMA.architecture

# ---------------------------------------------------------------- a new quantization scheme


def toy_q4_linear(x, w, s, group: int):
    """The test's own kernel: x (b, t, k) f32 @ dequant(w, s).T, the weight decoded in a block of
    its own (nibble i of word j is element 8j + i, stored q + 8), then a plain reduction."""
    from edgesmith.targets.tvm_api import te, tirx

    n, words = w.shape

    def value(o, c):
        nib = tirx.bitwise_and(tirx.shift_right(w[o, c // 8], ((c % 8) * 4).astype("uint32")), tirx.const(15, "uint32"))
        return (nib.astype("float32") - tirx.const(8.0, "float32")) * s[o, c // group].astype("float32")

    weight = te.compute((n, words * 8), value, name="toy_dequantize")
    b, t, k_dim = x.shape
    k = te.reduce_axis((0, k_dim), name="k")
    return te.compute((b, t, n), lambda i, j, o: te.sum(x[i, j, k] * weight[o, k], axis=k), name="toy_matmul")


@dataclass(frozen=True)
class ToyQ4(GroupQ4):
    """GroupQ4's parameters and encoding; the kernel above on every target."""

    def linear(self, layer, x, family):
        from edgesmith.targets.tvm_api import nn

        return nn.op.tensor_expr_op(toy_q4_linear, "toy_q4_matmul", [x, layer.q_weight, layer.q_scale, self.group_size])


@pytest.fixture
def toy_quant(monkeypatch):
    toy = ToyQ4("q4f32toy", "test: q4f32 storage, the test's own dequantize-then-matmul kernel", 4, "float32")
    monkeypatch.setitem(quantize.QUANTIZATIONS, toy.name, toy)
    return toy


@pytest.mark.slow
def test_toy_quantization_compiles_and_runs(toy_quant, compiled, tmp_path):
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.runtime.engine import Engine

    bundle = compile_bundle("random:tiny", "q4f32toy", "host", tmp_path / "toy")
    assert read_manifest(bundle).quant == "q4f32toy"
    lib = next((bundle / "lib").iterdir()).read_bytes()
    assert b"toy_q4_matmul" in lib and b"q4_matmul_i8" not in lib  # its own kernel, not the registry's

    reference = compiled("random:tiny", "q4f32")
    ours, theirs = read_tensor_cache(bundle / "params"), read_tensor_cache(reference / "params")
    assert ours.keys() == theirs.keys()
    for name in ours:  # the same storage: int4 codes and scales bit for bit
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

    numpy_model = NumpyPhi3(read_manifest(bundle).config.to_dict(), dequantized_weights(ours))
    want = [numpy_model.forward(PROMPT)]
    got, q4f32 = engine_greedy_logits(bundle, PROMPT, 4)[0], engine_greedy_logits(reference, PROMPT, 4)[0]
    for tok in np.argmax(got[:-1], axis=1):
        want.append(numpy_model.forward([int(tok)]))
    assert np.abs(got - np.stack(want)).max() < 1e-4
    assert np.abs(got - q4f32).max() < 1e-4
    assert (np.argmax(got, axis=1) == np.argmax(q4f32, axis=1)).all()


def test_toy_quantization_is_listed(toy_quant, capsys):
    from edgesmith import cli

    assert cli.main(["quants"]) == 0
    listing = capsys.readouterr().out
    assert "q4f32toy" in listing and "q4f16i8" in listing
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    assert "q4f32toy" in capsys.readouterr().out


# ---------------------------------------------------------------- a new model architecture


@pytest.fixture
def toy_llama():
    models.register(TOY_LLAMA)
    yield TOY_LLAMA
    del models.MODELS[TOY_LLAMA.architecture]


def write_llama_checkpoint(out, *, seed: int = 0):
    """transformers' own LlamaForCausalLM (random weights, GQA, norms moved off 1), saved as a
    Hugging Face folder; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         rms_norm_eps=1e-6, tie_word_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
    model.eval().save_pretrained(out)
    return model


@pytest.mark.slow
def test_toy_architecture_with_its_own_model_matches_transformers(toy_llama, tmp_path):
    """tests/toy_llama.py: Llama's model (q, k, v as three linears) in its own file, one entry;
    compiled from transformers' checkpoint, run by the Python VM and the C++ runner, against
    transformers' LlamaForCausalLM on the same weights; what the runtime asks, its entry answers."""
    import torch

    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint
    from edgesmith.compiler.kernels.family import CPU
    from edgesmith.runtime import inspect_bundle
    from edgesmith.runtime.profile import fit
    from edgesmith.runtime.session import run_bundle
    from edgesmith.runtime.tune.shapes import tunable_shapes
    from hf_tiny import hf_continue

    hf = write_llama_checkpoint(tmp_path / "llama")
    ckpt = open_checkpoint(tmp_path / "llama")
    assert type(ckpt.config) is toy_llama_module.LlamaConfig
    assert "model.layers.0.mlp.gate_proj.weight" in ckpt.tensor_names()  # fused into gate_up by its name map
    bundle = compile_bundle(tmp_path / "llama", "q0f32", "host", tmp_path / "bundle")

    want, want_ids, out = [], [], None
    with torch.no_grad():
        out = hf_continue(hf, PROMPT)
        for _ in range(DECODE_STEPS + 1):
            want.append(out.logits[0, -1].numpy())
            want_ids.append(int(np.argmax(want[-1])))
            out = hf_continue(hf, [want_ids[-1]], out)
    got, got_ids = engine_greedy_logits(bundle, PROMPT, DECODE_STEPS)
    assert np.abs(got - np.stack(want)).max() < 1e-4
    assert got_ids == want_ids
    ran = run_bundle(None, bundle, ["generate", "--tokens", ",".join(map(str, PROMPT)), "-n", DECODE_STEPS + 1],
                     timeout=300)
    assert ran[-1]["output_ids"] == want_ids  # the runner knows no architecture: the same tokens

    m = read_manifest(bundle)
    assert m.model.architecture == "LlamaForCausalLM" and type(m.config) is toy_llama_module.LlamaConfig
    assert "toy Llama: 2 layers, hidden 64" in inspect_bundle.describe(bundle)
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (k, v) x kv heads x head_dim x float32
    assert m.kv_cache.bytes_per_token == fit.kv_bytes_per_token(m) == per_token
    names = {layer for shape in tunable_shapes(m.config, get_quantization("q4f16"), CPU) for layer in shape.layers}
    assert {"q", "k", "v", "gate_up", "down"} <= names and "qkv" not in names


def test_toy_architecture_random_preset_and_errors(toy_llama):
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint, validate
    from edgesmith.compiler.inputs.config import load_config
    from edgesmith.compiler.inputs.random_weights import RANDOM_PRESETS, list_presets
    from edgesmith.errors import ConfigError

    assert "toy-llama-tiny" in list_presets() and RANDOM_PRESETS["toy-llama-tiny"]["architectures"] == [ARCH]
    ckpt = open_checkpoint("random:toy-llama-tiny")
    validate(ckpt)
    assert "model.layers.1.mlp.up_proj.weight" in ckpt.tensor_names()
    assert ckpt.tokenizer_entry.note  # no tokenizer builder: the bundle says why it has none
    raw = dict(TOY_LLAMA.random_presets["toy-llama-tiny"], architectures=["LlamaForCausalLMX"])
    with pytest.raises(ConfigError, match=f"'LlamaForCausalLMX'.*{ARCH}"):
        load_config(raw)
    with pytest.raises(ValueError, match="registered already"):
        models.register(TOY_LLAMA)


# ---------------------------------------------------------------- a new target


@pytest.fixture
def toy_target(monkeypatch):
    """One entry in the target registry (targets/presets.py): an ARMv8-A board with NEON and CRC,
    on the linux bundle layout and the aarch64 cross toolchain."""
    from edgesmith.targets import presets

    toy = presets.TargetPreset(name="toy-arm64-crc", description="test: an ARMv8-A board with CRC",
                               arch="aarch64", triple="aarch64-linux-gnu", platform="manylinux_2_28_aarch64",
                               layout=presets.LAYOUTS["linux"], toolchain="aarch64-linux-gnu", mattr=("+neon", "+crc"))
    monkeypatch.setitem(presets.PRESETS, toy.name, toy)
    return toy


@pytest.mark.slow
def test_toy_target_compiles_and_runs_under_qemu_here(toy_target, tmp_path):
    """The preset alone: compiled for it, its bundle runs here under the qemu its layout names, and
    gives the numpy Phi-3's greedy tokens over the bundle's own dequantized weights."""
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.runtime.session import run_bundle, this_machine
    from edgesmith.targets.toolchains import format_targets_table

    assert "toy-arm64-crc" in format_targets_table()
    bundle = compile_bundle("random:tiny", "q4f16", "toy-arm64-crc", tmp_path / "toy")
    m = read_manifest(bundle)
    assert m.target.preset == "toy-arm64-crc" and m.target.tvm_target["mattr"] == ["+neon", "+crc"]
    assert this_machine(m).exec_wrapper == ("qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu")
    prompt, n = [1, 2, 3, 4], 8
    got = run_bundle(None, bundle, ["generate", "--tokens", ",".join(map(str, prompt)), "-n", n], timeout=600)
    ref = NumpyPhi3(m.config.to_dict(), dequantized_weights(read_tensor_cache(bundle / "params")))
    want, logits = [], ref.forward(prompt)
    for _ in range(n):
        want.append(int(np.argmax(logits)))
        logits = ref.forward([want[-1]])
    assert got[-1]["output_ids"] == want


# ---------------------------------------------------------------- a new transport


@pytest.fixture
def toy_transport():
    """One entry in the transport registry; its code is tests/toy_transport.py."""
    from edgesmith.runtime.transports import TRANSPORTS, register
    from toy_transport import ENTRY

    register(ENTRY)
    yield ENTRY
    del TRANSPORTS[ENTRY.name]


def test_toy_transport_runs_a_bundle_pushed_into_its_folder(toy_transport, compiled, tmp_path):
    """devices.yaml names it with its own section; the session pushes the bundle into the
    folder (verified, incremental) and runs the runner there: the tokens of a run in place."""
    import yaml

    from edgesmith.errors import ConfigError
    from edgesmith.runtime.devices import load_devices
    from edgesmith.runtime.probe import probe_devices
    from edgesmith.runtime.session import RunnerSession, run_bundle
    from edgesmith.runtime.transports.base import DeviceError

    bundle = compiled("random:tiny", "q4f16")
    (tmp_path / "drawer").mkdir()
    entry = {"name": "drawer", "transport": "folder", "target": "host", "folder": {"root": str(tmp_path / "drawer")}}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [entry]}))
    device = load_devices(tmp_path / "devices.yaml")["drawer"]
    assert device.where == f"folder {tmp_path / 'drawer'}" and device.workdir == "bundles"

    args = ["generate", "--tokens", "1,2,3", "-n", "6"]
    with RunnerSession(bundle, device, timeout=300) as session:
        assert session.push_report.sent and session.where.startswith(str(tmp_path / "drawer" / "bundles"))
        pushed = session.run(args)[-1]["output_ids"]
    assert pushed == run_bundle(None, bundle, args, timeout=300)[-1]["output_ids"]
    with RunnerSession(bundle, device, timeout=300) as session:
        assert session.push_report.sent == [] and session.push_report.skipped  # nothing differs: nothing sent
    (row,) = probe_devices([device], timeout=60)
    assert row["reachable"] and row["transport"] == "folder", row

    # its section is checked by its own file, in one line naming the field; another's is refused
    for bad, needle in (({"root": str(tmp_path / "nope")}, "field 'folder.root' is not a folder"),
                        ({"root": str(tmp_path), "speed": 1}, "field 'folder.speed' is not a known field")):
        (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [dict(entry, folder=bad)]}))
        with pytest.raises(ConfigError, match=needle):
            load_devices(tmp_path / "devices.yaml")
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [dict(entry, ssh={"host": "x"})]}))
    with pytest.raises(ConfigError, match="field 'ssh' belongs to transport ssh"):
        load_devices(tmp_path / "devices.yaml")

    # a transport without a POSIX shell is refused before anything is sent
    import toy_transport

    toy_transport.FolderTransport.posix_shell = False
    try:
        with pytest.raises(DeviceError, match="pushing a bundle needs a POSIX shell"):
            RunnerSession(bundle, device, timeout=300).__enter__()
    finally:
        toy_transport.FolderTransport.posix_shell = True
