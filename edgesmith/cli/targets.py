"""`edgesmith targets`: the target presets and their toolchains (targets/)."""
from __future__ import annotations

import json

from edgesmith.cli.args import format_option


def cmd_targets(args) -> int:
    from edgesmith.targets.presets import PRESETS, get_preset
    from edgesmith.targets.toolchains import format_targets_table, target_facts

    if args.names:
        facts = [target_facts(get_preset(n)) for n in args.names]
        print(json.dumps(facts if args.json or len(facts) > 1 else facts[0], indent=1))
    elif args.json:
        print(json.dumps([target_facts(p) for p in PRESETS.values()], indent=1))
    else:
        print(format_targets_table())
    return 0



def add_parser(sub) -> None:
    t = sub.add_parser("targets", help="list target presets: arch, device, default quantization, toolchain, runner")
    t.add_argument("names", nargs="*", metavar="NAME", help="show these presets in full (JSON, with the TVM target)")
    format_option(t, ("table", "json"), "the presets; json: every preset in full")
    t.set_defaults(func=cmd_targets)
