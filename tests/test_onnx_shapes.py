"""The int4 ONNX graphs of issue #35, rebuilt: ONNX Runtime GenAI's builder (`-p int4 -e cpu`) on
Phi-3-medium-shaped tiny checkpoints, the two ways its graph can differ from test_onnx_input.py's.

  kv1-split    GQA with one KV head (4 query heads of 16, hidden 64), intermediate 224 (down_proj's
               K = 7 blocks of 32: not a multiple of 64), vocab 512, gate and up as two
               MatMulNBits, lm_head int4: the folder the issue caught.
  kv2-fused    2 KV heads of 6 query heads (hidden 96, K = 96 and 160: not multiples of 64),
               gate/up as ONE MatMulNBits + Split (`fuse_mlp_gate_up`), lm_head left in float32
               (`nodes_to_exclude=/lm_head/MatMul`).

References, none of them edgesmith's: the builder's initializers read by onnx and dequantized in
numpy (tests/onnx_tiny.py; checked against ONNX Runtime's own MatMulNBits in test_onnx_input.py),
ONNX Runtime GenAI on the folder with every MatMulNBits set to accuracy level 0 (float
activations), and transformers' Phi3ForCausalLM on the checkpoint the builder read with each
linear weight replaced by the numpy-dequantized one. The test's own node -> weight mapping is
itself checked by value against the original checkpoint (every weight within one int4 step of
its own source, and not of the one a swap would give).

The cause the issue saw (argmax 478 vs 295, max |diff| 0.61): the default compile requantized the
folder's float32 embedding to int4, so the bundle was another model than ONNX Runtime's. Now an
int4 export's float embedding (and float lm_head) stays float unless --quantize-embedding, which
test_quantize_embedding_is_what_moved_the_logits shows is the whole difference.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from numpy_phi3 import read_tensor_cache, unpack_int4
from onnx_tiny import load_initializers, matmulnbits_dequantize, ort_greedy, ort_teacher_forced_logits, run_builder

from edgesmith.compiler.build import compile_bundle
from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.inputs.checkpoint import default_quant, open_checkpoint
from edgesmith.errors import CheckpointError
from edgesmith.runtime.engine import Engine
from edgesmith.runtime.evaluate import compare_logits, teacher_forced_logits
from edgesmith.runtime.sampling import Sampler

CASES = {
    "kv1-split": (dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                       intermediate_size=224), None),
    "kv2-fused": (dict(vocab_size=512, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                       intermediate_size=160), "fuse_mlp_gate_up=true nodes_to_exclude=/lm_head/MatMul"),
}
IDS = [1, 5, 17, 42, 99, 7, 3, 250, 128, 64, 11, 200, 301, 480, 33, 9]  # 16 positions, ids past 256 too
GREEDY = 8
LAYERS = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """case -> (hf checkpoint, builder's int4 folder, its copy at accuracy level 0), built once."""
    from hf_tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("onnx-shapes")
    made = {}

    def get(case: str):
        if case not in made:
            overrides, extra = CASES[case]
            hf = make_tiny_checkpoint("medium", root / f"hf-{case}", overrides=overrides)
            onnx_dir = run_builder(hf, root / f"onnx-{case}", "int4", root / "cache", extra)
            made[case] = (hf, onnx_dir, _accuracy_level_0(onnx_dir, root / f"onnx-{case}-level0"))
        return made[case]

    return get


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, folders):
    root = tmp_path_factory.mktemp("onnx-shapes-bundles")
    made = {}

    def get(case: str, quant: str | None = "q4f32", **options):
        key = (case, quant, tuple(sorted(options.items())))
        if key not in made:
            made[key] = compile_bundle(folders(case)[1], quant, "host", root / f"{case}-{quant}-{len(made)}", **options)
        return made[key]

    return get


def _accuracy_level_0(folder, dest):
    """The folder with every MatMulNBits at accuracy level 0: ONNX Runtime multiplies in float."""
    import onnx

    shutil.copytree(folder, dest)
    model = onnx.load(str(dest / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "accuracy_level":
                a.i = 0
    onnx.save(model, str(dest / "model.onnx"))
    return dest


# ---------------------------------------------------------------- the test's own reading of the graph


def _builder_weights(folder) -> dict[str, tuple[np.ndarray, float]]:
    """The builder's linear weights by its own names ('model.layers.0.attn.qkv_proj.MatMul'):
    W [N, K] float32 (MatMulNBits dequantized in numpy, MatMul's B transposed) and one int4 step
    (the largest block scale; 0 for a float weight)."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    init = load_initializers(folder)
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            assert a["bits"] == 4 and a["block_size"] == 32 and len([i for i in n.input if i]) == 3, n.name
            codes, scales = init[n.input[1]], init[n.input[2]]
            out[n.input[1][: -len(".weight_Q4")]] = (matmulnbits_dequantize(codes, scales, a["K"], a["block_size"]),
                                                      float(np.abs(scales).max()))
        elif n.op_type == "MatMul" and n.input[1] in init:
            out[n.input[1][: -len(".weight")]] = (np.ascontiguousarray(init[n.input[1]].astype(np.float32).T), 0.0)
    return out


def _references(folder) -> dict[str, tuple[np.ndarray, float]]:
    """Hugging Face name -> (W [N, K] the graph computes with, int4 step), from the builder's names."""
    w = _builder_weights(folder)
    used = set()

    def take(name):
        used.add(name)
        return w[name]

    init = load_initializers(folder)
    refs = {"model.embed_tokens.weight": (init["model.embed_tokens.weight"].astype(np.float32), 0.0),
            "lm_head.weight": take("lm_head.MatMul")}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        refs[p + "self_attn.qkv_proj.weight"] = take(p + "attn.qkv_proj.MatMul")
        refs[p + "self_attn.o_proj.weight"] = take(p + "attn.o_proj.MatMul")
        if p + "mlp.gate_up_proj.MatMul" in w:  # one node, split into [gate | up] by the graph
            refs[p + "mlp.gate_up_proj.weight"] = take(p + "mlp.gate_up_proj.MatMul")
        else:
            (g, gs), (u, us) = take(p + "mlp.gate_proj.MatMul"), take(p + "mlp.up_proj.MatMul")
            refs[p + "mlp.gate_up_proj.weight"] = (np.concatenate([g, u]), max(gs, us))
        refs[p + "mlp.down_proj.weight"] = take(p + "mlp.down_proj.MatMul")
    assert used == set(w), f"linear nodes of the graph the reference does not map: {sorted(set(w) - used)}"
    return refs


def _hf_weights(hf) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(hf / "model.safetensors").items()}


def _transformers(hf, refs: dict):
    """transformers' model of the checkpoint with every weight replaced by the graph's."""
    from transformers import Phi3ForCausalLM

    model = Phi3ForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (w, _) in refs.items():
            assert params[name].shape == w.shape, name
            params[name].copy_(torch.from_numpy(w))
    return model


def _logits(model, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab): one causal forward, position i seeing ids[:i + 1]."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(_logits(model, ids)[-1])))
    return ids[len(prompt):]


def _bundle_weight(params: dict, name: str) -> np.ndarray:
    base = name[: -len(".weight")]
    if base + ".q_weight" in params:
        return unpack_int4(params[base + ".q_weight"]).astype(np.float32) * np.repeat(params[base + ".q_scale"], 32, axis=1)
    return params[name]


# ---------------------------------------------------------------- the mapping, by value


@pytest.mark.parametrize("case", CASES)
def test_the_tests_mapping_is_the_checkpoints(folders, case):
    """The reference's node -> weight mapping, checked by value: each dequantized weight lies within
    one int4 step of its own source weight everywhere, and a swap (gate <-> up, layer 0 <-> 1) would not."""
    hf, folder, _ = folders(case)
    refs, src = _references(folder), _hf_weights(hf)
    for name, (w, step) in refs.items():
        assert np.abs(w - src[name]).max() <= (step if step else 0.0), name
    inter = CASES[case][0]["intermediate_size"]
    gu, step = refs["model.layers.0.mlp.gate_up_proj.weight"]
    swapped = np.concatenate([gu[inter:], gu[:inter]])
    assert np.abs(swapped - src["model.layers.0.mlp.gate_up_proj.weight"]).max() > 4 * step
    w1, step1 = refs["model.layers.1.self_attn.qkv_proj.weight"]
    assert np.abs(w1 - src["model.layers.0.self_attn.qkv_proj.weight"]).max() > 4 * step1


@pytest.mark.parametrize("case", CASES)
def test_every_node_maps_by_value(folders, bundles, case):
    """Every weight of the bundle is the graph's by value: int4 ones dequantize to the numpy
    reference bit for bit, float ones (embedding; kv2-fused's lm_head) equal the stored float32."""
    _, folder, _ = folders(case)
    refs = _references(folder)
    ckpt = open_checkpoint(folder)
    params = read_tensor_cache(bundles(case) / "params")
    lm_float = CASES[case][1] is not None
    for name, (w, _) in refs.items():
        assert np.array_equal(ckpt.read(name), w), name  # the reader, before the compile
        ours = _bundle_weight(params, name)
        assert ours.dtype == np.float32 and np.array_equal(ours, w), name
    assert "model.embed_tokens.weight" in params and ("lm_head.weight" in params) == lm_float
    cfg = ckpt.config
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (
        CASES[case][0]["num_key_value_heads"], CASES[case][0]["intermediate_size"], 512)


# ---------------------------------------------------------------- logits and tokens


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_onnxruntime_and_transformers(folders, bundles, case):
    """The default compile (at q4f32: float activations) gives ONNX Runtime's logits at accuracy
    level 0 and transformers' on the dequantized weights, within 1e-4, and their greedy tokens."""
    hf, folder, level0 = folders(case)
    bundle = bundles(case)
    m = read_manifest(bundle)
    assert (m.quantize_embedding, m.quantize_lm_head) == (False, CASES[case][1] is None)
    ours = teacher_forced_logits(bundle, IDS)
    ort = ort_teacher_forced_logits(level0, IDS)
    model = _transformers(hf, _references(folder))
    for ref in (ort, _logits(model, IDS)):
        r = compare_logits(ref, ours)
        assert r["max_abs_diff"] < 1e-4 and r["top1_agreement"] == 1.0, r
    prompt = IDS[:6]
    got = Engine(bundle).generate(prompt, GREEDY, Sampler(0.0, 1.0, 0), ()).output_ids
    assert got == ort_greedy(level0, prompt, GREEDY) == _greedy(model, prompt, GREEDY)


def test_quantize_embedding_is_what_moved_the_logits(folders, bundles, capsys):
    """The issue's bundle: the same folder with the float32 embedding requantized to int4 (the old
    default, now --quantize-embedding) is off ONNX Runtime's logits by far more than rounding."""
    from edgesmith.cli import main

    _, _, level0 = folders("kv1-split")
    ort = ort_teacher_forced_logits(level0, IDS)
    old = bundles("kv1-split", quantize_embedding=True)
    m = read_manifest(old)
    assert (m.quantize_embedding, m.quantize_lm_head) == (True, True)
    assert "embedding quantized to int4 by edgesmith" in m.model.input["float_ends"]
    r = compare_logits(ort, teacher_forced_logits(old, IDS))
    assert r["max_abs_diff"] > 0.05, r  # measured 0.5 on a logit scale of ~2
    assert main(["inspect", str(bundles("kv1-split"))]) == 0
    text = capsys.readouterr().out
    assert "embedding kept in float32, as the source stores it" in text and "(embedding in float, lm_head int4)" in text


def test_default_quant_tracks_onnxruntime_as_shipped(folders, bundles):
    """Without --quant this host's default for the folder (q4f32i8 where it has int8 dot products:
    ONNX Runtime's accuracy level 4 scheme) stays within the KL bound of ONNX Runtime as shipped."""
    _, folder, _ = folders("kv1-split")
    bundle = bundles("kv1-split", None)
    assert read_manifest(bundle).quant == default_quant(str(folder), "host")[0]
    r = compare_logits(ort_teacher_forced_logits(folder, IDS), teacher_forced_logits(bundle, IDS))
    assert r["mean_kl"] < 5e-4 and r["top1_agreement"] >= 0.9, r


# ---------------------------------------------------------------- a packed gate/up that is not Phi-3's


def test_gate_up_split_other_than_halves_refused(folders, tmp_path):
    import onnx

    _, folder, _ = folders("kv2-fused")
    bad = shutil.copytree(folder, tmp_path / "bad")
    model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    split = next(n for n in model.graph.node if n.op_type == "Split")
    for a in split.attribute:
        if a.name == "axis":
            a.i = 1  # the sequence axis: not [gate | up]
    onnx.save(model, str(bad / "model.onnx"))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(bad)
    msg = str(info.value)
    assert "\n" not in msg and "Split" in msg and "two equal halves" in msg
    assert json.loads((bad / "genai_config.json").read_text())["model"]["type"] == "phi3"
