"""config.json parsing, checked against what transformers itself computes from the same file."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import Phi3Config as HFPhi3Config
from transformers import Phi3ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgesmith.compiler.inputs.config import load_config
from edgesmith.compiler.models.phi3.config import Phi3Config
from edgesmith.compiler.inputs.random_weights import RANDOM_PRESETS
from edgesmith.errors import ConfigError
from hf_tiny import ORIGINAL_MAX, VARIANTS, corrupt_architecture, corrupt_config, make_tiny_checkpoint, to_classic_layout


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    return {v: make_tiny_checkpoint(v, root / v, with_tokenizer=False) for v in VARIANTS}


def one_line_error(exc_type, fn, *args):
    with pytest.raises(exc_type) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_transformers(folders, variant):
    folder = folders[variant]
    cfg = load_config(folder)
    hf = Phi3ForCausalLM.from_pretrained(folder)  # transformers reading the very same config.json
    rope = hf.model.rotary_emb
    hc = hf.config

    assert cfg.vocab_size == hc.vocab_size and cfg.hidden_size == hc.hidden_size
    assert cfg.num_attention_heads == hc.num_attention_heads
    assert cfg.num_key_value_heads == hc.num_key_value_heads
    assert cfg.head_dim == hf.model.layers[0].self_attn.head_dim
    assert cfg.rotary_dim == 2 * rope.inv_freq.numel()
    assert cfg.rope_type == rope.rope_type
    assert cfg.rope_theta == hc.rope_parameters["rope_theta"]
    assert cfg.rms_norm_eps == hc.rms_norm_eps
    assert cfg.tie_word_embeddings == hc.tie_word_embeddings
    assert cfg.max_position_embeddings == hc.max_position_embeddings
    assert cfg.rope_attention_factor == rope.attention_scaling  # exact: same formula, same floats
    assert cfg.bos_token_id == hc.bos_token_id and cfg.pad_token_id == hc.pad_token_id
    eos = hc.eos_token_id if isinstance(hc.eos_token_id, list) else [hc.eos_token_id]
    assert list(cfg.eos_token_ids) == eos

    idx = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.int64).float() / cfg.rotary_dim
    if cfg.rope_type == "default":
        assert cfg.rope_short_factor is None and cfg.rope_attention_factor == 1.0
        torch.testing.assert_close(rope.inv_freq, 1.0 / cfg.rope_theta**idx, rtol=0, atol=0)
        return
    assert cfg.original_max_position_embeddings == ORIGINAL_MAX
    assert cfg.original_max_position_embeddings == hc.rope_parameters["original_max_position_embeddings"]
    assert cfg.rope_attention_factor > 1.0
    assert list(cfg.rope_short_factor) == hc.rope_parameters["short_factor"]
    assert list(cfg.rope_long_factor) == hc.rope_parameters["long_factor"]
    x = torch.zeros(1, 1, cfg.head_dim)
    for last_position, factors in ((ORIGINAL_MAX - 1, cfg.rope_short_factor), (ORIGINAL_MAX, cfg.rope_long_factor)):
        # transformers picks short/long per forward call from max(position_ids) + 1 vs original_max.
        rope(x, torch.tensor([[last_position]]))
        want = 1.0 / (torch.tensor(factors, dtype=torch.float32) * cfg.rope_theta**idx)
        torch.testing.assert_close(rope.inv_freq, want, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["mini-4k", "phi-3.5-mini", "phi-4-mini"])
def test_classic_and_rope_parameters_layouts_agree(folders, variant, tmp_path):
    v5 = json.loads((folders[variant] / "config.json").read_text())
    assert "rope_parameters" in v5 and "rope_scaling" not in v5
    classic_path = tmp_path / "config.json"
    shutil.copy(folders[variant] / "config.json", classic_path)
    classic = to_classic_layout(classic_path)
    assert "rope_parameters" not in classic and "rope_theta" in classic
    assert load_config(classic_path) == load_config(folders[variant])
    assert load_config(classic) == load_config(v5)  # dict source


def test_classic_su_alias_and_explicit_factors():
    short, long = [1.0 + i / 10 for i in range(8)], [3.0 + i for i in range(8)]
    base = dict(
        architectures=["Phi3ForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64 * 1024,
        original_max_position_embeddings=4096, rope_theta=10000.0,
    )
    su = load_config(dict(base, rope_scaling={"type": "su", "short_factor": short, "long_factor": long}))
    assert su.rope_type == "longrope" and su.rope_long_factor == tuple(long)
    for extra in ({}, {"factor": 3.0}, {"attention_factor": 1.5}, {"factor": 1.0}):
        rs = {"rope_type": "longrope", "short_factor": short, "long_factor": long, **extra}
        ours = load_config(dict(base, rope_scaling=rs))
        hc = HFPhi3Config(**{k: v for k, v in base.items() if k != "architectures"}, rope_scaling=dict(rs))
        _, attention_scaling = ROPE_INIT_FUNCTIONS["longrope"](hc)
        assert ours.rope_attention_factor == attention_scaling, extra
    assert su.rope_attention_factor == math.sqrt(1 + math.log(16) / math.log(4096))


@pytest.mark.parametrize("preset", sorted(RANDOM_PRESETS))
def test_presets_match_transformers(preset):
    raw = RANDOM_PRESETS[preset]
    cfg = load_config(raw)
    hc = HFPhi3Config(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    kind = hc.rope_parameters["rope_type"]
    assert cfg.rope_type == kind
    if kind == "default":
        assert cfg.rope_attention_factor == 1.0
        assert cfg.rotary_dim == cfg.head_dim
    else:
        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[kind](hc)
        assert cfg.rotary_dim == 2 * inv_freq.numel()
        assert cfg.rope_attention_factor == attention_scaling
        assert len(cfg.rope_short_factor) == len(cfg.rope_long_factor) == cfg.rotary_dim // 2
        assert cfg.rope_long_factor[-1] > 10 * cfg.rope_short_factor[-1]
    if preset == "phi-4-mini":
        assert (cfg.head_dim, cfg.rotary_dim, cfg.tie_word_embeddings) == (128, 96, True)
        assert cfg.eos_token_ids == (200020, 199999)


def test_round_trip_through_json(folders):
    for v in VARIANTS:
        cfg = load_config(folders[v])
        again = Phi3Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and hash(again) == hash(cfg)


# ---------------------------------------------------------------- errors


def test_error_not_a_folder(tmp_path):
    msg = one_line_error(ConfigError, load_config, tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg
    msg = one_line_error(ConfigError, load_config, tmp_path)
    assert "config.json" in msg and str(tmp_path) in msg


def test_error_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert "not readable JSON" in one_line_error(ConfigError, load_config, tmp_path)


def test_error_other_architecture(folders, tmp_path):
    shutil.copytree(folders["mini-4k"], tmp_path / "m")
    corrupt_architecture(tmp_path / "m")
    msg = one_line_error(ConfigError, load_config, tmp_path / "m")
    assert "'LlamaForCausalLM'" in msg and "Phi3ForCausalLM" in msg


def _broken(folders, tmp_path, variant="mini-4k", **changes):
    shutil.copytree(folders[variant], tmp_path / "m")
    corrupt_config(tmp_path / "m", **changes)
    return one_line_error(ConfigError, load_config, tmp_path / "m")


def test_error_unknown_rope_type(folders, tmp_path):
    rp = json.loads((folders["phi-3.5-mini"] / "config.json").read_text())["rope_parameters"]
    msg = _broken(folders, tmp_path, "phi-3.5-mini", rope_parameters=dict(rp, rope_type="dynamic"))
    assert "'dynamic'" in msg and "longrope" in msg


def test_error_missing_key(folders, tmp_path):
    msg = _broken(folders, tmp_path, _delete=["hidden_size"])
    assert "'hidden_size'" in msg


def test_error_factor_length(folders, tmp_path):
    rp = json.loads((folders["phi-4-mini"] / "config.json").read_text())["rope_parameters"]
    msg = _broken(folders, tmp_path, "phi-4-mini", rope_parameters=dict(rp, long_factor=[1.0] * 8))
    assert "long_factor" in msg and "8" in msg and "6" in msg


def test_error_missing_factor(folders, tmp_path):
    rp = json.loads((folders["phi-4-mini"] / "config.json").read_text())["rope_parameters"]
    del rp["short_factor"]
    assert "'short_factor'" in _broken(folders, tmp_path, "phi-4-mini", rope_parameters=rp)


def test_error_heads_do_not_divide(folders, tmp_path):
    msg = _broken(folders, tmp_path, hidden_size=66)
    assert "66" in msg and "num_attention_heads 4" in msg
