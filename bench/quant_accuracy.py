"""What each quantization costs in accuracy, as `compile --eval` measures it: top-1 agreement and
mean KL against a q0f32 build of the same checkpoint, teacher-forced over the same 32 positions.

    python bench/quant_accuracy.py [--models random:tiny,random:phi-3-mini-4k:layers=2] [--quants q4f16,q4f16i8,q4f32]

Prints a table, writes bench/out/quant_accuracy.json. On random weights the logits are nearly
flat, so top-1 is noisy there; mean KL is the steadier number. These are the numbers `--eval`'s
guidance (runtime/evaluate.py TYPICAL) quotes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import table, write_json  # noqa: E402

from edgesmith.compiler.build import compile_bundle  # noqa: E402
from edgesmith.compiler.bundle.folder import read_manifest  # noqa: E402
from edgesmith.runtime.evaluate import EVAL_POSITIONS, compare_logits, teacher_forced_logits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="random:tiny,random:phi-3-mini-4k:layers=2,random:phi-4-mini:layers=2")
    ap.add_argument("--quants", default="q4f16,q4f16i8,q4f32")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "quant_accuracy.json")
    args = ap.parse_args()
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-acc-") as tmp:
        for i, model in enumerate(args.models.split(",")):
            # one folder per bundle: dlopen caches a library by path, so a second model.so at the
            # same path in this process would silently be the first one
            ref_bundle = compile_bundle(model, "q0f32", "host", Path(tmp) / f"{i}-ref")
            vocab = read_manifest(ref_bundle).config.vocab_size
            ids = np.random.default_rng(0).integers(0, vocab, EVAL_POSITIONS).tolist()
            ref = teacher_forced_logits(ref_bundle, ids)
            for quant in args.quants.split(","):
                t0 = time.perf_counter()
                b = compile_bundle(model, quant, "host", Path(tmp) / f"{i}-{quant}")
                report = compare_logits(ref, teacher_forced_logits(b, ids))
                rows.append({"model": model, "quant": quant, "top1": 100 * report["top1_agreement"],
                             "mean_kl": report["mean_kl"], "max_abs_diff": report["max_abs_diff"],
                             "seconds": time.perf_counter() - t0})
                print(f"{model} {quant}: top-1 {rows[-1]['top1']:.1f}%, mean KL {report['mean_kl']:.4f}",
                      file=sys.stderr)
    print(table(rows, [("model", "model"), ("quant", "quant"), ("top1", "top-1 %"), ("mean_kl", "mean KL (nats)"),
                       ("max_abs_diff", "max |logit diff|")]))
    write_json(args.out, {"positions": EVAL_POSITIONS, "rows": rows,
                          "date": time.strftime("%Y-%m-%d"), "machine": __import__("platform").node()})


if __name__ == "__main__":
    main()
