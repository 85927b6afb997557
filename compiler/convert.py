"""Checkpoint tensors -> the model's parameters, streamed one tensor at a time.

The model's parameter list (from export_tvm) drives the order. Where each parameter comes from
is the architecture's name map (models.ParamSource: checkpoint tensors, fused or not, or a value
of the config); how it is stored, the quantization entry's (`made_from` / `encode`: int4 codes
and scales from a float weight). Each tensor is read once, converted and dropped before the next
is read, so peak memory stays near the largest tensor, not the model.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgesmith.compiler.models import for_config
from edgesmith.compiler.quantization.scheme import Quantization
from edgesmith.compiler.inputs.checkpoint import Checkpoint


def convert_params(ckpt: Checkpoint, params: list[tuple[str, tuple[int, ...], str]],
                   quant: Quantization, family=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every (name, shape, dtype) the compiled model takes, in order.
    family: the target's kernel family (kernels/family.py); its kernels may want a weight stored
    in another order (the quantization's `arrange`: int4 words in step order on Arm dotprod)."""
    cfg = ckpt.config
    source = for_config(cfg).param_source
    pending: dict[str, np.ndarray] = {}  # made with one yielded before (an int4 weight's scales)
    for name, shape, dtype in params:
        weight = quant.made_from(name)
        if name in pending:
            arr = pending.pop(name)
        elif weight is None:
            arr = source(cfg, name).read(ckpt).astype(dtype, copy=False)
        else:
            made = quant.encode(weight, source(cfg, weight), ckpt)
            arr = made.pop(name)
            pending.update(made)
        if tuple(arr.shape) != tuple(shape) or str(arr.dtype) != dtype:
            raise AssertionError(f"converted {name}: {arr.shape} {arr.dtype}, model expects {shape} {dtype}")
        if family is not None:
            arr = quant.arrange(name, arr, family)
        yield name, np.ascontiguousarray(arr)
