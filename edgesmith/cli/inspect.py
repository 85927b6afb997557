"""`edgesmith inspect`: what a bundle holds (runtime/inspect_bundle.py)."""
from __future__ import annotations

from pathlib import Path

from edgesmith.cli.args import format_option


def cmd_inspect(args) -> int:
    from edgesmith.runtime import inspect_bundle

    if args.kernel:
        print(inspect_bundle.kernel_source(args.bundle, args.kernel), end="")
    elif args.kernels:
        print(inspect_bundle.list_kernels(args.bundle))
    else:
        print(inspect_bundle.describe(args.bundle, as_json=args.json))
    return 0



def add_parser(sub) -> None:
    i = sub.add_parser("inspect", help="what a bundle holds: model, quantization, target, files, accuracy")
    i.add_argument("bundle", type=Path, help="a bundle folder (what `edgesmith compile -o` wrote)")
    format_option(i, ("text", "json"), "the bundle's summary; json: the whole manifest summary as one object")
    i.add_argument("--kernels", action="store_true", help="list the GPU kernels (GPU targets)")
    i.add_argument("--kernel", metavar="NAME", help="print one GPU kernel's source")
    i.set_defaults(func=cmd_inspect)
