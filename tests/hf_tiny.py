"""Tiny Phi3ForCausalLM checkpoints written by transformers itself, one per supported variant.

Used by the tests as the independent reference: config parsing, the safetensors reader and the
compiled model are all checked against what transformers builds, saves and computes.

    make_tiny_checkpoint("phi-4-mini", tmp_path / "m")   # -> folder with config.json, model.safetensors, tokenizer.json

Variants (hidden 64, intermediate 128, 2 layers, vocab 256, head_dim 16):
  mini-4k       MHA (4/4 heads), default rope
  mini-128k     longrope, original_max_position_embeddings 16 and max 64 (a 16-token prefill plus
                decode steps crosses it), written in the CLASSIC `rope_scaling` layout like the real
                Phi-3-mini-128k config.json
  medium        GQA (4 heads, 2 kv heads), default rope
  phi-3.5-mini  longrope, in the transformers-5 `rope_parameters` layout save_pretrained writes
  phi-4-mini    partial_rotary_factor 0.75 (rotary_dim 12), GQA, tied embeddings, longrope
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

VARIANTS = ("mini-4k", "mini-128k", "medium", "phi-3.5-mini", "phi-4-mini")
VOCAB = 256
BOS, EOS, PAD, UNK = 1, 2, 3, 0
ORIGINAL_MAX = 16
MAX_POSITIONS = 64

_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by"
    " hot word but what some we can out other were all there when up use your how said an each she which do"
    " their time if will way about many then them write would like so these her long make thing see him two"
    " has look more day could go come did number sound no most people my over know water than call first who"
    " may down side been now find any new work part take get place made live where after back little only"
    " round man year came show every good me give our under name very through just form sentence great think"
    " say help low line differ turn cause much mean before move right boy old too same tell does set three"
    " want air well also play small end put home read hand port large spell add even land here must big high"
    " such follow act why ask men change went light kind off need house picture try us again animal point"
    " mother world near build self earth father head stand own page should country found answer school grow"
    " study still learn plant cover food sun four"
).split()


def _factors(n: int) -> tuple[list[float], list[float]]:
    # Non-trivial on purpose: short != 1 and long clearly different, so using the wrong set shows.
    short = [round(1.0 + 0.25 * i / max(n - 1, 1), 4) for i in range(n)]
    long = [round(2.0 + 6.0 * i / max(n - 1, 1), 4) for i in range(n)]
    return short, long


def variant_config_kwargs(variant: str) -> dict:
    """Phi3Config(**kwargs) for a variant (transformers' own constructor arguments)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        original_max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.08,  # larger than 0.02 so logits are far from uniform
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    if variant == "medium":
        kw.update(num_key_value_heads=2)
    if variant in ("mini-128k", "phi-3.5-mini", "phi-4-mini"):
        partial = 0.75 if variant == "phi-4-mini" else 1.0
        short, long = _factors(int(16 * partial) // 2)
        kw.update(
            original_max_position_embeddings=ORIGINAL_MAX,
            rope_scaling={"rope_type": "longrope", "short_factor": short, "long_factor": long},
        )
    if variant == "phi-4-mini":
        kw.update(partial_rotary_factor=0.75, num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=[EOS, BOS])
    return kw


def make_tiny_model(variant: str, *, seed: int = 0, overrides: dict | None = None):
    """The transformers model itself (float32, eval mode). `overrides`: config keys to change
    (e.g. a real original_max_position_embeddings, a sliding_window)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(**dict(variant_config_kwargs(variant), **(overrides or {}))))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # transformers inits these to exactly 1; make a missed norm show
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def hf_continue(model, ids: list[int], out=None):
    """transformers' forward of `ids` after `out` (None: from the start) with its own KV cache,
    under whichever name this release gives it: `cache` (5.2x) or `past_key_values` (before;
    deprecated in 5.2x and gone in 5.40)."""
    import inspect

    import torch

    kw = {"use_cache": True}
    if out is not None:
        new = "cache" in inspect.signature(model.forward).parameters
        kw["cache" if new else "past_key_values"] = out.cache if new else out.past_key_values
    return model(torch.tensor([ids]), **kw)


def make_tiny_checkpoint(
    variant: str,
    out_dir: Path,
    *,
    dtype: str = "float32",
    seed: int = 0,
    with_tokenizer: bool = True,
    max_shard_size: str | int | None = None,
    overrides: dict | None = None,
) -> Path:
    """Build, save (safetensors) and return the folder. `max_shard_size` (e.g. "20KB") forces shards."""
    import torch
    from transformers.utils import logging as hf_logging

    # save_pretrained's progress bar goes to stderr, and a test that builds its checkpoint inside
    # a capsys test (a fixture first used there, as in a shuffled order) would read it as its own
    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    model = make_tiny_model(variant, seed=seed, overrides=overrides).to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(out_dir, **kwargs)
    if variant == "mini-128k":
        to_classic_layout(out_dir / "config.json")
    if with_tokenizer:
        write_tokenizer(out_dir / "tokenizer.json")
    return out_dir


def to_classic_layout(config_json: Path) -> dict:
    """Rewrite a transformers-5 config.json into the layout of the real Phi-3 checkpoints."""
    cfg = json.loads(config_json.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["original_max_position_embeddings"] = rope.get("original_max_position_embeddings", cfg["max_position_embeddings"])
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        cfg["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if rope["rope_type"] == "default":
        cfg["rope_scaling"] = None
    else:
        cfg["rope_scaling"] = {"type": rope["rope_type"], "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    config_json.write_text(json.dumps(cfg, indent=2))
    return cfg


def write_tokenizer(path: Path) -> Path:
    """A WordLevel tokenizer over 256 ids: specials 0-3, then common English words, then w<i> fillers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = list(dict.fromkeys(_WORDS + [".", ",", "!", "?"]))
    words += [f"w{i}" for i in range(VOCAB - len(specials) - len(words))]
    vocab = {tok: i for i, tok in enumerate(specials + words[: VOCAB - len(specials)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins with spaces, tidies " ." -> "."
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return path


# ---------------------------------------------------------------- bad inputs


def corrupt_truncate(folder: Path, drop_bytes: int = 100) -> Path:
    """Cut the end off the (first) safetensors file, as an interrupted download would."""
    path = sorted(Path(folder).glob("*.safetensors"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - drop_bytes])
    return path


def corrupt_architecture(folder: Path, arch: str = "LlamaForCausalLM") -> Path:
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    cfg["architectures"] = [arch]
    cfg["model_type"] = "llama"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def corrupt_config(folder: Path, **changes) -> Path:
    """Set (value) or delete (None... use `_delete=[keys]`) config.json keys."""
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    for key in changes.pop("_delete", []):
        cfg.pop(key, None)
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=2))
    return path


def corrupt_tensor_shape(folder: Path, name: str, shape: tuple[int, ...]) -> Path:
    """Replace one tensor in model.safetensors by zeros of another shape."""
    from safetensors.numpy import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    tensors[name] = np.zeros(shape, dtype=tensors[name].dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def corrupt_header(folder: Path, header: bytes) -> Path:
    """Replace model.safetensors' JSON header (keeping the data) by the given bytes."""
    path = Path(folder) / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :])
    return path
