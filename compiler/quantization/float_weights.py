"""FloatWeights (q0f32, q0f16): every weight stored as it is, in one float dtype.

Kernels: kernels.float_linear on CPU targets (decode split into vector lanes, prefill a register-
tiled GEMM; lowering/schedules_cpu.py), kernels_gpu.float_linear on GPUs; embedding rows by kernels.float_embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.quantization.scheme import Quantization, is_one_token


@dataclass(frozen=True)
class FloatWeights(Quantization):
    """weight_bits 0; storage_dtype: the weights' dtype."""

    def params(self, n, k):
        return {"weight": ((n, k), self.storage_dtype)}

    def linear(self, layer, x, family):
        from edgesmith.compiler.kernels import cpu as kernels
        from edgesmith.compiler.kernels import gpu as kernels_gpu
        from edgesmith.targets.tvm_api import nn

        if family.gpu:
            return nn.op.tensor_expr_op(kernels_gpu.float_linear, "matmul", [x, layer.weight])
        n, k = layer.out_features, layer.in_features
        if is_one_token(x):
            return nn.op.tensor_expr_op(kernels.float_linear, "matmul", [x, layer.weight])
        tokens = family.tuning.params("gemm", n, k).tokens  # the schedule looks up the same
        return nn.op.tensor_expr_op(kernels.float_linear, "matmul", [x, layer.weight, tokens])

    def tunable(self, family, n, k, one_token):
        from edgesmith.compiler.tuning import shape_key

        return None if family.gpu or one_token else shape_key("gemm", n, k)

    def lookup(self, layer, ids):
        from edgesmith.compiler.kernels import cpu as kernels
        from edgesmith.targets.tvm_api import nn

        return nn.op.tensor_expr_op(kernels.float_embedding, "take", [ids, layer.weight])
