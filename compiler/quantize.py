"""Quantization schemes (one registry) and the numpy side of int4: quantize, pack, dequantize.

Symmetric int4 in groups of `group_size` along the reduction axis (the last axis of a
(out, in) weight): scale = max|w| / 7, q = clip(round(w / scale), -7, 7), stored as q + 8 in
4 bits, eight values per uint32 (value i in bits 4*(i % 8) of word i // 8).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgesmith.errors import EdgesmithError, unknown_name


@dataclass(frozen=True)
class Quantization:
    name: str
    description: str
    weight_bits: int            # 4, or 0 for "stored as float"
    storage_dtype: str          # float weights: their stored dtype; int4: the scales' dtype
    group_size: int = 32
    # Decode's int4 GEMV quantizes x to int8 (blocks of group_size) and runs on the CPU's int8
    # dot products (kernels_int8), where the target has them; float activations elsewhere.
    int8_activations: bool = False

    @property
    def quantized(self) -> bool:
        return self.weight_bits == 4


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("q0f32", "no quantization, float32 weights", 0, "float32"),
        Quantization("q0f16", "no quantization, float16 weights", 0, "float16"),
        Quantization("q4f16", "int4 weights in groups of 32, float16 scales", 4, "float16"),
        Quantization("q4f32", "int4 weights in groups of 32, float32 scales", 4, "float32"),
        Quantization("q4f16i8", "q4f16 weights; decode with int8 activations on int8 dot products "
                     "(AVX512-VNNI, AVX-VNNI, Arm dotprod)", 4, "float16", int8_activations=True),
        # An int4 ONNX model's float32 scales kept as they are, with ONNX Runtime's int8 activations.
        Quantization("q4f32i8", "q4f32 weights; decode with int8 activations on int8 dot products", 4, "float32",
                     int8_activations=True),
    )
}


def get_quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise EdgesmithError(unknown_name("quantization", name, QUANTIZATIONS)) from None


def quantize_q4(w: np.ndarray, group_size: int, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) float -> packed (n, k/8) uint32 and scales (n, k/group_size) of scale_dtype.

    Works through blocks of rows (on a thread pool: numpy releases the GIL), so the temporaries
    stay a few MB whatever the tensor: quantizing the 32064 x 3072 embedding whole would hold
    several copies of its 394 MB at once.
    """
    n, k = w.shape
    if k % group_size or group_size % 8:
        raise EdgesmithError(
            f"cannot quantize a weight of shape {w.shape} in groups of {group_size}: "
            f"its reduction axis ({k}) must be a multiple of {group_size}; use --quant q0f16 or q0f32")
    packed = np.empty((n, k // 8), dtype=np.uint32)
    scale = np.empty((n, k // group_size), dtype=scale_dtype)
    rows = max(1, _BLOCK_ELEMENTS // k)
    blocks = [(r, min(r + rows, n)) for r in range(0, n, rows)]

    def one(block):
        r0, r1 = block
        packed[r0:r1], scale[r0:r1] = _quantize_rows(w[r0:r1], group_size, scale_dtype)

    if len(blocks) == 1:
        one(blocks[0])
    else:
        with ThreadPoolExecutor(max_workers=min(len(blocks), os.cpu_count() or 1)) as pool:
            list(pool.map(one, blocks))
    return packed, scale


_BLOCK_ELEMENTS = 1 << 20


def _quantize_rows(w: np.ndarray, group_size: int, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    n, k = w.shape
    groups = w.astype(np.float32).reshape(n, k // group_size, group_size)
    scale = (np.abs(groups).max(axis=2) / 7.0).astype(scale_dtype)
    # Quantize against the scale as stored, so dequantization reproduces it exactly.
    s32 = scale.astype(np.float32)[:, :, None]
    q = np.rint(np.divide(groups, s32, out=np.zeros_like(groups), where=s32 != 0))
    q = (np.clip(q, -7, 7) + 8).astype(np.uint32).reshape(n, k // 8, 8)
    q <<= (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    return np.bitwise_or.reduce(q, axis=2), scale


def dequantize_q4(packed: np.ndarray, scale: np.ndarray, group_size: int) -> np.ndarray:
    """Inverse of quantize_q4 up to rounding: (n, k/8) uint32 + scales -> (n, k) float32."""
    n, words = packed.shape
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    q = ((packed[:, :, None] >> shifts) & 0xF).astype(np.float32) - 8.0
    q = q.reshape(n, words * 8 // group_size, group_size)
    return (q * scale.astype(np.float32)[:, :, None]).reshape(n, words * 8)
