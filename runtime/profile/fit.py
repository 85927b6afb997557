"""What a run needs in memory, and the refusal before a run that would not fit.

    need = weights (the bundle's parameter bytes)
         + KV cache (the architecture's bytes per token x the tokens of pages the run's cache is
                     made of: the context in whole pages, or, where the model's sliding window
                     is shorter than the context, the window's keys plus one prefill chunk,
                     whatever the context: compiler/context.py cache_tokens)
         + runtime (model library, runtime libraries, activations of one prefill chunk, a margin)

compared with the device's MemAvailable: a phone that runs out kills the process (low-memory
killer, OOM killer) without a word; refusing first says why, and names the largest context
(KV cache size) that would fit beside the weights and the runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.compiler.context import cache_tokens
from edgesmith.compiler.models import for_config
from edgesmith.errors import EdgesmithError

MiB = 1 << 20
RUNTIME_MARGIN = 32 * MiB  # libc, thread stacks, the VM's own tables, allocator slack


class DoesNotFit(EdgesmithError):
    """The bundle and its KV cache need more memory than the device has free."""


def param_bytes(bundle: Path) -> dict[str, int]:
    """{parameter name: bytes} from the bundle's params/tensor-cache.json."""
    cache = json.loads((Path(bundle) / "params" / "tensor-cache.json").read_text())
    return {r["name"]: r["nbytes"] for shard in cache["records"] for r in shard["records"]}


def kv_bytes_per_token(manifest) -> int:
    """K and V of one token in every layer, in the cache's dtype (the model's architecture says)."""
    cfg = manifest.config
    return for_config(cfg).kv_bytes_per_token(cfg, manifest.kv_dtype)


def kv_cache_bytes(manifest, context: int) -> int:
    """Bytes the paged KV cache holds for a run of `context` tokens (whole pages, as the runner
    sizes it; at most the window's where the cache slides)."""
    kv = manifest.kv_cache
    return kv_bytes_per_token(manifest) * cache_tokens(kv, min(context, kv.max_total_seq_len))


def activation_bytes(manifest, prompt: int) -> int:
    """A generous bound on one prefill chunk's live activations (the architecture's bytes per token,
    twice: the VM's pooled allocator)."""
    cfg = manifest.config
    chunk = min(prompt, manifest.kv_cache.prefill_chunk_size)
    return 2 * chunk * for_config(cfg).activation_bytes_per_token(cfg)


def memory_need(bundle: Path, manifest, prompt: int, gen: int, context: int | None = None) -> dict:
    """What a run of `prompt` + `gen` tokens needs, with a KV cache of `context` tokens (None:
    prompt + gen, what the profiler sizes). manifest: compiler.manifest.Manifest."""
    bundle = Path(bundle)
    code = sum(meta.size for rel, meta in manifest.files.items() if rel.startswith(("lib/", "bin/")))
    weights = sum(param_bytes(bundle).values())
    context = context or prompt + gen
    kv = kv_cache_bytes(manifest, context)
    runtime = code + activation_bytes(manifest, prompt) + RUNTIME_MARGIN
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "kv_context": context, "runtime_bytes": runtime,
            "need_bytes": weights + kv + runtime, "kv_bytes_per_token": kv_bytes_per_token(manifest),
            "page_size": manifest.kv_cache.page_size,
            "compiled_context": manifest.kv_cache.max_total_seq_len,
            # the most a run's cache may take (at the compiled context): with a sliding window,
            # its window's pages however long the context
            "kv_cap_bytes": kv_cache_bytes(manifest, manifest.kv_cache.max_total_seq_len),
            "sliding_window": manifest.kv_cache.sliding_window or 0}


def largest_context(need: dict, free_bytes: int) -> int:
    """The most tokens (whole pages, at most the compiled context) whose KV cache fits in
    `free_bytes` beside the weights and the runtime; 0 when not even one page does. A cache
    grows with the context up to `kv_cap_bytes` (a sliding window's pages) and no further: when
    that fits, every context the bundle was compiled for does."""
    room = free_bytes - need["weight_bytes"] - need["runtime_bytes"]
    page_bytes = need["kv_bytes_per_token"] * need["page_size"]
    if room < page_bytes:
        return 0
    if need.get("kv_cap_bytes") is not None and need["kv_cap_bytes"] <= room:
        return need["compiled_context"]
    return min(room // page_bytes * need["page_size"], need["compiled_context"])


def check_fit(need: dict, free_bytes: int | None, device: str) -> dict:
    """{need_bytes, free_bytes, fits}; raises DoesNotFit when the device has less free memory."""
    result = {"need_bytes": need["need_bytes"], "free_bytes": free_bytes, "fits": None}
    if free_bytes is None:  # the device did not say: run, and say we could not check
        return result
    result["fits"] = need["need_bytes"] <= free_bytes
    if not result["fits"]:
        best = largest_context(need, free_bytes)
        what = (f"the largest context that fits is {best} tokens: use --context {best} (or -p plus -n at most "
                f"{best})" if best else "not even the weights fit: use a smaller model or quantization")
        raise DoesNotFit(
            f"device '{device}' has {free_bytes / MiB:.0f} MiB free (MemAvailable) and this run needs about "
            f"{need['need_bytes'] / MiB:.0f} MiB (weights {need['weight_bytes'] / MiB:.1f} + KV cache "
            f"{need['kv_cache_bytes'] / MiB:.1f} for {need['kv_context']} tokens{_window(need)} + runtime "
            f"{need['runtime_bytes'] / MiB:.1f}); {what}, or free memory on the device")
    return result


def _window(need: dict) -> str:
    """' (sliding window W)' where the cache of this run slides, else ''."""
    window = need.get("sliding_window") or 0
    return f" (sliding window {window})" if window and need["kv_context"] > window else ""
