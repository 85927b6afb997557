"""The linear layer every model builds: y = x @ W.T over a weight stored as a quantization
entry says (compiler/quantization/registry.py), computed by that entry's kernels for the target's kernel
family (kernels/family.py). The layer itself decides nothing.

Parameter names follow transformers' with the entry's suffixes: `...qkv_proj.weight` for float
weights, `...qkv_proj.q_weight` + `...qkv_proj.q_scale` for int4.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.kernels.family import KernelFamily
from edgesmith.compiler.quantization.scheme import Quantization
from edgesmith.targets.tvm_api import nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, quant: Quantization, family: KernelFamily,
                 *, quantize: bool = True):
        self.in_features, self.out_features = in_features, out_features
        self.quant = quant if quantize else quant.unquantized()
        self.family = family
        for name, (shape, dtype) in self.quant.params(out_features, in_features).items():
            setattr(self, name, nn.Parameter(shape, dtype))

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return self.quant.linear(self, x, self.family)

    def lookup(self, ids: nn.Tensor) -> nn.Tensor:
        """Rows of the weight: this layer used as an embedding table (tied embeddings)."""
        return self.quant.lookup(self, ids)


@dataclass(frozen=True)
class Linears:
    """A model's maker of linear layers, one per compile: `linears(in_features, out_features)`."""

    quant: Quantization
    family: KernelFamily

    def __call__(self, in_features: int, out_features: int, *, quantize: bool = True) -> Linear:
        """quantize False: kept in float (the storage dtype) whatever the scheme (--float-embedding)."""
        return Linear(in_features, out_features, self.quant, self.family, quantize=quantize)
