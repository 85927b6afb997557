"""What a quantization scheme is: the interface every entry of compiler/quantization/registry.py's registry
implements (FloatWeights in float_weights.py, GroupQ4 in q4.py).

A scheme decides, for every linear layer y = x @ W.T (W: (n, k) in the checkpoint):
  params   the layer's stored parameters: name suffix -> (shape, dtype)
  encode   how they are made from the checkpoint's float W (convert.py asks, tensor by tensor)
  linear   the kernels that compute the layer for a target's kernel family (kernels/family.py),
           as a Relax op of the traced model; `lookup` the same for rows (embeddings)
Nothing here imports TVM: the CLI lists the registry; `linear` and `lookup` run while a compile
traces the model, and import their kernels then.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantization:
    name: str  # the --quant name: q<weight bits>f<scale or float bits>[i8]
    description: str
    weight_bits: int  # bits per stored weight value; 0: stored as float
    storage_dtype: str  # float weights: their stored dtype; quantized: the scales' dtype
    group_size: int = 32
    # Decode's GEMV (and prefill's GEMM) quantize x to int8 and run on the CPU's int8 dot
    # products (kernels_int8) where the target has them (family cpu-int8dot); float elsewhere.
    int8_activations: bool = False

    @property
    def quantized(self) -> bool:
        return self.weight_bits > 0

    # ------------------------------------------------------------ storage (numpy, no TVM)

    def params(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The stored parameters of an (n, k) linear: suffix -> (shape, dtype), in order."""
        raise NotImplementedError

    def made_from(self, param: str) -> str | None:
        """The float weight that parameter `param` is encoded from (`x.q_scale` -> `x.weight`);
        None: `param` is a float tensor, cast to its dtype as it is."""
        return None

    def encode(self, weight: str, source, ckpt) -> dict[str, np.ndarray]:
        """Every parameter made from float weight `weight` (read through `source`, a
        models.ParamSource, from `ckpt`): full name -> array."""
        raise NotImplementedError(f"{self.name} stores no encoded parameters")

    def stored_in_steps(self, name: str, shape, family) -> bool:
        """Whether parameter `name` is stored in another word order for `family`'s kernels
        (GroupQ4: step order on Arm dotprod); the manifest lists those (int4_step_order)."""
        return False

    def arrange(self, name: str, arr: np.ndarray, family) -> np.ndarray:
        """Parameter `name` as the bundle stores it for `family`'s kernels."""
        return arr

    def variant(self, *, int8_activations: bool | None = None, storage_dtype: str | None = None) -> "Quantization":
        """The registered scheme with these weights but other activations or scales (q4f16i8 ->
        q4f16 with int8_activations=False); itself when nothing differs or no such scheme exists."""
        from edgesmith.compiler.quantization.registry import QUANTIZATIONS

        want = (self.weight_bits, self.group_size,
                self.int8_activations if int8_activations is None else int8_activations,
                self.storage_dtype if storage_dtype is None else storage_dtype)
        return next((q for q in QUANTIZATIONS.values()
                     if (q.weight_bits, q.group_size, q.int8_activations, q.storage_dtype) == want
                     and type(q) is type(self)), self)

    def unquantized(self) -> "Quantization":
        """The scheme for layers kept in float under this one (--float-embedding)."""
        return self

    # ------------------------------------------------------------ kernels (while tracing: TVM)

    def linear(self, layer, x, family):
        """y (b, t, n) float32 = x (b, t, k) float32 @ W.T, as an op of the traced model; `layer`
        is the compiler.linear.Linear holding this scheme's parameters."""
        raise NotImplementedError

    def lookup(self, layer, ids):
        """Rows `ids` (b, t) int32 of W: (b, t, k) float32 (the layer used as an embedding table)."""
        raise NotImplementedError

    def fused_linear(self, layer, x, family, *, norm=None, silu_mul: bool = False, out_dtype: str = "float32"):
        """The layer with what comes before it in one kernel, or None where this scheme and family
        do not fuse it (the caller then runs those ops on their own). norm: an RMSNorm (weight,
        eps) applied to x first; silu_mul: x (b, t, 2I) holds gate and up, the layer reads
        SiLU(gate) * up; out_dtype: y's dtype (cast inside the kernel). GPU decode only
        (kernels/gpu.py's fusions)."""
        return None

    def tunable(self, family, n: int, k: int, one_token: bool) -> str | None:
        """The shape key (compiler/tuning.py) of the kernel an (n, k) linear gets on `family`,
        decode (one_token) or prefill; None: a kernel with no tunable choices. `linear` looks its
        params up by this key and `edgesmith tune` measures candidates for it."""
        return None


def is_one_token(x) -> bool:
    """x (b, t, k) with b = t = 1 known at trace time: decode."""
    return all(isinstance(d, int) and d == 1 for d in x.shape[:2])
