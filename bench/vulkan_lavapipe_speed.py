"""Vulkan bundles on lavapipe (Mesa's Vulkan on this CPU) beside the host bundle of the same
weights: what the Vulkan path costs when the "GPU" is the CPU. Not a GPU number (lavapipe runs a
workgroup's invocations in SIMD batches, one workgroup after another per thread): it says the path
runs whole models, and how far from the host build it is.

  python bench/vulkan_lavapipe_speed.py [--model random:phi-3-mini-4k:layers=2] [--rounds 2]

Compiles host q4f32 and linux-vulkan q4f32 and q4f16 bundles, then `runner bench -p 32 -n 16 -r 2`
(after a warm-up) of each in turn, --rounds times; prints a table of every round and writes
bench/results/vulkan_lavapipe.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.gpu_runner import run_runner  # noqa: E402

BENCH = ["-p", "32", "-n", "16", "--warmup", "1", "-r", "2"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:phi-3-mini-4k:layers=2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="dist/vulkan-lavapipe-speed")
    args = p.parse_args()
    from edgesmith.compiler.build import compile_bundle

    out = Path(args.out)
    bundles = {}
    for name, quant, target in (("host q4f32", "q4f32", "host"), ("linux-vulkan q4f32", "q4f32", "linux-vulkan"),
                                ("linux-vulkan q4f16", "q4f16", "linux-vulkan")):
        dest = out / f"{quant}-{target}"
        bundles[name] = dest if (dest / "manifest.json").is_file() else compile_bundle(args.model, quant, target, dest)
    rounds = []
    for r in range(args.rounds):
        for name, bundle in bundles.items():
            s = next(l for l in run_runner(bundle, ["bench", *BENCH], timeout=3600) if l.get("summary"))
            rounds.append({"round": r + 1, "bundle": name, "prefill_tok_s": s["prefill_tok_s"],
                           "decode_tok_s": s["decode_tok_s"]})
            print(f"round {r + 1} {name}: prefill {s['prefill_tok_s']:.1f}, decode {s['decode_tok_s']:.2f} tok/s",
                  flush=True)
    load = open("/proc/loadavg").read().split()[:3]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n| bundle | prefill tok/s (rounds) | decode tok/s (rounds) |\n| --- | --- | --- |")
    for name in bundles:
        rows = [x for x in rounds if x["bundle"] == name]
        pre = ", ".join(format(x["prefill_tok_s"], ".1f") for x in rows)
        dec = ", ".join(format(x["decode_tok_s"], ".2f") for x in rows)
        print(f"| {name} | {pre} | {dec} |")
    result = {"date": datetime.date.today().isoformat(), "commit": commit, "model": args.model, "bench": BENCH,
              "load_average_after": load, "rounds": rounds}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/vulkan_lavapipe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"load average after: {' '.join(load)}; bench/results/vulkan_lavapipe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
