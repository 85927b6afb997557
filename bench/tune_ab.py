"""`edgesmith tune` on this host, then the tuned bundle against the default one, A/B alternating.

    python bench/tune_ab.py [--model random:phi-3-mini-4k:layers=2] [--quant Q] [--budget 8]
                            [-p 128] [-n 64] [--rounds 10] [--threads N] [--target host]
                            [--out bench/results/tune_ab.json]

1. tune the model's kernels on the host within --budget minutes (runtime/tune/: candidates timed
   by `runner kernelbench`), the record written next to the JSON; --target a GPU preset of this
   machine (linux-opencl on PoCL or a real GPU's OpenCL, cuda, linux-vulkan) tunes its decode GEMVs
   instead, on that GPU;
2. compile the model twice, with the defaults and with the record (bundles cached under
   bench/out/tune_ab by model, quant and the record's choices);
3. per round, the runner's `bench` (one warm-up, one timed prefill of p tokens + n decode steps)
   of each bundle, the order alternating (AB, BA, ...), so that a noisy machine's slow spells fall
   on both; medians over the rounds, and the tuned/default ratio of the medians.
Prints a table; writes the samples, the ratios and the record's choices as JSON.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, summary, table, write_json  # noqa: E402

from edgesmith.compiler.inputs.checkpoint import default_quant, open_checkpoint  # noqa: E402
from edgesmith.compiler.tuning import TuningRecord, model_shape_id  # noqa: E402
from edgesmith.runtime.devices import Device  # noqa: E402
from edgesmith.runtime.session import run_bundle  # noqa: E402
from edgesmith.runtime.tune.tuner import LineProgress, TuneOptions, tune_model  # noqa: E402
from edgesmith.targets.cache import cache_root  # noqa: E402


def bundle(model: str, quant: str, record: TuningRecord | None, source: str, target: str = "host") -> Path:
    """The default (record None) or the tuned bundle, from the package's bundle cache."""
    if record is None:
        return cached_bundle(model, quant, target)
    return cached_bundle(model, quant, target, tuning=record, tuning_source=source)


def _model_keys(model: str, quant: str, target: str = "host") -> set[str]:
    import tvm
    from edgesmith.compiler.kernels.family import kernel_family
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.runtime.tune.shapes import tunable_shapes
    from edgesmith.targets.presets import get_preset

    from edgesmith.compiler.context import kv_settings

    preset, cfg, q = get_preset(target), open_checkpoint(model).config, get_quantization(quant)
    family = kernel_family(tvm.target.Target(preset.tvm_target()))
    return {s.key for s in tunable_shapes(cfg, q, family, kv_dtype=kv_settings(cfg, preset, quant=q).dtype)}


def bench_once(path: Path, p: int, n: int, threads: int) -> tuple[float, float]:
    extra = ["--threads", threads] if threads else []  # 0: each bundle's own (the tuned one's record)
    lines = run_bundle(None, path, ["bench", "-p", p, "-n", n, "--warmup", 1, "-r", 1, *extra], timeout=1800)
    s = next(line for line in lines if line.get("summary"))
    return s["prefill_tok_s"], s["decode_tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k:layers=2")
    ap.add_argument("--quant", help="default: the host's (as compile)")
    ap.add_argument("--budget", type=float, default=8.0, help="tuning budget in minutes (default 8)")
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="run both bundles with this many threads (default 0: "
                    "each its own; the tuned one the record's count): isolates the kernels' choices")
    ap.add_argument("--restart", action="store_true", help="tune again even if the cache has every shape")
    ap.add_argument("--target", default="host", help="this machine's target to tune and run (default host; a GPU "
                    "preset: its decode GEMVs on this machine's GPU)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/tune_ab.json"))
    args = ap.parse_args()
    quant = args.quant or default_quant(args.model, args.target)[0]

    host = Device(name="host" if args.target == "host" else f"host-{args.target}", transport="local",
                  target=args.target, workdir=str(cache_root() / "devices" / "host"))
    t0 = time.perf_counter()
    record, cached = tune_model(args.model, host, TuneOptions(budget_s=args.budget * 60, quant=quant,
                                                              restart=args.restart), progress=LineProgress(lambda msg: print(msg, file=sys.stderr, flush=True)))
    tune_s = time.perf_counter() - t0
    record_path = args.out.with_name(args.out.stem + "-record.json")
    record.write(record_path)
    mine = _model_keys(args.model, quant, args.target)
    kernels = {k: e for k, e in record.kernels.items() if k in mine}  # the cache may hold other models' shapes
    changed = {k: e["params"] for k, e in kernels.items() if e["median_us"] < e["default_us"]}
    threads = record.threads.get(model_shape_id(open_checkpoint(args.model).config, quant), {}).get("threads")
    print(f"tuned {len(kernels)} shapes in {tune_s:.0f} s ({'complete' if record.complete else 'incomplete'}); "
          f"{len(changed)} differ from the defaults; threads {threads}", file=sys.stderr)

    a = bundle(args.model, quant, None, "", args.target)
    b = bundle(args.model, quant, record, str(record_path), args.target)
    samples = {"default": {"prefill": [], "decode": []}, "tuned": {"prefill": [], "decode": []}}
    for r in range(args.rounds):
        order = [("default", a), ("tuned", b)] if r % 2 == 0 else [("tuned", b), ("default", a)]
        for name, path in order:
            pp, tg = bench_once(path, args.prompt, args.gen, args.threads)
            samples[name]["prefill"].append(pp)
            samples[name]["decode"].append(tg)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} pp {v['prefill'][-1]:.1f} tg {v['decode'][-1]:.2f}" for k, v in samples.items()), file=sys.stderr)

    stats = {k: {ph: summary(v[ph]) for ph in v} for k, v in samples.items()}
    ratio = {ph: stats["tuned"][ph]["median"] / stats["default"][ph]["median"] for ph in ("prefill", "decode")}
    rows = [{"bundle": k, "prefill": stats[k]["prefill"]["median"], "pmin": stats[k]["prefill"]["min"],
             "pmax": stats[k]["prefill"]["max"], "decode": stats[k]["decode"]["median"],
             "dmin": stats[k]["decode"]["min"], "dmax": stats[k]["decode"]["max"]} for k in ("default", "tuned")]
    rows.append({"bundle": "tuned / default", "prefill": ratio["prefill"], "decode": ratio["decode"]})
    print(f"{args.model} {quant} ({args.target}) on {platform.node()}: p {args.prompt}, n {args.gen}, {args.rounds} alternating "
          f"rounds (runner bench, medians); threads: {args.threads or f'default / tuned ({threads})'}")
    print(table(rows, [("bundle", "bundle"), ("prefill", "prefill tok/s"), ("pmin", "min"), ("pmax", "max"),
                       ("decode", "decode tok/s"), ("dmin", "min"), ("dmax", "max")]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_json(args.out, {
        "model": args.model, "quant": quant, "target": args.target, "prompt": args.prompt, "gen": args.gen, "rounds": args.rounds,
        "threads": args.threads or "each bundle's own",
        "host": platform.node(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tune": {"budget_s": args.budget * 60, "seconds": round(tune_s, 1), "complete": record.complete,
                 "notes": record.notes, "record": str(record_path), "cache": str(cached),
                 "changed": changed, "shapes": len(kernels), "threads": threads},
        "kernels": {k: {"params": e["params"], "median_us": e["median_us"], "default_us": e["default_us"],
                        "layers": e.get("layers"), "phase": e.get("phase")} for k, e in kernels.items()},
        "samples": samples, "stats": stats, "ratio_tuned_over_default": ratio,
    })
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
