"""manifest.json, typed on both ends: what a bundle holds, written by the compiler, read by
everything else as attributes (never as dict keys).

One frozen dataclass per section, one reader (it checks the fields every reader relies on and
returns the typed `Manifest`), one writer (the file table's sha256 and sizes are computed here,
never by hand) and one update (eval results added to an existing bundle, atomically). Sections:

    format          bundle format (FORMAT)
    model           ModelInfo: source (human), spec (what `compile` reopens it with), fingerprint,
                    architecture, config (JSON: its to_dict(); read as the architecture's own
                    config, e.g. Phi3Config, when first asked), input (source format, what stayed exact)
    quant           quantization name; int8_dot: the dot-product ISA decode runs on (q4*i8);
                    int4_step_order: the int4 weights stored in step order (quantization/q4.py:
                    within every 16 words of a row, word j of block i at 4 j + i; Arm dotprod)
    target          TargetInfo: preset, tvm_target, arch, triple, layout
    arch            the runner's and the model library's architecture
    tvm_version     the TVM the library was built with (the runner checks its runtime's)
    kv_cache        KvCacheInfo: page_size, prefill_chunk_size, max_total_seq_len, dtype,
                    sliding_window, bytes_per_token (compiler/context.py); none in a kernel library
    params          parameter names in the library's order; weight_bytes
    files           {relative path: FileEntry (sha256, size)} of every file but this one
    device          DeviceInfo (GPU bundles): api, dl_device_type, runtime_libs, limits,
                    runtime_missing, build_on_device
    kernels         KernelSources (GPU bundles): the kernels' sources
    tuning          TuningInfo (CPU bundles): the kernel choices applied (compiler/tuning.py): source
                    ("defaults" or the record's path), device, fingerprint, emulated, kernels
    tokenizer       TokenizerInfo: where the bundle's tokenizer comes from, or why there is none
    build           BuildInfo: host, seconds, edgesmith version
    eval            EvalReport: `compile --eval`'s accuracy against q0f32, once measured

In JSON a section leaves out what is unset (None); the C++ runner reads the same file
(runtime/runner/manifest.h).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.errors import BundleError, one_line as _one_line

MANIFEST = "manifest.json"
FORMAT = 1


# ---------------------------------------------------------------- sections

class _Section:
    """JSON <-> a frozen dataclass: unknown keys are ignored (a newer writer), unset ones left
    out; a field whose JSON name differs says so in its metadata (`from` is a keyword)."""

    @classmethod
    def from_json(cls, data: Mapping):
        kw = {}
        for f in dataclasses.fields(cls):
            key = f.metadata.get("json", f.name)
            if key in data:
                value = data[key]
                kw[f.name] = tuple(value) if isinstance(value, list) and f.metadata.get("tuple") else value
        return cls(**kw)

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata.get("json", f.name)] = list(value) if isinstance(value, tuple) else value
        return out


def _tuple(**kw):
    return field(metadata={"tuple": True}, **kw)


@dataclass(frozen=True)
class FileEntry(_Section):
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelInfo(_Section):
    source: str
    spec: str | None = None  # what `compile` reopens the model with (random:..., a folder)
    fingerprint: str | None = None
    architecture: str | None = None  # the model registry's key; bundles written before it: Phi-3's
    config_json: Mapping | None = field(default=None, metadata={"json": "config"})  # config.to_dict()
    input: Mapping | None = None  # the source's format and what stayed exact (the source says what)

    @classmethod
    def of(cls, config, **fields) -> ModelInfo:
        """The section for a model of `config` (the architecture's config dataclass)."""
        info = cls(architecture=type(config).architecture, config_json=config.to_dict(), **fields)
        info.__dict__["config"] = config  # what `config` would parse back
        return info

    @functools.cached_property
    def config(self):
        """The architecture's own config (e.g. Phi3Config), read back through the model registry
        when first asked: a runner-only reader (session, push) never needs the architecture."""
        from edgesmith.compiler.models import DEFAULT_ARCHITECTURE, MODELS

        if not self.config_json:
            raise BundleError(f"the bundle's manifest holds no model config ({self.source}): it is not a "
                              "model bundle")
        arch = self.architecture or DEFAULT_ARCHITECTURE
        entry = MODELS.get(arch)
        if entry is None:
            raise BundleError(f"the bundle's model is a {arch}, which this edgesmith does not know "
                              f"(it knows {', '.join(MODELS)}); use the edgesmith that compiled it")
        return entry.config_from_dict(dict(self.config_json))


@dataclass(frozen=True)
class TargetInfo(_Section):
    preset: str
    tvm_target: Mapping = field(default_factory=dict)
    arch: str = ""
    triple: str = ""
    layout: str = "linux"  # the bundle layout (targets/layouts.py)


@dataclass(frozen=True)
class KvCacheInfo(_Section):
    page_size: int
    prefill_chunk_size: int
    max_total_seq_len: int  # the compiled context: a run may size less, never more
    dtype: str = "float32"
    sliding_window: int | None = None
    bytes_per_token: int | None = None  # K and V of one token in every layer


@dataclass(frozen=True)
class DeviceInfo(_Section):
    api: str  # "opencl" | "vulkan" | "metal" | "cuda"
    dl_device_type: int
    runtime_libs: tuple[str, ...] = _tuple(default=())
    limits: Mapping = field(default_factory=dict)
    runtime_missing: str | None = None  # no runner ships: why, and what it needs
    build_on_device: str | None = None  # the script that links and builds on the device


@dataclass(frozen=True)
class KernelSources(_Section):
    language: str
    module: str
    names: tuple[str, ...] = _tuple(default=())
    extension: str = ""
    # the kernels a decoded token launches, derived from the lowered decode (compiler/lowering/launches.py):
    # {"total", "head", "per_layer": [...], "kv_cache_per_layer"}; None in bundles made before it
    decode_launches: Mapping | None = None
    cuda_graph: bool = False  # compiled with --cuda-graph: kernel runs replayed as CUDA graphs


@dataclass(frozen=True)
class TuningInfo(_Section):
    source: str  # "defaults", or the tuning record's path
    kernels: Mapping = field(default_factory=dict)  # {shape key: {param: value}} applied
    device: str | None = None
    fingerprint_id: str | None = None
    fingerprint: Mapping | None = None
    emulated: bool = False
    complete: bool = True
    untuned: tuple[str, ...] = _tuple(default=())  # the model's tunable kernels the record lacks
    threads: int | None = None  # the runner starts TVM's pool with it unless told otherwise

    @property
    def defaults(self) -> bool:
        return self.source == "defaults"


@dataclass(frozen=True)
class TokenizerInfo(_Section):
    source: str | None = None  # "checkpoint", "phi-3 vocabulary" (built), None: no tokenizer
    vocabulary: str | None = None  # the built vocabulary it needs ("phi-3"), even when missing
    origin: str | None = field(default=None, metadata={"json": "from"})  # what it was built from
    gguf_sha256: str | None = None
    chat_template: bool | None = None
    note: str | None = None  # why there is none


@dataclass(frozen=True)
class BuildInfo(_Section):
    host: str = ""
    convert_s: float | None = None
    compile_s: float | None = None
    edgesmith_version: str | None = None
    functions: Mapping | None = None  # a kernel library's functions (edgesmith tune)


@dataclass(frozen=True)
class EvalReport(_Section):
    positions: int
    top1_agreement: float
    mean_kl: float
    max_abs_diff: float


# Which dataclass reads each section (the rest are plain values).
_SECTIONS = {"model": ModelInfo, "target": TargetInfo, "kv_cache": KvCacheInfo, "device": DeviceInfo,
             "kernels": KernelSources, "tuning": TuningInfo, "tokenizer": TokenizerInfo, "build": BuildInfo,
             "eval": EvalReport}


# ---------------------------------------------------------------- the manifest

@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    quant: str
    target: TargetInfo
    arch: str
    tvm_version: str
    kv_cache: KvCacheInfo | None  # None: a kernel library (edgesmith tune), no model
    params: tuple[str, ...]
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    weight_bytes: int = 0
    quantize_embedding: bool = True
    quantize_lm_head: bool | None = None  # None (bundles before it): as quantize_embedding
    int8_dot: str | None = None
    int4_step_order: tuple[str, ...] | None = None
    device: DeviceInfo | None = None
    kernels: KernelSources | None = None
    tuning: TuningInfo | None = None
    tokenizer: TokenizerInfo | None = None
    build: BuildInfo = field(default_factory=BuildInfo)
    eval: EvalReport | None = None
    format: int = FORMAT

    # ---------------------------------------------------------------- reading

    @classmethod
    def read(cls, bundle: Path) -> Manifest:
        bundle = Path(bundle)
        if not bundle.is_dir():
            raise BundleError(f"bundle {bundle} is not a folder; pass the folder `edgesmith compile -o` wrote")
        path = bundle / MANIFEST
        if not path.is_file():
            if (bundle / "config.json").is_file() or (bundle / "genai_config.json").is_file():
                raise BundleError(f"'{bundle}' is a checkpoint folder, not a bundle: compile it first "
                                  f"(edgesmith compile {bundle} --target host -o dist/{bundle.resolve().name}-host), "
                                  "then run the bundle")
            raise BundleError(f"{path} not found: '{bundle}' is not a bundle (a folder `edgesmith compile -o` wrote), "
                              "or an unfinished one; compile it again")
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
        kw = {}
        try:
            for f in dataclasses.fields(cls):
                if f.name not in data:
                    continue
                value = data[f.name]
                if f.name in _SECTIONS:
                    value = _SECTIONS[f.name].from_json(value) if value else None
                elif f.name == "files":
                    value = {rel: FileEntry.from_json(meta) for rel, meta in value.items()}
                elif f.name in ("params", "int4_step_order"):
                    value = tuple(value)
                kw[f.name] = value
            return cls(**kw)
        except (TypeError, KeyError) as e:  # a section lacks a field its readers need
            raise BundleError(f"{where} is damaged ({_one_line(e)}); compile the bundle again") from None

    def as_dict(self) -> dict:
        """The JSON object (fields left unset are left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "kv_cache" and value is None:
                value = {}  # the runner and older readers want the key
            elif value is None:
                continue
            elif isinstance(value, _Section):
                value = value.to_json()
            elif f.name == "files":
                value = {rel: meta.to_json() for rel, meta in value.items()}
            elif f.name in ("params", "int4_step_order"):
                value = list(value)
            out[f.name] = value
        return out

    # ---------------------------------------------------------------- asked by every reader

    @property
    def config(self):
        """The model's config (the architecture's dataclass, e.g. Phi3Config)."""
        return self.model.config

    @property
    def kv_dtype(self) -> str:
        return self.kv_cache.dtype if self.kv_cache else "float32"

    @property
    def layout(self) -> str:
        return self.target.layout

    # ---------------------------------------------------------------- writing

    def write(self, root: Path) -> Manifest:
        """Write ROOT/manifest.json with the sha256 and size of every other file under ROOT;
        returns the manifest with that file table."""
        from edgesmith.compiler.bundle.folder import file_table

        written = dataclasses.replace(self, files={rel: FileEntry(**meta) for rel, meta in
                                                   file_table(Path(root)).items()})
        _write_atomic(Path(root) / MANIFEST, written.as_dict())
        return written

    def update(self, bundle: Path, **changes) -> Manifest:
        """Set `changes` (fields that describe the bundle, not its files) and rewrite the manifest
        in place, atomically: a reader sees the old one or the new one. Returns the new one."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown or "files" in changes:
            raise ValueError(f"Manifest.update: {sorted(unknown | ({'files'} & set(changes)))} cannot be changed")
        changed = dataclasses.replace(self, **changes)
        _write_atomic(Path(bundle) / MANIFEST, changed.as_dict())
        return changed


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
    if "source" not in data["model"]:
        return "no model 'source'"
    for key, cls in _SECTIONS.items():
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"'{key}' is not an object"
    return None
