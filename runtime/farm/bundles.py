"""One bundle per target the devices need, compiled once and cached by the content of what went
into it: the checkpoint's fingerprint, the quantization, the target preset, the TVM version, and
the source of the compiler, the targets and the runner. Same inputs, same folder: a second farm
run (or a second CI job on the same machine) pushes the bundle it already has."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("compiler", "targets", "runtime/runner")


def cache_dir() -> Path:
    base = Path(os.environ.get("EDGESMITH_CACHE") or Path.home() / ".cache" / "edgesmith")
    return base / "farm" / "bundles"


def _source_hash() -> str:
    h = hashlib.sha256()
    for folder in _SOURCES:
        for path in sorted((_ROOT / folder).rglob("*")):
            if path.is_file() and (path.suffix in (".py", ".cc", ".h", ".c") or path.name == "Makefile"):
                h.update(path.relative_to(_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def content_key(model: str, quant: str, target: str) -> str:
    from edgesmith.compiler.checkpoint import open_checkpoint
    from edgesmith.targets.tvm_api import TVM_VERSION

    inputs = {"fingerprint": open_checkpoint(model).fingerprint(), "quant": quant, "target": target,
              "tvm": TVM_VERSION, "sources": _source_hash()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def bundle_for(model: str, quant: str | None, target: str, *, progress=None) -> dict:
    """{target, path, key, cached, compile_s}: the cached bundle, compiled first if missing
    (quant None: the target's default quantization)."""
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.targets.presets import default_quantization, get_preset

    say = progress or (lambda msg: None)
    quant = quant or default_quantization(get_preset(target))[0]
    key = content_key(model, quant, target)
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
    compile_bundle(model, quant, target, tmp)
    try:
        os.replace(tmp, path)  # another job may have finished the same bundle first: keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"target": target, "quant": quant, "path": str(path), "key": key, "cached": False,
            "compile_s": round(time.monotonic() - t0, 2)}
