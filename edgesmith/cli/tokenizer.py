"""`edgesmith tokenizer`: the tokenizers the architectures build once from a registry package for
their `random:` presets (so far the real Phi-3 one; compiler/models/phi3/tokenizer.py), and adding
a tokenizer to a compiled bundle (compiler/inputs/tokenizer_files.py)."""
from __future__ import annotations

import sys
from pathlib import Path



def cmd_tokenizer(args) -> int:
    from edgesmith.compiler.models import tokenizer_builders

    if args.action == "add":
        if args.bundle is None or args.file is None:
            from edgesmith.errors import UsageError
            raise UsageError("tokenizer add needs a bundle and a tokenizer: edgesmith tokenizer add BUNDLE "
                             "phi3|tokenizer.json|tokenizer.model|FOLDER")
        from edgesmith.compiler.inputs.tokenizer_files import add_to_bundle
        from edgesmith.runtime.inspect_bundle import tokenizer_line

        manifest = add_to_bundle(args.bundle, args.file, force=args.force)
        print(f"{args.bundle}: tokenizer {tokenizer_line(manifest)}; manifest hashes updated")
        return 0
    if args.bundle is not None:
        from edgesmith.errors import UsageError
        raise UsageError(f"tokenizer {args.action} takes no other argument (got {args.bundle}); "
                         "`tokenizer add BUNDLE FILE` adds one to a bundle")
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
                        "random: bundles, show where it is, or add a tokenizer to a compiled bundle")
    tk.add_argument("action", choices=["fetch", "show", "add"], help="fetch: download llama-cpp-python's source "
                    "with pip, convert its Phi-3 vocabulary into tokenizer.json in the cache; show: where it is; "
                    "add BUNDLE FILE: put a tokenizer into a bundle (no recompile; the manifest's hashes are updated)")
    tk.add_argument("bundle", nargs="?", type=Path, help="add: the bundle folder")
    tk.add_argument("file", nargs="?", help="add: phi3 (the built Phi-3 tokenizer), a tokenizer.json, a SentencePiece "
                    "tokenizer.model (converted) or a folder holding one")
    tk.add_argument("--force", action="store_true", help="fetch: build it again even when it is built; add: "
                    "replace the tokenizer a bundle already carries")
    tk.set_defaults(func=cmd_tokenizer)
