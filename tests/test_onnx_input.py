"""ONNX Runtime GenAI Phi-3 folders as compile input, checked against ONNX Runtime itself.

The folders are written by ONNX Runtime GenAI's model builder (int4, fp16, fp32; MHA, GQA,
longrope, tied embeddings + partial rotary) from tests/hf_tiny.py checkpoints. References, none
of them edgesmith's code: onnx's own reader, a numpy MatMulNBits dequantization written here
(itself checked against ONNX Runtime's MatMulNBits), ONNX Runtime GenAI running the folder, and
the Hugging Face config.json the builder read.

Bounds: int4 logits vs ONNX Runtime GenAI's within mean KL 5e-4 nats (measured 3e-5..6e-5 on
these models: ONNX Runtime multiplies with int8 activations at accuracy level 4, we in float or
with our own int8 scheme), and within 1e-4 of its logits when the graph is set to accuracy
level 0 (float activations); fp32 within 1e-4 of its logits and the same greedy tokens.
"""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from numpy_phi3 import read_tensor_cache, unpack_int4
from onnx_tiny import (
    ONNX_VARIANTS,
    load_initializers,
    make_hf_folder,
    matmulnbits_dequantize,
    ort_greedy,
    ort_matmulnbits_weight,
    ort_teacher_forced_logits,
    run_builder,
)

from edgesmith.compiler.build import compile_bundle
from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.inputs.checkpoint import default_quant, open_checkpoint, validate
from edgesmith.compiler.inputs.onnx_file import OnnxFile
from edgesmith.errors import CheckpointError, ConfigError, EdgesmithError
from edgesmith.runtime.engine import Engine
from edgesmith.runtime.evaluate import compare_logits, teacher_forced_logits

IDS = [1, 5, 17, 42, 99, 7, 3, 250, 128, 64, 11, 200, 33, 8, 190, 77, 21, 9, 14, 30]  # 20 > longrope's 16
KL_BOUND = 5e-4


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def hf_folder(onnx_root):
    made = {}

    def get(variant: str):
        if variant not in made:
            made[variant] = make_hf_folder(variant, onnx_root / f"hf-{variant}")
        return made[variant]

    return get


@pytest.fixture(scope="session")
def onnx_folder(onnx_root, hf_folder):
    """onnx_folder(variant, precision, extra_options) -> builder output, built once per session."""
    made = {}

    def get(variant: str, precision: str = "int4", extra: str | None = None):
        key = (variant, precision, extra)
        if key not in made:
            name = f"{variant}-{precision}" + (f"-{len(made)}" if extra else "")
            made[key] = run_builder(hf_folder(variant), onnx_root / name, precision, onnx_root / "cache", extra)
        return made[key]

    return get


@pytest.fixture(scope="session")
def onnx_bundle(onnx_root, onnx_folder):
    made = {}

    def get(variant: str, precision: str, quant: str | None, float_embedding: bool = False):
        key = (variant, precision, quant, float_embedding)
        if key not in made:
            out = onnx_root / "bundles" / f"{variant}-{precision}-{quant}-{float_embedding}"
            made[key] = compile_bundle(onnx_folder(variant, precision), quant, "host", out,
                                       quantize_embedding=False if float_embedding else None)
        return made[key]

    return get


def one_line(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def refused_and_nothing_written(folder, tmp_path, exc_type=EdgesmithError) -> str:
    import tempfile
    from pathlib import Path

    out_parent = Path(tempfile.mkdtemp(dir=tmp_path, prefix="out-"))
    msg = one_line(exc_type, compile_bundle, folder, None, "host", out_parent / "bundle")
    assert list(out_parent.iterdir()) == []
    return msg


# ---------------------------------------------------------------- reading, config


@pytest.mark.parametrize("variant,precision", [("mini-4k", "int4"), ("mini-4k", "fp16"), ("mini-128k", "int4")])
def test_reader_equals_onnx(onnx_folder, variant, precision):
    folder = onnx_folder(variant, precision)
    ours = OnnxFile(folder / "model.onnx")
    ref = load_initializers(folder)
    assert set(ref) <= set(ours.tensors)
    for name, arr in ref.items():
        got = ours.read(name)
        assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr), name


@pytest.mark.parametrize("variant", ONNX_VARIANTS)
def test_config_from_genai_config_and_graph(onnx_folder, hf_folder, variant):
    """No config.json in the builder's folder: everything read back from genai_config.json and the graph."""
    ckpt = open_checkpoint(onnx_folder(variant))
    validate(ckpt)
    hf = json.loads((hf_folder(variant) / "config.json").read_text())
    cfg = ckpt.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings"):
        assert getattr(cfg, key) == hf[key], key
    assert cfg.rotary_dim == int(cfg.head_dim * hf.get("partial_rotary_factor", 1.0))
    assert cfg.rms_norm_eps == pytest.approx(hf["rms_norm_eps"], rel=1e-6)
    assert cfg.tie_word_embeddings == hf["tie_word_embeddings"]
    rope = hf.get("rope_scaling")
    if rope:
        assert cfg.rope_type == "longrope" and cfg.original_max_position_embeddings == hf["original_max_position_embeddings"]
        # The tables fix inv_freq = 1 / (factor * theta^(2i/d)); compare that, whatever base was chosen.
        i = np.arange(0, cfg.rotary_dim, 2) / cfg.rotary_dim
        for ours, theirs in ((cfg.rope_short_factor, rope["short_factor"]), (cfg.rope_long_factor, rope["long_factor"])):
            np.testing.assert_allclose(np.array(ours) * cfg.rope_theta**i, np.array(theirs) * hf["rope_theta"]**i, rtol=1e-5)
        assert cfg.rope_attention_factor == pytest.approx(np.sqrt(1 + np.log(64 / 16) / np.log(16)), rel=1e-6)
    else:
        theta = hf["rope_theta"] if "rope_theta" in hf else hf["rope_parameters"]["rope_theta"]  # transformers 5 layout
        assert cfg.rope_type == "default" and cfg.rope_theta == theta
    # the builder's CPU int4 keeps float32 scales; the target adds int8 activations on CPUs that have them
    assert default_quant(str(onnx_folder(variant)), "linux-opencl")[0] == "q4f32"
    assert default_quant(str(onnx_folder(variant)), "arm64-linux")[0] == "q4f32i8"
    assert default_quant(str(onnx_folder(variant)), "arm64-linux-dotprod")[0] == "q4f32i8"


def test_config_json_beside_the_graph_is_used_and_checked(onnx_folder, hf_folder, tmp_path):
    """Microsoft's ONNX folders carry the HF config.json: its RoPE must reproduce the graph's tables."""
    folder = copy(onnx_folder("mini-128k"), tmp_path)
    shutil.copy(hf_folder("mini-128k") / "config.json", folder / "config.json")
    cfg = open_checkpoint(folder).config
    assert cfg.rope_theta == 10000.0 and cfg.rope_short_factor == tuple(json.loads((folder / "config.json").read_text())["rope_scaling"]["short_factor"])

    raw = json.loads((folder / "config.json").read_text())
    raw["rope_theta"] = 20000.0
    (folder / "config.json").write_text(json.dumps(raw))
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "RoPE table" in msg and "theta 20000.0" in msg


# ---------------------------------------------------------------- int4: bit for bit


def _matmulnbits(folder) -> dict[str, tuple]:
    """The builder's MatMulNBits weights: base name -> (codes, scales, K, block_size)."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    init = load_initializers(folder)
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            out[n.input[1][: -len(".weight_Q4")]] = (init[n.input[1]], init[n.input[2]], a["K"], a["block_size"])
    return out


def _int4_references(folder) -> dict[str, np.ndarray]:
    """HF name -> W [N, K] float32 from the builder's MatMulNBits initializers (numpy reference)."""
    nodes = _matmulnbits(folder)

    def deq(base: str) -> np.ndarray:
        return matmulnbits_dequantize(*nodes[base])

    out = {"lm_head.weight": deq("lm_head.MatMul")}
    layers = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["num_hidden_layers"]
    for i in range(layers):
        p, o = f"model.layers.{i}.", f"model.layers.{i}."
        out[p + "self_attn.qkv_proj.weight"] = deq(o + "attn.qkv_proj.MatMul")
        out[p + "self_attn.o_proj.weight"] = deq(o + "attn.o_proj.MatMul")
        out[p + "mlp.gate_up_proj.weight"] = np.concatenate([deq(o + "mlp.gate_proj.MatMul"), deq(o + "mlp.up_proj.MatMul")])
        out[p + "mlp.down_proj.weight"] = deq(o + "mlp.down_proj.MatMul")
    return out


def test_numpy_matmulnbits_reference_is_onnxruntimes(onnx_folder):
    """The test's reference equals ONNX Runtime's own dequantization bit for bit (block 32 and 64)."""
    for folder in (onnx_folder("medium"), onnx_folder("mini-4k", "int4", "int4_block_size=64")):
        nodes = _matmulnbits(folder)
        assert "lm_head.MatMul" in nodes and len(nodes) >= 5, sorted(nodes)  # the lm_head and a layer's linears
        for name, node in nodes.items():
            assert np.array_equal(matmulnbits_dequantize(*node), ort_matmulnbits_weight(*node)), name


@pytest.mark.slow
@pytest.mark.parametrize("variant", ONNX_VARIANTS)
def test_int4_weights_bit_for_bit(onnx_folder, onnx_bundle, variant):
    """Every int4 weight of the bundle dequantizes to exactly ONNX Runtime's values: layers as q4
    (codes and float32 scales kept), lm_head/embedding as float32 with --float-embedding."""
    folder = onnx_folder(variant)
    refs = _int4_references(folder)
    params = read_tensor_cache(onnx_bundle(variant, "int4", "q4f32", float_embedding=True) / "params")
    init = load_initializers(folder)
    if variant == "phi-4-mini":  # tied: the embedding is GatherBlockQuantized over lm_head's codes
        refs["model.embed_tokens.weight"] = refs.pop("lm_head.weight")
    else:
        refs["model.embed_tokens.weight"] = init["model.embed_tokens.weight"].astype(np.float32)
    for name, ref in refs.items():
        base = name[: -len(".weight")]
        if base + ".q_weight" in params:
            scale = np.repeat(params[base + ".q_scale"], 32, axis=1)
            assert params[base + ".q_scale"].dtype == np.float32
            ours = unpack_int4(params[base + ".q_weight"]).astype(np.float32) * scale
        else:
            ours = params[name]
        assert ours.dtype == np.float32 and np.array_equal(ours, ref), name


@pytest.mark.slow
@pytest.mark.parametrize("variant", ONNX_VARIANTS)
def test_int4_logits_close_to_onnxruntime(onnx_folder, onnx_bundle, variant, tmp_path):
    """As shipped (accuracy level 4: ONNX Runtime quantizes activations to int8) within the KL
    bound; with the graph set to accuracy level 0 (float activations, same int4 weights) the
    logits are ONNX Runtime's within 1e-4: the int4 arithmetic is the same, not just close."""
    folder = onnx_folder(variant)
    ours = teacher_forced_logits(onnx_bundle(variant, "int4", "q4f32", float_embedding=True), IDS)
    r = compare_logits(ort_teacher_forced_logits(folder, IDS), ours)
    assert r["mean_kl"] < KL_BOUND and r["top1_agreement"] >= 0.9, r

    float_acts = copy(folder, tmp_path)

    def accuracy_level_0(model):
        for node in model.graph.node:
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = 0

    _edit_graph(float_acts, accuracy_level_0)
    r = compare_logits(ort_teacher_forced_logits(float_acts, IDS), ours)
    assert r["max_abs_diff"] < 1e-4 and r["top1_agreement"] == 1.0, r


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mini-4k", "phi-4-mini"])
def test_int4_default_keeps_lm_head_and_tied_embedding_codes(onnx_folder, onnx_bundle, variant):
    """By default: lm_head (or the tied embedding) stays int4, codes and scales as stored, and the
    export's float32 embedding stays float32 as stored (not requantized: issue #35)."""
    bundle = onnx_bundle(variant, "int4", None)
    m = read_manifest(bundle)
    # float32 scales as stored; int8 activations only where the host has dot products
    assert m.quant == default_quant(str(onnx_folder(variant)), "host")[0] in ("q4f32", "q4f32i8")
    assert m.model.input["int4_kept"] == "bit for bit (codes and scales)"
    params = read_tensor_cache(bundle / "params")
    init = load_initializers(onnx_folder(variant))
    name = "model.embed_tokens" if variant == "phi-4-mini" else "lm_head"
    codes = init["lm_head.MatMul.weight_Q4"]
    assert np.array_equal(params[name + ".q_weight"].view(np.uint8).reshape(codes.shape), codes)
    assert np.array_equal(params[name + ".q_scale"], init["lm_head.MatMul.weight_scales"])
    if variant == "mini-4k":
        emb = init["model.embed_tokens.weight"]
        assert emb.dtype == np.float32 and np.array_equal(params["model.embed_tokens.weight"], emb)
        assert (m.quantize_embedding, m.quantize_lm_head) == (False, True)


@pytest.mark.slow
def test_int8_activations_against_onnxruntime(onnx_folder, onnx_bundle, capsys):
    """ONNX Runtime multiplies int4 weights with int8 activations (accuracy level 4). Same weights,
    four ways: float or int8 activations, float32 (kept) or float16 (rounded) scales."""
    ref = ort_teacher_forced_logits(onnx_folder("mini-4k"), IDS)
    kl = {}
    for quant in ("q4f32", "q4f32i8", "q4f16", "q4f16i8"):
        bundle = onnx_bundle("mini-4k", "int4", quant, float_embedding=True)
        r = compare_logits(ref, teacher_forced_logits(bundle, IDS))
        assert r["mean_kl"] < KL_BOUND and r["top1_agreement"] >= 0.9, (quant, r)
        kl[quant] = r["mean_kl"]
    kept = read_manifest(onnx_bundle("mini-4k", "int4", "q4f16", True)).model.input["int4_kept"]
    assert kept == "codes bit for bit, scales rounded float32 -> float16"
    with capsys.disabled():
        print("\n  mean KL vs ONNX Runtime GenAI: " + ", ".join(f"{q} {v:.3g}" for q, v in kl.items()), file=sys.stderr)
    # Our int8 scheme (blocks of 32, max|x|/127) is ONNX Runtime's, so it lands closer to it.
    assert kl["q4f32i8"] < kl["q4f32"]


# ---------------------------------------------------------------- fp32 / fp16 exports


@pytest.mark.slow
def test_fp32_greedy_tokens_equal_onnxruntime(onnx_folder, onnx_bundle):
    folder = onnx_folder("mini-4k", "fp32")
    bundle = onnx_bundle("mini-4k", "fp32", "q0f32")
    r = compare_logits(ort_teacher_forced_logits(folder, IDS), teacher_forced_logits(bundle, IDS))
    assert r["max_abs_diff"] < 1e-4, r
    from edgesmith.runtime.sampling import Sampler

    theirs = ort_greedy(folder, IDS[:5], 24)
    ours = Engine(bundle).generate(IDS[:5], 24, Sampler(0.0, 1.0, 0), ()).output_ids
    assert ours == theirs


@pytest.mark.slow
def test_fp16_export_eval_and_inspect(onnx_folder, tmp_path, capsys):
    """An fp16 (MultiHeadAttention + RotaryEmbedding) export through the CLI: our own int4 with
    --eval, inspect naming the source format; the q0f32 twin --eval builds matches ONNX Runtime."""
    from edgesmith.cli import main

    folder = onnx_folder("mini-4k", "fp16")
    out = tmp_path / "b"
    assert main(["compile", str(folder), "-o", str(out), "--eval", "-q"]) == 0
    assert "accuracy vs q0f32 over 32 positions" in capsys.readouterr().out
    m = read_manifest(out)
    # float weights: our own int4, the target's default (int8 activations where the host has dot products)
    assert m.quant == default_quant(str(folder), "host")[0] in ("q4f16", "q4f16i8")
    assert m.model.input["float_kept"] == "quantized by edgesmith"
    assert m.eval.mean_kl < 0.05
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format      ONNX Runtime GenAI (model.onnx); 15 float MatMul: quantized by edgesmith" in text
    ref = compile_bundle(folder, "q0f32", "host", tmp_path / "ref")
    r = compare_logits(ort_teacher_forced_logits(folder, IDS), teacher_forced_logits(ref, IDS))
    assert r["mean_kl"] < 1e-5 and r["top1_agreement"] == 1.0, r  # ONNX Runtime computes in float16


# ---------------------------------------------------------------- block sizes, zero points


def test_block_64_maps_exactly(onnx_folder):
    """Blocks of 64 (down_proj's K=96 pads its last block): each scale repeated over two groups of 32."""
    folder = onnx_folder("mini-4k", "int4", "int4_block_size=64")
    ckpt = open_checkpoint(folder)
    refs = _int4_references(folder)
    for name, ref in refs.items():
        packed, scales = ckpt.read_q4(name, 32, "float32")
        ours = unpack_int4(packed).astype(np.float32) * np.repeat(scales, 32, axis=1)
        assert np.array_equal(ours, ref) and np.array_equal(ckpt.read(name), ref), name


def _edit_graph(folder, edit):
    import onnx

    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    edit(model)
    onnx.save(model, str(path))


def _first(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


@pytest.mark.parametrize("value,accepted", [(8, True), (7, False)])
def test_zero_points(onnx_folder, tmp_path, value, accepted):
    """Zero points that are all 8 are the default written out; any other value is refused."""
    from onnx import numpy_helper

    folder = copy(onnx_folder("mini-4k"), tmp_path)

    def add_zero_points(model):
        node = _first(model, "MatMulNBits")
        n = next(a.i for a in node.attribute if a.name == "N")
        zp = np.full((n, 1), value | (value << 4), dtype=np.uint8)  # 2 blocks a row, two nibbles a byte
        model.graph.initializer.append(numpy_helper.from_array(zp, "zp"))
        node.input.append("zp")

    _edit_graph(folder, add_zero_points)
    if accepted:
        got = open_checkpoint(folder).read_q4("model.layers.0.self_attn.qkv_proj.weight", 32, "float32")
        want = open_checkpoint(onnx_folder("mini-4k")).read_q4("model.layers.0.self_attn.qkv_proj.weight", 32, "float32")
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    else:
        msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
        assert "zero points" in msg and "requantize" in msg


def test_block_size_16_refused(onnx_folder, tmp_path):
    folder = copy(onnx_folder("mini-4k"), tmp_path)

    def edit(model):
        for a in _first(model, "MatMulNBits").attribute:
            if a.name == "block_size":
                a.i = 16

    _edit_graph(folder, edit)
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "block_size=16" in msg


# ---------------------------------------------------------------- bad input: one line, nothing written


def test_model_onnx_path_reads_like_its_folder(onnx_folder):
    folder = onnx_folder("medium")
    by_file, by_folder = open_checkpoint(folder / "model.onnx"), open_checkpoint(folder)
    assert by_file.config == by_folder.config
    name = "model.layers.1.mlp.gate_up_proj.weight"
    assert np.array_equal(by_file.read(name), by_folder.read(name))


def test_external_data_outside_the_folder_refused(onnx_folder, tmp_path):
    folder = copy(onnx_folder("mini-4k"), tmp_path)

    def edit(model):
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"

    _edit_graph(folder, edit)
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "outside the model's folder" in msg


def test_truncated_data_refused(onnx_folder, tmp_path):
    folder = copy(onnx_folder("mini-4k"), tmp_path)
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "model.onnx.data is truncated" in msg


def test_unmapped_op_refused(onnx_folder, tmp_path):
    folder = copy(onnx_folder("mini-4k"), tmp_path)
    _edit_graph(folder, lambda model: setattr(_first(model, "Sigmoid"), "op_type", "Relu"))
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "(Relu)" in msg


def test_non_phi3_onnx_refused(tmp_path, onnx_root):
    """A Llama folder from the same builder, and an ONNX model that is no language model at all."""
    from hf_tiny import write_tokenizer
    from onnx import TensorProto, helper
    from transformers import LlamaConfig, LlamaForCausalLM

    import onnx

    hf = tmp_path / "llama-hf"
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(hf)
    write_tokenizer(hf / "tokenizer.json")
    llama = run_builder(hf, tmp_path / "llama", "int4", onnx_root / "cache")
    msg = refused_and_nothing_written(llama, tmp_path, ConfigError)
    assert "model type 'llama'" in msg

    lone = tmp_path / "lone"
    lone.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph), str(lone / "relu.onnx"))
    msg = refused_and_nothing_written(lone / "relu.onnx", tmp_path, CheckpointError)
    assert "no genai_config.json beside it" in msg


def test_builder_lm_head_wired_to_layer_0_refused(tmp_path, onnx_root):
    """hf_tiny's own sizes (vocab 256 = gate_up's 2 x 128) make the builder take gate_up_proj for
    the lm_head and read logits from layer 0: not Phi-3's graph, refused by the walk."""
    from hf_tiny import make_tiny_checkpoint

    hf = make_tiny_checkpoint("mini-4k", tmp_path / "hf")
    folder = run_builder(hf, tmp_path / "onnx", "int4", onnx_root / "cache")
    msg = refused_and_nothing_written(folder, tmp_path, CheckpointError)
    assert "layer 0" in msg and "lm_head" in msg
