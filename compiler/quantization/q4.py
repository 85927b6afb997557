"""GroupQ4 (q4f16, q4f32, q4f16i8, q4f32i8): int4 weights in groups, float scales; and the int4
format itself on the numpy side (quantize, pack, dequantize).

Symmetric int4 in groups of `group_size` along the reduction axis (the last axis of a
(out, in) weight): scale = max|w| / 7, q = clip(round(w / scale), -7, 7), stored as q + 8 in
4 bits, eight values per uint32 (value i in bits 4*(i % 8) of word i // 8). A layer stores
`q_weight` (n, k/8) uint32 and `q_scale` (n, k/group) in storage_dtype.

Step order (Arm dotprod only, `steps_apply`): where a layer's decode and prefill run on
kernels/int8_arm.py's kernels, its words are stored reordered at compile time, within every 16
words of a row (4 blocks of 32 weights, one 64-byte line): word j of block i at 4 j + i
(`step_order`, a 4x4 transpose: its own inverse). Four plain 16-byte loads then give the decode
GEMV what an `ld4` deinterleave gave it from the plain order (its 4 vector-pipe micro-ops per row
and step were what kept it over llama.cpp's cycles on the big cores). The manifest lists those
parameters (`int4_step_order`); the embedding lookup of such a table reads them in that order too.

Kernels by family (kernels/family.py):
  cpu          decode: kernels_gemv's TIR GEMV where its lanes tile k, else kernels.q4_linear;
               prefill: kernels.q4_linear (strips dequantized into a float GEMM)
  cpu-int8dot  with int8_activations, where the layer's k tiles the widest dot instruction:
               decode kernels_int8.gemv_kernel (Arm dotprod: kernels/int8_arm.py's
               four rows at a time), prefill kernels_int8.gemm_kernel (Arm dotprod: kernels/int8_arm.py's
               sdot by element, 4 rows x a tile of tokens; with i8mm kernels/int8_smmla.py's smmla;
               else q4_gemm_i8); else as cpu
  gpu          kernels_gpu.q4_linear (dequantize inlined into dlight's GEMV/matmul)
Embedding rows: kernels.q4_embedding on every target.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgesmith.compiler.quantization.float_weights import FloatWeights
from edgesmith.compiler.quantization.scheme import Quantization, is_one_token
from edgesmith.errors import EdgesmithError

_ENCODED = (".q_weight", ".q_scale")


@dataclass(frozen=True)
class GroupQ4(Quantization):
    """weight_bits 4; storage_dtype: the scales' dtype."""

    def params(self, n, k):
        return {"q_weight": ((n, k // 8), "uint32"), "q_scale": ((n, k // self.group_size), self.storage_dtype)}

    def made_from(self, param):
        return param.rsplit(".", 1)[0] + ".weight" if param.endswith(_ENCODED) else None

    def encode(self, weight, source, ckpt):
        # An int4 source (ONNX MatMulNBits) hands over its codes and scales as they are.
        stored = source.read_q4(ckpt, self.group_size, self.storage_dtype)
        packed, scale = stored or quantize_q4(source.read(ckpt), self.group_size, self.storage_dtype)
        base = weight[: -len(".weight")]
        return {base + ".q_weight": packed, base + ".q_scale": scale}

    def unquantized(self):
        return FloatWeights(f"{self.name}-float", f"float {self.storage_dtype} layers of {self.name}", 0,
                            self.storage_dtype)

    def steps_apply(self, family, n: int, k: int) -> bool:
        """Whether an (n, k) layer's words are stored in step order on `family` (module docstring):
        the Arm dotprod kernels of int8_arm run both its decode and its prefill."""
        from edgesmith.compiler.kernels import int8 as kernels_int8
        from edgesmith.compiler.kernels import int8_arm

        if family.gpu or not self.int8_activations:
            return False
        isa = kernels_int8.pick(list(family.dot_isas), k, self.group_size)
        return (isa is not None and isa.name == "dotprod" and int8_arm.applies(isa, n, k, self.group_size)
                and kernels_int8.gemm_applies(isa, n, k, self.group_size)
                and int8_arm.gemm_applies(isa, n, k, self.group_size))

    def stored_in_steps(self, name: str, shape, family) -> bool:
        """Whether parameter `name` of `shape` is stored in step order on `family`."""
        return name.endswith(".q_weight") and len(shape) == 2 and self.steps_apply(family, shape[0], shape[1] * 8)

    def arrange(self, name: str, arr: np.ndarray, family) -> np.ndarray:
        """The array as the bundle stores it on `family`: in step order where that applies."""
        return step_order(arr) if self.stored_in_steps(name, arr.shape, family) else arr

    def linear(self, layer, x, family):
        from edgesmith.compiler.kernels import cpu as kernels
        from edgesmith.compiler.kernels import gemv as kernels_gemv
        from edgesmith.compiler.kernels import gpu as kernels_gpu
        from edgesmith.compiler.kernels import int8 as kernels_int8
        from edgesmith.targets.tvm_api import nn

        op = nn.op
        n, k, g, scales = layer.out_features, layer.in_features, self.group_size, self.storage_dtype
        args = [x, layer.q_weight, layer.q_scale]
        if family.gpu:
            return op.tensor_expr_op(kernels_gpu.q4_linear, "q4_matmul", args + [g])
        one = is_one_token(x)
        kind, isa = self._cpu_kernel(family, n, k, one)
        params = family.tuning.params(kind, n, k, *(() if kind == "gemm" else (g, scales))) if kind else None
        steps = self.steps_apply(family, n, k)
        if kind == "gemv_i8":
            return op.tensor_ir_op(kernels_int8.gemv_kernel(n, k, g, scales, isa, params, steps=steps), "q4_matmul_i8", args,
                                   out=nn.Tensor.placeholder((1, 1, n), "float32"))
        if kind == "gemv":
            return op.tensor_ir_op(kernels_gemv.q4_gemv(n, k, g, scales, params), "q4_matmul", args,
                                   out=nn.Tensor.placeholder((1, 1, n), "float32"))
        if kind == "gemm_i8":
            return op.tensor_ir_op(kernels_int8.gemm_kernel(n, k, g, scales, isa, params, steps=steps,
                                                            i8mm=family.i8mm), "q4_matmul_i8", args,
                                   out=nn.Tensor.placeholder((1, x.shape[1], n), "float32"))
        if kind == "gemm":  # the schedule (schedules.Linear) looks up the same params
            return op.tensor_expr_op(kernels.q4_linear, "q4_matmul", args + [g, params.tokens])
        return op.tensor_expr_op(kernels.q4_linear, "q4_matmul", args + [g])

    def fused_linear(self, layer, x, family, *, norm=None, silu_mul=False, out_dtype="float32"):
        from edgesmith.compiler.kernels import gpu as kernels_gpu
        from edgesmith.targets.tvm_api import nn

        if not (family.gpu and family.fuse and is_one_token(x)) or (norm is not None and silu_mul):
            return None
        w, g = [layer.q_weight, layer.q_scale], self.group_size
        if norm is not None:  # one kernel, no rms_norm before it (lowering/schedules_fused.py)
            return nn.op.tensor_expr_op(kernels_gpu.q4_linear_normed, "q4_matmul_norm",
                                        [x, norm.weight] + w + [g, norm.eps, out_dtype])
        if out_dtype != "float32":
            return None
        if silu_mul:  # dlight's GEMV inlines the activation like the dequantize
            return nn.op.tensor_expr_op(kernels_gpu.q4_linear_silu_mul, "q4_matmul_silu", [x] + w + [g])
        return None

    def _cpu_kernel(self, family, n: int, k: int, one_token: bool):
        """(kind, isa) of the CPU kernel an (n, k) layer gets; kind None: the decode expression
        (kernels.q4_linear's GEMV, scheduled by rules with no choices)."""
        from edgesmith.compiler.kernels import gemv as kernels_gemv
        from edgesmith.compiler.kernels import int8 as kernels_int8

        g = self.group_size
        isa = kernels_int8.pick(list(family.dot_isas), k, g) if self.int8_activations else None
        if one_token:
            if isa is not None:
                return "gemv_i8", isa
            return ("gemv", None) if kernels_gemv.applies(k, g) else (None, None)
        return ("gemm_i8", isa) if kernels_int8.gemm_applies(isa, n, k, g) else ("gemm", None)

    def tunable(self, family, n, k, one_token):
        from edgesmith.compiler.tuning import shape_key

        if family.gpu:
            return None
        kind, _ = self._cpu_kernel(family, n, k, one_token)
        if kind is None:
            return None
        return shape_key(kind, n, k) if kind == "gemm" else shape_key(kind, n, k, self.group_size, self.storage_dtype)

    def lookup(self, layer, ids):
        from edgesmith.compiler.kernels import cpu as kernels
        from edgesmith.targets.tvm_api import nn

        steps = self.steps_apply(layer.family, layer.out_features, layer.in_features)
        return nn.op.tensor_expr_op(kernels.q4_embedding, "q4_take",
                                    [ids, layer.q_weight, layer.q_scale, self.group_size, steps])


# ---------------------------------------------------------------- the int4 format (numpy)


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


def step_order(packed: np.ndarray) -> np.ndarray:
    """(n, k/8) words, k % 128 == 0 -> the same words in step order (module docstring): within every
    16 words of a row, word j of block i (at 4 i + j) moves to 4 j + i. Its own inverse."""
    n, words = packed.shape
    assert words % 16 == 0, packed.shape
    return np.ascontiguousarray(packed.reshape(n, words // 16, 4, 4).transpose(0, 1, 3, 2).reshape(n, words))


def dequantize_q4(packed: np.ndarray, scale: np.ndarray, group_size: int) -> np.ndarray:
    """Inverse of quantize_q4 up to rounding: (n, k/8) uint32 + scales -> (n, k) float32."""
    n, words = packed.shape
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    q = ((packed[:, :, None] >> shifts) & 0xF).astype(np.float32) - 8.0
    q = q.reshape(n, words * 8 // group_size, group_size)
    return (q * scale.astype(np.float32)[:, :, None]).reshape(n, words * 8)
