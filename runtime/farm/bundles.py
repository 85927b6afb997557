"""One bundle per target the devices need, compiled once and cached by the content of what went
into it: the checkpoint's fingerprint, the quantization, the target preset, the TVM version, and
the source of the compiler, the targets and the runner. Same inputs, same folder: a second farm
run (or a second CI job on the same machine) pushes the bundle it already has."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def cache_dir() -> Path:
    from edgesmith.targets.cache import cache_root

    return cache_root() / "farm" / "bundles"


def content_key(model: str, quant: str, target: str) -> str:
    from edgesmith.compiler.checkpoint import open_checkpoint
    from edgesmith.compiler.provenance import bundle_key

    return bundle_key(open_checkpoint(model).fingerprint(), quant, target)


def bundle_for(model: str, quant: str | None, target: str, *, progress=None, tuning=None,
               tuning_source: str = "") -> dict:
    """{target, path, key, cached, compile_s}: the cached bundle, compiled first if missing
    (quant None: the target's default quantization). tuning: a TuningRecord to compile with
    (`farm run --tune`): its kernel choices are part of the cache key."""
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.checkpoint import default_quant

    say = progress or (lambda msg: None)
    quant = quant or default_quant(model, target)[0]
    key = content_key(model, quant, target)
    if tuning is not None:
        import hashlib
        import json

        choices = json.dumps(tuning.tuning().as_dict(), sort_keys=True)
        key = hashlib.sha256(f"{key}:{tuning.fingerprint_id}:{choices}".encode()).hexdigest()
    base = model.split("random:", 1)[1] if model.startswith("random:") else Path(model).name
    name = f"{base.replace(':', '-').replace('=', '')}-{quant}-{target}-{key[:12]}"
    path = cache_dir() / name
    if (path / "manifest.json").is_file():
        say(f"bundle for {target}: cached ({path})")
        return {"target": target, "quant": quant, "path": str(path), "key": key, "cached": True,
                "compile_s": 0.0}
    say(f"bundle for {target}: compiling {model} at {quant}")
    t0 = time.monotonic()
    tmp = path.with_name(f".{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    compile_bundle(model, quant, target, tmp, tuning=tuning, tuning_source=tuning_source)
    try:
        os.replace(tmp, path)  # another job may have finished the same bundle first: keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"target": target, "quant": quant, "path": str(path), "key": key, "cached": False,
            "compile_s": round(time.monotonic() - t0, 2)}
