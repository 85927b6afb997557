"""Kernel choices as parameters, and the tuning record that picks them per kernel shape.

Our CPU kernels are hand-scheduled; the choices in them were measured on one x86 host. Each
family's choices are one small frozen dataclass here, whose defaults are those values:

    GemvParams       decode GEMVs (kernels_gemv.q4_gemv float activations; kernels_int8.q4_gemv_i8;
                     on Arm kernels_int8_arm's four-row GEMV, rows rounded to fours, prefetch in fours):
                     rows per parallel task, software prefetch distance in rows
    GemmI8Params     prefill int8 GEMM (kernels_int8.gemm_kernel: q4_gemm_i8, or on Arm dotprod
                     int8_arm's sdot-by-element GEMM, with i8mm int8_smmla's): tokens per register tile
    GemmParams       prefill float GEMM (kernels.q4_linear / float_linear + schedules.Linear):
                     tokens per register tile (the padding and the schedule's split agree on it)
    AttentionParams  prefill attention (attention_cpu's ragged and paged kernels): query rows per
                     tile, keys per block
    GpuGemvParams    GPU decode's int4 GEMVs (lowering/schedules_fused.norm_gemv: RMSNorm + GEMV,
                     SiLU*up + GEMV, o_proj's plain one): work-items splitting k (the reduction
                     across the work-group), rows per work-group (each item keeps that many partial
                     dots), weight words an item loads a step (one vector load, decoded in registers)
    threads          a run-time setting, not a kernel's: the record's `threads`, which the manifest
                     carries and the runner starts TVM's thread pool with (unless --threads says)

A kernel is named by a shape key, e.g. `gemv_i8:n=9216:k=3072:g=32:s=float16`; a Tuning maps keys
to params and answers the defaults for any key it lacks. `edgesmith tune` (runtime/tune/) measures
candidates on a device and writes a record (TuningRecord, JSON); `compile --tuning` applies it and
the manifest's "tuning" says what was applied. TVM-free: the CLI reads records before TVM loads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith.errors import EdgesmithError

RECORD_FORMAT = 1


class TuningError(EdgesmithError):
    """A tuning record that cannot be used: unreadable, or measured on another device/target."""


@dataclass(frozen=True)
class GemvParams:
    rows: int = 16  # output rows per parallel task
    prefetch_rows: int = 2  # llvm.prefetch of the weight this many rows ahead


@dataclass(frozen=True)
class GemmI8Params:
    tokens: int = 4  # register tile: tokens x 2 vectors of outputs


@dataclass(frozen=True)
class GemmParams:
    tokens: int = 8  # register tile: tokens x 2 vectors of outputs (kernels.ROW_TILE's default)


@dataclass(frozen=True)
class AttentionParams:
    rows: int = 32  # query rows per prefill tile, held as two vectors of rows/2 lanes
    keys: int = 8  # keys per block (a divisor of the page, 16): its rows x keys scores stay in registers


@dataclass(frozen=True)
class GpuGemvParams:
    threads: int = 64  # work-items splitting k (a power of two; fewer where k's words do not divide)
    rows: int = 4  # output rows per work-group: each item keeps `rows` partial dots, x loaded once for all
    words: int = 1  # consecutive weight words an item takes a step (1, 2, 4: one vector load of them)


# kind of kernel -> its params class. The kind is the shape key's prefix.
KINDS: dict[str, type] = {"gemv": GemvParams, "gemv_i8": GemvParams, "gemm_i8": GemmI8Params, "gemm": GemmParams,
                          "attn_prefill": AttentionParams, "gemv_gpu": GpuGemvParams}

# The small spaces `tune` searches (the default always among them).
SPACES: dict[str, list] = {
    "gemv": [GemvParams(r, p) for r in (4, 8, 16, 32) for p in (0, 2, 4)],
    "gemv_i8": [GemvParams(r, p) for r in (4, 8, 16, 32) for p in (0, 2, 4)],
    "gemm_i8": [GemmI8Params(t) for t in (2, 4, 6, 8)],
    "gemm": [GemmParams(t) for t in (4, 6, 8, 12)],
    "attn_prefill": [AttentionParams(r, kb) for r in (16, 32) for kb in (4, 8)],
    "gemv_gpu": [GpuGemvParams(t, r, w) for w in (1, 4) for t in (64, 16, 32, 128, 256) for r in (4, 1, 2, 8)],
}

# gemv_gpu keys' p=: RMSNorm + GEMV, SiLU(gate) * up + GEMV, a GEMV alone (its default: dlight's gpu.GEMV,
# which takes no params; any other params: lowering/schedules_fused's schedule with them)
GPU_PROLOGUES = ("norm", "silu", "plain")
GEMV_VALUES = 8  # k values one work-item takes per step of the GPU GEMV: one uint32 word of nibbles


def gpu_threads(k: int, threads: int) -> int:
    """Work-items the GPU GEMV splits k among: the largest power of two up to `threads` dividing
    k's words (a split that does not divide would need a guard, which compute_at drops). With
    `words` a step, pass k // words."""
    words = max(1, k // GEMV_VALUES)
    t = 1
    while t < threads and words % (2 * t) == 0:
        t *= 2
    return t


def gpu_words(k: int, words: int) -> int:
    """Words an item of the GPU GEMV loads a step: `words`, halved until k's words divide by it."""
    w = max(1, words)
    while w > 1 and (k // GEMV_VALUES) % w:
        w //= 2
    return w


def gpu_gemv_key(prologue: str, n: int, k: int, group: int, scale_dtype: str) -> str:
    """`gemv_gpu:n=N:k=K:g=G:s=DTYPE:p=norm|silu`: one fused GPU decode GEMV of one shape."""
    if prologue not in GPU_PROLOGUES:
        raise ValueError(f"GPU GEMV prologue {prologue!r}: one of {', '.join(GPU_PROLOGUES)}")
    return shape_key("gemv_gpu", n, k, group, scale_dtype) + f":p={prologue}"


def space(key: str) -> list:
    """The candidates `tune` times for kernel `key`: its kind's space (the default among them), less
    those the shape cannot honour: a GPU GEMV whose k's words split among fewer items than
    `threads` would be another candidate's kernel under a wrong name (the default stays: its
    threads are a cap, and the candidate its cap equals goes instead)."""
    info = parse_key(key)
    kind = info["kind"]
    candidates = SPACES[kind]
    if kind == "gemv_gpu":
        k, default = info["k"], GpuGemvParams()
        same = GpuGemvParams(gpu_threads(k, default.threads), default.rows)  # the kernel the default makes
        if info.get("p") == "plain":  # the default is dlight's kernel: ours at the default's params is another
            same = None
        candidates = [p for p in candidates if p == default or
                      (gpu_words(k, p.words) == p.words and gpu_threads(k // p.words, p.threads) == p.threads
                       and p != same)]
    return candidates



def attention_key(h_q: int, h_kv: int, d: int, dtype: str) -> str:
    """The prefill attention kernels' key: both (ragged and paged) use the same params."""
    return f"attn_prefill:hq={h_q}:hkv={h_kv}:d={d}:dt={dtype}"


def shape_key(kind: str, n: int, k: int, group: int = 0, scale_dtype: str = "") -> str:
    """`kind:n=N:k=K[:g=G:s=DTYPE]`: one kernel of one shape (the float GEMM has no groups)."""
    if kind not in KINDS:
        raise ValueError(f"kernel kind {kind!r}: one of {', '.join(KINDS)}")
    key = f"{kind}:n={n}:k={k}"
    return key + (f":g={group}:s={scale_dtype}" if group else "")


def parse_key(key: str) -> dict:
    kind, *parts = key.split(":")
    out: dict = {"kind": kind}
    for part in parts:
        name, _, value = part.partition("=")
        try:
            out[name] = value if name in ("s", "dt", "p") else int(value)
        except ValueError:
            raise TuningError(f"kernel shape key {key!r}: {part!r} is not name=integer") from None
    return out


def params_from_dict(kind: str, data: dict):
    cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict) or set(data) - names:
        raise TuningError(f"tuning params {data!r} for a {kind} kernel: expected the fields {sorted(names)}")
    try:
        params = cls(**{k: int(v) for k, v in data.items()})
    except (TypeError, ValueError):
        raise TuningError(f"tuning params {data!r} for a {kind} kernel are not whole numbers") from None
    check_params(kind, params)
    return params


def check_params(kind: str, params) -> None:
    bad = [f.name for f in dataclasses.fields(params) if getattr(params, f.name) < (0 if f.name == "prefetch_rows" else 1)]
    if isinstance(params, AttentionParams):  # two vectors of rows; blocks never cross a page of 16
        bad += [n for n, ok in (("rows", params.rows % 2 == 0 and params.rows <= 32),
                                ("keys", 16 % max(params.keys, 1) == 0)) if not ok]
    if isinstance(params, GpuGemvParams):  # a power of two (the items' split), a work-group's limits
        bad += [n for n, ok in (("threads", params.threads & (params.threads - 1) == 0 and params.threads <= 1024),
                                ("rows", params.rows <= 64), ("words", params.words in (1, 2, 4))) if not ok]
    if bad:
        raise TuningError(f"tuning params {dataclasses.asdict(params)} for a {kind} kernel: {', '.join(bad)} out of range")


@dataclass(frozen=True)
class Tuning:
    """Params per shape key (a tuple of pairs: hashable, so a KernelFamily can carry it). `used`
    collects the keys a compile looked up (not part of equality), so the manifest can say which
    of the model's kernels the record tuned and which kept the defaults."""

    entries: tuple = ()
    used: set = field(default_factory=set, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, table: dict) -> Tuning:
        return cls(tuple(sorted(table.items())))

    def params(self, kind: str, n: int, k: int, group: int = 0, scale_dtype: str = ""):
        return self.by_key(shape_key(kind, n, k, group, scale_dtype))

    def by_key(self, key: str):
        """The params of kernel `key`, or its kind's defaults."""
        self.used.add(key)
        for name, params in self.entries:
            if name == key:
                return params
        return KINDS[parse_key(key)["kind"]]()

    def as_dict(self) -> dict:
        return {key: dataclasses.asdict(p) for key, p in self.entries}


DEFAULT = Tuning()  # (its `used` collects across compiles: nothing reads it)


# ------------------------------------------------------------------ the record


@dataclass
class TuningRecord:
    """What `edgesmith tune` measured on one device for one target: per shape key, the chosen
    params and the timings behind them. JSON; keyed by the device fingerprint (runtime/tune/)."""

    fingerprint: dict  # arch, cpu_model, cores, isa (sorted flags that matter), gpu
    fingerprint_id: str  # sha256[:16] of the fingerprint's JSON
    target: str  # target preset the candidates were built for
    device: str  # devices.yaml name it was measured on ("host": this machine)
    emulated: bool  # measured under qemu: proves the mechanism, never a device's best choice
    kernels: dict = field(default_factory=dict)  # key -> {params, median_us, default_us, candidates}
    complete: bool = True  # False: the budget ran out before every shape was measured
    # the run-time thread count that decoded fastest, per model shape (model_shape_id): {id: {threads,
    # model, us: {count: a decode step's linear kernels, summed}}}; small models want fewer threads
    threads: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    budget_s: float = 0.0  # the last tune's budget and the seconds it took
    elapsed_s: float = 0.0
    created: str = ""
    format: int = RECORD_FORMAT

    def tuning(self) -> Tuning:
        table = {}
        for key, entry in self.kernels.items():
            kind = parse_key(key)["kind"]
            if kind not in KINDS:
                raise TuningError(f"kernel {key!r} is of no kind this edgesmith knows ({', '.join(KINDS)})")
            table[key] = params_from_dict(kind, entry["params"])
        return Tuning.of(table)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> TuningRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise TuningError(f"tuning record {path} not found; write one with `edgesmith tune MODEL -o {path}`") from None
        except (OSError, ValueError) as e:
            raise TuningError(f"tuning record {path} is not readable JSON ({e}); tune again") from None
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise TuningError(f"tuning record {path} has format {data.get('format') if isinstance(data, dict) else None!r}; "
                              f"this edgesmith reads format {RECORD_FORMAT}: tune again")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"fingerprint", "fingerprint_id", "target", "device", "emulated"} - set(data)
        if missing or not isinstance(data.get("kernels", {}), dict) or not isinstance(data.get("threads", {}), dict):
            raise TuningError(f"tuning record {path} is damaged (missing {sorted(missing) or 'kernels'}); tune again")
        record = cls(**{k: v for k, v in data.items() if k in known})
        try:
            record.tuning()  # every entry's params checked now, not at compile's end
        except (TuningError, KeyError, TypeError, ValueError) as e:
            raise TuningError(f"tuning record {path} is damaged ({e}); tune again") from None
        return record


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_mismatch(record: TuningRecord, fingerprint: dict) -> str | None:
    """What differs between the record's device and `fingerprint` (None: the same device kind)."""
    diffs = [f"{k} {record.fingerprint.get(k)!r} vs {fingerprint.get(k)!r}"
             for k in sorted(set(record.fingerprint) | set(fingerprint))
             if record.fingerprint.get(k) != fingerprint.get(k)]
    return "; ".join(diffs) or None


def manifest_entry(record: TuningRecord | None, tuning: Tuning, source: str, model_id: str = ""):
    """The manifest's "tuning" (a TuningInfo): where the params came from and every non-default one applied."""
    from edgesmith.compiler.bundle.manifest import TuningInfo

    if record is None:
        return TuningInfo(source="defaults")
    table = tuning.as_dict()
    chosen = record.threads.get(model_id) if model_id else None
    return TuningInfo(source=source, device=record.device, fingerprint_id=record.fingerprint_id,
                      fingerprint=record.fingerprint, emulated=record.emulated, complete=record.complete,
                      # the model's kernels the record tuned, and those it has no entry for (the defaults)
                      kernels={key: table[key] for key in sorted(tuning.used) if key in table},
                      untuned=tuple(sorted(tuning.used - set(table))),
                      # the runner starts TVM's pool with it unless told otherwise
                      threads=chosen["threads"] if chosen else None)


def model_shape_id(cfg, quant_name: str) -> str:
    """What a thread count was measured for: the model's layer shapes and depth (its architecture
    says: models/phi3/sizes.shape_id) and the quantization."""
    from edgesmith.compiler.models import for_config

    return f"{quant_name}:{for_config(cfg).shape_id(cfg)}"
