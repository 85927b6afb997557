"""The distinct tunable kernels of a model on a target: its linear layers (what its architecture
entry says: qkv, o, gate_up, down, lm_head for Phi-3) at decode (one token: a GEMV) and prefill (a
GEMM), each as the shape key the compile looks its params up by (the quantization entry's
`tunable`, so tune and compile agree), and the prefill attention (the key attention_cpu looks up).

On a GPU target: the decode GEMVs (kernels/gpu.py, scheduled by lowering/schedules_fused.py, which
reads the same gemv_gpu key off the kernel's buffers; o_proj's is dlight's unless tuned otherwise);
prefill is dlight's, with no choices here."""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.compiler.models import for_config
from edgesmith.compiler.tuning import attention_key, gpu_gemv_key

# What the model's decode fuses before each linear on a GPU (models/phi3/model.py: the RMSNorm before
# qkv, gate_up and the head; SiLU(gate) * up before down; o_proj has no prologue: "plain")
GPU_PROLOGUE = {"qkv": "norm", "o": "plain", "gate_up": "norm", "lm_head": "norm", "down": "silu"}


@dataclass(frozen=True)
class KernelShape:
    key: str  # compiler/tuning.py shape key
    layers: tuple[str, ...]  # the model's layers with this kernel, e.g. ("qkv",) or ("o", "down")
    phase: str  # "decode" | "prefill"
    quant: object  # the layers' Quantization (the scheme's float one for a float lm_head)


def tunable_shapes(cfg, quant, family, *, quantize_embedding: bool = True, kv_dtype: str | None = None
                   ) -> list[KernelShape]:
    """Decode kernels first (they decide tok/s in generation), in the model's layer order; then the
    prefill GEMMs and (kv_dtype given: the KV cache's dtype on the target) the prefill attention."""
    if family.gpu:
        return gpu_shapes(cfg, quant, family, quantize_embedding=quantize_embedding)
    by_key: dict[tuple, list[str]] = {}
    for phase in ("decode", "prefill"):
        for layer in for_config(cfg).linear_layers(cfg):
            # lm_head (or the tied embedding used as one): quantized unless --float-embedding
            q = quant if (layer.name != "lm_head" or quantize_embedding) else quant.unquantized()
            key = q.tunable(family, layer.n, layer.k, phase == "decode")
            if key is not None:
                by_key.setdefault((phase, key, q), []).append(layer.name)
    shapes = [KernelShape(key, tuple(names), phase, q) for (phase, key, q), names in by_key.items()]
    if kv_dtype and not family.gpu:  # our CPU attention kernels (compiler/kernels/attention_cpu.py)
        key = attention_key(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, kv_dtype)
        shapes.append(KernelShape(key, ("attention",), "prefill", quant))
    return shapes


def gpu_shapes(cfg, quant, family, *, quantize_embedding: bool = True) -> list[KernelShape]:
    """The int4 decode GEMVs of a GPU bundle (none when the family does not fuse, or for a float
    scheme; a float lm_head is not fused)."""
    if not (family.fuse and quant.quantized):
        return []
    by_key: dict[str, list[str]] = {}
    for layer in for_config(cfg).linear_layers(cfg):
        prologue = GPU_PROLOGUE.get(layer.name)
        if prologue is None or (layer.name == "lm_head" and not quantize_embedding):
            continue
        key = gpu_gemv_key(prologue, layer.n, layer.k, quant.group_size, quant.storage_dtype)
        by_key.setdefault(key, []).append(layer.name)
    return [KernelShape(key, tuple(names), "decode", quant) for key, names in by_key.items()]
