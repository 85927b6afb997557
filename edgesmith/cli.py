"""edgesmith command line. It only parses; the work is in compiler/ and runtime/.

Imports are lazy so `edgesmith --help` is instant. Every failure we expect is an
EdgesmithError: one line on stderr, exit code 1 (or the error's own), traceback only with --debug.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"token ids must be integers separated by commas, got {text!r}") from None


# ------------------------------------------------------------------------------------ compile
def cmd_compile(args) -> int:
    from edgesmith.compiler.build import compile_bundle
    from edgesmith.cli_progress import ConsoleProgress

    out = args.output or Path("dist") / _bundle_name(args.model, args.quant, args.target)
    progress = ConsoleProgress(quiet=args.quiet)
    compile_bundle(args.model, args.quant, args.target, out,
                   quantize_embedding=not args.float_embedding, dump_ir=args.dump_ir, progress=progress,
                   context=args.context, kv_dtype=args.kv_dtype)
    progress.done(f"bundle written to {out} ({_kv_summary(out)})")
    if args.eval:
        from edgesmith.runtime.evaluate import evaluate_bundle

        report = evaluate_bundle(out, args.model, progress=progress)
        print(_format_eval(report))
    return 0


def _kv_summary(bundle: Path) -> str:
    from edgesmith.compiler.bundle import read_manifest

    kv = read_manifest(bundle)["kv_cache"]
    window = f", sliding window {kv['sliding_window']}" if kv.get("sliding_window") else ""
    return (f"context {kv['max_total_seq_len']} tokens, KV cache {kv['dtype']} "
            f"{kv['bytes_per_token'] / 1024:.1f} KiB/token{window}")


def _bundle_name(model: str, quant: str, target: str) -> str:
    base = model.split("random:", 1)[1] if model.startswith("random:") else Path(model).name
    return f"{base.replace(':', '-').replace('=', '')}-{quant}-{target}"


def _format_eval(r: dict) -> str:
    return (f"accuracy vs q0f32 over {r['positions']} positions: top-1 agreement {100 * r['top1_agreement']:.1f}%, "
            f"mean KL {r['mean_kl']:.5f} nats, max |logit diff| {r['max_abs_diff']:.4f}")


# ------------------------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from edgesmith.compiler.bundle import read_manifest
    from edgesmith.runtime.text import Detokenizer, load_tokenizer

    manifest = read_manifest(args.bundle)
    tok = load_tokenizer(args.bundle)
    if args.tokens is not None:
        prompt = args.tokens
    elif args.prompt is not None:
        if tok is None:
            from edgesmith.errors import EdgesmithError
            raise EdgesmithError(f"bundle {args.bundle} has no tokenizer.json (random weights or none in the "
                                 "checkpoint); pass token ids with --tokens 1,2,3")
        prompt = tok.encode(args.prompt)
    else:
        prompt = [manifest["model"]["config"].get("bos_token_id") or 1]
    stop = tuple(manifest["model"]["config"].get("eos_token_ids") or ()) if not args.ignore_eos else ()
    stream = None if args.json else Detokenizer(tok, sys.stdout)
    if args.engine == "python" and not args.device:
        from edgesmith.runtime.engine import Engine
        from edgesmith.runtime.sampling import Sampler

        engine = Engine(args.bundle, context=args.context)
        result = engine.generate(prompt, args.max_new_tokens, Sampler(args.temperature, args.top_p, args.seed),
                                 stop, on_token=stream.token if stream else None).to_json()
    else:
        runner_args = ["generate", "--tokens", ",".join(map(str, prompt)), "-n", str(args.max_new_tokens),
                       "--temperature", str(args.temperature), "--top-p", str(args.top_p), "--seed", str(args.seed)]
        if args.context is not None:
            runner_args += ["--context", str(args.context)]
        if stop:
            runner_args += ["--stop-ids", ",".join(map(str, stop))]
        if stream:
            runner_args.append("--stream")
        lines = _run_runner(args, runner_args, on_line=(lambda d: stream.token(d["token"]) if "token" in d else None)
                            if stream else None)
        result = [d for d in lines if "output_ids" in d][-1]
    if args.json:
        if tok is not None:
            result["text"] = tok.decode(result["output_ids"])
        print(json.dumps(dict(result, prompt_ids=prompt, device=args.device or "host")))
    else:
        stream.finish()
        _print_timings(result)
    return 0


def _run_runner(args, runner_args: list[str], on_line=None) -> list[dict]:
    timeout = args.timeout
    if args.device:
        from edgesmith.runtime.devices import get_device
        from edgesmith.runtime.remote import run_bundle

        return run_bundle(get_device(args.device, args.devices), Path(args.bundle), runner_args,
                          timeout=timeout, on_line=on_line)
    from edgesmith.runtime.runner_exec import run_runner

    bundle = str(args.bundle)
    return run_runner(Path(bundle), [runner_args[0], bundle, *runner_args[1:]], timeout=timeout, on_line=on_line)


def _print_timings(r: dict) -> None:
    parts = [f"prompt {r['prompt_tokens']} tokens: {r.get('prefill_tok_s') or 0:.1f} tok/s",
             f"generated {len(r['output_ids'])} tokens: {r.get('decode_tok_s') or 0:.1f} tok/s"]
    if r.get("peak_rss_kb"):
        parts.append(f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB")
    print("\n[" + ", ".join(parts) + "]", file=sys.stderr)


# ------------------------------------------------------------------------------------ profile / compare
def _list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (e.g. 128,512), got {text!r}")
    return values


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
    sys.stdout.write(write(records, args.output))
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
    from edgesmith.targets.toolchains import format_targets_table

    print(format_targets_table())
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
        status = emulated.start_emulators()
        print(f"emulated devices running on loopback: board ssh port {status['ports']['ssh']}, phone adb "
              f"{status['host']}:{status['ports']['adb_device']} (adb server port {status['ports']['adb_server']}); "
              f"state in {status['state_dir']}")
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
                                   lease_timeout=args.lease_timeout), progress=say)
    print((args.out / "summary.md").read_text(), end="")
    return results["exit_code"]


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesmith", description="Compile Phi-3 models into int4 bundles for phones "
                                "and boards with Apache TVM, run them there, and measure them.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="checkpoint folder or random:<preset> -> bundle folder")
    c.add_argument("model", help="a Hugging Face folder (config.json, *.safetensors) or random:<preset>[:layers=N][:seed=S] "
                   "(presets: tiny, phi-3-mini-4k, phi-3-mini-128k, phi-3-medium-4k, phi-3.5-mini, phi-4-mini)")
    c.add_argument("--quant", default="q4f16", help="q4f16 (default), q4f32, q0f16, q0f32")
    c.add_argument("--target", default="host", help="target preset (see `edgesmith targets`); default host")
    c.add_argument("-o", "--output", type=Path, help="bundle folder to write (default dist/<model>-<quant>-<target>)")
    c.add_argument("--float-embedding", action="store_true", help="keep the embedding and lm_head in float")
    c.add_argument("--eval", action="store_true", help="also report top-1 agreement and KL against q0f32")
    c.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the IR after each pipeline phase")
    c.add_argument("--context", type=int, metavar="N", help="tokens the KV cache holds, up to the model's "
                   "max_position_embeddings (default: that, at most 4096)")
    c.add_argument("--kv-dtype", choices=["float16", "float32"], help="KV cache dtype (default float16 on GPUs "
                   "and ARM with fp16, float32 elsewhere)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_compile)

    def device_args(sp):
        sp.add_argument("--device", help="device name from devices.yaml (default: run here)")
        sp.add_argument("--devices", type=Path, help="devices.yaml to read (default ./devices.yaml)")
        sp.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up (default 600)")

    r = sub.add_parser("run", help="generate tokens with a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--prompt", help="text (needs the checkpoint's tokenizer.json in the bundle)")
    r.add_argument("--tokens", type=_ids, help="prompt as token ids: 1,2,3")
    r.add_argument("-n", "--max-new-tokens", type=int, default=32)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    r.add_argument("--json", action="store_true", help="print one JSON object (output_ids, text, timings)")
    r.add_argument("--engine", choices=["runner", "python"], default="runner",
                   help="the bundle's C++ runner (default) or TVM's Python VM in this process")
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
        sp.add_argument("-r", "--reps", type=int, default=3, help="repetitions at least (default 3)")
        sp.add_argument("--max-reps", type=int, default=10, help="repetitions at most (default 10)")
        sp.add_argument("--target-rsd", type=float, default=0.03, help="stop repeating once pp and tg spread "
                        "(sd/mean) is under this (default 0.03)")
        sp.add_argument("--warmup", type=int, default=1)
        sp.add_argument("--cool-below", type=_cool, default="auto", help="before each repetition wait until the "
                        "hottest thermal zone is under this °C; auto (default): the start temperature + 5; off")
        sp.add_argument("--cool-timeout", type=float, default=120.0, help="seconds to wait for it (default 120)")
        sp.add_argument("--max-temp", type=float, default=85.0, help="a repetition this hot is marked throttled")
        sp.add_argument("--kernels", type=int, default=10, metavar="N", help="top-N kernel table (0: skip the pass)")
        sp.add_argument("--membw-mb", type=int, default=256, help="buffer read to measure bandwidth (MiB)")
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

    t = sub.add_parser("targets", help="list target presets and whether their toolchains are present")
    t.set_defaults(func=cmd_targets)

    d = sub.add_parser("devices", help="list the devices of devices.yaml and probe them (in parallel)")
    d.add_argument("names", nargs="*", help="only these devices")
    d.add_argument("--devices", type=Path, help="devices.yaml to read (default ./devices.yaml)")
    d.add_argument("--no-probe", action="store_true", help="list without connecting")
    d.add_argument("--json", action="store_true")
    d.add_argument("--timeout", type=float, default=20.0, help="seconds per device (default 20)")
    d.set_defaults(func=cmd_devices)

    e = sub.add_parser("emulators", help="start/stop the emulated arm64 board (sshd) and phone (adb) on loopback")
    e.add_argument("action", choices=["start", "stop", "status"])
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
    fr.add_argument("--quant", default="q4f16")
    fr.add_argument("--devices", type=Path, help="devices.yaml (default ./devices.yaml; unused with a tracker)")
    fr.add_argument("-s", "--select", type=lambda t: [x for x in t.split(",") if x], default=[],
                    help="device names, tags or targets, comma-separated (default: every device)")
    fr.add_argument("--baseline", type=Path, help="a previous results.json or any `edgesmith profile` output")
    fr.add_argument("--out", type=Path, required=True, help="folder for the reports")
    fr.add_argument("--retries", type=int, default=1, help="tries again a failed device this many times (default 1)")
    fr.add_argument("--retry-delay", type=float, default=2.0, help="seconds between tries (default 2)")
    fr.add_argument("--allow-failures", type=int, default=0, help="devices that may fail without exit 4 (default 0)")
    fr.add_argument("--threshold", type=float, default=0.05, help="a row slower than the baseline beyond the noise "
                    "is a regression only past this fraction (default 0.05)")
    fr.add_argument("--priority", type=int, default=0, help="tracker queue priority, higher first (default 0)")
    fr.add_argument("--lease-timeout", type=float, default=3600.0, help="seconds to wait for a device (default 3600)")
    fr.add_argument("-p", "--prompt", type=_list, default=[128])
    fr.add_argument("-n", "--gen", type=_list, default=[128])
    fr.add_argument("-r", "--reps", type=int, default=3)
    fr.add_argument("--max-reps", type=int, default=10)
    fr.add_argument("--warmup", type=int, default=1)
    fr.add_argument("--target-rsd", type=float, default=0.03)
    fr.add_argument("--cool-below", type=_cool, default="auto")
    fr.add_argument("--kernels", type=int, default=0, metavar="N", help="top-N kernel table (default 0: skip)")
    fr.add_argument("--membw-mb", type=int, default=256)
    fr.add_argument("--timeout", type=float, default=600.0, help="seconds per runner command (default 600)")
    fr.add_argument("-q", "--quiet", action="store_true")
    farm_common(fr)

    fa = fs.add_parser("agent", help="publish this machine's devices on the tracker and hand out leases")
    fa.add_argument("--devices", type=Path, help="devices.yaml (default ./devices.yaml)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edgesmith.errors import EdgesmithError

    try:
        return args.func(args) or 0
    except EdgesmithError as e:
        if args.debug:
            raise
        print(f"edgesmith: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgesmith: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgesmith inspect B | head`: the reader left, nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"edgesmith: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
