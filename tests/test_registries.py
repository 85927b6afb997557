"""The registries are the extension points: a new quantization scheme and a new model architecture
are each registered from this file, with their own code here, and compile and run without a
line changed in edgesmith's modules.

- toy quantization `q4f32toy`: q4f32's storage (the same int4 codes and float32 scales) computed
  by a kernel written here (dequantize, then a plain matmul), instead of the registry's q4
  kernels. Checked against the numpy model over the bundle's own dequantized weights, and
  against the q4f32 bundle's logits.
- toy architecture `Phi3SplitToyForCausalLM`: Phi-3's model, but checkpoints that store q, k, v
  and gate, up apart (as Llama/Mistral checkpoints do), so the entry's name map fuses them.
  Checked against transformers' Phi3ForCausalLM on the same weights in Phi-3's own layout.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from numpy_phi3 import NumpyPhi3, dequantized_weights, read_tensor_cache
from safetensors.numpy import load_file, save_file
from test_numerics import DECODE_STEPS, PROMPT, engine_greedy_logits, hf_greedy_logits

from edgesmith.compiler import models
from edgesmith.compiler.quantization import registry as quantize
from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.models.phi3 import PHI3
from edgesmith.compiler.models.phi3 import config as phi3_config
from edgesmith.compiler.models.phi3 import loader as phi3_loader
from edgesmith.compiler.quantization.q4 import GroupQ4

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

ARCH = "Phi3SplitToyForCausalLM"
_SPLIT = {"self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
          "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")}


class SplitConfig(phi3_config.Phi3Config):
    architecture = ARCH


def split_rows(cfg) -> dict[str, list[int]]:
    """Rows of each fused Phi-3 weight that each split tensor holds."""
    d = cfg.head_dim
    return {"self_attn.qkv_proj.weight": [cfg.num_attention_heads * d, cfg.num_key_value_heads * d,
                                          cfg.num_key_value_heads * d],
            "mlp.gate_up_proj.weight": [cfg.intermediate_size, cfg.intermediate_size]}


def split_shapes(cfg) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, shape in phi3_loader.expected_shapes(cfg).items():
        fused = next((f for f in _SPLIT if name.endswith(f)), None)
        if fused is None:
            shapes[name] = shape
            continue
        prefix = name[: -len(fused)]
        for part, rows in zip(_SPLIT[fused], split_rows(cfg)[fused]):  # noqa: B905
            shapes[prefix + part] = (rows, shape[1])
    return shapes


def split_source(cfg, param: str) -> models.ParamSource:
    fused = next((f for f in _SPLIT if param.endswith(f)), None)
    if fused is None:
        return phi3_loader.param_source(cfg, param)
    prefix = param[: -len(fused)]
    return models.ParamSource(tuple(prefix + part for part in _SPLIT[fused]), combine=models.stack_rows)


TOY_ARCH = models.ModelArchitecture(
    architecture=ARCH, name="phi3split", models="a test's Phi-3 with split q/k/v and gate/up tensors",
    parse_config=lambda raw, where: phi3_config.parse(raw, where, config_class=SplitConfig), config_class=SplitConfig,
    expected_shapes=split_shapes, param_source=split_source, model=PHI3.model,
    random_presets={"toy-split-tiny": dict(PHI3.random_presets["tiny"], architectures=[ARCH])})


@pytest.fixture
def toy_arch():
    models.register(TOY_ARCH)
    yield TOY_ARCH
    del models.MODELS[ARCH]


def write_split_checkpoint(phi3_folder, out):
    """Phi-3's checkpoint rewritten in the split layout, config.json naming the toy architecture."""
    out.mkdir()
    config = json.loads((phi3_folder / "config.json").read_text())
    config["architectures"] = [ARCH]
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(phi3_folder / "tokenizer.json", out / "tokenizer.json")
    rows = split_rows(phi3_config.parse(config))
    tensors = {}
    for name, arr in load_file(phi3_folder / "model.safetensors").items():
        fused = next((f for f in _SPLIT if name.endswith(f)), None)
        if fused is None:
            tensors[name] = arr
            continue
        for part, piece in zip(_SPLIT[fused], np.split(arr, np.cumsum(rows[fused])[:-1])):  # noqa: B905
            tensors[name[: -len(fused)] + part] = np.ascontiguousarray(piece)
    save_file(tensors, out / "model.safetensors")
    return out


@pytest.mark.slow
def test_toy_architecture_compiles_and_matches_transformers(toy_arch, tiny_ckpt_dir, tmp_path):
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint

    phi3 = tiny_ckpt_dir("medium")  # GQA: k and v rows differ from q's
    folder = write_split_checkpoint(phi3, tmp_path / "split")
    ckpt = open_checkpoint(folder)
    assert type(ckpt.config) is SplitConfig
    assert "model.layers.0.self_attn.k_proj.weight" in ckpt.tensor_names()
    assert "model.layers.0.self_attn.qkv_proj.weight" not in ckpt.tensor_names()

    bundle = compile_bundle(folder, "q0f32", "host", tmp_path / "bundle")
    ref, ref_ids = hf_greedy_logits(phi3, PROMPT, DECODE_STEPS)  # transformers, Phi-3's own layout
    got, got_ids = engine_greedy_logits(bundle, PROMPT, DECODE_STEPS)
    assert np.abs(got - ref).max() < 1e-4
    assert got_ids == ref_ids


def test_toy_architecture_random_preset_and_errors(toy_arch, tmp_path):
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint, validate
    from edgesmith.compiler.inputs.config import load_config
    from edgesmith.compiler.inputs.random_weights import RANDOM_PRESETS, list_presets
    from edgesmith.errors import ConfigError

    assert "toy-split-tiny" in list_presets() and RANDOM_PRESETS["toy-split-tiny"]["architectures"] == [ARCH]
    ckpt = open_checkpoint("random:toy-split-tiny")
    validate(ckpt)
    assert "model.layers.1.mlp.up_proj.weight" in ckpt.tensor_names()
    raw = dict(PHI3.random_presets["tiny"], architectures=["Phi3SplitToyForCausalLMX"])
    with pytest.raises(ConfigError, match=f"'Phi3SplitToyForCausalLMX'.*{ARCH}"):
        load_config(raw)
    with pytest.raises(ValueError, match="registered already"):
        models.register(TOY_ARCH)
