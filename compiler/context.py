"""The KV cache a bundle is compiled for: how many tokens (the context), in which dtype, and the
sliding window its attention applies. Chosen and checked here, before anything is traced; and
how many tokens a run's cache is made of (`cache_tokens`), which every runtime path asks here.

- context: `--context N`, 1 <= N <= max_position_embeddings; default min(that, 4096), a cache
  a phone can hold. A model whose sliding window is shorter than N may go past
  max_position_embeddings as far as its RoPE allows (the architecture's `position_limit`: Phi-3's
  default RoPE, 131072; longrope, max_position_embeddings). The runtime may size a smaller
  context (`run`/`profile --context`), never a larger one: the model library is built for this one.
- dtype: float16 where the target computes in float16 well (GPUs, ARM with fullfp16), float32
  elsewhere (x86: half the bytes cost a conversion per element there, and exact logits are the
  point of a host build); on a GPU a float32 quantization (q4f32, q0f32) keeps float32 too, so
  its bundle needs no fp16 at all (PoCL and other devices without cl_khr_fp16 run it as
  generated); `--kv-dtype` overrides. Attention accumulates in float32 either way.
- window: the config's `sliding_window` W when it is shorter than the context (else 0: no key
  ever falls out of it). A query at position p sees keys p - W < k <= p, as transformers does.

Memory that follows the window. When a run's context is longer than W, its cache slides: TVM's
paged KV cache with `support_sliding_window` and the sequence's window set to W - 1 keys
(`vm.builtin.attention_kv_cache_enable_sliding_window_for_seq`, no attention sink). Before each
forward the cache hands attention the last W - 1 keys, then appends the forward's own keys and
frees every page wholly before the last W - 1 (pages go back to the free list and are reused).
The attention kernels see those W - 1 keys plus the forward's own and mask per query (decode sees
exactly the window; a prefill chunk's later rows lose the earliest cached keys and, in a chunk
longer than the window, the chunk's own earliest ones). So the cache is made of W - 1 + one
prefill chunk tokens of pages, whatever the context (`cache_tokens`), and the kernels that read a
sliding cache are ours: compiler/kernels/attention_cpu.py (llvm) and attention_gpu.py's window
mask on TVM's GPU kernels. The cache then reports window-relative positions, so the model takes
the absolute position of each forward's first token as an argument (`seq_pos`) instead.
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
    return min(cfg.max_position_embeddings, DEFAULT_CONTEXT)


def position_limit(cfg) -> tuple[int, str]:
    """(the longest context `cfg` may take, why): past max_position_embeddings only a model
    whose sliding window keeps every distance short, as far as its architecture's RoPE allows."""
    from edgesmith.compiler.models import for_config

    entry = for_config(cfg)
    if not cfg.sliding_window or entry.position_limit is None:
        return cfg.max_position_embeddings, f"max_position_embeddings {cfg.max_position_embeddings}"
    return entry.position_limit(cfg)


def kv_settings(cfg, preset, context: int | None = None, kv_dtype: str | None = None, quant=None) -> KVSettings:
    """The checked KV settings for compiling `cfg` at `quant` for `preset` (None: the defaults)."""
    if kv_dtype is None:
        kv_dtype = default_kv_dtype(preset, quant)
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"--kv-dtype {kv_dtype!r} is not supported; use float16 or float32")
    if context is None:
        context = default_context(cfg, preset)
    limit, why = position_limit(cfg)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"--context {context!r}: the context must be a positive number of tokens "
                          f"(at most the model's {limit})")
    if context > limit:
        if limit == cfg.max_position_embeddings:
            raise ConfigError(f"--context {context} is beyond the model's limit ({why}); "
                              f"use --context {limit} or less")
        raise ConfigError(f"--context {context} is beyond what this model's RoPE allows ({limit} tokens: {why}); "
                          f"use --context {limit} or less")
    window = cfg.sliding_window if cfg.sliding_window and cfg.sliding_window < context else 0
    if context > cfg.max_position_embeddings and not window:
        raise ConfigError(f"--context {context} is beyond the model's limit (max_position_embeddings "
                          f"{cfg.max_position_embeddings}); use --context {cfg.max_position_embeddings} or less")
    return KVSettings(context=context, dtype=kv_dtype, window=window)


def runtime_context(manifest, context: int | None) -> int:
    """The context a run may hold: `context` tokens (None: the compiled maximum), never more than
    the bundle was compiled for (manifest: compiler.manifest.Manifest)."""
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


def window_keep(kv_cache, context: int) -> int:
    """Keys a sliding cache keeps between forwards (W - 1), or 0 when a run of `context` tokens
    never slides (no window, or the window covers the context). kv_cache: the manifest's."""
    window = kv_cache.sliding_window or 0
    return max(window - 1, 1) if window and context > window else 0


def cache_tokens(kv_cache, context: int) -> int:
    """Tokens of pages a run of `context` tokens allocates (whole pages): the context, or, where
    the window slides, the W - 1 keys it keeps plus one prefill chunk. runtime/runner/runner.cc
    (kv_cache_tokens) computes the same."""
    page = kv_cache.page_size
    keep = window_keep(kv_cache, context)
    tokens = min(context, keep + kv_cache.prefill_chunk_size) if keep else context
    return -(-tokens // page) * page
