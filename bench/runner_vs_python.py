"""The C++ runner against the Python path on the same bundle and work, side by side.

    python bench/runner_vs_python.py [--model random:phi-3-mini-4k:layers=2] [--quant q4f16] [-p 128] [-n 64] [-r 5]

Alternates the two (runner, python, runner, python, ...) so drift on this shared machine hits
both alike; prints median prefill/decode tok/s of each and the ratio; writes JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, summary, table, write_json  # noqa: E402

from edgesmith.runtime.engine import Engine  # noqa: E402
from edgesmith.runtime.session import run_runner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k:layers=2")
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--new-tokens", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/out/runner_vs_python.json"))
    args = ap.parse_args()

    bundle = cached_bundle(args.model, args.quant)
    eng = Engine(bundle)
    vocab = eng.config.vocab_size
    samples = {k: {"prefill": [], "decode": []} for k in ("runner", "python")}
    eng.generate([1] * args.prompt, 4)  # warm-up
    for _ in range(args.reps):
        lines = run_runner(bundle, ["bench", str(bundle), "-p", str(args.prompt), "-n", str(args.new_tokens),
                                    "--warmup", "1", "-r", "1"], timeout=3600)
        rep = [d for d in lines if "rep" in d][-1]
        samples["runner"]["prefill"].append(rep["prefill_tok_s"])
        samples["runner"]["decode"].append(rep["decode_tok_s"])
        prompt = np.random.default_rng(0).integers(0, vocab, args.prompt).tolist()
        g = eng.generate(prompt, args.new_tokens + 1)  # +1: the runner's n counts decode steps
        samples["python"]["prefill"].append(args.prompt / g.prefill_s)
        samples["python"]["decode"].append(args.new_tokens / g.decode_s)
    rows = []
    for k, s in samples.items():
        rows.append({"path": k, "prefill": statistics.median(s["prefill"]), "decode": statistics.median(s["decode"])})
    rows.append({"path": "runner / python", "prefill": rows[0]["prefill"] / rows[1]["prefill"],
                 "decode": rows[0]["decode"] / rows[1]["decode"]})
    print(f"\n{args.model} {args.quant}, prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.reps}\n")
    print(table(rows, [("path", "path"), ("prefill", "prefill tok/s"), ("decode", "decode tok/s")]))
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "model": args.model, "quant": args.quant,
                          "samples": {k: {m: summary(v) for m, v in s.items()} for k, s in samples.items()}})


if __name__ == "__main__":
    main()
