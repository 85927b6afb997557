"""One bundle per target the devices need, compiled once and cached by the content of what went
into it: the checkpoint's fingerprint, the quantization, the target preset, the TVM version, and
the source of the compiler, the targets and the runner. Same inputs, same folder: a second farm
run (or a second CI job on the same machine) pushes the bundle it already has."""
from __future__ import annotations

from pathlib import Path

CACHE = "farm/bundles"  # under the cache root


def cache_dir() -> Path:
    from edgesmith.targets.cache import cache_root

    return cache_root() / CACHE


def bundle_for(model: str, quant: str | None, target: str, *, progress=None, tuning=None,
               tuning_source: str = "") -> dict:
    """{target, path, key, cached, compile_s}: the cached bundle, compiled first if missing
    (quant None: the target's default quantization). tuning: a TuningRecord to compile with
    (`farm run --tune`): its kernel choices are part of the cache key."""
    import json

    from edgesmith.compiler.inputs.checkpoint import default_quant
    from edgesmith.compiler.bundle.provenance import cached_bundle

    quant = quant or default_quant(model, target)[0]
    extra = {}
    if tuning is not None:
        choices = json.dumps(tuning.tuning().as_dict(), sort_keys=True)
        extra = {"key_extra": f"{tuning.fingerprint_id}:{choices}", "tuning": tuning, "tuning_source": tuning_source}
    got = cached_bundle(model, quant, target, cache=CACHE, progress=progress, **extra)
    return {"target": target, "quant": quant, "path": str(got.path), "key": got.key, "cached": got.cached,
            "compile_s": got.compile_s}
