"""Phi-3's part of reading an ONNX Runtime GenAI folder (compiler/inputs/onnx.py reads the folder
and the file, whatever the architecture; the registry entry's `onnx` points here):

  match         the graph walk (onnx_graph.py): per layer, the nodes that carry our parameters
  config        from config.json when the folder has one (its sizes checked against the graph),
                else from genai_config.json + the graph: sizes from the weights, heads from the
                attention node, eps from the norms, sliding window from local_window_size, and
                RoPE from the cos/sin tables (rotary dim = 2 x their width; theta, longrope factors
                and the attention factor read back from the angles)
  check         the tables the graph carries against the ones our model computes from the config
                (both sets for longrope, switched at the same length): a disagreement is refused
  tensor_parts  the Hugging Face names our converter asks for, each made of the graph's pieces:
                q/k/v and gate/up stacked by rows (or gate/up taken as one packed node)
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgesmith.compiler.inputs.config import load_config, parse_config
from edgesmith.compiler.inputs.onnx_file import LinearNode, OnnxFile
from edgesmith.errors import CheckpointError, ConfigError

from .config import ARCHITECTURE, Phi3Config
from .onnx_graph import Phi3Graph, match_phi3

GENAI_CONFIG = "genai_config.json"
_F32 = np.float32
# Any base reproduces a longrope table exactly (the factors absorb it); without config.json we use Phi-3's.
LONGROPE_BASE = 10000.0


def match(f: OnnxFile) -> Phi3Graph:
    return match_phi3(f)


def linears(g: Phi3Graph) -> list[LinearNode]:
    """Every linear node of the graph, lm_head last."""
    out = [lin for layer in g.layers for lin in (*layer.qkv, layer.o, *layer.gate_up, layer.down)]
    return out + [g.lm_head]


def tensor_parts(g: Phi3Graph, cfg: Phi3Config) -> dict[str, list]:
    """HF name -> the graph pieces stacked by rows to make it; a str is a stored 1-D weight."""
    parts: dict[str, list] = {"model.embed_tokens.weight": [g.embedding], "model.norm.weight": [g.final_norm]}
    for i, layer in enumerate(g.layers):
        p = f"model.layers.{i}."
        parts[p + "input_layernorm.weight"] = [layer.input_norm]
        parts[p + "post_attention_layernorm.weight"] = [layer.post_norm]
        parts[p + "self_attn.qkv_proj.weight"] = list(layer.qkv)
        parts[p + "self_attn.o_proj.weight"] = [layer.o]
        parts[p + "mlp.gate_up_proj.weight"] = list(layer.gate_up)
        parts[p + "mlp.down_proj.weight"] = [layer.down]
    if not cfg.tie_word_embeddings:
        parts["lm_head.weight"] = [g.lm_head]
    return parts


def config(f: OnnxFile, g: Phi3Graph, genai: dict, folder: Path) -> Phi3Config:
    """The config of a Phi-3 graph: from config.json when the folder has one (its sizes checked
    against the graph), else from genai_config.json + the graph (sizes from the weights, heads from
    the attention node, eps from the norms, sliding window from local_window_size, RoPE read back
    from the cos/sin tables)."""
    att = g.layers[0].attention
    heads = att["num_heads"]
    q_rows = sum(p.n for p in g.layers[0].qkv)
    hidden = g.layers[0].o.n
    if not heads or hidden % heads:
        raise CheckpointError(f"{f.path}: attention {att['node']!r} has num_heads={heads}, which does not divide hidden {hidden}")
    head_dim = hidden // heads
    kv = att["kv_num_heads"] or (q_rows // head_dim - heads) // 2
    for layer in g.layers:
        if (layer.attention["num_heads"], layer.attention["kv_num_heads"]) != (att["num_heads"], att["kv_num_heads"]):
            raise CheckpointError(f"{f.path}: attention heads differ between layers; Phi-3's do not")
    if q_rows != (heads + 2 * kv) * head_dim:
        raise CheckpointError(f"{f.path}: q/k/v give {q_rows} rows, not ({heads} + 2 x {kv}) x {head_dim}")
    scale = att["scale"]
    if scale and not math.isclose(scale, head_dim**-0.5, rel_tol=1e-6):
        raise CheckpointError(f"{f.path}: attention scale {scale} is not 1/sqrt(head_dim {head_dim}); Phi-3 uses that")
    if att.get("softcap"):
        raise CheckpointError(f"{f.path}: attention softcap {att['softcap']}; Phi-3 has none")
    rot = g.layers[0].rotary
    if rot["interleaved"] or rot["scale"] != 1.0:
        raise CheckpointError(f"{f.path}: rotary embedding {rot['node']!r} is interleaved or scaled; Phi-3's rotates halves")
    if len(g.epsilons) != 1:
        raise CheckpointError(f"{f.path}: the RMSNorms use different epsilons {sorted(g.epsilons)}; Phi-3 uses one")
    vocab, tied = g.lm_head.n, g.embedding.shared_with_lm_head
    half = f.info(g.cos_sin[0]).shape[-1] if not g.longrope else f.info(g.longrope["long"][0]).shape[-1]
    rotary_dim = 2 * half
    if rot["dim"] not in (0, rotary_dim):
        raise CheckpointError(f"{f.path}: rotary_embedding_dim {rot['dim']} disagrees with the cos table's {rotary_dim}")
    window = att["local_window_size"]
    dec = genai["model"]
    intermediate = sum(p.n for p in g.layers[0].gate_up) // 2  # [gate; up], packed or two nodes
    sizes = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                 num_hidden_layers=len(g.layers), num_attention_heads=heads, num_key_value_heads=kv)
    for key, genai_key in (("num_hidden_layers", "num_hidden_layers"), ("num_attention_heads", "num_attention_heads"),
                           ("num_key_value_heads", "num_key_value_heads"), ("hidden_size", "hidden_size")):
        said = dec["decoder"].get(genai_key)
        if said is not None and said != sizes[key]:
            raise CheckpointError(f"{folder / GENAI_CONFIG} says {genai_key} {said}, the graph has {sizes[key]} — the folder is mixed up")
    emb_dtype = f.info(g.embedding.scales or g.embedding.weight).dtype
    dtype = {"float32": "float32", "float16": "float16"}.get(str(emb_dtype), "float32")
    if (folder / "config.json").is_file():
        cfg = load_config(folder)
        for key, value in dict(sizes, rotary_dim=rotary_dim).items():
            if getattr(cfg, key) != value:
                raise ConfigError(f"{folder / 'config.json'} says {key} {getattr(cfg, key)}, the ONNX graph has {value} — it describes another model")
        return replace(cfg, tie_word_embeddings=tied, dtype=dtype,
                       sliding_window=window if window and window > 0 else cfg.sliding_window)
    raw = dict(sizes, architectures=[ARCHITECTURE], rms_norm_eps=float(next(iter(g.epsilons))),
               tie_word_embeddings=tied, bos_token_id=dec.get("bos_token_id"), eos_token_id=dec.get("eos_token_id"),
               pad_token_id=dec.get("pad_token_id"), sliding_window=window if window and window > 0 else None,
               torch_dtype=dtype, **rope_config_from_tables(f, g, head_dim, rotary_dim, dec.get("context_length")))
    return parse_config(raw, where=f"{folder} (genai_config.json + graph)")


def check(f: OnnxFile, g: Phi3Graph, cfg: Phi3Config) -> None:
    check_rope_tables(f, g, cfg)


# ---------------------------------------------------------------- RoPE


def inv_freq(rotary_dim: int, theta: float, factors=None) -> np.ndarray:
    """(rotary_dim/2,) float32 as kernels.rope computes it: 1 / theta^(2i/d), then / factor."""
    exponent = (np.arange(0, rotary_dim, 2, dtype=np.int64).astype(_F32) / _F32(rotary_dim)).astype(_F32)
    inv = (_F32(1) / np.power(_F32(theta), exponent)).astype(_F32)
    if factors is not None:
        inv = (inv / np.asarray(factors, dtype=_F32)).astype(_F32)
    return inv


def rope_table(rows: int, rotary_dim: int, theta: float, factors, attention_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (rows, rotary_dim/2) float32 as kernels.rope computes them: angle = position * inv
    in float32, cos and sin times the attention factor."""
    angle = np.arange(rows, dtype=_F32)[:, None] * inv_freq(rotary_dim, theta, factors)[None, :]
    return (np.cos(angle) * _F32(attention_factor)).astype(_F32), (np.sin(angle) * _F32(attention_factor)).astype(_F32)


def _read_inv_freq(cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """The angle per position of each column, read back from a table (float64): first at position
    1, then refined at positions 2, 4, 8, ... and the last row, each time unwrapped with the
    previous estimate, so slow frequencies come out as precise as fast ones."""
    c, s = cos.astype(np.float64), sin.astype(np.float64)
    est = np.arctan2(s[1], c[1])
    positions = [1 << i for i in range(1, 63) if (1 << i) < len(c) - 1] + [len(c) - 1]
    for p in positions:
        measured = np.arctan2(s[p], c[p])
        est = (measured + 2 * np.pi * np.round((p * est - measured) / (2 * np.pi))) / p
    return est


def rope_config_from_tables(f: OnnxFile, g: Phi3Graph, head_dim: int, rotary_dim: int, context: int | None) -> dict:
    """config.json-style RoPE keys that reproduce the graph's tables (checked afterwards)."""
    pair = g.longrope["long"] if g.longrope else g.cos_sin
    cos, sin = f.read(pair[0]), f.read(pair[1])
    rows = cos.shape[0]
    out = {"max_position_embeddings": int(context or rows), "partial_rotary_factor": rotary_dim / head_dim}
    if rows < 2:
        raise CheckpointError(f"{f.path}: cos cache {pair[0]!r} has {rows} rows; cannot read RoPE back from it")
    if not g.longrope:
        inv = _read_inv_freq(cos, sin)
        i = np.arange(1, rotary_dim // 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            thetas = np.exp(-np.log(inv[1:]) * rotary_dim / (2 * i))
        theta = float(np.median(thetas)) if len(thetas) else 10000.0
        if not np.isfinite(theta) or theta <= 1:
            raise CheckpointError(f"{f.path}: cos/sin caches are not a rotary embedding table (theta read back as {theta})")
        # A float16 table gives theta to a few digits: take the roundest value that reproduces it.
        for digits in range(1, 8):
            rounded = float(f"{theta:.{digits}g}")
            if _table_error(cos, rope_table(rows, rotary_dim, rounded, None, 1.0)[0], rotary_dim, rounded, None, 1.0) is None:
                theta = rounded
                break
        return dict(out, rope_theta=theta, rope_scaling=None, original_max_position_embeddings=out["max_position_embeddings"])
    mscale = {}
    factors = {}
    plain = inv_freq(rotary_dim, LONGROPE_BASE).astype(np.float64)
    for key in ("short", "long"):
        c, s = f.read(g.longrope[key][0]), f.read(g.longrope[key][1])
        mscale[key] = float(np.median(np.hypot(c.astype(np.float64), s.astype(np.float64))))
        factors[key] = [float(x) for x in plain / _read_inv_freq(c, s)]
    if not math.isclose(mscale["short"], mscale["long"], rel_tol=1e-3):
        raise CheckpointError(f"{f.path}: longrope tables scaled by {mscale['short']:.6f} (short) and {mscale['long']:.6f} (long);"
                              " edgesmith's longrope has one attention factor")
    return dict(out, rope_theta=LONGROPE_BASE, original_max_position_embeddings=g.longrope["threshold"],
                rope_scaling={"type": "longrope", "short_factor": factors["short"], "long_factor": factors["long"],
                              "attention_factor": mscale["long"]})


def check_rope_tables(f: OnnxFile, g: Phi3Graph, cfg: Phi3Config) -> None:
    """The graph's cos/sin tables against ours from `cfg`; a disagreement is refused."""
    if g.longrope:
        if cfg.rope_type != "longrope":
            raise CheckpointError(f"{f.path}: the graph switches between two RoPE tables (longrope) but the config's rope is {cfg.rope_type}")
        if g.longrope["threshold"] != cfg.original_max_position_embeddings:
            raise CheckpointError(f"{f.path}: the graph switches to the long RoPE table past {g.longrope['threshold']} tokens,"
                                  f" the config at original_max_position_embeddings {cfg.original_max_position_embeddings}")
        tables = [(g.longrope["short"], cfg.rope_short_factor), (g.longrope["long"], cfg.rope_long_factor)]
    else:
        if cfg.rope_type != "default":
            raise CheckpointError(f"{f.path}: the config's rope is {cfg.rope_type} but the graph has one RoPE table")
        tables = [(g.cos_sin, None)]
    for (cos_name, sin_name), factors in tables:
        for name, ours in zip((cos_name, sin_name), rope_table(f.info(cos_name).shape[0], cfg.rotary_dim, cfg.rope_theta,
                                                               factors, cfg.rope_attention_factor)):
            theirs = f.read(name)
            if theirs.shape != ours.shape:
                raise CheckpointError(f"{f.path}: RoPE table {name!r} is {list(theirs.shape)}, ours from the config is {list(ours.shape)}")
            bad = _table_error(theirs, ours, cfg.rotary_dim, cfg.rope_theta, factors, cfg.rope_attention_factor)
            if bad is not None:
                raise CheckpointError(
                    f"{f.path}: RoPE table {name!r} differs from edgesmith's (theta {cfg.rope_theta}, {cfg.rope_type},"
                    f" attention factor {cfg.rope_attention_factor:.6f}) by {bad[0]:.3g} at position {bad[1]}, column {bad[2]}"
                    " — edgesmith would not reproduce this model's rotary embedding"
                )


def _table_error(theirs: np.ndarray, ours: np.ndarray, rotary_dim: int, theta: float, factors, attention_factor: float):
    """None when the tables agree, else (difference, position, column) of the worst entry."""
    # float32 angles lose ~1 ulp of |angle| each; a float16 table rounds every value.
    angle = np.arange(ours.shape[0], dtype=np.float64)[:, None] * inv_freq(rotary_dim, theta, factors)
    tol = attention_factor * (2e-6 + 4e-7 * angle) + (2.0**-10 if theirs.dtype == np.float16 else 0.0)
    err = np.abs(theirs.astype(np.float64) - ours.astype(np.float64))
    if not np.any(err > tol):
        return None
    pos, col = np.unravel_index(np.argmax(err - tol), err.shape)
    return float(err[pos, col]), int(pos), int(col)
