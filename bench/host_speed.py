"""Prefill and decode tok/s of edgesmith bundles on this host, per quantization.

    python bench/host_speed.py [--model random:phi-3-mini-4k:layers=4] [--quants q4f16i8,q4f16,q4f32,q0f32]
                               [-p 128] [-n 128] [-r 5] [--out bench/out/host_speed.json]

Compiles each bundle (cached under bench/out/bundles by model+quant), then through the Python
engine: one warm-up generation, then r repetitions of (prefill of p random tokens, n decode
steps); prints the median with min and max, and writes the samples as JSON.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, summary, table, write_json  # noqa: E402

from edgesmith.runtime.engine import Engine  # noqa: E402


def run_one(bundle: Path, prompt_len: int, new_tokens: int, reps: int) -> dict:
    eng = Engine(bundle)
    vocab = eng.config.vocab_size
    prompt = np.random.default_rng(0).integers(0, vocab, prompt_len).tolist()
    eng.generate(prompt, 8)  # warm-up
    pre, dec = [], []
    for _ in range(reps):
        g = eng.generate(prompt, new_tokens)
        pre.append(prompt_len / g.prefill_s)
        dec.append((new_tokens - 1) / g.decode_s)
    return {"prefill_tok_s": summary(pre), "decode_tok_s": summary(dec), "weight_bytes": eng.manifest.weight_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k:layers=4")
    ap.add_argument("--quants", default="q4f16i8,q4f16,q4f32,q0f32")
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--new-tokens", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/out/host_speed.json"))
    ap.add_argument("--rebuild", action="store_true", help="compile even if a cached bundle exists")
    args = ap.parse_args()

    rows, results = [], []
    for quant in args.quants.split(","):
        bundle = cached_bundle(args.model, quant, rebuild=args.rebuild)
        r = run_one(bundle, args.prompt, args.new_tokens, args.reps)
        r.update(quant=quant, model=args.model)
        results.append(r)
        rows.append({
            "quant": quant,
            "prefill": r["prefill_tok_s"]["median"], "pmin": r["prefill_tok_s"]["min"], "pmax": r["prefill_tok_s"]["max"],
            "decode": r["decode_tok_s"]["median"], "dmin": r["decode_tok_s"]["min"], "dmax": r["decode_tok_s"]["max"],
        })
    print(f"\n{args.model}, prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.reps} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores; the roofline is in bench/peers.py)\n")
    print(table(rows, [("quant", "quant"), ("prefill", "prefill tok/s"), ("pmin", "min"), ("pmax", "max"),
                       ("decode", "decode tok/s"), ("dmin", "min"), ("dmax", "max")]))
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "host": platform.node(),
                          "prompt": args.prompt, "new_tokens": args.new_tokens, "reps": args.reps, "results": results})


if __name__ == "__main__":
    main()
