"""Quantization schemes: the registry (`QUANTIZATIONS`, one entry per --quant name).

An entry is a `Quantization` (quantization/scheme.py): how a linear layer's weight is stored, how it is
made from the checkpoint's float weight, and which kernels compute the layer for a target's
kernel family (kernels/family.py). The kinds so far, each in its own file with its kernel choice:
    FloatWeights  float_weights.py  q0f32, q0f16: the weights as they are
    GroupQ4       q4.py            q4f16, q4f32 (+ i8: int8 activations): int4 in groups of 32
A new scheme is its file (the class and its kernels) and one entry below.
"""
from __future__ import annotations

from edgesmith.compiler.quantization.float_weights import FloatWeights
from edgesmith.compiler.quantization.q4 import GroupQ4, dequantize_q4, quantize_q4  # noqa: F401 (the int4 format)
from edgesmith.compiler.quantization.scheme import Quantization
from edgesmith.errors import EdgesmithError, unknown_name

QUANTIZATIONS: dict[str, Quantization] = {}


def register(quant: Quantization) -> Quantization:
    if quant.name in QUANTIZATIONS:
        raise ValueError(f"quantization {quant.name} is registered already")
    QUANTIZATIONS[quant.name] = quant
    return quant


def get_quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise EdgesmithError(unknown_name("quantization", name, QUANTIZATIONS)) from None


for _q in (
    FloatWeights("q0f32", "no quantization, float32 weights", 0, "float32"),
    FloatWeights("q0f16", "no quantization, float16 weights", 0, "float16"),
    GroupQ4("q4f16", "int4 weights in groups of 32, float16 scales", 4, "float16"),
    GroupQ4("q4f32", "int4 weights in groups of 32, float32 scales", 4, "float32"),
    GroupQ4("q4f16i8", "q4f16 weights; decode with int8 activations on int8 dot products "
            "(AVX512-VNNI, AVX-VNNI, Arm dotprod)", 4, "float16", int8_activations=True),
    # An int4 ONNX model's float32 scales kept as they are, with ONNX Runtime's int8 activations.
    GroupQ4("q4f32i8", "q4f32 weights; decode with int8 activations on int8 dot products", 4, "float32",
            int8_activations=True),
):
    register(_q)
del _q
