"""An ONNX Runtime GenAI folder as a checkpoint: config, named tensors, int4 kept as it is.

The folder (what the GenAI model builder and Olive write; Microsoft's published Phi-3 ONNX
folders are the same): genai_config.json (model.type, e.g. "phi3", decoder.filename), the graph
(model.onnx), its external weights (model.onnx.data), tokenizer.json, and sometimes the Hugging
Face config.json. The file is read by onnx_file.py; the architecture that model.type names maps
the graph (its registry entry's `onnx`: compiler/models/phi3/onnx_map.py for Phi-3), and here it
becomes a Checkpoint:

  config   the mapping's: from config.json or from the graph, then checked against the graph
  tensors  the Hugging Face names our converter asks for, each built from the graph's weights
           by node: MatMul's [K, N] transposed to [N, K], pieces stacked by rows as the mapping says.
           An int4 export's float embedding (and a float lm_head) stay float unless the compile
           asks otherwise (keeps_float_embedding / keeps_float_lm_head).
           `read` gives float32 (int4 dequantized exactly as ONNX Runtime does: (nibble - 8) *
           scale in float32). `read_q4` gives int4 weights in our layout without touching a
           value: MatMulNBits' bytes [N, K/32, 16] are our uint32 words [N, K/8] (same nibble
           order, same zero point 8) and its scales are ours; blocks of 64/128 repeat each scale.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgesmith.compiler.models import for_onnx_genai_type, onnx_genai_types, supported
from edgesmith.errors import CheckpointError, ConfigError

from .checkpoint import Checkpoint
from .onnx_file import Embedding, LinearNode, OnnxFile

GENAI_CONFIG = "genai_config.json"
_F32 = np.float32


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
        # the architecture's mapping of the graph (its registry entry's `onnx`; model.type checked at open)
        self.mapping = for_onnx_genai_type(self.genai["model"]["type"]).onnx
        self.file = OnnxFile(onnx_path)
        self.graph = self.mapping.match(self.file)
        self.config = self.mapping.config(self.file, self.graph, self.genai, self.folder)
        self.mapping.check(self.file, self.graph, self.config)
        self._parts = self.mapping.tensor_parts(self.graph, self.config)
        self._shapes = {name: self._shape(parts) for name, parts in self._parts.items()}
        tok = self.folder / "tokenizer.json"
        self.tokenizer_path = tok if tok.is_file() else None
        self.int4 = [lin for lin in self._linears() if lin.int4]
        # An int4 export's float embedding (and an lm_head left out of its quantization) is part of the
        # model ONNX Runtime computes: kept in float by default (checkpoint.quantized_ends).
        self.keeps_float_embedding = bool(self.int4) and self.graph.embedding.scales is None
        self.keeps_float_lm_head = bool(self.int4) and not self.graph.lm_head.int4
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
        # a float lm_head beside int4 layers is reported with the embedding (the manifest's float_ends)
        floats = [lin for lin in self._linears()
                  if not lin.int4 and not (self.keeps_float_lm_head and lin is self.graph.lm_head)]
        info = {"format": "onnx", "file": self.file.path.name, "int4_linears": len(self.int4),
                "float_linears": len(floats)}
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
        return self.mapping.linears(self.graph)

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

def _read_genai_config(folder: Path, given: Path) -> dict:
    path = folder / GENAI_CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"{given} has no {GENAI_CONFIG} beside it: edgesmith reads ONNX Runtime GenAI's folders"
            " (model builder or Olive output) — give that folder"
        )
    try:
        genai = json.loads(path.read_text())
        kind, decoder = genai["model"]["type"], genai["model"]["decoder"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not an ONNX Runtime GenAI config ({type(e).__name__}) — download it again") from None
    if for_onnx_genai_type(kind) is None or not isinstance(decoder, dict):
        raise ConfigError(f"{path} says model type {kind!r}; edgesmith compiles {supported()} "
                          f"(model types {', '.join(onnx_genai_types())}) only")
    return genai


