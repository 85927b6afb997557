"""Decode speed and peak memory at long contexts, float16 KV cache against float32, side by side.

    python bench/long_context.py [--model random:phi-3-mini-128k:layers=4] [--quant q4f16]
                                 [--contexts 512,4096,16384] [-n 32] [-r 2] [--out bench/out/long_context.json]

One host bundle per KV dtype, both compiled for the largest context (cached under
bench/out/bundles). For every context C, in rounds that alternate the two bundles (so machine
noise hits both alike): the bundle's C++ runner, a fresh process per run, sizes its cache for C
(`--context C`), prefills C - n random tokens and decodes n greedily (`runner bench`, no
warm-up: a prefill of C - n tokens warms it). Reported per (C, dtype): the median decode tok/s
over the rounds with min and max, the runner's peak RSS (VmHWM, the largest of the rounds),
and the KV cache's own bytes at C.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import summary, table, write_json  # noqa: E402

from edgesmith.compiler.bundle import read_manifest  # noqa: E402
from edgesmith.runtime.profile.fit import kv_cache_bytes  # noqa: E402
from edgesmith.runtime.runner_exec import run_runner  # noqa: E402

DTYPES = ("float16", "float32")


def bundle_for(out_dir: Path, model: str, quant: str, kv_dtype: str, context: int, rebuild: bool) -> Path:
    from edgesmith.compiler.build import compile_bundle

    name = f"{model.replace(':', '_').replace('=', '')}-{quant}-host-kv{kv_dtype}-ctx{context}"
    bundle = out_dir / "bundles" / name
    if rebuild or not (bundle / "manifest.json").exists():
        t = time.perf_counter()
        compile_bundle(model, quant, "host", bundle, context=context, kv_dtype=kv_dtype)
        print(f"compiled {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return bundle


def one_run(bundle: Path, context: int, new_tokens: int, seed: int) -> dict:
    args = ["bench", str(bundle), "-p", str(context - new_tokens), "-n", str(new_tokens), "--warmup", "0",
            "-r", "1", "--context", str(context), "--seed", str(seed), "--no-verify"]
    lines = run_runner(bundle, args, timeout=3600)
    rep = next(l for l in lines if "rep" in l)
    summ = next(l for l in lines if l.get("summary"))
    return {"decode_tok_s": rep["decode_tok_s"], "prefill_tok_s": rep["prefill_tok_s"],
            "peak_rss_kb": summ["peak_rss_kb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-128k:layers=4")
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("--contexts", default="512,4096,16384")
    ap.add_argument("-n", "--new-tokens", type=int, default=32, help="decode steps per run (ending at the context)")
    ap.add_argument("-r", "--rounds", type=int, default=2, help="runs per (context, dtype), interleaved")
    ap.add_argument("--out", type=Path, default=Path("bench/out/long_context.json"))
    ap.add_argument("--rebuild", action="store_true", help="compile even if cached bundles exist")
    args = ap.parse_args()

    contexts = [int(c) for c in args.contexts.split(",")]
    bundles = {d: bundle_for(args.out.parent, args.model, args.quant, d, max(contexts), args.rebuild) for d in DTYPES}
    manifests = {d: read_manifest(b) for d, b in bundles.items()}
    samples = {(c, d): [] for c in contexts for d in DTYPES}
    for c in contexts:
        for r in range(args.rounds):
            for d in (DTYPES if r % 2 == 0 else DTYPES[::-1]):  # alternate who goes first
                run = one_run(bundles[d], c, args.new_tokens, seed=r)
                samples[(c, d)].append(run)
                print(f"context {c} {d} round {r}: decode {run['decode_tok_s']:.2f} tok/s, "
                      f"peak RSS {run['peak_rss_kb'] / 1024:.0f} MiB", file=sys.stderr, flush=True)

    rows, results = [], []
    for c in contexts:
        by = {}
        for d in DTYPES:
            runs = samples[(c, d)]
            dec = summary([x["decode_tok_s"] for x in runs])
            res = {"context": c, "kv_dtype": d, "decode_tok_s": dec,
                   "prefill_tok_s": summary([x["prefill_tok_s"] for x in runs]),
                   "peak_rss_bytes": max(x["peak_rss_kb"] for x in runs) * 1024,
                   "kv_cache_bytes": kv_cache_bytes(manifests[d], c)}
            results.append(res)
            by[d] = res
            rows.append({"context": c, "kv": d, "decode": dec["median"], "dmin": dec["min"], "dmax": dec["max"],
                         "rss": f"{res['peak_rss_bytes'] / 2**20:.0f} MiB",
                         "kv_bytes": f"{res['kv_cache_bytes'] / 2**20:.0f} MiB"})
        rows.append({"context": c, "kv": "f16 / f32",
                     "decode": by["float16"]["decode_tok_s"]["median"] / by["float32"]["decode_tok_s"]["median"],
                     "rss": f"{by['float16']['peak_rss_bytes'] / by['float32']['peak_rss_bytes']:.2f}x"})
    print(f"\n{args.model} {args.quant}, host, decode of {args.new_tokens} tokens ending at the context, "
          f"{args.rounds} rounds ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n")
    print(table(rows, [("context", "context"), ("kv", "KV cache"), ("decode", "decode tok/s"), ("dmin", "min"),
                       ("dmax", "max"), ("rss", "peak RSS"), ("kv_bytes", "KV cache bytes")]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "commit": commit,
                          "model": args.model, "quant": args.quant, "new_tokens": args.new_tokens,
                          "rounds": args.rounds, "results": results})


if __name__ == "__main__":
    main()
