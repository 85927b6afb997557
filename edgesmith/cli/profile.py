"""`edgesmith profile` (and its alias `bench`) and `edgesmith compare` (runtime/profile/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgesmith.cli.args import at_least, cool, count, device_options, int_list, positive


def cmd_profile(args) -> int:
    from edgesmith.runtime.profile.formats import write
    from edgesmith.runtime.profile.profiler import ProfileOptions, profile_bundle

    fmt = _format(args)

    device = None
    if args.device:
        from edgesmith.runtime.devices import get_device

        device = get_device(args.device, args.devices)
    options = ProfileOptions(
        prompts=args.prompt, gens=args.gen, threads=args.threads, warmup=args.warmup, reps=args.reps,
        max_reps=args.max_reps, target_rsd=args.target_rsd, cool_below=args.cool_below,
        cool_timeout=args.cool_timeout, max_temp=args.max_temp, kernels_top=args.kernels, membw_mb=args.membw_mb,
        check=args.check, reference=args.reference, sysroot=args.sysroot or "", timeout=args.timeout,
        context=args.context)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    records = profile_bundle(args.bundle, device, options, progress=say)
    if args.out is not None:  # a file: markdown carries its records (for `compare`), the table still shows
        args.out.write_text(write(records, fmt, embed_records=True))
        if fmt == "md":
            sys.stdout.write(write(records, fmt, embed_records=False))
        print(f"edgesmith: wrote {args.out} ({fmt})", file=sys.stderr)
        return 0
    # Markdown on a terminal is for people: the machine records (for `compare`) go into files only.
    sys.stdout.write(write(records, fmt, embed_records=not sys.stdout.isatty()))
    return 0


FORMATS = ("md", "json", "jsonl", "csv")


def _format(args) -> str:
    """--format, else the -o file's extension, else md. `-o json` (the old spelling of the format)
    is said, not written to a file named json."""
    from edgesmith.errors import UsageError

    if args.out is not None and str(args.out) in FORMATS:
        raise UsageError(f"-o is the output file; the format is --format {args.out} (e.g. --format {args.out} "
                         f"-o results.{args.out})")
    if args.format:
        return args.format
    suffix = args.out.suffix.lstrip(".") if args.out is not None else ""
    return suffix if suffix in FORMATS else "md"


def cmd_compare(args) -> int:
    from edgesmith.runtime.profile.compare import compare, format_compare, regressions
    from edgesmith.runtime.profile.formats import read_file

    entries = compare(read_file(args.old), read_file(args.new))
    print(format_compare(entries))
    slower = regressions(entries)
    if slower and args.fail_on_slowdown:
        from edgesmith.errors import EXIT_REGRESSION

        print(f"edgesmith: {len(slower)} row(s) slower beyond the noise", file=sys.stderr)
        return EXIT_REGRESSION  # 3, as the farm's regression
    return 0



def add_parser(sub) -> None:
    def profile_args(sp):
        sp.add_argument("bundle", type=Path, help="a bundle folder (what `edgesmith compile -o` wrote)")
        sp.add_argument("-p", "--prompt", type=int_list, default=[128], help="prompt lengths, e.g. 128,512 (default 128)")
        sp.add_argument("-n", "--gen", type=int_list, default=[128], help="tokens to generate, a list too (default 128)")
        sp.add_argument("-t", "--threads", type=int_list, default=[0], help="thread counts, a list (default 0: the "
                        "runtime's choice)")
        sp.add_argument("-r", "--reps", type=positive, default=3, help="repetitions at least (default 3)")
        sp.add_argument("--max-reps", type=positive, default=10, help="repetitions at most (default 10)")
        sp.add_argument("--target-rsd", type=at_least(0.0, float), default=0.03, help="stop repeating once pp and tg spread "
                        "(sd/mean) is under this (default 0.03)")
        sp.add_argument("--warmup", type=count, default=1, help="untimed runs first (default 1)")
        sp.add_argument("--cool-below", type=cool, default="auto", help="before each repetition wait until the "
                        "hottest thermal zone is under this °C; auto (default): the start temperature + 5; off")
        sp.add_argument("--cool-timeout", type=at_least(0.0, float), default=120.0, help="seconds to wait for it (default 120)")
        sp.add_argument("--max-temp", type=float, default=85.0, help="a repetition this hot is marked throttled")
        sp.add_argument("--kernels", type=count, default=10, metavar="N", help="top-N kernel table (0: skip the pass)")
        sp.add_argument("--membw-mb", type=count, default=0, help="MiB the bandwidth probe reads (default 0: four "
                        "times the device's last-level cache, at least 256)")
        sp.add_argument("--check", action="store_true", help="compare the device's logits with a host reference first")
        sp.add_argument("--reference", metavar="MODEL", help="checkpoint to compile the --check reference from "
                        "(default: the bundle's own source)")
        sp.add_argument("--sysroot", metavar="DIR", help=argparse.SUPPRESS)  # tests: sysfs and /proc/meminfo
        # under DIR on the device (a fake device state); not for users
        sp.add_argument("--context", type=int, metavar="N", help="KV cache size in tokens for every run, at most "
                        "the compiled context (default: prompt + gen of each combination)")
        sp.add_argument("--format", choices=FORMATS, help="md (default: tables), json, jsonl or csv: one record "
                        "schema, any of them reads back in `compare`")
        sp.add_argument("-o", "--out", type=Path, metavar="FILE", help="write the profile to FILE (its format: "
                        "--format, else the extension) instead of stdout")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        device_options(sp)
        sp.set_defaults(func=cmd_profile)

    profile_args(sub.add_parser("profile", help="tok/s you can trust (pp and tg, mean ± sd), memory, kernels, "
                                "roofline, accuracy on the device"))
    profile_args(sub.add_parser("bench", help="alias of profile"))

    cp = sub.add_parser("compare", help="two profiles (any format): %% change per matching row, and whether "
                        "it exceeds the noise")
    cp.add_argument("old", type=Path, help="the earlier profile (md, json, jsonl or csv; a farm's results.json)")
    cp.add_argument("new", type=Path, help="the later profile, any of the same formats")
    cp.add_argument("--fail-on-slowdown", action="store_true", help="exit 3 (a regression) when a row is slower beyond the noise")
    cp.set_defaults(func=cmd_compare)
