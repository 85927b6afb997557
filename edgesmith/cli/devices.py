"""`edgesmith devices`: the devices of devices.yaml, probed in parallel."""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.cli.args import DEVICES_HELP, format_option, seconds


def cmd_devices(args) -> int:
    from edgesmith.runtime.devices import load_devices

    devices = load_devices(args.devices)
    if args.names:
        unknown = [n for n in args.names if n not in devices]
        if unknown:
            from edgesmith.errors import EdgesmithError
            raise EdgesmithError(f"no device named {unknown[0]!r} in devices.yaml; known: {', '.join(devices)}")
        devices = {n: devices[n] for n in args.names}
    if args.no_probe:
        rows = [{"name": d.name, "transport": d.transport, "target": d.target, "where": d.where,
                 "tags": list(d.tags)} for d in devices.values()]
        print(json.dumps(rows, indent=1) if args.json else
              "\n".join(f"{r['name']:12s} {r['transport']:6s} {r['target']:20s} {r['where']}" for r in rows))
        return 0
    from edgesmith.runtime.probe import format_devices_table, probe_devices

    probes = probe_devices(list(devices.values()), timeout=args.timeout)
    print(json.dumps(probes, indent=1) if args.json else format_devices_table(probes))
    return 0 if all(p["reachable"] for p in probes) else 1



def add_parser(sub) -> None:
    d = sub.add_parser("devices", help="list the devices of devices.yaml and probe them (in parallel)")
    d.add_argument("names", nargs="*", help="only these devices")
    d.add_argument("--devices", type=Path, help=DEVICES_HELP)
    d.add_argument("--no-probe", action="store_true", help="list without connecting")
    format_option(d, ("table", "json"), "the devices and what was found")
    d.add_argument("--timeout", type=seconds, default=20.0, help="seconds per device (default 20)")
    d.set_defaults(func=cmd_devices)
