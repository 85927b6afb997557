"""An ONNX Runtime GenAI Phi-3 folder as a checkpoint: config, named tensors, int4 kept as it is.

The folder (what the GenAI model builder and Olive write; Microsoft's published Phi-3 ONNX
folders are the same): genai_config.json (model.type "phi3", decoder.filename), the graph
(model.onnx), its external weights (model.onnx.data), tokenizer.json, and sometimes the Hugging
Face config.json. onnx_graph.py matches the graph; here it becomes a Checkpoint:

  config   from config.json when the folder has one (its sizes checked against the graph),
           else from genai_config.json + the graph: sizes from the weights, heads from the
           attention node, eps from the norms, sliding window from local_window_size, and RoPE
           from the cos/sin tables (rotary dim = 2 x their width; theta, longrope factors and
           the attention factor read back from the angles). Either way the tables the graph
           carries are then compared with the ones our model computes from that config (both
           sets for longrope, switched at the same length) and a disagreement is refused.
  tensors  the Hugging Face names our converter asks for, each built from the graph's weights
           by node: MatMul's [K, N] transposed to [N, K], q/k/v and gate/up stacked by rows.
           `read` gives float32 (int4 dequantized exactly as ONNX Runtime does: (nibble - 8) *
           scale in float32). `read_q4` gives int4 weights in our layout without touching a
           value: MatMulNBits' bytes [N, K/32, 16] are our uint32 words [N, K/8] (same nibble
           order, same zero point 8) and its scales are ours; blocks of 64/128 repeat each scale.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgesmith.errors import CheckpointError, ConfigError

from .inputs.config import load_config, parse_config
from .models.phi3.config import Phi3Config
from .models import for_onnx_genai_type, onnx_genai_types
from .onnx_graph import Embedding, LinearNode, OnnxFile, Phi3Graph, match_phi3
from .inputs.checkpoint import Checkpoint

GENAI_CONFIG = "genai_config.json"
_F32 = np.float32
# Any base reproduces a longrope table exactly (the factors absorb it); without config.json we use Phi-3's.
LONGROPE_BASE = 10000.0


def is_onnx_source(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".onnx"
    return (path / GENAI_CONFIG).is_file() and not any(path.glob("*.safetensors"))


class OnnxCheckpoint(Checkpoint):
    source_format = "onnx"

    def __init__(self, path: Path):
        path = Path(path)
        self.folder = path if path.is_dir() else path.parent
        self.spec = str(Path(path).resolve())
        self.genai = _read_genai_config(self.folder, path)
        onnx_path = path if path.is_file() else self.folder / self.genai["model"]["decoder"].get("filename", "model.onnx")
        if not onnx_path.is_file():
            raise CheckpointError(f"{self.folder / GENAI_CONFIG} names the graph {onnx_path.name}, which is not in {self.folder} — download it")
        self.file = OnnxFile(onnx_path)
        self.graph: Phi3Graph = match_phi3(self.file)
        self.config = self._config()
        check_rope_tables(self.file, self.graph, self.config)
        self._parts = self._tensor_parts()
        self._shapes = {name: self._shape(parts) for name, parts in self._parts.items()}
        tok = self.folder / "tokenizer.json"
        self.tokenizer_path = tok if tok.is_file() else None
        self.int4 = [lin for lin in self._linears() if lin.int4]
        scales = sorted({str(self.file.info(lin.scales).dtype) for lin in self.int4})
        if len(scales) > 1:
            raise CheckpointError(f"{onnx_path}: its int4 scales mix {' and '.join(scales)}; edgesmith keeps one scale dtype")
        self.scale_dtype = scales[0] if scales else None
        blocks = sorted({lin.block_size for lin in self.int4})
        weights = (f"int4 MatMulNBits block {'/'.join(map(str, blocks))}, {self.scale_dtype} scales"
                   if self.int4 else f"{self.config.dtype} MatMul")
        self.description = f"ONNX Runtime GenAI folder {self.folder} ({onnx_path.name}, {weights})"

    # ------------------------------------------------------------ what build.py asks

    @property
    def preferred_quant(self) -> str:
        """The --quant that keeps every int4 weight bit for bit (q4f16 for a float export)."""
        return "q4f32" if self.scale_dtype == "float32" else "q4f16"

    def source_info(self, quant) -> dict:
        """The manifest's record of where the weights came from and what stayed exact."""
        info = {"format": "onnx", "file": self.file.path.name, "int4_linears": len(self.int4),
                "float_linears": sum(1 for lin in self._linears() if not lin.int4)}
        if info["float_linears"]:
            info["float_kept"] = "quantized by edgesmith" if quant.quantized else f"stored as {quant.storage_dtype}"
        if self.int4:
            info["int4_blocks"] = sorted({lin.block_size for lin in self.int4})
            info["int4_scales"] = self.scale_dtype
            if not quant.quantized:
                info["int4_kept"] = f"dequantized exactly, stored as {quant.storage_dtype}"
            elif quant.storage_dtype == self.scale_dtype:
                info["int4_kept"] = "bit for bit (codes and scales)"
            elif quant.storage_dtype == "float32":  # float32 holds every float16/bfloat16 exactly
                info["int4_kept"] = f"bit for bit (codes; {self.scale_dtype} scales widened exactly to float32)"
            else:
                info["int4_kept"] = f"codes bit for bit, scales rounded {self.scale_dtype} -> {quant.storage_dtype}"
        return info

    def read_q4(self, name: str, group_size: int, scale_dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(packed (N, K/8) uint32, scales (N, K/group) scale_dtype) straight from MatMulNBits, or
        None when the tensor is float in the graph (then our quantizer runs on `read`)."""
        self._check_name(name)
        parts = self._parts[name]
        if not all(isinstance(p, LinearNode) and p.int4 or isinstance(p, Embedding) and p.scales for p in parts):
            if any(getattr(p, "int4", False) or getattr(p, "scales", None) for p in parts):
                raise CheckpointError(f"{self.description}: {name} mixes int4 and float parts; edgesmith would have to requantize the int4 ones")
            return None
        if group_size != 32:
            raise CheckpointError(f"int4 groups of {group_size}: edgesmith maps MatMulNBits onto groups of 32 only")
        packed, scales = zip(*(self._int4_rows(p) for p in parts))
        return np.concatenate(packed), np.concatenate(scales).astype(scale_dtype)

    # ------------------------------------------------------------ Checkpoint

    def _read(self, name: str) -> np.ndarray:
        parts = [self._float_rows(p) for p in self._parts[name]]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"edgesmith-onnx-v1\0")
        h.update(self.file.path.read_bytes())  # the graph without its data: small
        h.update((self.folder / GENAI_CONFIG).read_bytes())
        data = self.file.data_path
        if data is not None:
            size = data.stat().st_size
            h.update(str(size).encode())
            with open(data, "rb") as f:
                for i in range(16):
                    f.seek(size * i // 16)
                    h.update(f.read(4096))
        return h.hexdigest()

    # ------------------------------------------------------------ tensors

    def _linears(self) -> list[LinearNode]:
        g = self.graph
        out = [lin for layer in g.layers for lin in (*layer.qkv, layer.o, layer.gate, layer.up, layer.down)]
        return out + [g.lm_head]

    def _tensor_parts(self) -> dict[str, list]:
        """HF name -> the graph pieces stacked by rows to make it; a str is a stored 1-D weight."""
        g, cfg = self.graph, self.config
        parts: dict[str, list] = {"model.embed_tokens.weight": [g.embedding], "model.norm.weight": [g.final_norm]}
        for i, layer in enumerate(g.layers):
            p = f"model.layers.{i}."
            parts[p + "input_layernorm.weight"] = [layer.input_norm]
            parts[p + "post_attention_layernorm.weight"] = [layer.post_norm]
            parts[p + "self_attn.qkv_proj.weight"] = list(layer.qkv)
            parts[p + "self_attn.o_proj.weight"] = [layer.o]
            parts[p + "mlp.gate_up_proj.weight"] = [layer.gate, layer.up]
            parts[p + "mlp.down_proj.weight"] = [layer.down]
        if not cfg.tie_word_embeddings:
            parts["lm_head.weight"] = [g.lm_head]
        return parts

    def _shape(self, parts: list) -> tuple[int, ...]:
        if isinstance(parts[0], str):
            return self.file.info(parts[0]).shape
        if isinstance(parts[0], Embedding):
            e = parts[0]
            if e.scales is None:
                return self.file.info(e.weight).shape
            return (self.file.info(e.scales).shape[0], self.config.hidden_size)
        return (sum(p.n for p in parts), parts[0].k)

    def _float_rows(self, part) -> np.ndarray:
        if isinstance(part, str):
            return self.file.read(part).astype(_F32)
        if isinstance(part, Embedding) and part.scales is None:
            return self.file.read(part.weight).astype(_F32)
        if isinstance(part, LinearNode) and not part.int4:
            return np.ascontiguousarray(self.file.read(part.weight).astype(_F32).T)
        packed, scales = self._int4_rows(part)
        n, words = packed.shape
        nib = (packed[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF  # (n, K/8, 8): element 8w+i
        q = nib.reshape(n, -1, 32).astype(_F32) - _F32(8)
        return (q * scales.astype(_F32)[:, :, None]).reshape(n, words * 8)  # exact: |q| <= 8 times a float

    def _int4_rows(self, part) -> tuple[np.ndarray, np.ndarray]:
        """MatMulNBits/GatherBlockQuantized codes and scales -> our (N, K/8) uint32 and (N, K/32) scales."""
        if isinstance(part, Embedding):
            n, k, block = self.file.info(part.scales).shape[0], self.config.hidden_size, part.block_size
        else:
            n, k, block = part.n, part.k, part.block_size
        codes = self.file.read(part.weight).reshape(n, -1)  # (N, blocks * block/2) bytes, last block padded
        scales = self.file.read(part.scales).reshape(n, -1)
        if codes.dtype != np.uint8 or codes.shape[1] * 2 < k:
            raise CheckpointError(f"{self.description}: int4 weight {part.weight!r} is {codes.dtype} {list(codes.shape)}, not uint8 codes for K={k}")
        packed = np.ascontiguousarray(codes[:, : k // 2]).view("<u4")  # byte j holds elements 2j (low), 2j+1 (high)
        scales = np.repeat(scales, block // 32, axis=1)[:, : k // 32]
        return packed, np.ascontiguousarray(scales)

    # ------------------------------------------------------------ config

    def _config(self) -> Phi3Config:
        g, f = self.graph, self.file
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
        dec = self.genai["model"]
        sizes = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=g.layers[0].gate.n,
                     num_hidden_layers=len(g.layers), num_attention_heads=heads, num_key_value_heads=kv)
        for key, genai_key in (("num_hidden_layers", "num_hidden_layers"), ("num_attention_heads", "num_attention_heads"),
                               ("num_key_value_heads", "num_key_value_heads"), ("hidden_size", "hidden_size")):
            said = dec["decoder"].get(genai_key)
            if said is not None and said != sizes[key]:
                raise CheckpointError(f"{self.folder / GENAI_CONFIG} says {genai_key} {said}, the graph has {sizes[key]} — the folder is mixed up")
        emb_dtype = f.info(g.embedding.scales or g.embedding.weight).dtype
        dtype = {"float32": "float32", "float16": "float16"}.get(str(emb_dtype), "float32")
        if (self.folder / "config.json").is_file():
            cfg = load_config(self.folder)
            for key, value in dict(sizes, rotary_dim=rotary_dim).items():
                if getattr(cfg, key) != value:
                    raise ConfigError(f"{self.folder / 'config.json'} says {key} {getattr(cfg, key)}, the ONNX graph has {value} — it describes another model")
            return replace(cfg, tie_word_embeddings=tied, dtype=dtype,
                           sliding_window=window if window and window > 0 else cfg.sliding_window)
        arch = for_onnx_genai_type(dec["type"]).architecture  # genai_config's model.type, checked at open
        raw = dict(sizes, architectures=[arch], rms_norm_eps=float(next(iter(g.epsilons))),
                   tie_word_embeddings=tied, bos_token_id=dec.get("bos_token_id"), eos_token_id=dec.get("eos_token_id"),
                   pad_token_id=dec.get("pad_token_id"), sliding_window=window if window and window > 0 else None,
                   torch_dtype=dtype, **rope_config_from_tables(f, g, head_dim, rotary_dim, dec.get("context_length")))
        return parse_config(raw, where=f"{self.folder} (genai_config.json + graph)")


def _read_genai_config(folder: Path, given: Path) -> dict:
    path = folder / GENAI_CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"{given} has no {GENAI_CONFIG} beside it: edgesmith reads ONNX Runtime GenAI's Phi-3 folders"
            " (model builder or Olive output) — give that folder"
        )
    try:
        genai = json.loads(path.read_text())
        kind, decoder = genai["model"]["type"], genai["model"]["decoder"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not an ONNX Runtime GenAI config ({type(e).__name__}) — download it again") from None
    if for_onnx_genai_type(kind) is None or not isinstance(decoder, dict):
        raise ConfigError(f"{path} says model type {kind!r}; edgesmith compiles Phi-3 ({', '.join(onnx_genai_types())}) only")
    return genai


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
