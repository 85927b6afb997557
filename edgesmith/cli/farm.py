"""`edgesmith farm`: run, agent and status (runtime/farm/)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edgesmith.cli.args import DEVICES_HELP, at_least, cool, count, format_option, int_list, out_option, positive, seconds


def cmd_farm(args) -> int:
    import os

    tracker = args.tracker or os.environ.get("EDGESMITH_TRACKER") or None
    say = None if getattr(args, "quiet", False) else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.action == "status":
        from edgesmith.runtime.farm.tracker import farm_status, format_status

        if not tracker:
            from edgesmith.errors import EdgesmithError
            raise EdgesmithError("farm status needs a tracker: --tracker HOST:PORT or EDGESMITH_TRACKER")
        status = farm_status(tracker)
        print(json.dumps(status, indent=1) if args.json else format_status(status))
        return 0
    if args.action == "agent":
        from edgesmith.runtime.farm.agent import run_agent

        if not tracker:
            from edgesmith.errors import EdgesmithError
            raise EdgesmithError("farm agent needs a tracker: --tracker HOST:PORT or EDGESMITH_TRACKER")
        run_agent(tracker, args.devices, args.select, host=args.host, port=args.port, advertise=args.advertise,
                  name=args.name, log=say or (lambda msg: None))
        return 0
    from edgesmith.runtime.farm.orchestrator import FarmOptions, farm_run
    from edgesmith.runtime.profile.profiler import ProfileOptions

    profile = ProfileOptions(prompts=args.prompt, gens=args.gen, warmup=args.warmup, reps=args.reps,
                             max_reps=args.max_reps, target_rsd=args.target_rsd, cool_below=args.cool_below,
                             kernels_top=args.kernels, membw_mb=args.membw_mb, timeout=args.timeout)
    results = farm_run(FarmOptions(model=args.model, quant=args.quant, out=args.out, select=args.select,
                                   devices_file=args.devices, tracker=tracker, baseline=args.baseline,
                                   profile=profile, retries=args.retries, retry_delay=args.retry_delay,
                                   allow_failures=args.allow_failures,
                                   threshold=args.threshold, priority=args.priority,
                                   lease_timeout=args.lease_timeout, tune=args.tune,
                                   tune_budget_s=args.tune_budget * 60, allow_emulated=args.allow_emulated),
                       progress=say)
    print((args.out / "summary.md").read_text(), end="")
    return results["exit_code"]


def add_parser(sub) -> None:
    f = sub.add_parser("farm", help="every device in parallel, one report, a regression gate (run, agent, status)")
    fs = f.add_subparsers(dest="action", required=True, metavar="ACTION", help="run: profile the devices and "
                          "report; agent: lend this machine's devices to a tracker; status: what a tracker holds")

    def farm_common(sp):
        sp.add_argument("--tracker", metavar="HOST:PORT", help="TVM RPC tracker that leases the devices "
                        "(default $EDGESMITH_TRACKER; none: the local devices.yaml alone)")
        sp.set_defaults(func=cmd_farm)

    fr = fs.add_parser("run", help="compile once per target, profile every selected device in parallel, write "
                       "results.json, summary.md, report.html, junit.xml; exit 0 pass, 3 regression, 4 failures "
                       "beyond --allow-failures, 1 usage error")
    fr.add_argument("--model", required=True, help="checkpoint folder or random:<preset>")
    fr.add_argument("--quant", help="quantization for every target (default: each target's own, see "
                    "`edgesmith targets`)")
    fr.add_argument("--devices", type=Path, help=DEVICES_HELP + "; unused with a tracker")
    fr.add_argument("-s", "--select", type=lambda t: [x for x in t.split(",") if x], default=[],
                    help="device names, tags or targets, comma-separated (default: every device)")
    fr.add_argument("--baseline", type=Path, help="a previous results.json or any `edgesmith profile` output")
    out_option(fr, "folder for the reports (results.json, summary.md, report.html, junit.xml)", required=True)
    fr.add_argument("--retries", type=count, default=1, help="tries again a failed device this many times (default 1)")
    fr.add_argument("--retry-delay", type=at_least(0.0, float), default=2.0, help="seconds between tries (default 2)")
    fr.add_argument("--allow-failures", type=count, default=0, help="devices that may fail without exit 4 (default 0)")
    fr.add_argument("--threshold", type=at_least(0.0, float), default=0.05, help="a row slower than the baseline beyond the noise "
                    "is a regression only past this fraction (default 0.05)")
    fr.add_argument("--priority", type=int, default=0, help="tracker queue priority, higher first (default 0)")
    fr.add_argument("--lease-timeout", type=seconds, default=3600.0, help="seconds to wait for a device (default 3600)")
    fr.add_argument("-p", "--prompt", type=int_list, default=[128], help="prompt lengths, e.g. 128,512 (default "
                    "128), as in profile")
    fr.add_argument("-n", "--gen", type=int_list, default=[128], help="tokens to generate, a list too (default 128)")
    fr.add_argument("-r", "--reps", type=positive, default=3, help="repetitions at least (default 3)")
    fr.add_argument("--max-reps", type=positive, default=10, help="repetitions at most (default 10)")
    fr.add_argument("--warmup", type=count, default=1, help="untimed runs first (default 1)")
    fr.add_argument("--target-rsd", type=at_least(0.0, float), default=0.03, help="stop repeating once pp and tg "
                    "spread (sd/mean) is under this (default 0.03)")
    fr.add_argument("--cool-below", type=cool, default="auto", help="before each repetition wait until the "
                    "hottest thermal zone is under this °C; auto (default): the start temperature + 5; off")
    fr.add_argument("--kernels", type=count, default=0, metavar="N", help="top-N kernel table (default 0: skip)")
    fr.add_argument("--membw-mb", type=count, default=0, help="as profile's (default 0: from the caches)")
    fr.add_argument("--timeout", type=seconds, default=600.0, help="seconds per runner command (default 600)")
    fr.add_argument("--tune", action="store_true", help="tune each device first (edgesmith tune; a cached complete "
                    "record is reused) and profile the bundle compiled with its record")
    fr.add_argument("--tune-budget", type=at_least(0.01, float), default=10.0, metavar="MINUTES",
                    help="tuning budget per device (default 10)")
    fr.add_argument("--allow-emulated", action="store_true", help="with --tune: tune emulated devices too (the "
                    "mechanism only); otherwise they keep the default kernels")
    fr.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    farm_common(fr)

    fa = fs.add_parser("agent", help="publish this machine's devices on the tracker and hand out leases")
    fa.add_argument("--devices", type=Path, help=DEVICES_HELP)
    fa.add_argument("-s", "--select", type=lambda t: [x for x in t.split(",") if x], default=[],
                    help="device names or tags to lend, comma-separated (default: all of devices.yaml)")
    fa.add_argument("--host", default="0.0.0.0", help="address to listen on for lease claims")
    fa.add_argument("--port", type=int, default=0, help="port for lease claims (default: any free one)")
    fa.add_argument("--advertise", help="address runs reach this agent at (default: as the tracker sees it)")
    fa.add_argument("--name", help="agent name shown by status (default: the host name)")
    farm_common(fa)

    fst = fs.add_parser("status", help="devices, leases and the queue on the tracker")
    format_option(fst, ("table", "json"), "the tracker's state")
    farm_common(fst)
