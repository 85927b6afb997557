"""`edgesmith tokenizer`: the real Phi-3 tokenizer, built once from a registry package."""
from __future__ import annotations

import json
import sys


def cmd_tokenizer(args) -> int:
    from edgesmith.compiler.models.phi3 import tokenizer as phi3_tokenizer

    if args.action == "fetch":
        phi3_tokenizer.fetch(say=lambda msg: print(msg, file=sys.stderr, flush=True), force=args.force)
        return 0
    folder = phi3_tokenizer.cached()
    if folder is None:
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError(phi3_tokenizer.missing_message("`random:` Phi-3 bundles' text (--prompt, --chat)"))
    source = json.loads((folder / "source.json").read_text())
    print(f"Phi-3 tokenizer in {folder}: {source['vocab_size']} tokens from {source['package']} ({source['member']}), "
          f"{source['test_cases']} of llama.cpp's test cases checked")
    return 0



def add_parser(sub) -> None:
    tk = sub.add_parser("tokenizer", help="build the real Phi-3 tokenizer once (from a registry package) for "
                        "random: bundles, or show where it is")
    tk.add_argument("action", choices=["fetch", "show"], help="fetch: download llama-cpp-python's source with pip, "
                    "convert its Phi-3 vocabulary into tokenizer.json in the cache; show: where it is")
    tk.add_argument("--force", action="store_true", help="fetch again even when it is already built")
    tk.set_defaults(func=cmd_tokenizer)
