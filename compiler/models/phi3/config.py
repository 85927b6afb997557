"""Phi3Config: what edgesmith needs from a Phi-3 config.json, parsed once and checked.

Reads both layouts in the wild:
  classic (real Phi-3/3.5/4-mini checkpoints): top-level `rope_theta`, `partial_rotary_factor`,
      `original_max_position_embeddings`, and `rope_scaling` = {type|rope_type: "longrope"|"su",
      short_factor, long_factor, [factor], [attention_factor]} or null;
  transformers 5 (`save_pretrained` now): a `rope_parameters` dict holding rope_theta, rope_type,
      short/long factors, partial_rotary_factor, original_max_position_embeddings.
Precedence follows transformers 5.24 (`Phi3Config.convert_rope_params_to_dict` and
`standardize_rope_params`): rope_scaling wins over rope_parameters, the top-level
`original_max_position_embeddings` wins over the one inside the rope dict.

compiler/inputs/config.py reads the file and picks the architecture; `parse` sees a dict already
known to be Phi3ForCausalLM's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from edgesmith.errors import ConfigError

ARCHITECTURE = "Phi3ForCausalLM"
DTYPES = ("float32", "float16", "bfloat16")
# transformers' Phi3Config defaults, used where config.json leaves a key out.
_DEFAULT_THETA = 10000.0
_DEFAULT_MAX_POSITIONS = 4096
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass(frozen=True)
class Phi3Config:
    architecture: ClassVar[str] = ARCHITECTURE  # the model registry's key (not a field: not in to_dict)

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # hidden_size // num_attention_heads
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    rotary_dim: int  # int(head_dim * partial_rotary_factor); the first rotary_dim dims of q/k rotate
    max_position_embeddings: int
    original_max_position_embeddings: int
    rope_type: str  # "default" | "longrope"
    rope_short_factor: tuple[float, ...] | None  # [rotary_dim // 2], longrope only
    rope_long_factor: tuple[float, ...] | None  # [rotary_dim // 2], longrope only
    rope_attention_factor: float  # transformers' `attention_scaling`: multiplies cos and sin
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    sliding_window: int | None
    dtype: str  # checkpoint dtype: "float32" | "float16" | "bfloat16"

    @property
    def qkv_dim(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("rope_short_factor", "rope_long_factor", "eos_token_ids"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phi3Config":
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise ConfigError(f"Phi3Config dict lacks {', '.join(missing)} — pass a dict written by Phi3Config.to_dict()")
        kw = {k: d[k] for k in names}
        for key in ("rope_short_factor", "rope_long_factor"):
            if kw[key] is not None:
                kw[key] = tuple(float(x) for x in kw[key])
        kw["eos_token_ids"] = tuple(int(x) for x in kw["eos_token_ids"])
        return cls(**kw)


def parse(raw: dict[str, Any], where: str = "config", config_class: type = Phi3Config) -> Phi3Config:
    """A Phi-3 config.json dict -> the checked config (`config_class`: Phi3Config or a subclass
    naming another architecture that shares Phi-3's config)."""
    for key in _REQUIRED:
        if raw.get(key) is None:
            raise ConfigError(f"{where} lacks required key {key!r} — is this a Phi-3 config.json?")
        if not isinstance(raw[key], int) or raw[key] < 1:
            raise ConfigError(f"{where}: {key} = {raw[key]!r} — it must be a positive integer")

    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    kv_heads = raw.get("num_key_value_heads") or heads
    if hidden % heads:
        raise ConfigError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads} — fix config.json")
    if heads % kv_heads:
        raise ConfigError(
            f"{where}: num_attention_heads {heads} is not divisible by num_key_value_heads {kv_heads} — fix config.json"
        )
    head_dim = hidden // heads
    if raw.get("head_dim") not in (None, head_dim):
        raise ConfigError(
            f"{where}: head_dim {raw['head_dim']} differs from hidden_size // num_attention_heads = {head_dim};"
            " Phi3ForCausalLM ignores head_dim — remove it from config.json"
        )

    rope = _parse_rope(raw, where, head_dim)
    eos = raw.get("eos_token_id")
    eos_ids = () if eos is None else tuple(int(x) for x in (eos if isinstance(eos, list) else [eos]))
    # The safetensors files are the truth (open_checkpoint replaces this with their dtype); here
    # only a hint, so an odd value ("auto") is not an error.
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    dtype = dtype if dtype in DTYPES else "float32"
    return config_class(
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=raw.get("pad_token_id"),
        sliding_window=raw.get("sliding_window"),
        dtype=dtype,
        **rope,
    )


def _parse_rope(raw: dict[str, Any], where: str, head_dim: int) -> dict[str, Any]:
    # transformers: `rope_scaling or rope_parameters or {}`, then fill theta/partial from the top level.
    params = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", _DEFAULT_THETA)))
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # the name Phi-3-mini-128k's first release used for longrope
        rope_type = "longrope"
    if rope_type not in ("default", "longrope"):
        raise ConfigError(
            f"{where}: rope type {rope_type!r} is not supported; edgesmith handles 'default' and 'longrope' ('su')"
        )
    if not 0.0 < partial <= 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor {partial} must be in (0, 1] — fix config.json")
    rotary_dim = int(head_dim * partial)  # as transformers computes it
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"{where}: rotary dim int({head_dim} * {partial}) = {rotary_dim} must be even and >= 2 — fix partial_rotary_factor"
        )
    max_pos = int(raw.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS))
    if max_pos < 1:  # said here: the default context comes from it, and a user never passed --context 0
        raise ConfigError(f"{where}: max_position_embeddings {max_pos} must be at least 1 (the positions the model "
                          "was trained for) — fix config.json")
    # Top-level wins (transformers: "Phi3 ... exception case where we give priority to
    # self.original_max_position_embeddings").
    original = raw.get("original_max_position_embeddings", params.get("original_max_position_embeddings"))

    out: dict[str, Any] = dict(
        rope_theta=theta,
        partial_rotary_factor=partial,
        rotary_dim=rotary_dim,
        max_position_embeddings=max_pos,
        rope_type=rope_type,
        rope_short_factor=None,
        rope_long_factor=None,
        rope_attention_factor=1.0,
    )
    if rope_type == "default":
        out["original_max_position_embeddings"] = int(original if original is not None else max_pos)
        return out

    if original is None:
        raise ConfigError(f"{where} lacks required key 'original_max_position_embeddings' for longrope — add it to config.json")
    original = int(original)
    factors = {}
    for key in ("short_factor", "long_factor"):
        value = params.get(key)
        if value is None:
            raise ConfigError(f"{where} lacks required key {key!r} in its longrope rope_scaling — add it to config.json")
        if not isinstance(value, list) or not all(isinstance(x, (int, float)) for x in value):
            raise ConfigError(f"{where}: rope {key} must be a list of numbers, got {type(value).__name__}")
        if len(value) != rotary_dim // 2:
            raise ConfigError(
                f"{where}: rope {key} has {len(value)} entries, expected rotary_dim // 2 = {rotary_dim // 2} — fix config.json"
            )
        factors[key] = tuple(float(x) for x in value)
    out.update(
        original_max_position_embeddings=original,
        rope_short_factor=factors["short_factor"],
        rope_long_factor=factors["long_factor"],
        rope_attention_factor=longrope_attention_factor(
            max_pos, original, params.get("factor"), params.get("attention_factor")
        ),
    )
    return out


def longrope_attention_factor(
    max_position_embeddings: int,
    original_max_position_embeddings: int,
    factor: float | None = None,
    attention_factor: float | None = None,
) -> float:
    """transformers 5.24 `_compute_longrope_parameters`: the scale applied to both cos and sin."""
    if attention_factor is not None:
        return float(attention_factor)
    if factor is None:
        factor = max_position_embeddings / original_max_position_embeddings
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))

