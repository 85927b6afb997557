"""`edgesmith tokenizer`: the tokenizers the architectures build once from a registry package for
their `random:` presets (so far the real Phi-3 one; compiler/models/phi3/tokenizer.py)."""
from __future__ import annotations

import sys


def cmd_tokenizer(args) -> int:
    from edgesmith.compiler.models import tokenizer_builders

    for builder in tokenizer_builders():
        if args.action == "fetch":
            builder.fetch(say=lambda msg: print(msg, file=sys.stderr, flush=True), force=args.force)
            continue
        folder = builder.cached()
        if folder is None:
            from edgesmith.errors import EdgesmithError
            raise EdgesmithError(builder.missing_message("`random:` bundles' text (--prompt, --chat)"))
        print(builder.summary(folder))
    return 0


def add_parser(sub) -> None:
    tk = sub.add_parser("tokenizer", help="build the real Phi-3 tokenizer once (from a registry package) for "
                        "random: bundles, or show where it is")
    tk.add_argument("action", choices=["fetch", "show"], help="fetch: download llama-cpp-python's source with pip, "
                    "convert its Phi-3 vocabulary into tokenizer.json in the cache; show: where it is")
    tk.add_argument("--force", action="store_true", help="fetch again even when it is already built")
    tk.set_defaults(func=cmd_tokenizer)
