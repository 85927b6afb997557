"""Peak memory of a sliding-window model at 1x and at 8x its window, measured by `edgesmith profile`.

    python bench/window_memory.py [--model random:phi-3-mini-4k:layers=2] [--quant q4f32]
                                  [--multiples 1,8] [--out bench/results/window_memory.json]

One host bundle of the model (Phi-3-mini-4k: sliding_window 2047), compiled for the longest
context asked (past max_position_embeddings where its RoPE allows: compiler/context.py), cached
under the package's bundle cache. For each multiple m, `profile` runs the bundle's runner once
(no warm-up, one repetition) with a prompt of m x W - 4 tokens and 4 decoded, its cache sized for
m x W tokens: the record's peak RSS (VmHWM of that runner process) and the KV bytes the fit check
counts. Past the window the cache slides and holds the window's pages only, so the peak stays
flat; the row "without the window" is the fit check's KV bytes for the same context had every
page stayed (what the cache held before sliding windows were bounded), for scale.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, table, write_json  # noqa: E402

from edgesmith.compiler.bundle.folder import read_manifest  # noqa: E402
from edgesmith.runtime.profile.fit import kv_bytes_per_token  # noqa: E402
from edgesmith.runtime.profile.profiler import ProfileOptions, profile_bundle  # noqa: E402

MiB = 2**20
GEN = 4


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k:layers=2")
    ap.add_argument("--quant", default="q4f32")
    ap.add_argument("--multiples", default="1,8")
    ap.add_argument("--out", type=Path, default=Path("bench/results/window_memory.json"))
    args = ap.parse_args(argv)
    multiples = [int(m) for m in args.multiples.split(",")]

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint  # the window, before compiling

    window = open_checkpoint(args.model).config.sliding_window
    if not window:
        raise SystemExit(f"{args.model} has no sliding window")
    longest = max(multiples) * window
    context = -(-longest // 16) * 16
    say(f"compiling {args.model} {args.quant} for host, --context {context} (window {window})")
    bundle = cached_bundle(args.model, args.quant, "host", context=context)
    manifest = read_manifest(bundle)
    rows = []
    for m in multiples:
        c = m * window
        say(f"profile: context {c} ({m}x the window), -p {c - GEN} -n {GEN}")
        t0 = time.perf_counter()
        (rec,) = profile_bundle(bundle, None, ProfileOptions(prompts=[c - GEN], gens=[GEN], warmup=0, reps=1,
                                                             max_reps=1, kernels_top=0, membw_mb=8,
                                                             cool_below=None, context=c, timeout=3600))
        mem = rec["memory"]
        rows.append({"multiple": m, "context": c, "peak_rss_mib": mem["peak_rss_bytes"] / MiB,
                     "kv_cache_mib": mem["kv_cache_bytes"] / MiB,
                     "kv_without_window_mib": kv_bytes_per_token(manifest) * c / MiB,
                     "seconds": time.perf_counter() - t0})
    base = rows[0]["peak_rss_mib"]
    for r in rows:
        r["rss_vs_first"] = r["peak_rss_mib"] / base
    print(table(rows, [("multiple", "x window"), ("context", "context"), ("peak_rss_mib", "peak RSS MiB"),
                       ("rss_vs_first", f"vs {rows[0]['multiple']}x"), ("kv_cache_mib", "KV cache MiB (fit)"),
                       ("kv_without_window_mib", "KV MiB without the window"), ("seconds", "s")]))
    write_json(args.out, {"model": args.model, "quant": args.quant, "window": window, "compiled_context": context,
                          "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
