"""What every checkpoint source provides (`Checkpoint`), its check against the architecture, and
opening one: `open_checkpoint` picks the source by the form of what it is given, `default_quant`
the quantization a compile uses without --quant.

The sources: a Hugging Face folder (safetensors.py), `random:` (random_weights.py), an ONNX Runtime
GenAI folder (onnx.py). They import this module, never each other. The tensors
an architecture's checkpoint must hold come from the model registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.compiler.models import for_config
from edgesmith.errors import CheckpointError

RANDOM_PREFIX = "random:"


class Checkpoint(ABC):
    """Config + named tensors. Subclasses fill `_shapes` and implement `_read` and `fingerprint`."""

    config: Any  # the architecture's config (models/<name>/config.py), e.g. Phi3Config
    description: str
    tokenizer_path: Path | None = None  # tokenizer.json the bundle carries
    tokenizer_files: tuple[Path, ...] = ()  # what goes with it: tokenizer_config.json, chat_template.jinja
    tokenizer_entry = None  # the manifest's TokenizerInfo: where it comes from, or why there is none
    spec: str = ""  # what `compile` is given to open this checkpoint again (the manifest's model.spec)
    source_format = "safetensors"  # "random", "onnx" (onnx.py)
    preferred_quant = "q4f16"  # the source's own scheme (an int4 ONNX export's scales: q4f32)
    # The embedding / lm_head the source stores in float beside int4 weights it keeps bit for bit
    # (an int4 ONNX export's float32 embedding, an lm_head left out of its quantization): the bundle
    # keeps them in float unless told otherwise, or it would compute another model than the source.
    keeps_float_embedding = False
    keeps_float_lm_head = False
    _shapes: dict[str, tuple[int, ...]]

    def tensor_names(self) -> list[str]:
        return sorted(self._shapes)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        self._check_name(name)
        return self._shapes[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32, C-contiguous, owned by the caller (not a view of the file)."""
        self._check_name(name)
        return self._read(name)

    def read_q4(self, name: str, group_size: int, scale_dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The tensor already in our int4 layout (packed, scales) when the source stores it so, else None."""
        return None

    def source_info(self, quant) -> dict:
        """What the manifest records about the source's format (and what stayed exact)."""
        return {"format": self.source_format}

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable id of the source (for caches), cheap to compute."""

    @abstractmethod
    def _read(self, name: str) -> np.ndarray: ...

    def _check_name(self, name: str) -> None:
        if name not in self._shapes:
            raise CheckpointError(f"{self.description} has no tensor {name!r} — see tensor_names() for what it holds")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def quantized_ends(ckpt: Checkpoint, quant, quantize_embedding: bool | None = None,
                   quantize_lm_head: bool | None = None) -> tuple[bool, bool]:
    """(embedding quantized, lm_head quantized) for a compile of `ckpt` at `quant`.

    None: the source's own choice (int4 unless it keeps that weight in float, see
    `keeps_float_embedding`); quantize_lm_head None follows an explicit quantize_embedding, so
    `quantize_embedding=False` (--float-embedding) keeps both in float. Tied embeddings: one weight,
    the embedding's choice. A float scheme (q0f32, q0f16) quantizes neither."""
    if not quant.quantized:
        return False, False
    emb = not ckpt.keeps_float_embedding if quantize_embedding is None else bool(quantize_embedding)
    if quantize_lm_head is None:
        quantize_lm_head = not ckpt.keeps_float_lm_head if quantize_embedding is None else bool(quantize_embedding)
    return emb, emb if getattr(ckpt.config, "tie_word_embeddings", False) else bool(quantize_lm_head)


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `cfg`'s architecture must hold, with its shape ([out, in] for linears)."""
    return for_config(cfg).expected_shapes(cfg)


def validate(ckpt: Checkpoint) -> None:
    """Every expected tensor present with the right shape; extra tensors (rotary inv_freq, ...) are ignored."""
    have = set(ckpt.tensor_names())
    arch = for_config(ckpt.config)
    for name, shape in arch.expected_shapes(ckpt.config).items():
        if name not in have:
            raise CheckpointError(
                f"{ckpt.description} lacks tensor {name!r} (expected shape {list(shape)}) — the checkpoint is"
                f" incomplete or not a {arch.architecture} ({arch.models}) model"
            )
        got = ckpt.tensor_shape(name)
        if tuple(got) != shape:
            raise CheckpointError(
                f"{ckpt.description}: tensor {name!r} has shape {list(got)}, expected {list(shape)} from config.json"
                " — config.json and the weights disagree"
            )


# ---------------------------------------------------------------- opening one

def open_checkpoint(spec: str | Path) -> Checkpoint:
    """A Hugging Face folder, an ONNX Runtime GenAI folder (or its .onnx), or "random:<preset>[:layers=N][:seed=S]"."""
    if isinstance(spec, str) and spec.startswith(RANDOM_PREFIX):
        from .random_weights import RandomCheckpoint

        return RandomCheckpoint.from_spec(spec)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {str(spec)!r} does not exist — give a Hugging Face folder or random:<preset> (e.g. random:tiny)"
        )
    from edgesmith.compiler.inputs.onnx import OnnxCheckpoint, is_onnx_source

    if is_onnx_source(path):
        return OnnxCheckpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file, not a folder — give the folder holding config.json (or a model.onnx)")
    from .safetensors import FolderCheckpoint

    return FolderCheckpoint(path)


def default_quant(source: str | Path | Checkpoint, target: str) -> tuple[str, str]:
    """The --quant to use when none is given, and why. The target decides the activations (int8
    where it has int8 dot products: presets.default_quantization), the source the scales: an int4
    ONNX export keeps its own (q4f32), so its weights stay bit for bit."""
    from edgesmith.targets.presets import default_quantization, get_preset

    quant, why = default_quantization(get_preset(target))
    if isinstance(source, Checkpoint):
        own = source.preferred_quant
    elif isinstance(source, str) and source.startswith(RANDOM_PREFIX):
        own = "q4f16"
    else:
        from edgesmith.compiler.inputs.onnx import is_onnx_source

        own = open_checkpoint(source).preferred_quant if Path(source).exists() and is_onnx_source(Path(source)) \
            else "q4f16"
    if own != "q4f16":
        from edgesmith.compiler.quantization.registry import get_quantization

        quant = get_quantization(own).variant(int8_activations=get_quantization(quant).int8_activations).name
        why += f"; {own}: the source's own int4 scheme, its weights kept bit for bit"
    return quant, why
