"""The tuning loop: for each tunable kernel shape of the model, build the candidates of its small
space (compiler/tuning.SPACES) into one library, push it with the runner session, time it with
`runner kernelbench` (warm-up, alternating rounds, medians, the thermal gate), keep the best.

Budget: before each shape the time it will take is estimated from what the shapes before it took
(a prior for the first); a shape that would not fit is not started, and the runner's own timeout
is what is left. The record then says it is incomplete, and why.

Resume: the record in the cache (<cache>/tuning/<fingerprint id>-<target>.json) is written after
every shape; a later `tune` of the same device and target measures only the shapes it lacks
(restart=True measures all again). So an interrupted tune loses at most the shape in flight, and
a second model with the same shapes costs nothing.

A GPU device (a GPU target's: PoCL's OpenCL on the host, a phone's OpenCL) gets its fused decode
GEMVs tuned (compiler/tuning.GpuGemvParams), built for its GPU and timed there by the same
kernelbench; no thread count (the CPU pool's) is measured for it.

Emulated devices (qemu) are refused unless allow_emulated: their timings say nothing about a
device; with it, the record is marked emulated and `compile` says so when it applies one.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from edgesmith.compiler.tuning import KINDS, TuningRecord, fingerprint_id, model_shape_id, parse_key, space
from edgesmith.errors import EdgesmithError
from edgesmith.runtime.tune.fingerprint import describe, fingerprint


@dataclass
class TuneOptions:
    budget_s: float = 600.0
    allow_emulated: bool = False
    restart: bool = False  # ignore the cached record's shapes and measure them all again
    quant: str | None = None  # None: the target's default for this model
    quantize_embedding: bool | None = None  # False: --float-embedding; None: the source's choice (as compile)
    kv_dtype: str | None = None  # the KV cache dtype the bundles will use (None: the target's default)
    reps: int = 7  # rounds of every candidate
    warmup: int = 2
    min_time: float = 0.02  # seconds per sample (back-to-back calls)
    tie_margin: float = 0.02  # a candidate must beat the default by this fraction to replace it
    cool_below: float | None = None  # °C before each round; None: the start temperature + 5, if it has zones


class LineProgress:
    """tune's progress as plain lines through `say` (nothing when None), no bars: for callers
    without a console of their own (the farm's log, benchmarks, tests)."""

    def __init__(self, say=None):
        self.say = say or (lambda msg: None)

    def step(self, msg: str) -> None:
        self.say(msg)

    note = step

    def bar(self, total: int, unit: str):
        return lambda n=1: None


def cache_path(fp: dict, target: str) -> Path:
    from edgesmith.targets.cache import cache_root

    return cache_root() / "tuning" / f"{fingerprint_id(fp)}-{target}.json"


def emulated_refusal(device) -> str:
    return (f"device '{device.name}' is emulated ({' '.join(device.exec_wrapper[:1])}): its timings say nothing about "
            "a real device, so tune refuses to choose kernels on it; pass --allow-emulated to test the mechanism "
            "(the record is then marked emulated)")


def tune_model(model: str, device, options: TuneOptions | None = None, *, out: Path | None = None,
               progress=None) -> tuple[TuningRecord, Path]:
    """Tune `model`'s kernels on `device` (a devices.yaml Device). Returns the record and where the
    cache keeps it (also written to `out` when given)."""
    o = options or TuneOptions()
    say = progress or LineProgress()
    if o.budget_s <= 0:
        raise EdgesmithError(f"--budget {o.budget_s / 60:g} minutes: it must be more than 0")
    if device.emulated and not o.allow_emulated:
        raise EdgesmithError(emulated_refusal(device))
    start = time.monotonic()
    deadline = start + o.budget_s

    import tvm
    from edgesmith.compiler.inputs.checkpoint import default_quant, open_checkpoint
    from edgesmith.compiler.kernels.family import check_quant, kernel_family
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.runtime.tune.shapes import tunable_shapes
    from edgesmith.targets.presets import get_preset

    preset = get_preset(device.target)
    ckpt = open_checkpoint(model)
    quant = get_quantization(o.quant or default_quant(ckpt, preset.name)[0])
    tvm_target = tvm.target.Target(preset.tvm_target())
    check_quant(quant, preset, tvm_target)
    family = kernel_family(tvm_target)
    from edgesmith.compiler.context import kv_settings

    kv_dtype = kv_settings(ckpt.config, preset, None, o.kv_dtype, quant=quant).dtype
    from edgesmith.compiler.inputs.checkpoint import quantized_ends

    head_q = quantized_ends(ckpt, quant, o.quantize_embedding)[1]  # the lm_head compile will build
    shapes = tunable_shapes(ckpt.config, quant, family, quantize_embedding=head_q, kv_dtype=kv_dtype)

    from edgesmith.runtime.transports import open_transport

    transport = open_transport(device)
    try:
        probe = transport.probe(timeout=60)
    finally:
        transport.close()
    _check_gpu_api(preset, device, probe)
    fp = fingerprint(probe)
    path = cache_path(fp, preset.name)
    record = _cached(path, fp, preset.name) if not o.restart else None
    if record is None:
        record = TuningRecord(fingerprint=fp, fingerprint_id=fingerprint_id(fp), target=preset.name,
                              device=device.name, emulated=device.emulated)
    record.device, record.emulated = device.name, record.emulated or device.emulated
    todo = [s for s in shapes if s.key not in record.kernels]
    say.step(f"tune: {ckpt.description} at {quant.name} on '{device.name}', {describe(fp)}: {len(shapes)} kernel "
             f"shapes, {len(shapes) - len(todo)} already in {path}; budget {o.budget_s / 60:g} min")
    cool = o.cool_below
    if cool is None and probe.get("thermal"):
        cool = max(probe["thermal"].values()) + 5

    estimate = _Estimate()
    # the CPU pool's thread count: a CPU target's run-time setting (a GPU bundle's kernels run on the GPU)
    thread_counts = _thread_counts(probe.get("cores") or 1) if preset.gpu is None else []
    model_id = model_shape_id(ckpt.config, quant.name)
    measure_threads = bool(thread_counts) and (o.restart or model_id not in record.threads or bool(todo))
    tick = say.bar(sum(len(space(s.key)) for s in todo)
                   + (len(thread_counts) if measure_threads else 0), "candidate")
    stopped = None
    for shape in todo:
        n_cand = len(space(shape.key))
        left = deadline - time.monotonic()
        if estimate.seconds(shape.key, n_cand, o) > left:
            stopped = (f"the budget ({o.budget_s / 60:g} min) ran out before {len(todo) - todo.index(shape)} of "
                       f"{len(shapes)} shapes; run tune again to measure them (it resumes from the cache)")
            break
        try:
            entry, build_s, run_s = _tune_shape(shape, preset, device, o, cool, deadline, tick)
        except _OutOfBudget:
            stopped = (f"the budget ({o.budget_s / 60:g} min) ran out while timing {shape.key}; run tune again to "
                       "measure the rest (it resumes from the cache)")
            break
        estimate.add(shape.key, n_cand, build_s, run_s)
        record.kernels[shape.key] = entry
        record.complete = False
        record.write(path)  # after every shape: an interruption loses at most the one in flight
        say.note(f"  {shape.phase} {'/'.join(shape.layers)} {shape.key}: {_summary(entry)}")
    tuned = [s for s in shapes if s.key in record.kernels]
    if stopped is None and measure_threads and any(s.phase == "decode" for s in tuned):
        if len(thread_counts) * estimate.threads_s(len(tuned)) > deadline - time.monotonic():
            stopped = "the budget ran out before the thread count was measured; run tune again to measure it"
        else:
            try:
                best, totals = _tune_threads(tuned, record, ckpt.config, preset, device, o, cool, deadline,
                                             thread_counts, tick)
                record.threads[model_id] = {"threads": best, "model": ckpt.description, "us": totals}
                say.note(f"  threads: {best} (the kernels of a decode step / a prefill chunk: " + ", ".join(
                    f"{t}: {v['decode_us']:.0f} / {v['prefill_us']:.0f} us" for t, v in totals.items()) + ")")
            except _OutOfBudget:
                stopped = "the budget ran out while measuring the thread count; run tune again to measure it"
    record.complete = (stopped is None and all(s.key in record.kernels for s in shapes)
                       and (model_id in record.threads or not thread_counts))
    record.notes = [stopped] if stopped else []
    record.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    elapsed = time.monotonic() - start
    record.budget_s, record.elapsed_s = o.budget_s, round(elapsed, 2)
    record.write(path)
    if out is not None:
        record.write(out)
    say.step(f"tune: {len(record.kernels)} shapes in the record, {elapsed:.0f} s of {o.budget_s:.0f} s"
             + (f"; stopped early: {stopped}" if stopped else ""))
    return record, path


# the probe's name for the library a GPU API needs on the device (runtime/probe.GPU_PATHS); CUDA and
# Metal are not probed: their runner says so itself when the device lacks them
_PROBED_API = {"opencl": ("opencl", "OpenCL", "libOpenCL.so"), "webgpu": ("vulkan", "Vulkan", "libvulkan.so")}


def _check_gpu_api(preset, device, probe: dict) -> None:
    """A GPU target's device must have the API's library: else one line, before anything is built."""
    if preset.gpu is None or preset.gpu.api not in _PROBED_API:
        return
    probed, name, lib = _PROBED_API[preset.gpu.api]
    if probed not in (probe.get("gpu_apis") or {}):
        raise EdgesmithError(f"device '{device.name}' has no {name} ({lib} not found there), which target "
                             f"{preset.name} runs on; install its {name} driver, or tune a device of another target")


class _OutOfBudget(Exception):
    pass


THREAD_ROUNDS = 3


def _thread_counts(cores: int) -> list[int]:
    """Thread counts worth timing: 1, 2, 4, ... and half and all of the cores (the runner's default)."""
    counts = {c for c in (1, 2, 4, 8, cores // 2, cores) if 1 <= c <= cores}
    return sorted(counts)


def _tune_threads(tuned, record, cfg, preset, device, o: TuneOptions, cool, deadline: float, counts, tick):
    """(best thread count, {count: {decode_us, prefill_us}}): the model's kernels with their chosen
    params, a decode step's (each weighted by the layers that run it) and a prefill chunk's, timed
    at each count. The score is the two relative to all cores (the runner's default) added, so a
    count that speeds decode but slows prefill as much does not win; all cores wins ties."""
    from edgesmith.compiler.lowering.tune_library import arg_specs, build_library
    from edgesmith.compiler.tuning import params_from_dict
    from edgesmith.targets.cache import cache_root

    funcs, labels = [], []  # labels: (label, function, phase, weight)
    for i, s in enumerate(tuned):
        name = f"k{i}"
        funcs.append((name, s.key, params_from_dict(parse_key(s.key)["kind"], record.kernels[s.key]["params"]),
                      s.quant))
        weight = sum(1 if layer == "lm_head" else cfg.num_hidden_layers for layer in s.layers)
        for suffix, spec in arg_specs(s.key, s.quant):
            labels.append((name + suffix, name, s.phase, weight, spec))
    folder = cache_root() / "tuning" / "candidates" / f"edgesmith-tune-{preset.name}"
    bundle = build_library(funcs, preset, folder, "edgesmith tune: the model's kernels for the thread count")
    # Thread counts in alternating rounds (a busy spell of a shared machine falls on all of them),
    # each count's totals the medians of its rounds.
    rounds: dict[int, dict[str, list[float]]] = {t: {"decode": [], "prefill": []} for t in counts}
    for r in range(THREAD_ROUNDS):
        for t in counts:
            args = ["kernelbench", "--threads", t, "-r", o.reps, "--warmup", o.warmup, "--min-time", o.min_time]
            for label, name, _, _, spec in labels:
                args += ["--fn", f"{label}/{name}={spec}"]
            times = {line["fn"]: line["median_s"] for line in _run(bundle, device, args, deadline, cool) if "fn" in line}
            for phase in ("decode", "prefill"):
                rounds[t][phase].append(sum(w * times[label] * 1e6 for label, _, ph, w, _ in labels if ph == phase))
            if r == THREAD_ROUNDS - 1:
                tick()
    totals = {t: {ph: round(statistics.median(v), 1) for ph, v in phases.items()} for t, phases in rounds.items()}
    default = max(counts)

    def score(t):
        return sum(totals[t][ph] / totals[default][ph] for ph in ("decode", "prefill") if totals[default][ph])

    best = min(counts, key=score)
    if score(best) > score(default) * (1 - o.tie_margin):
        best = default
    return best, {str(t): {f"{ph}_us": us for ph, us in v.items()} for t, v in totals.items()}


def _run(bundle, device, args, deadline: float, cool, on_line=None) -> list[dict]:
    """`runner ARGS` on the candidates' bundle within what is left of the budget."""
    from edgesmith.runtime.session import RunnerSession
    from edgesmith.runtime.transports.base import DeviceTimeout

    left = deadline - time.monotonic()
    if left <= 1:
        raise _OutOfBudget
    if cool is not None:
        args = [*args, "--cool-below", f"{cool:.1f}", "--cool-timeout", f"{max(1.0, min(60.0, left / 4)):.0f}"]
    try:
        with RunnerSession(bundle, device, timeout=left) as session:
            return session.run(args, on_line=on_line)
    except DeviceTimeout:
        raise _OutOfBudget from None
    except EdgesmithError:
        if time.monotonic() >= deadline - 1:
            raise _OutOfBudget from None
        raise


class _Estimate:
    """Seconds a shape will take, from the shapes measured so far (per candidate, per kind)."""

    PRIOR = {"gemv": (1.0, 0.5), "gemv_i8": (1.0, 0.5), "gemm": (3.0, 1.0), "gemm_i8": (2.0, 1.0),
             "attn_prefill": (3.0, 2.0), "gemv_gpu": (1.0, 0.5)}

    def __init__(self):
        self.seen: dict[str, tuple[float, float]] = {}

    def add(self, key: str, n: int, build_s: float, run_s: float) -> None:
        kind = parse_key(key)["kind"]
        self.seen[kind] = (build_s / n, run_s / n)

    def threads_s(self, shapes: int) -> float:
        """One more thread count: THREAD_ROUNDS runs of every kernel of the model (built once)."""
        run = max((r for _, r in self.seen.values()), default=0.5)
        return THREAD_ROUNDS * shapes * run + 1.0

    def seconds(self, key: str, n: int, o: TuneOptions) -> float:
        kind = parse_key(key)["kind"]
        build, run = self.seen.get(kind) or self.PRIOR[kind]
        return n * (build + max(run, (o.reps + o.warmup + 1) * o.min_time))


def _cached(path: Path, fp: dict, target: str) -> TuningRecord | None:
    if not path.is_file():
        return None
    try:
        record = TuningRecord.read(path)
    except EdgesmithError:
        return None  # a damaged cache entry is measured again, not an error
    return record if record.fingerprint == fp and record.target == target else None


def _tune_shape(shape, preset, device, o: TuneOptions, cool, deadline: float, tick):
    from edgesmith.compiler.lowering.tune_library import Candidate, arg_specs, build_candidates
    from edgesmith.targets.cache import cache_root

    kind = parse_key(shape.key)["kind"]
    default = KINDS[kind]()
    candidates = [Candidate(f"c{i}", p) for i, p in enumerate(space(shape.key))]
    t0 = time.monotonic()
    # One folder name per target: a push sends only the library that changed, not the runner again.
    folder = cache_root() / "tuning" / "candidates" / f"edgesmith-tune-{preset.name}"
    bundle = build_candidates(shape.key, candidates, shape.quant, preset, folder)
    build_s = time.monotonic() - t0
    specs = arg_specs(shape.key, shape.quant)
    args = ["kernelbench", "-r", o.reps, "--warmup", o.warmup, "--min-time", o.min_time]
    for c in candidates:
        for suffix, spec in specs:
            args += ["--fn", f"{c.name}{suffix}/{c.name}={spec}"]
    t1 = time.monotonic()
    try:
        lines = _run(bundle, device, args, deadline, cool,
                     on_line=lambda line: tick() if "fn" in line and line["fn"].endswith(specs[-1][0]) else None)
    except _OutOfBudget:
        raise
    except EdgesmithError as err:
        raise EdgesmithError(f"tuning {shape.key}: {err}") from None
    times = {line["fn"]: line for line in lines if "fn" in line}
    # a candidate's time: summed over its argument sets (attention: its lengths)
    results = [{"params": c.params.__dict__,
                "median_us": round(sum(times[c.name + sfx]["median_s"] for sfx, _ in specs) * 1e6, 3),
                "rsd": max(times[c.name + sfx]["rsd"] for sfx, _ in specs)} for c in candidates]
    default_us = next(r["median_us"] for r, c in zip(results, candidates) if c.params == default)
    best = min(results, key=lambda r: r["median_us"])
    confirm = None
    if best["median_us"] < default_us * (1 - o.tie_margin):
        # A noisy machine can make any candidate look best once: the winner and the default are
        # timed again, alone, in alternating rounds; the winner stays only if it wins again.
        winner = next(c for r, c in zip(results, candidates) if r is best)
        confirm = _time(bundle, device, o, cool, deadline, specs, [winner, next(c for c in candidates
                                                                                if c.params == default)])
        if confirm[0] >= confirm[1] * (1 - o.tie_margin):
            best = None
        confirm = {"winner_us": round(confirm[0], 3), "default_us": round(confirm[1], 3)}
    else:
        best = None
    if best is None:  # within the noise: keep the default
        best = next(r for r, c in zip(results, candidates) if c.params == default)
    entry = {"params": best["params"], "median_us": best["median_us"], "default_us": default_us,
             "layers": list(shape.layers), "phase": shape.phase, "candidates": results}
    if confirm is not None:
        entry["confirm"] = confirm
    return entry, build_s, time.monotonic() - t1


def _time(bundle, device, o: TuneOptions, cool, deadline: float, specs, candidates) -> list[float]:
    """Each candidate's median in us (summed over its argument sets), timed together."""
    args = ["kernelbench", "-r", o.reps, "--warmup", o.warmup, "--min-time", o.min_time]
    for c in candidates:
        for suffix, spec in specs:
            args += ["--fn", f"{c.name}{suffix}/{c.name}={spec}"]
    times = {line["fn"]: line["median_s"] for line in _run(bundle, device, args, deadline, cool) if "fn" in line}
    return [sum(times[c.name + sfx] for sfx, _ in specs) * 1e6 for c in candidates]


def _summary(entry: dict) -> str:
    gain = entry["default_us"] / entry["median_us"] if entry["median_us"] else 1.0
    params = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
    line = f"{params}: {entry['median_us']:.1f} us (default {entry['default_us']:.1f} us, x{gain:.2f})"
    confirm = entry.get("confirm")
    if confirm:
        kept = "kept" if entry["median_us"] < entry["default_us"] else "not confirmed: the default stays"
        line += f"; timed again {confirm['winner_us']:.1f} vs {confirm['default_us']:.1f} us, {kept}"
    return line
