"""The profile record: one per (threads, prompt, gen) combination, the same in every format.

    schema      "edgesmith.profile/1"
    time        UTC, ISO 8601, when the combination finished
    bundle      path, sha256 (of manifest.json: it holds every file's sha256), model, fingerprint,
                quant, target, arch
    device      name, transport, target, emulated (bool), emulated_by, probe (runtime/probe.py)
    software    runner_sha256, tvm_version (the runner's runtime), edgesmith_version
    params      prompt, gen, threads (0 = the runtime's default), warmup, reps, max_reps,
                target_rsd, cool_below_c, max_temp_c, seed
    pp, tg      tok/s: mean, sd, rsd, n, samples (one per repetition); seconds (per repetition);
                tg also kernels_per_token: the kernels a decoded token launched, host_waits_per_token:
                the times the host waited for the device, stalls_per_token: those of them with
                kernels still queued; counted by the OpenCL/WebGPU plug-in (null on CPU and CUDA)
    reps, stop  repetitions measured; "stable" (spread under target) or "max_reps"
    stability   stable, throttled, reasons, cooldown_s, cooldowns, max_temp_c, min_freq_ratio
    flags       labels for tables: "emulated", "unstable", "throttled", "decode-above-probe",
                "cache-resident"
    memory      peak_rss_bytes, rss_after_load_bytes, weight_bytes, kv_cache_bytes, kv_context,
                kv_window (the model's sliding window, 0: none; past it the cache holds the
                window's pages only, whatever kv_context), runtime_bytes, need_bytes (the fit estimate), free_bytes (before the run), fits
    roofline    read_gb_s, probe {read_gb_s, median_gb_s, spread, mb, llc_bytes, threads},
                bytes_per_token, decode_gb_s, ceiling_tok_s, fraction (tg mean / ceiling), bound
                ("dram" | "cache" | "decode" | "emulated", roofline.py), note, kv_dtype
    kernels     prefill_s, decode_s, other_s, kernels, timing (host clock | per-dispatch waits |
                timestamp queries), top: [kernel, phase, calls, total_s,
                per_call_us, share] — or null when not measured
    check       the accuracy check (check.py) — or null when not asked for

Every section is always present (dict or null), with the same keys, so any format can be read
back into equal records.
"""
from __future__ import annotations

import datetime as _dt

SCHEMA = "edgesmith.profile/1"
SECTIONS = ("schema", "time", "bundle", "device", "software", "params", "pp", "tg", "reps", "stop", "stability",
            "flags", "memory", "roofline", "kernels", "check")
# What makes two rows the same measurement for `compare` (not the bundle's sha: that is what changes).
KEY = ("model", "quant", "target", "device", "emulated", "threads", "test")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def bundle_section(bundle, manifest, manifest_sha256: str) -> dict:
    return {"path": str(bundle), "sha256": manifest_sha256, "model": manifest.model.source,
            "fingerprint": manifest.model.fingerprint, "quant": manifest.quant,
            "target": manifest.target.preset, "arch": manifest.arch}


def device_section(device, probe: dict) -> dict:
    return {"name": device.name, "transport": device.transport, "target": device.target,
            "emulated": device.emulated, "emulated_by": " ".join(device.exec_wrapper) or None, "probe": probe}


def flags(record: dict) -> list[str]:
    out = []
    if record["device"]["emulated"]:
        out.append("emulated")
    if not record["stability"]["stable"]:
        out.append("unstable")
    if record["stability"]["throttled"]:
        out.append("throttled")
    bound = (record.get("roofline") or {}).get("bound")
    if bound == "decode":
        out.append("decode-above-probe")  # the probe read less than decode streamed: decode is the ceiling
    elif bound == "cache":
        out.append("cache-resident")      # a token's reads fit in the last-level cache: no DRAM fraction
    return out


def rows(record: dict) -> list[dict]:
    """The record's two test rows, pp<prompt> and tg<gen>, with their key properties."""
    out = []
    for test, size in (("pp", record["params"]["prompt"]), ("tg", record["params"]["gen"])):
        out.append({
            "model": record["bundle"]["model"], "quant": record["bundle"]["quant"],
            "target": record["bundle"]["target"], "device": record["device"]["name"],
            "emulated": record["device"]["emulated"], "threads": record["params"]["threads"],
            "test": f"{test}{size}" + (f"@p{record['params']['prompt']}" if test == "tg" else ""),
            "stats": record[test], "flags": record["flags"],
        })
    return out


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)
