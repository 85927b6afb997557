"""Checkpoint tensors -> the model's parameters, streamed one tensor at a time.

The model's parameter list (from export_tvm) drives the order; each HF tensor is read once,
converted (cast, or quantized to int4 + scales) and dropped before the next is read, so peak
memory stays near the largest tensor, not the model.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgesmith.compiler.checkpoint import Checkpoint
from edgesmith.compiler.quantize import Quantization, quantize_q4


def hf_name(param: str) -> str:
    """Our parameter name -> the HF tensor it comes from (`x.q_weight` and `x.q_scale` from `x.weight`)."""
    for suffix in (".q_weight", ".q_scale"):
        if param.endswith(suffix):
            return param[: -len(suffix)] + ".weight"
    return param


def convert_params(ckpt: Checkpoint, params: list[tuple[str, tuple[int, ...], str]],
                   quant: Quantization) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every (name, shape, dtype) the compiled model takes, in order."""
    cfg = ckpt.config
    pending: dict[str, np.ndarray] = {}  # the scale of a weight whose packed half was just yielded
    for name, shape, dtype in params:
        if name == "model.rope_ext_factors":
            arr = np.array([cfg.rope_short_factor, cfg.rope_long_factor], dtype=np.float32)
        elif name in pending:
            arr = pending.pop(name)
        elif name.endswith((".q_weight", ".q_scale")):
            # An int4 source (ONNX MatMulNBits) hands over its codes and scales as they are.
            stored = ckpt.read_q4(hf_name(name), quant.group_size, quant.storage_dtype)
            packed, scale = stored or quantize_q4(ckpt.read(hf_name(name)), quant.group_size, quant.storage_dtype)
            base = name.rsplit(".", 1)[0]
            arr, other = (packed, scale) if name.endswith(".q_weight") else (scale, packed)
            pending[base + (".q_scale" if name.endswith(".q_weight") else ".q_weight")] = other
        else:
            arr = ckpt.read(hf_name(name)).astype(dtype, copy=False)
        if tuple(arr.shape) != tuple(shape) or str(arr.dtype) != dtype:
            raise AssertionError(f"converted {name}: {arr.shape} {arr.dtype}, model expects {shape} {dtype}")
        yield name, np.ascontiguousarray(arr)
