"""Time and peak memory of one `edgesmith compile`, in a child process so its peak RSS is its own.

    python bench/compile_cost.py [--model random:phi-3-mini-4k] [--quant q4f16] [--target host]

Prints a table and writes bench/out/compile_cost.json. Conversion is streamed tensor by tensor,
so peak RSS should sit near the largest tensor (the 32064 x 3072 embedding: 394 MB in float32),
not the model (15 GB in float32).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k")
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("--target", default="host")
    ap.add_argument("--out", type=Path, default=Path("bench/out/compile_cost.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesmith-compile-cost-") as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgesmith", "compile", args.model, "--quant", args.quant,
                        "--target", args.target, "-o", str(Path(tmp) / "b")], check=True)
        wall = time.perf_counter() - t
        from edgesmith.compiler.bundle.folder import read_manifest

        manifest = read_manifest(Path(tmp) / "b")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row = {"model": args.model, "quant": args.quant, "target": args.target, "wall_s": round(wall, 1),
           "convert_s": manifest.build.convert_s, "compile_s": manifest.build.compile_s,
           "peak_rss_mb": round(peak_mb), "weights_mb": round(manifest.weight_bytes / 2**20)}
    print(table([row], [(k, k) for k in row]))
    write_json(args.out, dict(row, date=time.strftime("%Y-%m-%d")))


if __name__ == "__main__":
    main()
