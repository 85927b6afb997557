"""Decode is memory-bound: every generated token reads every weight once (the embedding table
only one row, unless lm_head shares it) and the KV cache up to the current position. With the
device's measured read bandwidth B, no decode can beat B / bytes-per-token tokens/sec; the
fraction of that ceiling a run reaches says how much is left to win.

What bounds it (`bound`), and so what the fraction means:
  dram      the probe's bandwidth (runner membw: all threads, a buffer 4x the last-level cache)
  cache     what decode reads per token fits in the last-level cache: it streams from cache, not
            DRAM, so a DRAM fraction would say nothing (none is given)
  decode    decode streamed more than the probe read: decode's own rate is the ceiling (fraction
            1.0) and the record says so, rather than printing more than 100%
  emulated  qemu: the probe measured the emulator, not a device (no ceiling, no fraction)
"""
from __future__ import annotations

from edgesmith.compiler.models import for_config
from edgesmith.runtime.profile.fit import kv_bytes_per_token


def bytes_per_token(manifest, params: dict[str, int], prompt: int, gen: int) -> int:
    """Bytes read per decoded token, averaged over a decode of `gen` tokens after `prompt`."""
    cfg = manifest.config
    weights = for_config(cfg).weights_read_per_token(cfg, params)  # the embedding table: one row
    # KV read per token, in the cache's dtype: every key and value the new token attends to, the
    # whole sequence so far or the last `sliding_window` of it, averaged over the decode.
    per_position = kv_bytes_per_token(manifest)
    window = manifest.kv_cache.sliding_window or 0
    seen = [prompt + i + 1 for i in range(gen)]
    mean_seen = sum(min(n, window) if window else n for n in seen) / max(gen, 1)
    return int(weights + per_position * mean_seen)


def roofline(manifest, params: dict[str, int], prompt: int, gen: int, decode_tok_s: float,
             membw: dict | None, *, emulated: bool = False) -> dict:
    """The record's roofline section from the bytes a token reads, decode's speed and the runner's
    membw summary ({read_gb_s, median_gb_s, spread, mb, llc_bytes, threads})."""
    out = bound_roofline(bytes_per_token(manifest, params, prompt, gen), decode_tok_s, membw, emulated=emulated)
    return dict(out, kv_dtype=manifest.kv_dtype)


def bound_roofline(per_token: int, decode_tok_s: float, membw: dict | None, *, emulated: bool = False) -> dict:
    """roofline() once the bytes per token are known: what bounds decode, and how near it is."""
    membw = membw or {}
    probe = {k: membw.get(k) for k in ("read_gb_s", "median_gb_s", "spread", "mb", "llc_bytes", "threads")}
    out = {"read_gb_s": probe["read_gb_s"], "probe": probe, "bytes_per_token": per_token,
           "decode_gb_s": round(decode_tok_s * per_token / 1e9, 3), "ceiling_tok_s": None, "fraction": None,
           "bound": None, "note": None}
    llc = probe["llc_bytes"] or 0
    if emulated:
        out.update(bound="emulated", note="timings under qemu: the probe measured the emulator, not the device")
    elif llc and per_token <= llc:
        out.update(bound="cache", note=f"the {per_token / 1e6:.0f} MB read per token fits in the "
                                       f"{llc / (1 << 20):.0f} MiB last-level cache: decode streams from cache, "
                                       "not DRAM, so no DRAM fraction is given")
    elif probe["read_gb_s"]:
        achieved = decode_tok_s * per_token / 1e9
        if achieved > probe["read_gb_s"]:
            out.update(ceiling_tok_s=round(decode_tok_s, 3), fraction=1.0, bound="decode",
                       note=f"decode streamed {achieved:.1f} GB/s, more than the probe's {probe['read_gb_s']:.1f} "
                            "GB/s: decode's own rate is the ceiling")
        else:
            ceiling = probe["read_gb_s"] * 1e9 / per_token
            out.update(ceiling_tok_s=round(ceiling, 3), fraction=round(decode_tok_s / ceiling, 4), bound="dram")
    return out
