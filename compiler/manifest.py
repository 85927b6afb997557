"""manifest.json, typed: what a bundle holds, written by the compiler, read by everything else.

One dataclass with one reader (it checks the fields every reader relies on), one writer (the
file table's sha256 and sizes are computed here, never by hand) and one update (eval results
added to an existing bundle, atomically). Fields:

    format          bundle format (FORMAT)
    model           source (human), spec (what `compile` reopens it with), fingerprint, config
                    (Phi3Config as a dict), input (source format, what stayed exact)
    quant           quantization name; int8_dot: the dot-product ISA decode runs on (q4*i8)
    target          preset, tvm_target, arch, triple, layout
    arch            the runner's and the model library's architecture
    tvm_version     the TVM the library was built with (the runner checks its runtime's)
    kv_cache        page_size, prefill_chunk_size, max_total_seq_len, dtype, sliding_window,
                    bytes_per_token (compiler/context.py)
    params          parameter names in the library's order; weight_bytes
    files           {relative path: {sha256, size}} of every file but this one
    device          GPU bundles: api, dl_device_type, runtime_libs, limits, runtime_missing
    kernels         GPU bundles: the kernels' sources
    tuning          CPU bundles: the kernel choices applied (compiler/tuning.py): source ("defaults" or
                    the record's path), device, fingerprint, emulated, kernels {shape key: params}
    tokenizer       where the bundle's tokenizer comes from, or why there is none
    build           host, seconds, edgesmith version
    eval            `compile --eval`'s accuracy against q0f32, once measured
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class Manifest:
    model: dict
    quant: str
    target: dict
    arch: str
    tvm_version: str
    kv_cache: dict
    params: list[str]
    files: dict[str, dict] = field(default_factory=dict)
    weight_bytes: int = 0
    quantize_embedding: bool = True
    quantize_lm_head: bool | None = None  # None (bundles before it): as quantize_embedding
    int8_dot: str | None = None
    device: dict | None = None
    kernels: dict | None = None
    tuning: dict | None = None
    tokenizer: dict | None = None
    build: dict = field(default_factory=dict)
    eval: dict | None = None
    format: int = FORMAT

    # ---------------------------------------------------------------- reading

    @classmethod
    def read(cls, bundle: Path) -> Manifest:
        bundle = Path(bundle)
        if not bundle.is_dir():
            raise BundleError(f"bundle {bundle} is not a folder; pass the folder `edgesmith compile -o` wrote")
        path = bundle / MANIFEST
        if not path.is_file():
            raise BundleError(f"{path} not found: '{bundle}' is not a bundle, or an unfinished one; compile it again")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); compile the bundle again") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise BundleError(f"{Path(where).parent} has bundle format {got!r}; this edgesmith reads format {FORMAT}")
        problem = _problem(data)
        if problem:
            raise BundleError(f"{where} is damaged ({problem}); compile the bundle again")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def as_dict(self) -> dict:
        """The JSON object (fields left unset are left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    # ---------------------------------------------------------------- writing

    def write(self, root: Path) -> Manifest:
        """Write ROOT/manifest.json with the sha256 and size of every other file under ROOT."""
        from edgesmith.compiler.bundle import file_table

        self.files = file_table(Path(root))
        _write_atomic(Path(root) / MANIFEST, self.as_dict())
        return self

    def update(self, bundle: Path, **changes) -> Manifest:
        """Set `changes` (fields that describe the bundle, not its files) and rewrite the manifest
        in place, atomically: a reader sees the old one or the new one."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown or "files" in changes:
            raise ValueError(f"Manifest.update: {sorted(unknown | ({'files'} & set(changes)))} cannot be changed")
        for key, value in changes.items():
            setattr(self, key, value)
        _write_atomic(Path(bundle) / MANIFEST, self.as_dict())
        return self


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _problem(data: dict) -> str | None:
    """What makes a manifest unusable, or None: the fields every reader relies on."""
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        return "no 'files' table"
    for rel, meta in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "" in parts or rel == MANIFEST:
            return f"file entry {rel!r} is not a path inside the bundle"
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
                and isinstance(meta.get("size"), int)):
            return f"file entry {rel!r} has no sha256 and size"
    if not isinstance(data.get("arch"), str):
        return "no 'arch'"
    if not isinstance(data.get("target"), dict) or "preset" not in data["target"]:
        return "no 'target' preset"
    for key, kind in (("model", dict), ("kv_cache", dict), ("params", list), ("quant", str), ("tvm_version", str)):
        if not isinstance(data.get(key), kind):
            return f"no '{key}'"
    return None
