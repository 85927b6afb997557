"""Safetensors reading and the checkpoint abstraction, checked against the safetensors package and
transformers' own state dicts; random:<preset> checkpoints for shape and determinism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file
from safetensors.torch import load_file as torch_load_file

from edgesmith.compiler.inputs.checkpoint import expected_shapes, open_checkpoint, validate
from edgesmith.compiler.inputs.random_weights import RANDOM_PRESETS, list_presets
from edgesmith.errors import CheckpointError, ConfigError
from hf_tiny import (
    VARIANTS,
    corrupt_header,
    corrupt_tensor_shape,
    corrupt_truncate,
    make_tiny_checkpoint,
    make_tiny_model,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def mini(root):
    return make_tiny_checkpoint("mini-4k", root / "mini-4k")


def one_line_error(exc_type, fn, *args):
    with pytest.raises(exc_type) as info:
        fn(*args)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reader_equals_safetensors(root, dtype):
    folder = make_tiny_checkpoint("medium", root / f"medium-{dtype}", dtype=dtype)
    ckpt = open_checkpoint(folder)
    assert ckpt.config.dtype == dtype and dtype in ckpt.description
    ref = torch_load_file(folder / "model.safetensors")  # torch: numpy has no bfloat16
    if dtype != "bfloat16":
        assert set(np_load_file(folder / "model.safetensors")) == set(ref)
    assert set(ckpt.tensor_names()) == set(ref)
    for name, want in ref.items():
        got = ckpt.read(name)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
        assert ckpt.tensor_shape(name) == tuple(want.shape)
        np.testing.assert_array_equal(got, want.float().numpy())


def test_reader_equals_model_state_dict(mini):
    state = make_tiny_model("mini-4k").state_dict()
    ckpt = open_checkpoint(mini)
    for name in ckpt.tensor_names():
        np.testing.assert_array_equal(ckpt.read(name), state[name].numpy())


def test_sharded(root):
    folder = make_tiny_checkpoint("phi-4-mini", root / "sharded", max_shard_size="40KB")
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    ref = {}
    for shard in shards:
        ref.update(np_load_file(shard))
    ckpt = open_checkpoint(folder)
    assert f"{len(shards)} shards" in ckpt.description
    assert set(ckpt.tensor_names()) == set(ref)
    for name, want in ref.items():
        np.testing.assert_array_equal(ckpt.read(name), want)
    validate(ckpt)


@pytest.mark.parametrize("variant", VARIANTS)
def test_expected_shapes_match_transformers(root, variant):
    model = make_tiny_model(variant)
    cfg = open_checkpoint(make_tiny_checkpoint(variant, root / f"shapes-{variant}", with_tokenizer=False)).config
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_shapes(cfg)
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in want
        state.pop("lm_head.weight")  # tied: the state dict repeats the embedding under this name
    assert want == state


def test_tied_checkpoint_validates_without_lm_head(root):
    ckpt = open_checkpoint(make_tiny_checkpoint("phi-4-mini", root / "tied", with_tokenizer=False))
    assert "lm_head.weight" not in ckpt.tensor_names()
    validate(ckpt)


def test_tokenizer(mini, root):
    from tokenizers import Tokenizer

    ckpt = open_checkpoint(mini)
    assert ckpt.tokenizer_path == mini / "tokenizer.json"
    tok = Tokenizer.from_file(str(ckpt.tokenizer_path))
    ids = tok.encode("the water is hot.").ids
    assert max(ids) < ckpt.config.vocab_size and 0 not in ids  # no <unk>
    assert tok.decode(ids) == "the water is hot."
    bare = make_tiny_checkpoint("mini-4k", root / "bare", with_tokenizer=False)
    assert open_checkpoint(bare).tokenizer_path is None


def test_fingerprint(mini, root, tmp_path):
    a = open_checkpoint(mini).fingerprint()
    assert a == open_checkpoint(mini).fingerprint() == open_checkpoint(copy(mini, tmp_path)).fingerprint()
    other = make_tiny_checkpoint("mini-4k", root / "seed1", seed=1, with_tokenizer=False)
    assert open_checkpoint(other).fingerprint() != a


def test_extra_tensors_ignored(mini, tmp_path):
    folder = copy(mini, tmp_path)
    tensors = np_load_file(folder / "model.safetensors")
    tensors["model.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_file(tensors, folder / "model.safetensors")
    validate(open_checkpoint(folder))


# ---------------------------------------------------------------- bad inputs


def test_truncated_detected_at_open(mini, tmp_path):
    path = corrupt_truncate(copy(mini, tmp_path), drop_bytes=100)
    msg = one_line_error(CheckpointError, open_checkpoint, path.parent)
    assert str(path) in msg and "truncated" in msg


def test_truncated_inside_header(mini, tmp_path):
    folder = copy(mini, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    assert str(path) in one_line_error(CheckpointError, open_checkpoint, folder)


def test_bad_header(mini, tmp_path):
    path = corrupt_header(copy(mini, tmp_path), b"{this is not json")
    msg = one_line_error(CheckpointError, open_checkpoint, path.parent)
    assert str(path) in msg and "JSON" in msg


def test_unsupported_dtype(mini, tmp_path):
    folder = copy(mini, tmp_path)
    tensors = np_load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.float64)
    save_file(tensors, folder / "model.safetensors")
    msg = one_line_error(CheckpointError, open_checkpoint, folder)
    assert "F64" in msg and "'model.norm.weight'" in msg


def test_no_safetensors(mini, tmp_path):
    folder = copy(mini, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    msg = one_line_error(CheckpointError, open_checkpoint, folder)
    assert "no *.safetensors" in msg and str(folder) in msg and "pytorch_model.bin" in msg


def test_index_names_missing_shard(root, tmp_path):
    folder = copy(make_tiny_checkpoint("mini-4k", root / "sharded-mini", max_shard_size="40KB"), tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (folder / victim).unlink()
    msg = one_line_error(CheckpointError, open_checkpoint, folder)
    assert victim in msg and "index" in msg


def test_wrong_shape(mini, tmp_path):
    folder = copy(mini, tmp_path)
    corrupt_tensor_shape(folder, "model.layers.1.mlp.down_proj.weight", (64, 100))
    ckpt = open_checkpoint(folder)  # opening is fine; validate names the tensor and both shapes
    msg = one_line_error(CheckpointError, validate, ckpt)
    assert "'model.layers.1.mlp.down_proj.weight'" in msg and "[64, 100]" in msg and "[64, 128]" in msg


def test_missing_tensor(mini, tmp_path):
    folder = copy(mini, tmp_path)
    tensors = np_load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors")
    msg = one_line_error(CheckpointError, validate, open_checkpoint(folder))
    assert "'lm_head.weight'" in msg and "[256, 64]" in msg


def test_bad_paths(tmp_path, mini):
    assert "does not exist" in one_line_error(CheckpointError, open_checkpoint, tmp_path / "nope")
    assert "not a folder" in one_line_error(CheckpointError, open_checkpoint, mini / "config.json")
    with pytest.raises(CheckpointError, match="no tensor"):
        open_checkpoint(mini).read("model.nope.weight")


# ---------------------------------------------------------------- random:<preset>


@pytest.mark.parametrize("preset", list_presets())
def test_random_shapes(preset):
    ckpt = open_checkpoint(f"random:{preset}")
    assert ckpt.config.num_hidden_layers == RANDOM_PRESETS[preset]["num_hidden_layers"]
    want = expected_shapes(ckpt.config)
    assert ckpt.tensor_names() == sorted(want)
    assert {n: ckpt.tensor_shape(n) for n in want} == want
    validate(ckpt)
    if ckpt.config.vocab_size == 32064:  # the Phi-3 vocabulary: the built tokenizer (tests/test_tokenizer.py)
        assert ckpt.tokenizer_entry.vocabulary == "phi-3"
    else:
        assert ckpt.tokenizer_path is None and ckpt.tokenizer_entry.note


def test_random_values_deterministic():
    a, b = open_checkpoint("random:tiny"), open_checkpoint("random:tiny:seed=0")
    names = a.tensor_names()
    first = {n: a.read(n) for n in names}
    reversed_order = {n: b.read(n) for n in reversed(names)}
    for n in names:
        assert first[n].tobytes() == reversed_order[n].tobytes()
        assert first[n].dtype == np.float32 and first[n].flags.c_contiguous
    c = open_checkpoint("random:tiny:seed=1")
    assert not np.array_equal(c.read(names[0]), first[names[0]])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    emb = first["model.embed_tokens.weight"]
    assert abs(emb.std() - 0.02) < 0.002 and abs(emb.mean()) < 0.002
    norm = first["model.norm.weight"]
    assert abs(norm.mean() - 1.0) < 0.01 and 0.01 < norm.std() < 0.03
    assert not np.array_equal(first["model.layers.0.input_layernorm.weight"], first["model.layers.1.input_layernorm.weight"])


def test_random_big_tensor_chunked_deterministic():
    # qkv of mini: 9216 x 3072, several generator chunks filled in parallel
    name = "model.layers.0.self_attn.qkv_proj.weight"
    a = open_checkpoint("random:phi-3-mini-4k:layers=1:seed=3").read(name)
    b = open_checkpoint("random:phi-3-mini-4k:seed=3").read(name)
    assert a.shape == (9216, 3072) and a.tobytes() == b.tobytes()
    assert abs(a.std() - 0.02) < 0.001


def test_random_layers_override():
    ckpt = open_checkpoint("random:phi-3-medium-4k:layers=3")
    assert ckpt.config.num_hidden_layers == 3
    assert "model.layers.2.mlp.down_proj.weight" in ckpt.tensor_names()
    assert "model.layers.3.mlp.down_proj.weight" not in ckpt.tensor_names()
    assert ckpt.fingerprint() != open_checkpoint("random:phi-3-medium-4k:layers=4").fingerprint()
    assert "layers=3" in ckpt.description


@pytest.mark.parametrize("spec", ["random:tiny:layers=0", "random:tiny:layers=x", "random:tiny:seed=-1", "random:tiny:depth=2"])
def test_random_bad_options(spec):
    msg = one_line_error(ConfigError, open_checkpoint, spec)
    assert spec.rsplit(":", 1)[1].split("=")[0] in msg


def test_random_unknown_preset():
    msg = one_line_error(ConfigError, open_checkpoint, "random:phi-9")
    assert "'phi-9'" in msg and all(p in msg for p in list_presets())
