"""What a bundle is made of, as one key: the checkpoint's fingerprint, the quantization, the target,
the TVM version and the source of everything that shapes the output (the compiler, the targets and
the runner). Caches of compiled bundles (the farm's, `profile --check`'s host reference) are keyed
by it, so a bundle made by an older compiler is never taken for a current one."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

# compiler/, targets/ and runtime/runner/ sit side by side both in a checkout and when installed
# (site-packages/edgesmith/{compiler,targets,runtime}).
_ROOT = Path(__file__).resolve().parents[1]
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
