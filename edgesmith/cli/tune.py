"""`edgesmith tune`: the kernels' choices measured on a device (runtime/tune/): the CPU kernels', or on
a GPU device the decode GEMVs'."""
from __future__ import annotations

from pathlib import Path

from edgesmith.cli.args import DEVICES_HELP, at_least, check_writable, out_option, positive


def cmd_tune(args) -> int:
    from edgesmith.cli.progress import ConsoleProgress
    from edgesmith.runtime.devices import get_device
    from edgesmith.runtime.tune.tuner import TuneOptions, tune_model

    device = get_device(args.device, args.devices)
    if args.out is not None and args.out.is_dir():
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError(f"-o {args.out} is a folder; give the tuning record a file name (e.g. tuning.json)")
    if args.out is not None:
        check_writable(args.out, "-o")
    options = TuneOptions(budget_s=args.budget * 60, allow_emulated=args.allow_emulated, restart=args.restart,
                          quant=args.quant, quantize_embedding=False if args.float_embedding else None,
                          reps=args.reps, kv_dtype=args.kv_dtype)
    progress = ConsoleProgress(quiet=args.quiet)
    record, path = tune_model(args.model, device, options, out=args.out, progress=progress)
    where = f"{path}" + (f" and {args.out}" if args.out else "")
    progress.done(f"tuning record ({'complete' if record.complete else 'incomplete'}"
                  f"{', emulated' if record.emulated else ''}) written to {where}")
    return 0



def add_parser(sub) -> None:
    tn = sub.add_parser("tune", help="measure the kernels' choices on a device (CPU kernels; on a GPU device "
                       "the decode GEMVs); a tuning record for compile --tuning")
    tn.add_argument("model", help="checkpoint folder or random:<preset> (its kernel shapes are tuned)")
    tn.add_argument("--device", default="host", help="device name from devices.yaml (default host)")
    tn.add_argument("--devices", type=Path, help=DEVICES_HELP)
    tn.add_argument("--budget", type=at_least(0.01, float), default=10.0, metavar="MINUTES",
                    help="stop within this many minutes, keeping the best found so far (default 10)")
    out_option(tn, "also write the record to this file (it is always kept in the cache, where --tuning auto "
               "finds it)", old="--output", metavar="FILE")
    tn.add_argument("--quant", help="quantization whose kernels to tune (default: the target's, as compile)")
    tn.add_argument("--float-embedding", action="store_true", help="tune for bundles compiled with --float-embedding")
    tn.add_argument("--kv-dtype", choices=["float16", "float32"], help="tune the attention for this KV cache dtype "
                    "(default: the target's, as compile)")
    tn.add_argument("-r", "--reps", type=positive, default=7, help="timed rounds per candidate (default 7)")
    tn.add_argument("--restart", action="store_true", help="measure every shape again (default: resume, keeping "
                    "the shapes already in the cached record)")
    tn.add_argument("--allow-emulated", action="store_true", help="tune on an emulated (qemu) device, to test the "
                    "mechanism; the record is marked emulated")
    tn.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tn.set_defaults(func=cmd_tune)
