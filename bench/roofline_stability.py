"""Is the roofline's ceiling steady? The bandwidth probe (`runner membw`, as `profile` runs it) five
times, then `edgesmith profile` of the full-size model twice; prints both tables and the spreads,
writes bench/out/roofline_stability.json. Run it on an idle machine: it measures the machine.

    python bench/roofline_stability.py [--model random:phi-3-mini-4k] [--quant q4f16i8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import cached_bundle, table, write_json  # noqa: E402

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:phi-3-mini-4k")
    ap.add_argument("--quant", default="q4f16i8")
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--profiles", type=int, default=2)
    args = ap.parse_args()
    from edgesmith.runtime.profile.profiler import ProfileOptions, membw_size_mb, profile_bundle

    bundle = cached_bundle(args.model, args.quant)
    from edgesmith.runtime.probe import parse_probe, probe_script

    info = parse_probe(subprocess.run(["sh", "-c", probe_script("/")], capture_output=True, text=True).stdout)
    mb = membw_size_mb(info.get("llc_bytes"), info.get("mem_free_mb", 0) << 20)
    probes = []
    for i in range(args.probes):
        lines = subprocess.run([str(bundle / "bin" / "runner"), "membw", str(bundle), "--mb", str(mb), "-r", "5"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        probes.append(dict(json.loads(lines[-1]), load=round(os.getloadavg()[0], 2)))
        print(f"probe {i + 1}: {probes[-1]['read_gb_s']:.2f} GB/s", file=sys.stderr)
        time.sleep(2)
    profiles = []
    for i in range(args.profiles):
        rec = profile_bundle(bundle, None, ProfileOptions(prompts=[128], gens=[32], reps=3, max_reps=5, kernels_top=0,
                                                          cool_below=None))[0]
        roof = rec["roofline"]
        profiles.append({"run": i + 1, "tg": rec["tg"]["mean"], "read_gb_s": roof["read_gb_s"],
                         "decode_gb_s": roof["decode_gb_s"], "bound": roof["bound"],
                         "ceiling_tok_s": roof["ceiling_tok_s"], "fraction": roof["fraction"],
                         "load": round(os.getloadavg()[0], 2)})
        print(f"profile {i + 1}: tg {rec['tg']['mean']:.2f} tok/s, ceiling {roof['read_gb_s']} GB/s "
              f"({roof['bound']})", file=sys.stderr)
    def spread(xs):
        return (max(xs) - min(xs)) / max(xs) if xs else None

    # the load average beside every number: this measures the machine, and a busy one reads less
    summary = {"probe_spread": spread([p["read_gb_s"] for p in probes]),
               "profile_ceiling_spread": spread([p["read_gb_s"] for p in profiles])}
    print(table([dict(p, run=i + 1) for i, p in enumerate(probes)],
                [("run", "probe"), ("read_gb_s", "best GB/s"), ("median_gb_s", "median GB/s"), ("spread", "passes' spread"),
                 ("mb", "MiB"), ("threads", "threads"), ("load", "load avg (1 min)")]))
    print()
    print(table(profiles, [("run", "profile"), ("tg", "decode tok/s"), ("read_gb_s", "ceiling GB/s"),
                           ("decode_gb_s", "decode GB/s"), ("bound", "bound"), ("fraction", "fraction"),
                           ("load", "load avg (1 min)")]))
    for key, what, n in (("probe_spread", "probe spread over", len(probes)),
                         ("profile_ceiling_spread", "ceiling spread over", len(profiles))):
        if summary[key] is not None:
            print(f"{what} {n} runs: {100 * summary[key]:.1f}%")
    write_json(OUT / "roofline_stability.json", {"model": args.model, "quant": args.quant, "probes": probes,
                                                 "profiles": profiles, **summary, "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
