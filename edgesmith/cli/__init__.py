"""edgesmith command line. It only parses; the work is in compiler/ and runtime/.

Imports are lazy so `edgesmith --help` is instant. Every failure we expect is an
EdgesmithError: one line on stderr, exit code 1 (or the error's own), traceback only with --debug.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgesmith.cli_run import cmd_run


def _ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"token ids must be integers separated by commas, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"token ids cannot be negative, got {text!r}")
    return ids


def _at_least(minimum: float, kind=int):
    """An argparse type: a number of `kind` that is at least `minimum` (counts, seconds)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or value < minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return parse


_count = _at_least(0)
_positive = _at_least(1)
_seconds = _at_least(0.001, float)


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (exit 1, like every other error), pointing at --help."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(1)


# ------------------------------------------------------------------------------------ compile
def cmd_compile(args) -> int:
    from edgesmith.compiler.checkpoint import default_quant
    from edgesmith.compiler.quantize import get_quantization
    from edgesmith.targets.presets import get_preset

    progress_note = None
    if args.quant is None:
        get_preset(args.target)  # an unknown target: said before the checkpoint is opened
        args.quant, why = default_quant(args.model, args.target)
        float_twin = get_quantization(args.quant).variant(int8_activations=False)
        progress_note = f"quantization {args.quant}: the default for target {args.target} ({why})" + (
            f"; --quant {float_twin.name} for exact float activations" if float_twin.name != args.quant else "")
    out = args.output or Path("dist") / _bundle_name(args.model, args.quant, args.target)
    _check_compile_args(args.model, args.quant, args.target, out)
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.cli_progress import ConsoleProgress

    tuning, tuning_source = None, ""
    if args.tuning:
        from edgesmith.runtime.tune.apply import resolve

        tuning, tuning_source = resolve(args.tuning, args.target, args.device, args.devices)
    elif args.device:
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError("compile --device only names the device of --tuning auto or the one to check a "
                             "--tuning FILE against; add --tuning")
    progress = ConsoleProgress(quiet=args.quiet)
    if progress_note:
        progress.step(progress_note)
    compile_bundle(args.model, args.quant, args.target, out,
                   quantize_embedding=not args.float_embedding, dump_ir=args.dump_ir, progress=progress,
                   context=args.context, kv_dtype=args.kv_dtype, tuning=tuning, tuning_source=tuning_source)
    progress.done(f"bundle written to {out} ({_kv_summary(out)})")
    if args.eval:
        from edgesmith.runtime.evaluate import evaluate_bundle

        from edgesmith.compiler.bundle import read_manifest
        from edgesmith.runtime.evaluate import guidance

        report = evaluate_bundle(out, args.model, progress=progress)
        print(_format_eval(report))
        manifest = read_manifest(out)
        print(f"  {guidance(report, manifest.quant, manifest.model.source)}")
    return 0


def _check_compile_args(model: str, quant: str, target: str, out: Path) -> None:
    """Names against the registries, the checkpoint's config and the output path: before TVM is
    imported, so a typo answers at once."""
    from edgesmith.compiler.checkpoint import open_checkpoint
    from edgesmith.compiler.quantize import get_quantization
    from edgesmith.errors import EdgesmithError
    from edgesmith.targets.presets import get_preset

    get_quantization(quant)
    get_preset(target)
    open_checkpoint(model)
    if out.exists() and not out.is_dir():
        raise EdgesmithError(f"output {out} is a file, not a folder; give -o a folder name for the bundle "
                             "(it is created), or remove the file")


def _kv_summary(bundle: Path) -> str:
    from edgesmith.compiler.bundle import read_manifest

    kv = read_manifest(bundle).kv_cache
    window = f", sliding window {kv.sliding_window}" if kv.sliding_window else ""
    return (f"context {kv.max_total_seq_len} tokens, KV cache {kv.dtype} "
            f"{kv.bytes_per_token / 1024:.1f} KiB/token{window}")


def _bundle_name(model: str, quant: str, target: str) -> str:
    path = Path(model)
    base = model.split("random:", 1)[1] if model.startswith("random:") else (path.parent if path.suffix == ".onnx" else path).name
    return f"{base.replace(':', '-').replace('=', '')}-{quant}-{target}"


def _format_eval(r: dict) -> str:
    return (f"accuracy vs q0f32 over {r['positions']} positions: top-1 agreement {100 * r['top1_agreement']:.1f}%, "
            f"mean KL {r['mean_kl']:.5f} nats, max |logit diff| {r['max_abs_diff']:.4f}")


# ------------------------------------------------------------------------------------ tune
def cmd_tune(args) -> int:
    from edgesmith.cli_progress import ConsoleProgress
    from edgesmith.runtime.devices import get_device
    from edgesmith.runtime.tune.run import TuneOptions, tune_model

    device = get_device(args.device, args.devices)
    if args.output is not None and args.output.is_dir():
        from edgesmith.errors import EdgesmithError
        raise EdgesmithError(f"-o {args.output} is a folder; give the tuning record a file name (e.g. tuning.json)")
    options = TuneOptions(budget_s=args.budget * 60, allow_emulated=args.allow_emulated, restart=args.restart,
                          quant=args.quant, quantize_embedding=not args.float_embedding, reps=args.reps,
                          kv_dtype=args.kv_dtype)
    progress = ConsoleProgress(quiet=args.quiet)
    record, path = tune_model(args.model, device, options, out=args.output, progress=progress)
    where = f"{path}" + (f" and {args.output}" if args.output else "")
    progress.done(f"tuning record ({'complete' if record.complete else 'incomplete'}"
                  f"{', emulated' if record.emulated else ''}) written to {where}")
    return 0


# ------------------------------------------------------------------------------------ profile / compare
def _list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (e.g. 128,512), got {text!r}")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"counts cannot be negative, got {text!r}")
    return values


def _top_p(text: str) -> float:
    value = _at_least(0.0, float)(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _cool(text: str):
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cool-below takes a temperature in °C, auto or off; got {text!r}") from None


def cmd_profile(args) -> int:
    from edgesmith.runtime.profile.formats import write
    from edgesmith.runtime.profile.run import ProfileOptions, profile_bundle

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
    # Markdown on a terminal is for people: the machine records (for `compare`) go into files only.
    sys.stdout.write(write(records, args.output, embed_records=not sys.stdout.isatty()))
    return 0


def cmd_compare(args) -> int:
    from edgesmith.runtime.profile.compare import compare, format_compare, regressions
    from edgesmith.runtime.profile.formats import read_file

    entries = compare(read_file(args.old), read_file(args.new))
    print(format_compare(entries))
    slower = regressions(entries)
    if slower and args.fail_on_slowdown:
        print(f"edgesmith: {len(slower)} row(s) slower beyond the noise", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------ inspect / targets
def cmd_inspect(args) -> int:
    from edgesmith.runtime import inspect_bundle

    if args.kernel:
        print(inspect_bundle.kernel_source(args.bundle, args.kernel), end="")
    elif args.kernels:
        print(inspect_bundle.list_kernels(args.bundle))
    else:
        print(inspect_bundle.describe(args.bundle, as_json=args.json))
    return 0


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


def cmd_quants(args) -> int:
    from edgesmith.compiler.quantize import QUANTIZATIONS

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


# ------------------------------------------------------------------------------------ tokenizer
def cmd_tokenizer(args) -> int:
    from edgesmith.compiler import phi3_tokenizer

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


# ------------------------------------------------------------------------------------ devices
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
    from edgesmith.runtime.remote import format_devices_table, probe_devices

    probes = probe_devices(list(devices.values()), timeout=args.timeout)
    print(json.dumps(probes, indent=1) if args.json else format_devices_table(probes))
    return 0 if all(p["reachable"] for p in probes) else 1


def cmd_emulators(args) -> int:
    from edgesmith.runtime import emulated

    if args.action == "start":
        ports = {"ssh": 0, "adb_device": 0, "adb_server": 0} if args.free_ports else None
        status = emulated.start_emulators(ports=ports)
        print(f"emulated devices running on loopback: board ssh port {status['ports']['ssh']}, phone adb "
              f"{status['host']}:{status['ports']['adb_device']} (adb server port {status['ports']['adb_server']}); "
              f"state in {status['state_dir']}")
        if args.devices_out:
            print(f"devices file: {emulated.write_devices_file(status, args.devices_out)} "
                  "(use it with --devices or EDGESMITH_DEVICES)")
    elif args.action == "stop":
        emulated.stop_emulators()
        print("emulated devices stopped")
    else:
        status = emulated.emulator_status()
        print(json.dumps(status, indent=1))
        return 0 if status["running"] else 1
    return 0


# ------------------------------------------------------------------------------------ farm
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
    from edgesmith.runtime.farm.run import FarmOptions, farm_run
    from edgesmith.runtime.profile.run import ProfileOptions

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


# ------------------------------------------------------------------------------------ parser
DEVICES_HELP = ("devices.yaml to read (default: $EDGESMITH_DEVICES, else ./devices.yaml, else the one shipped "
                "with edgesmith)")

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgesmith", description="Compile Phi-3 models into int4 bundles for phones "
                                "and boards with Apache TVM, run them there, and measure them.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and libraries' log output (accepted anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # The registries (TVM-free) name the presets and quantizations.
    from edgesmith.compiler.models import RANDOM_PRESETS, supported
    from edgesmith.compiler.quantize import QUANTIZATIONS

    c = sub.add_parser("compile", help="checkpoint folder or random:<preset> -> bundle folder")
    c.add_argument("model", help=f"a Hugging Face folder (config.json, *.safetensors; architectures: {supported()}), "
                   "an ONNX Runtime GenAI folder (genai_config.json, model.onnx) or random:<preset>[:layers=N][:seed=S] "
                   f"(presets: {', '.join(RANDOM_PRESETS)})")
    c.add_argument("--quant", help=f"{', '.join(QUANTIZATIONS)} (`edgesmith quants` says what each is); default: "
                   "q4f16i8 (int8 activations) where the target has int8 dot products, q4f16 elsewhere, and an "
                   "int4 ONNX model keeps its own scale dtype (q4f32 or q4f32i8); `edgesmith targets` shows each "
                   "target's default")
    c.add_argument("--target", default="host", help="target preset (see `edgesmith targets`); default host")
    c.add_argument("-o", "--output", type=Path, help="bundle folder to write (default dist/<model>-<quant>-<target>)")
    c.add_argument("--float-embedding", action="store_true", help="keep the embedding and lm_head in float")
    c.add_argument("--eval", action="store_true", help="also report top-1 agreement and KL against q0f32")
    c.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the IR after each pipeline phase")
    c.add_argument("--context", type=int, metavar="N", help="tokens the KV cache holds, up to the model's "
                   "max_position_embeddings (default: that, at most 4096)")
    c.add_argument("--kv-dtype", choices=["float16", "float32"], help="KV cache dtype (default float16 on GPUs "
                   "and ARM with fp16, float32 elsewhere)")
    c.add_argument("--tuning", metavar="FILE|auto", help="apply a tuning record from `edgesmith tune` (a file, or "
                   "auto: the cache's record for --device); a record from another device or target is refused")
    c.add_argument("--device", help="with --tuning: the device the bundle is for (its fingerprint is checked)")
    c.add_argument("--devices", type=Path, help=DEVICES_HELP)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_compile)

    tn = sub.add_parser("tune", help="measure the CPU kernels' choices on a device; a tuning record for compile --tuning")
    tn.add_argument("model", help="checkpoint folder or random:<preset> (its kernel shapes are tuned)")
    tn.add_argument("--device", default="host", help="device name from devices.yaml (default host)")
    tn.add_argument("--devices", type=Path, help=DEVICES_HELP)
    tn.add_argument("--budget", type=_at_least(0.01, float), default=10.0, metavar="MINUTES",
                    help="stop within this many minutes, keeping the best found so far (default 10)")
    tn.add_argument("-o", "--output", type=Path, metavar="FILE", help="also write the record here (it is always "
                    "kept in the cache, where --tuning auto finds it)")
    tn.add_argument("--quant", help="quantization whose kernels to tune (default: the target's, as compile)")
    tn.add_argument("--float-embedding", action="store_true", help="tune for bundles compiled with --float-embedding")
    tn.add_argument("--kv-dtype", choices=["float16", "float32"], help="tune the attention for this KV cache dtype "
                    "(default: the target's, as compile)")
    tn.add_argument("-r", "--reps", type=_positive, default=7, help="timed rounds per candidate (default 7)")
    tn.add_argument("--restart", action="store_true", help="measure every shape again (default: resume, keeping "
                    "the shapes already in the cached record)")
    tn.add_argument("--allow-emulated", action="store_true", help="tune on an emulated (qemu) device, to test the "
                    "mechanism; the record is marked emulated")
    tn.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tn.set_defaults(func=cmd_tune)

    def device_args(sp):
        sp.add_argument("--device", help="device name from devices.yaml (default: run here)")
        sp.add_argument("--devices", type=Path, help=DEVICES_HELP)
        sp.add_argument("--timeout", type=_seconds, default=600.0, help="seconds before giving up (default 600)")

    r = sub.add_parser("run", help="generate tokens with a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--prompt", help="text (the bundle's tokenizer: the checkpoint's, or for random: Phi-3 presets "
                   "the one `edgesmith tokenizer fetch` builds)")
    r.add_argument("--tokens", type=_ids, help="prompt as token ids: 1,2,3")
    r.add_argument("-n", "--max-new-tokens", type=_count, default=32, help="tokens to generate at most (default 32)")
    r.add_argument("--temperature", type=_at_least(0.0, float), default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    r.add_argument("--top-p", type=_top_p, default=1.0,
                   help="sample from the smallest set of tokens whose probabilities add up to this (0-1, default 1)")
    r.add_argument("--seed", type=_count, default=0, help="random seed for sampling (default 0)")
    r.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    r.add_argument("--json", action="store_true", help="print one JSON object (output_ids, text, timings)")
    r.add_argument("--engine", choices=["runner", "python"], default="runner",
                   help="the bundle's C++ runner (default) or TVM's Python VM in this process")
    r.add_argument("--chat", action="store_true", help="put --prompt in the chat template (Phi-3: <|user|> ... "
                   "<|end|> <|assistant|>) and stop at the end of the reply")
    r.add_argument("--interactive", action="store_true", help="a conversation on one KV cache: each line typed "
                   "(or piped) is a turn, in the chat template (token ids 1,2,3 without a tokenizer); an empty "
                   "line or end of input ends it. --prompt is the first turn; --timeout is per turn")
    r.add_argument("--context", type=int, metavar="N", help="KV cache size in tokens, at most the compiled "
                   "context (default: the compiled context)")
    device_args(r)
    r.set_defaults(func=cmd_run)

    def profile_args(sp):
        sp.add_argument("bundle", type=Path)
        sp.add_argument("-p", "--prompt", type=_list, default=[128], help="prompt lengths, e.g. 128,512 (default 128)")
        sp.add_argument("-n", "--gen", type=_list, default=[128], help="tokens to generate, a list too (default 128)")
        sp.add_argument("-t", "--threads", type=_list, default=[0], help="thread counts, a list (default 0: the "
                        "runtime's choice)")
        sp.add_argument("-r", "--reps", type=_positive, default=3, help="repetitions at least (default 3)")
        sp.add_argument("--max-reps", type=_positive, default=10, help="repetitions at most (default 10)")
        sp.add_argument("--target-rsd", type=_at_least(0.0, float), default=0.03, help="stop repeating once pp and tg spread "
                        "(sd/mean) is under this (default 0.03)")
        sp.add_argument("--warmup", type=_count, default=1, help="untimed runs first (default 1)")
        sp.add_argument("--cool-below", type=_cool, default="auto", help="before each repetition wait until the "
                        "hottest thermal zone is under this °C; auto (default): the start temperature + 5; off")
        sp.add_argument("--cool-timeout", type=_at_least(0.0, float), default=120.0, help="seconds to wait for it (default 120)")
        sp.add_argument("--max-temp", type=float, default=85.0, help="a repetition this hot is marked throttled")
        sp.add_argument("--kernels", type=_count, default=10, metavar="N", help="top-N kernel table (0: skip the pass)")
        sp.add_argument("--membw-mb", type=_count, default=0, help="MiB the bandwidth probe reads (default 0: four "
                        "times the device's last-level cache, at least 256)")
        sp.add_argument("--check", action="store_true", help="compare the device's logits with a host reference first")
        sp.add_argument("--reference", metavar="MODEL", help="checkpoint to compile the --check reference from "
                        "(default: the bundle's own source)")
        sp.add_argument("--sysroot", metavar="DIR", help="read sysfs and /proc/meminfo under DIR on the device "
                        "(a fake device state, for tests)")
        sp.add_argument("--context", type=int, metavar="N", help="KV cache size in tokens for every run, at most "
                        "the compiled context (default: prompt + gen of each combination)")
        sp.add_argument("-o", "--output", choices=["md", "json", "jsonl", "csv"], default="md")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        device_args(sp)
        sp.set_defaults(func=cmd_profile)

    profile_args(sub.add_parser("profile", help="tok/s you can trust (pp and tg, mean ± sd), memory, kernels, "
                                "roofline, accuracy on the device"))
    profile_args(sub.add_parser("bench", help="alias of profile"))

    cp = sub.add_parser("compare", help="two profiles (any format): %% change per matching row, and whether "
                        "it exceeds the noise")
    cp.add_argument("old", type=Path)
    cp.add_argument("new", type=Path)
    cp.add_argument("--fail-on-slowdown", action="store_true", help="exit 1 when a row is slower beyond the noise")
    cp.set_defaults(func=cmd_compare)

    i = sub.add_parser("inspect", help="what a bundle holds: model, quantization, target, files, accuracy")
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true")
    i.add_argument("--kernels", action="store_true", help="list the GPU kernels (GPU targets)")
    i.add_argument("--kernel", metavar="NAME", help="print one GPU kernel's source")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("targets", help="list target presets: arch, device, default quantization, toolchain, runner")
    t.add_argument("names", nargs="*", metavar="NAME", help="show these presets in full (JSON, with the TVM target)")
    t.add_argument("--json", action="store_true", help="every preset in full, as JSON")
    t.set_defaults(func=cmd_targets)

    qs = sub.add_parser("quants", help="list quantizations (--quant): weights, scales, activations")
    qs.add_argument("--json", action="store_true")
    qs.set_defaults(func=cmd_quants)

    tk = sub.add_parser("tokenizer", help="build the real Phi-3 tokenizer once (from a registry package) for "
                        "random: bundles, or show where it is")
    tk.add_argument("action", choices=["fetch", "show"], help="fetch: download llama-cpp-python's source with pip, "
                    "convert its Phi-3 vocabulary into tokenizer.json in the cache; show: where it is")
    tk.add_argument("--force", action="store_true", help="fetch again even when it is already built")
    tk.set_defaults(func=cmd_tokenizer)

    d = sub.add_parser("devices", help="list the devices of devices.yaml and probe them (in parallel)")
    d.add_argument("names", nargs="*", help="only these devices")
    d.add_argument("--devices", type=Path, help=DEVICES_HELP)
    d.add_argument("--no-probe", action="store_true", help="list without connecting")
    d.add_argument("--json", action="store_true")
    d.add_argument("--timeout", type=_seconds, default=20.0, help="seconds per device (default 20)")
    d.set_defaults(func=cmd_devices)

    e = sub.add_parser("emulators", help="start/stop the emulated arm64 board (sshd) and phone (adb) on loopback")
    e.add_argument("action", choices=["start", "stop", "status"])
    e.add_argument("--free-ports", action="store_true", help="start: let the OS pick free ports instead of "
                   "2222 (ssh), 5557 (phone) and 5038 (adb server); pair with --devices-out")
    e.add_argument("--devices-out", type=Path, metavar="FILE", help="start: write a devices.yaml naming the "
                   "running devices and their real ports")
    e.set_defaults(func=cmd_emulators)

    f = sub.add_parser("farm", help="every device in parallel, one report, a regression gate (run, agent, status)")
    fs = f.add_subparsers(dest="action", required=True, metavar="ACTION")

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
    fr.add_argument("--out", type=Path, required=True, help="folder for the reports")
    fr.add_argument("--retries", type=_count, default=1, help="tries again a failed device this many times (default 1)")
    fr.add_argument("--retry-delay", type=_at_least(0.0, float), default=2.0, help="seconds between tries (default 2)")
    fr.add_argument("--allow-failures", type=_count, default=0, help="devices that may fail without exit 4 (default 0)")
    fr.add_argument("--threshold", type=_at_least(0.0, float), default=0.05, help="a row slower than the baseline beyond the noise "
                    "is a regression only past this fraction (default 0.05)")
    fr.add_argument("--priority", type=int, default=0, help="tracker queue priority, higher first (default 0)")
    fr.add_argument("--lease-timeout", type=_seconds, default=3600.0, help="seconds to wait for a device (default 3600)")
    fr.add_argument("-p", "--prompt", type=_list, default=[128])
    fr.add_argument("-n", "--gen", type=_list, default=[128])
    fr.add_argument("-r", "--reps", type=_positive, default=3)
    fr.add_argument("--max-reps", type=_positive, default=10)
    fr.add_argument("--warmup", type=_count, default=1)
    fr.add_argument("--target-rsd", type=_at_least(0.0, float), default=0.03)
    fr.add_argument("--cool-below", type=_cool, default="auto")
    fr.add_argument("--kernels", type=_count, default=0, metavar="N", help="top-N kernel table (default 0: skip)")
    fr.add_argument("--membw-mb", type=_count, default=0, help="as profile's (default 0: from the caches)")
    fr.add_argument("--timeout", type=_seconds, default=600.0, help="seconds per runner command (default 600)")
    fr.add_argument("--tune", action="store_true", help="tune each device first (edgesmith tune; a cached complete "
                    "record is reused) and profile the bundle compiled with its record")
    fr.add_argument("--tune-budget", type=_at_least(0.01, float), default=10.0, metavar="MINUTES",
                    help="tuning budget per device (default 10)")
    fr.add_argument("--allow-emulated", action="store_true", help="with --tune: tune emulated devices too (the "
                    "mechanism only); otherwise they keep the default kernels")
    fr.add_argument("-q", "--quiet", action="store_true")
    farm_common(fr)

    fa = fs.add_parser("agent", help="publish this machine's devices on the tracker and hand out leases")
    fa.add_argument("--devices", type=Path, help=DEVICES_HELP)
    fa.add_argument("-s", "--select", type=lambda t: [x for x in t.split(",") if x], default=[])
    fa.add_argument("--host", default="0.0.0.0", help="address to listen on for lease claims")
    fa.add_argument("--port", type=int, default=0, help="port for lease claims (default: any free one)")
    fa.add_argument("--advertise", help="address runs reach this agent at (default: as the tracker sees it)")
    fa.add_argument("--name", help="agent name shown by status (default: the host name)")
    farm_common(fa)

    fst = fs.add_parser("status", help="devices, leases and the queue on the tracker")
    fst.add_argument("--json", action="store_true")
    farm_common(fst)
    return p


def _setup_logging(debug: bool) -> None:
    """Libraries' log output (paramiko's "Exception (client): ...", TVM's) never reaches the console
    unasked: it goes nowhere, or to stderr with --debug."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
    else:
        root.addHandler(logging.NullHandler())  # and no "last resort" printing of warnings


_interrupted = False


def _on_sigint(signum, frame):
    # A Ctrl-C that lands in Python code TVM called from C++ comes back out as a bare RuntimeError
    # (tvm_ffi forwards the error, not its type): remember that it was an interrupt.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _leave_interrupted():
    # Leave at once: what our code cleans up (a staged bundle, device temporaries) already ran
    # while the interrupt unwound; letting Python tear down TVM's half-built objects only prints
    # their C++ destructors' warnings ("BlockBuilder destroyed with remaining blocks!").
    import os

    print("edgesmith: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    # --debug anywhere: `edgesmith run B --debug` as well as `edgesmith --debug run B`.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _setup_logging(debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    from edgesmith.errors import EdgesmithError

    try:
        return args.func(args) or 0
    except EdgesmithError as e:
        if debug:
            raise
        print(f"edgesmith: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        _leave_interrupted()
    except BrokenPipeError:  # `edgesmith inspect B | head`: the reader left, nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: still one line unless --debug
        if _interrupted:
            _leave_interrupted()
        if debug:
            raise
        print(f"edgesmith: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
