"""`edgesmith quants`: the quantizations of the registry."""
from __future__ import annotations

import json

from edgesmith.cli.args import format_option


def cmd_quants(args) -> int:
    from edgesmith.compiler.quantization.registry import QUANTIZATIONS

    rows = [{"name": q.name, "weights": f"int{q.weight_bits}, groups of {q.group_size}" if q.quantized
             else q.storage_dtype, "scales": q.storage_dtype if q.quantized else "-",
             "activations": "int8 where the CPU has int8 dot products" if q.int8_activations else "float32",
             "description": q.description} for q in QUANTIZATIONS.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = ("name", "weights", "scales", "activations")
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(),  # noqa: B905
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(cols, widths)).rstrip() for r in rows]  # noqa: B905
    lines += [""] + [f"{r['name']}: {r['description']}" for r in rows]
    lines += ["", "`edgesmith targets` shows each target's default."]
    print("\n".join(lines))
    return 0



def add_parser(sub) -> None:
    qs = sub.add_parser("quants", help="list quantizations (--quant): weights, scales, activations")
    format_option(qs, ("table", "json"), "the quantizations")
    qs.set_defaults(func=cmd_quants)
