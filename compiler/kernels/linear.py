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

    def forward(self, x: nn.Tensor, *, norm=None, silu_mul: bool = False, out_dtype: str = "float32") -> nn.Tensor:
        """y = x' @ W.T, x' = norm(x) (an RMSNorm module) or SiLU(gate) * up of x's halves
        (silu_mul), or x. One kernel where the scheme fuses them for the family (GPU decode:
        Quantization.fused_linear); else the norm / activation run as their own ops first,
        exactly as a model writing them out would (CPU bundles get the same graph). out_dtype: y cast
        to it (in the fused kernel, else an op after the layer)."""
        fused = None if norm is None and not silu_mul else \
            self.quant.fused_linear(self, x, self.family, norm=norm, silu_mul=silu_mul, out_dtype=out_dtype)
        if fused is not None:
            return fused
        if norm is not None:
            x = norm(x)
        if silu_mul:
            gate, up = nn.op.split(x, 2, axis=-1)
            x = nn.op.silu(gate) * up
        y = self.quant.linear(self, x, self.family)
        return y if out_dtype == "float32" else nn.op.astype(y, out_dtype)

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
