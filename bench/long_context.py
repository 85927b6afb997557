"""Decode speed and peak memory at long contexts, float16 KV cache against float32, side by side.

    python bench/long_context.py [--model random:phi-3-mini-128k:layers=4] [--quant q4f16]
                                 [--contexts 512,4096,16384] [-n 32] [-r 5] [--out bench/out/long_context.json]

One host bundle per KV dtype, both compiled for the largest context (cached under
bench/out/bundles). For every context C:
- peak memory: each bundle's C++ runner, a fresh process, sizes its cache for C (`--context C`),
  prefills C - n random tokens and decodes n (`runner bench`, no warm-up): its peak RSS (VmHWM)
  and its decode tok/s (one sample);
- decode tok/s: both bundles loaded in this process (the Python engine, the same kernels), one
  engine per (context, dtype), each prefilled once with C - n random tokens; then r rounds, each
  visiting every (context, dtype) in turn (the order reversed every other round), of n greedy
  decode steps ending at C followed by a rewind of those n tokens (TVM's kv_state_popn), so every
  round decodes the same positions. Every row is measured under the same load on a shared
  machine, round by round: the rows compare, and the f16/f32 ratio per round is the number to read.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, summary, table, write_json  # noqa: E402

from edgesmith.compiler.bundle.folder import read_manifest  # noqa: E402
from edgesmith.runtime.engine import Engine  # noqa: E402
from edgesmith.runtime.profile.fit import kv_cache_bytes  # noqa: E402
from edgesmith.runtime.session import run_runner  # noqa: E402

DTYPES = ("float16", "float32")


def runner_run(bundle: Path, context: int, new_tokens: int) -> dict:
    """Peak RSS of the runner holding `context` tokens (and its own decode tok/s)."""
    args = ["bench", str(bundle), "-p", str(context - new_tokens), "-n", str(new_tokens), "--warmup", "0",
            "-r", "1", "--context", str(context), "--no-verify"]
    lines = run_runner(bundle, args, timeout=7200)
    rep = next(l for l in lines if "rep" in l)
    summ = next(l for l in lines if l.get("summary"))
    return {"runner_decode_tok_s": rep["decode_tok_s"], "peak_rss_kb": summ["peak_rss_kb"]}


def decode_rounds(bundles: dict, contexts: list[int], new_tokens: int, rounds: int, say) -> dict:
    """{(context, dtype): decode tok/s per round}, every engine alive, visited in turn each round."""
    vocab = read_manifest(bundles[DTYPES[0]]).config.vocab_size
    engines, first = {}, {}
    for c in contexts:
        prompt = np.random.default_rng(c).integers(0, vocab, c - new_tokens).tolist()
        for d in DTYPES:
            engines[(c, d)] = Engine(bundles[d], context=c, verify=False)
            first[(c, d)] = int(np.argmax(engines[(c, d)].prefill(prompt)))
            say(f"context {c} {d}: prefilled {len(prompt)} tokens")
    keys = list(engines)
    samples = {k: [] for k in keys}
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            eng, tok = engines[k], first[k]
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                tok = int(np.argmax(eng.decode(tok)))
            samples[k].append(new_tokens / (time.perf_counter() - t0))
            eng.rewind(new_tokens)
            say(f"context {k[0]} {k[1]} round {r}: decode {samples[k][-1]:.2f} tok/s")
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-128k:layers=4")
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("--contexts", default="512,4096,16384")
    ap.add_argument("-n", "--new-tokens", type=int, default=32, help="decode steps per round (ending at the context)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="decode rounds per (context, dtype), interleaved")
    ap.add_argument("--out", type=Path, default=Path("bench/out/long_context.json"))
    ap.add_argument("--rebuild", action="store_true", help="compile even if cached bundles exist")
    args = ap.parse_args()

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    contexts = [int(c) for c in args.contexts.split(",")]
    bundles = {d: cached_bundle(args.model, args.quant, rebuild=args.rebuild, context=max(contexts), kv_dtype=d)
               for d in DTYPES}
    manifests = {d: read_manifest(b) for d, b in bundles.items()}
    runs = {}
    for c in contexts:
        for d in DTYPES:
            runs[(c, d)] = runner_run(bundles[d], c, args.new_tokens)
            say(f"context {c} {d}: runner peak RSS {runs[(c, d)]['peak_rss_kb'] / 1024:.0f} MiB, "
                f"decode {runs[(c, d)]['runner_decode_tok_s']:.2f} tok/s")
    samples = decode_rounds(bundles, contexts, args.new_tokens, args.rounds, say)
    rows, results = [], []
    for c in contexts:
        by = {}
        for d in DTYPES:
            dec = summary(samples[(c, d)])
            res = {"context": c, "kv_dtype": d, "decode_tok_s": dec, **runs[(c, d)],
                   "peak_rss_bytes": runs[(c, d)]["peak_rss_kb"] * 1024,
                   "kv_cache_bytes": kv_cache_bytes(manifests[d], c)}
            results.append(res)
            by[d] = res
            rows.append({"context": c, "kv": d, "decode": dec["median"], "dmin": dec["min"], "dmax": dec["max"],
                         "runner": res["runner_decode_tok_s"], "rss": f"{res['peak_rss_bytes'] / 2**20:.0f} MiB",
                         "kv_bytes": f"{res['kv_cache_bytes'] / 2**20:.0f} MiB"})
        ratios = [a / b for a, b in zip(samples[(c, "float16")], samples[(c, "float32")])]
        rows.append({"context": c, "kv": "f16 / f32", "decode": float(np.median(ratios)), "dmin": min(ratios),
                     "dmax": max(ratios),
                     "rss": f"{by['float16']['peak_rss_bytes'] / by['float32']['peak_rss_bytes']:.2f}x",
                     "kv_bytes": f"{by['float16']['kv_cache_bytes'] / by['float32']['kv_cache_bytes']:.2f}x"})
        results.append({"context": c, "f16_over_f32_decode_per_round": ratios})
    print(f"\n{args.model} {args.quant}, host: decode of {args.new_tokens} tokens ending at the context, median of "
          f"{args.rounds} interleaved rounds (Python engine), ratio per round; one runner run per row for peak RSS "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n")
    print(table(rows, [("context", "context"), ("kv", "KV cache"), ("decode", "decode tok/s"), ("dmin", "min"),
                       ("dmax", "max"), ("runner", "runner decode tok/s"), ("rss", "runner peak RSS"),
                       ("kv_bytes", "KV cache bytes")]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "commit": commit,
                          "model": args.model, "quant": args.quant, "new_tokens": args.new_tokens,
                          "rounds": args.rounds, "results": results})


if __name__ == "__main__":
    main()
