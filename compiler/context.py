"""The KV cache a bundle is compiled for: how many tokens (the context), in which dtype, and the
sliding window its attention applies. Chosen and checked here, before anything is traced.

- context: `--context N`, 1 <= N <= max_position_embeddings; default min(that, 4096), a cache
  a phone can hold. The runtime may size a smaller cache (`run`/`profile --context`), never a
  larger one: the model library is built for this one.
- dtype: float16 where the target computes in float16 well (GPUs, ARM with fullfp16), float32
  elsewhere (x86: half the bytes cost a conversion per element there, and exact logits are the
  point of a host build); on a GPU a float32 quantization (q4f32, q0f32) keeps float32 too, so
  its bundle needs no fp16 at all (PoCL and other devices without cl_khr_fp16 run it as
  generated); `--kv-dtype` overrides. Attention accumulates in float32 either way.
- window: the config's `sliding_window` when it is shorter than the context (else 0: no key
  ever falls out of it). Our CPU attention kernels apply it per query, as transformers does;
  TVM's GPU kernels have no per-query window, so a GPU bundle's context stops at the window.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgesmith.errors import BundleError, ConfigError

DEFAULT_CONTEXT = 4096
PAGE_SIZE = 16  # tokens per KV cache page: the CPU attention kernels (attention_cpu.PAGE) require 16
KV_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class KVSettings:
    context: int  # tokens the compiled cache holds at most (the manifest's max_total_seq_len)
    dtype: str  # "float16" | "float32"
    window: int  # sliding window the attention applies; 0: none within this context

    def manifest(self, page_size: int, prefill_chunk: int, cfg):
        from edgesmith.compiler.bundle.manifest import KvCacheInfo
        from edgesmith.compiler.models import for_config

        return KvCacheInfo(page_size=page_size, prefill_chunk_size=prefill_chunk, max_total_seq_len=self.context,
                           dtype=self.dtype, sliding_window=self.window or None,
                           bytes_per_token=for_config(cfg).kv_bytes_per_token(cfg, self.dtype))


def default_kv_dtype(preset, quant=None) -> str:
    if preset.gpu is not None:
        return "float32" if quant is not None and quant.storage_dtype == "float32" else "float16"
    return "float16" if "+fullfp16" in preset.mattr else "float32"


def default_context(cfg, preset) -> int:
    limit = min(cfg.max_position_embeddings, DEFAULT_CONTEXT)
    if preset.gpu is not None and cfg.sliding_window:
        limit = min(limit, cfg.sliding_window)
    return limit


def kv_settings(cfg, preset, context: int | None = None, kv_dtype: str | None = None, quant=None) -> KVSettings:
    """The checked KV settings for compiling `cfg` at `quant` for `preset` (None: the defaults)."""
    if kv_dtype is None:
        kv_dtype = default_kv_dtype(preset, quant)
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"--kv-dtype {kv_dtype!r} is not supported; use float16 or float32")
    if context is None:
        context = default_context(cfg, preset)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"--context {context!r}: the context must be a positive number of tokens "
                          f"(at most the model's {cfg.max_position_embeddings})")
    if context > cfg.max_position_embeddings:
        raise ConfigError(f"--context {context} is beyond the model's limit (max_position_embeddings "
                          f"{cfg.max_position_embeddings}); use --context {cfg.max_position_embeddings} or less")
    window = cfg.sliding_window if cfg.sliding_window and cfg.sliding_window < context else 0
    if window and preset.gpu is not None:
        raise ConfigError(f"--context {context} on GPU target '{preset.name}': the model attends over a sliding "
                          f"window of {window} tokens, which TVM's GPU attention kernels do not apply per query; "
                          f"use --context {window} or less there (CPU targets apply the window)")
    return KVSettings(context=context, dtype=kv_dtype, window=window)


def runtime_context(manifest, context: int | None) -> int:
    """The cache a run sizes: `context` tokens (None: the compiled maximum), never more than the
    bundle was compiled for (manifest: compiler.manifest.Manifest)."""
    compiled = manifest.kv_cache.max_total_seq_len
    if context is None:
        return compiled
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise BundleError(f"--context {context!r}: the context must be a positive number of tokens "
                          f"(at most the bundle's {compiled})")
    if context > compiled:
        raise BundleError(f"--context {context} is larger than the {compiled} tokens this bundle was compiled for; "
                          f"use --context {compiled} or less, or recompile with `edgesmith compile ... --context {context}`")
    return context
