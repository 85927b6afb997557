"""The whole profile of one bundle on one device, llama-bench style: every combination of
threads x prompt x gen runs (warm-up, then repetitions until the spread is under a target),
with the fit check before anything runs, the bandwidth measured once, a per-kernel pass per
combination, and the accuracy check when asked. Returns records (records.py)."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from edgesmith import __version__
from edgesmith.compiler.bundle.folder import read_manifest
from edgesmith.compiler.context import runtime_context
from edgesmith.errors import EdgesmithError
from edgesmith.runtime.profile import check as check_mod
from edgesmith.runtime.profile import fit, records, stats
from edgesmith.runtime.profile.kernels import kernel_table
from edgesmith.runtime.profile.roofline import roofline
from edgesmith.runtime.profile.profile_session import ProfileSession
from edgesmith.runtime.session import this_machine


@dataclass
class ProfileOptions:
    prompts: list[int] = field(default_factory=lambda: [128])
    gens: list[int] = field(default_factory=lambda: [128])
    threads: list[int] = field(default_factory=lambda: [0])  # 0: the runtime's default
    warmup: int = 1
    reps: int = 3            # at least
    max_reps: int = 10       # at most
    target_rsd: float = 0.03  # stop once pp and tg spread (sd / mean) are under this
    cool_below: float | str | None = "auto"  # °C; "auto": the start temperature + 5; None: never wait
    cool_timeout: float = 120.0
    cool_poll: float = 1.0
    max_temp: float = 85.0   # a repetition reaching this counts as throttled
    kernels_top: int = 10    # 0: no per-kernel pass
    kernel_gen: int = 32     # decode steps timed in the per-kernel pass (at most gen)
    membw_mb: int = 0  # 0: the runner sizes the buffer from the last-level cache
    check: bool = False
    reference: str | None = None
    sysroot: str = ""        # read sysfs and /proc/meminfo under this folder (a fake device state)
    timeout: float = 600.0   # per runner command
    seed: int = 0
    context: int | None = None  # KV cache tokens for every run (None: prompt + gen of each)


def _manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest()


def profile_bundle(bundle: Path, device=None, options: ProfileOptions | None = None, *, progress=None,
                   on_line=None) -> list[dict]:
    """Profile `bundle` on `device` (a devices.yaml Device; None: this machine). progress(str) is
    told what happens; on_line(command, json_line) sees every runner line as it arrives."""
    o = options or ProfileOptions()
    say = progress or (lambda msg: None)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    device = device or this_machine(manifest)
    params = fit.param_bytes(bundle)
    combos = list(itertools.product(o.threads, o.prompts, o.gens))
    for t, p, n in combos:
        if p < 1 or n < 1 or t < 0:
            raise EdgesmithError(f"prompt and gen lengths must be >= 1 and threads >= 0, got -p {p} -n {n} -t {t}")
    context = None
    if o.context is not None:
        context = runtime_context(manifest, o.context)
        longest = max(p + n for _, p, n in combos)
        if longest > context:
            raise EdgesmithError(f"--context {context} is shorter than the longest run (-p plus -n = {longest}); "
                                 f"use --context {longest} or more, or shorter -p/-n")

    say(f"profile: {bundle} on '{device.name}' ({len(combos)} combination{'s' * (len(combos) != 1)})")
    with ProfileSession(bundle, device, timeout=o.timeout, manifest=manifest, sysroot=o.sysroot) as s:
        if s.push_report is not None and s.push_report.sent:
            say(f"pushed {len(s.push_report.sent)} files ({s.push_report.bytes_sent / 1e6:.1f} MB)")
        probe = s.probe()
        state = s.memory_and_temperature()
        free = state["mem_free_bytes"]
        # Fit check for the largest combination, before anything is loaded on the device.
        needs = {(p, n): fit.memory_need(bundle, manifest, p, n, context) for _, p, n in combos}
        biggest = max(needs.values(), key=lambda d: d["need_bytes"])
        fit.check_fit(biggest, free, device.name)

        def run(args, verify=False):
            cmd = args[0]

            def each(line):
                if on_line:
                    on_line(cmd, line)
                if cmd == "profile" and "rep" in line and "event" not in line:  # each repetition as it ends
                    say(f"  rep {line['rep'] + 1}: pp {line.get('prefill_tok_s') or 0:.1f} tok/s, "
                        f"tg {line.get('decode_tok_s') or 0:.1f} tok/s")

            return s.runner(list(args) + ([] if verify else ["--no-verify"]), on_line=each)

        version = run(["version"], verify=True)[-1]
        mb = o.membw_mb or membw_size_mb(probe.get("llc_bytes"), free)
        say(f"memory bandwidth ({mb} MiB read: " + ("asked" if o.membw_mb else "4x the last-level cache") + ")")
        membw = [l for l in run(["membw", "--mb", mb, "-r", 5], verify=True) if l.get("summary")][-1]
        membw.setdefault("llc_bytes", probe.get("llc_bytes"))  # (an older runner does not say)
        verified = False
        check = None
        if o.check:
            check = check_mod.run_check(s, manifest, reference=o.reference, verify=True, progress=say)
            verified = True
            if not check["passed"]:
                raise check_mod.CheckFailed(check_mod.failure_message(device.name, check))
            say(f"check passed: top-1 {100 * check['top1_agreement']:.0f}%, mean KL {check['mean_kl']:.2e}, "
                f"max |diff| {check['max_abs_diff']:.2e}")

        cool = o.cool_below
        if cool == "auto":
            cool = state["max_temp_c"] + 5 if state["max_temp_c"] is not None else None

        out = []
        for t, p, n in combos:
            say(f"pp{p} tg{n}" + (f" threads {t}" if t else "") + f": warm-up {o.warmup}, {o.reps}..{o.max_reps} reps")
            common = ["--context", context or p + n, "--seed", o.seed] + (["--threads", t] if t else [])
            args = ["profile", "-p", p, "-n", n, "--warmup", o.warmup, "-r", o.reps, "--max-reps",
                    max(o.max_reps, o.reps), "--target-rsd", o.target_rsd, *common]
            if cool is not None:
                args += ["--cool-below", cool, "--cool-timeout", o.cool_timeout, "--cool-poll", o.cool_poll]
            if o.sysroot:
                args += ["--sysroot", o.sysroot]
            lines = run(args, verify=not verified)
            verified = True
            reps = [l for l in lines if "rep" in l and "event" not in l]
            events = [l for l in lines if "event" in l]
            summary = [l for l in lines if l.get("summary")][-1]
            kernels = None
            if o.kernels_top > 0:
                kernels = kernel_table(run(["kernels", "-p", p, "-n", min(n, o.kernel_gen), "--warmup", 1, *common]),
                                       o.kernels_top)
            pp = stats.summarize([r["prefill_tok_s"] for r in reps])
            tg = stats.summarize([r["decode_tok_s"] for r in reps])
            pp["seconds"] = [r["prefill_s"] for r in reps]
            tg["seconds"] = [r["decode_s"] for r in reps]
            # GPU bundles (OpenCL, WebGPU), counted by the plug-in: the kernels a decoded token
            # launched, the times the host waited for the device, and the stalls among those
            # (waits on queued kernels: one a token, its logits, when nothing syncs between kernels)
            for key, counted in (("kernels_per_token", "decode_launches"), ("host_waits_per_token", "decode_host_waits"),
                                 ("stalls_per_token", "decode_stalls")):
                tg[key] = None if summary.get(counted) is None else summary[counted] / n
            need = needs[(p, n)]
            record = {
                "schema": records.SCHEMA,
                "time": records.now_utc(),
                "bundle": records.bundle_section(bundle.resolve(), manifest, _manifest_sha(bundle)),
                "device": records.device_section(device, probe),
                "software": {"runner_sha256": getattr(manifest.files.get("bin/runner"), "sha256", None),
                             "tvm_version": version.get("tvm_version"), "edgesmith_version": __version__},
                "params": {"prompt": p, "gen": n, "threads": t, "warmup": o.warmup, "reps": o.reps,
                           "max_reps": max(o.max_reps, o.reps), "target_rsd": o.target_rsd,
                           "cool_below_c": cool, "max_temp_c": o.max_temp, "seed": o.seed},
                "pp": pp,
                "tg": tg,
                "reps": len(reps),
                "stop": summary["stop"],
                # the cores the runner ran on (big.LITTLE: runtime/runner/cores.h) and how it chose them
                "cores": {"cpus": summary.get("cpus"), "from": summary.get("cpus_from"),
                          "threads": summary.get("threads")},
                "stability": stats.assess(reps, events, target_rsd=o.target_rsd, max_temp_c=o.max_temp),
                "flags": [],
                "memory": {"peak_rss_bytes": summary["peak_rss_kb"] * 1024,
                           "rss_after_load_bytes": summary["rss_after_load_kb"] * 1024,
                           "weight_bytes": need["weight_bytes"], "kv_cache_bytes": need["kv_cache_bytes"],
                           "kv_context": need["kv_context"], "kv_window": need["sliding_window"],
                           "runtime_bytes": need["runtime_bytes"],
                           "need_bytes": need["need_bytes"], "free_bytes": free,
                           "fits": None if free is None else need["need_bytes"] <= free},
                "roofline": roofline(manifest, params, p, n, tg["mean"], membw, emulated=device.emulated),
                "kernels": kernels,
                "check": check,
            }
            record["flags"] = records.flags(record)
            out.append(record)
    return out


def membw_size_mb(llc_bytes: int | None, free_bytes: int | None) -> int:
    """The probe's buffer: four times the last-level cache, so decode-like streaming misses it, at
    least 256 MiB, at most a quarter of the free memory (the runner's own rule when run alone)."""
    mb = max(256, 4 * (llc_bytes or 0) >> 20)
    if free_bytes:
        mb = min(mb, max(64, free_bytes // 4 >> 20))
    return int(mb)

