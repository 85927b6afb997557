"""What a bundle is made of, as one key: the checkpoint's fingerprint, the quantization, the target,
the TVM version and the source of everything that shapes the output (the compiler, the targets and
the runner); and the one cache of compiled bundles keyed by it (`cached_bundle`: the farm's, `profile
--check`'s host reference, the bench scripts'), so a bundle made by an older compiler is never taken
for a current one."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# compiler/, targets/ and runtime/runner/ sit side by side both in a checkout and when installed
# (site-packages/edgesmith/{compiler,targets,runtime}); this file is compiler/bundle/provenance.py.
_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("compiler", "targets", "runtime/runner")


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    h = hashlib.sha256()
    for folder in _SOURCES:
        for path in sorted((_ROOT / folder).rglob("*")):
            if path.is_file() and (path.suffix in (".py", ".cc", ".h", ".c", ".sh") or path.name == "Makefile"):
                h.update(path.relative_to(_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def bundle_key(fingerprint: str, quant: str, target: str, **options) -> str:
    """sha256 of everything that makes a bundle (options: compile flags such as quantize_embedding)."""
    from edgesmith.targets.tvm_api import TVM_VERSION

    inputs = {"fingerprint": fingerprint, "quant": quant, "target": target, "tvm": TVM_VERSION,
              "sources": source_hash(), **options}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CachedBundle:
    path: Path
    key: str
    cached: bool  # found in the cache (False: compiled now)
    compile_s: float = 0.0


def cached_bundle(model, quant: str, target: str, *, cache: str, fingerprint: str | None = None,
                  options: dict | None = None, key_extra: str = "", rebuild: bool = False, progress=None,
                  **compile_kwargs) -> CachedBundle:
    """The one cache of compiled bundles: `model` at `quant` for `target` from
    <cache root>/<cache>/<name>-<key>, compiled into it first when missing (or `rebuild`), keyed by
    bundle_key (so a bundle of an older compiler is never taken for a current one).

    model: a checkpoint spec, or a callable that gives one (called only to compile: a cached
    reference needs no checkpoint); fingerprint: the checkpoint's, when known without opening it.
    options: compile options that shape the bundle (quantize_embedding, kv_dtype, ...), part of the
    key; key_extra: what else is (a tuning record's choices), with its compile_kwargs (tuning=...)."""
    import os
    import shutil
    import time

    from edgesmith.compiler.build import compile_bundle
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint
    from edgesmith.targets.cache import cache_root

    say = progress or (lambda msg: None)
    options = dict(options or {})
    if fingerprint is None:
        fingerprint = open_checkpoint(model).fingerprint()
    key = bundle_key(fingerprint, quant, target, **options)
    if key_extra:
        key = hashlib.sha256(f"{key}:{key_extra}".encode()).hexdigest()
    base = model.split("random:", 1)[1] if isinstance(model, str) and model.startswith("random:") else (
        Path(model).name if isinstance(model, (str, Path)) else fingerprint[:12])
    name = f"{base.replace(':', '-').replace('=', '')}-{quant}-{target}-{key[:12]}"
    path = cache_root() / cache / name
    if (path / "manifest.json").is_file() and not rebuild:
        say(f"bundle for {target}: cached ({path})")
        return CachedBundle(path, key, cached=True)
    source = model() if callable(model) else model
    say(f"bundle for {target}: compiling {source} at {quant} into {path}")
    t0 = time.monotonic()
    tmp = path.with_name(f".{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    compile_bundle(source, quant, target, tmp, **options, **compile_kwargs)
    if rebuild:
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)  # another job may have finished the same bundle first: keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return CachedBundle(path, key, cached=False, compile_s=round(time.monotonic() - t0, 2))
