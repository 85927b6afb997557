"""What a run needs in memory, and the refusal before a run that would not fit.

    need = weights (the bundle's parameter bytes)
         + KV cache (layers x 2 x kv_heads x head_dim x context rounded up to whole pages x dtype)
         + runtime (model library, runtime libraries, activations of one prefill chunk, a margin)

compared with the device's MemAvailable: a phone that runs out kills the process (low-memory
killer, OOM killer) without a word; refusing first says why.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.errors import EdgesmithError

MiB = 1 << 20
RUNTIME_MARGIN = 32 * MiB  # libc, thread stacks, the VM's own tables, allocator slack
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class DoesNotFit(EdgesmithError):
    """The bundle and its KV cache need more memory than the device has free."""


def param_bytes(bundle: Path) -> dict[str, int]:
    """{parameter name: bytes} from the bundle's params/tensor-cache.json."""
    cache = json.loads((Path(bundle) / "params" / "tensor-cache.json").read_text())
    return {r["name"]: r["nbytes"] for shard in cache["records"] for r in shard["records"]}


def kv_cache_bytes(manifest: dict, context: int) -> int:
    """Bytes the paged KV cache holds for `context` tokens (whole pages, as the runner sizes it)."""
    cfg, kv = manifest["model"]["config"], manifest["kv_cache"]
    page = kv["page_size"]
    tokens = -(-min(context, kv["max_total_seq_len"]) // page) * page
    return (cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * tokens
            * _DTYPE_BYTES.get(kv.get("dtype", "float32"), 4))


def activation_bytes(manifest: dict, prompt: int) -> int:
    """A generous bound on one prefill chunk's live activations (float32, pooled allocator x2)."""
    cfg = manifest["model"]["config"]
    chunk = min(prompt, manifest["kv_cache"]["prefill_chunk_size"])
    per_token = 4 * cfg["hidden_size"] + 2 * cfg["intermediate_size"] + cfg["vocab_size"]
    return 2 * 4 * chunk * per_token


def memory_need(bundle: Path, manifest: dict, prompt: int, gen: int) -> dict:
    bundle = Path(bundle)
    files = manifest.get("files", {})
    code = sum(meta["size"] for rel, meta in files.items() if rel.startswith(("lib/", "bin/")))
    weights = sum(param_bytes(bundle).values())
    kv = kv_cache_bytes(manifest, prompt + gen)
    runtime = code + activation_bytes(manifest, prompt) + RUNTIME_MARGIN
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "kv_context": prompt + gen, "runtime_bytes": runtime,
            "need_bytes": weights + kv + runtime}


def check_fit(need: dict, free_bytes: int | None, device: str) -> dict:
    """{need_bytes, free_bytes, fits}; raises DoesNotFit when the device has less free memory."""
    result = {"need_bytes": need["need_bytes"], "free_bytes": free_bytes, "fits": None}
    if free_bytes is None:  # the device did not say: run, and say we could not check
        return result
    result["fits"] = need["need_bytes"] <= free_bytes
    if not result["fits"]:
        raise DoesNotFit(
            f"device '{device}' has {free_bytes / MiB:.0f} MiB free (MemAvailable) and this run needs about "
            f"{need['need_bytes'] / MiB:.0f} MiB (weights {need['weight_bytes'] / MiB:.1f} + KV cache "
            f"{need['kv_cache_bytes'] / MiB:.1f} for {need['kv_context']} tokens + runtime "
            f"{need['runtime_bytes'] / MiB:.1f}); use a smaller model or quantization, shorter -p/-n, or free "
            "memory on the device")
    return result
