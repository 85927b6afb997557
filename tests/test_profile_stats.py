"""The profile's arithmetic without a device: stability and throttling from sensor readings,
Welch's test, `compare` on records with chosen samples, and the csv cell encoding."""
from __future__ import annotations

import copy
import statistics

import pytest

from edgesmith.runtime.profile import formats, records, stats
from edgesmith.runtime.profile.compare import compare, format_compare, regressions


def _sensors(temp=None, cur=None, top=2000):
    return {"temps_c": {} if temp is None else {"cpu#0": temp}, "cur_mhz": [] if cur is None else [cur, cur],
            "max_mhz": [] if cur is None else [top, top]}


def _rep(pp, tg, before=None, after=None, cooldown=0.0):
    return {"prefill_tok_s": pp, "decode_tok_s": tg, "prefill_s": 1 / pp, "decode_s": 1 / tg, "cooldown_s": cooldown,
            "before": before or _sensors(), "after": after or _sensors()}


def test_sd_is_the_sample_sd():
    xs = [10.0, 12.0, 9.5, 11.0]
    assert stats.sd(xs) == pytest.approx(statistics.stdev(xs))
    assert stats.summarize(xs)["mean"] == pytest.approx(statistics.mean(xs), abs=1e-3)


def test_assess_stable_throttled_and_cooldown_timeout():
    steady = [_rep(100, 20, after=_sensors(50, 2000)), _rep(101, 20.1, after=_sensors(51, 2000))]
    a = stats.assess(steady, [], target_rsd=0.03, max_temp_c=85)
    assert a["stable"] and not a["throttled"] and a["max_temp_c"] == 51 and a["min_freq_ratio"] == 1.0

    slow_clock = [_rep(100, 20, after=_sensors(60, 1200)), _rep(100, 20, after=_sensors(60, 2000))]
    a = stats.assess(slow_clock, [], target_rsd=0.03, max_temp_c=85)
    assert a["throttled"] and "60%" in a["reasons"][0]

    hot = [_rep(100, 20, after=_sensors(90)), _rep(100, 20)]
    assert stats.assess(hot, [], target_rsd=0.03, max_temp_c=85)["throttled"]

    never_cooled = [{"event": "cooldown"}, {"event": "cooled", "timed_out": True}]
    a = stats.assess(steady, never_cooled, target_rsd=0.03, max_temp_c=85)
    assert a["throttled"] and a["cooldowns"] == 1

    noisy = [_rep(100, 20), _rep(150, 30)]
    assert not stats.assess(noisy, [], target_rsd=0.03, max_temp_c=None)["stable"]
    assert not stats.assess([_rep(100, 20)], [], target_rsd=0.03, max_temp_c=None)["stable"]


def _record(samples_tg, samples_pp=(500.0, 501.0, 499.0), device="pi5", emulated=False):
    rec = {k: None for k in records.SECTIONS}
    rec.update(schema=records.SCHEMA, time="2025-01-01T00:00:00Z", reps=len(samples_tg), stop="stable",
               bundle={"path": "/b", "sha256": "0" * 64, "model": "random:tiny (seed 0)", "fingerprint": "f" * 64,
                       "quant": "q4f16", "target": "arm64-linux", "arch": "aarch64"},
               device={"name": device, "transport": "ssh", "target": "arm64-linux", "emulated": emulated,
                       "emulated_by": None, "probe": {}},
               software={"runner_sha256": None, "tvm_version": "0.27.0.post1", "edgesmith_version": "0.1.0"},
               params={"prompt": 128, "gen": 64, "threads": 0, "warmup": 1, "reps": 3, "max_reps": 10,
                       "target_rsd": 0.03, "cool_below_c": None, "max_temp_c": 85.0, "seed": 0},
               pp=stats.summarize(list(samples_pp)), tg=stats.summarize(list(samples_tg)),
               stability={"stable": True, "throttled": False, "reasons": [], "cooldown_s": 0.0, "cooldowns": 0,
                          "max_temp_c": None, "min_freq_ratio": None},
               memory=dict.fromkeys(["peak_rss_bytes", "rss_after_load_bytes", "weight_bytes", "kv_cache_bytes",
                                     "kv_context", "runtime_bytes", "need_bytes", "free_bytes", "fits"]),
               roofline={"read_gb_s": None, "bytes_per_token": 1, "ceiling_tok_s": None, "fraction": None})
    rec["flags"] = records.flags(rec)
    return rec


def test_compare_flags_a_tight_slowdown_but_not_one_inside_wide_noise():
    tight_old = _record([20.0, 20.1, 19.9, 20.05, 19.95])
    tight_new = _record([18.0, 18.1, 17.9, 18.05, 17.95])  # -10%, sd 0.5%
    e = {x["test"]: x for x in compare([tight_old], [tight_new])}
    assert e["tg64@p128"]["change"] == pytest.approx(-0.10, abs=1e-3)
    assert e["tg64@p128"]["significant"] and e["tg64@p128"]["verdict"] == "SLOWER"
    assert e["pp128"]["verdict"] == "within noise"  # same pp samples on both sides
    assert len(regressions(list(e.values()))) == 1

    wide_old = _record([20.0, 14.0, 26.0, 17.0, 23.0])
    wide_new = _record([18.0, 12.6, 23.4, 15.3, 20.7])  # -10% too, inside a ±25% spread
    e = {x["test"]: x for x in compare([wide_old], [wide_new])}
    assert e["tg64@p128"]["change"] == pytest.approx(-0.10, abs=1e-3)
    assert e["tg64@p128"]["significant"] is False and e["tg64@p128"]["verdict"] == "within noise"
    assert "-10.0%" in format_compare(list(e.values()))


def test_compare_never_matches_emulated_with_real_and_says_so():
    real = _record([20.0, 20.1, 19.9], device="phone")
    emulated = _record([2.0, 2.1, 1.9], device="phone", emulated=True)
    entries = compare([real], [emulated])
    assert all(e["change"] is None for e in entries)
    assert {e["verdict"] for e in entries} == {"not comparable: emulated vs real device"}


def test_compare_single_samples_say_they_cannot_tell():
    e = compare([_record([20.0], [500.0])], [_record([10.0], [250.0])])
    assert {x["verdict"] for x in e} == {"too few samples to tell"}


def test_every_format_reads_back_awkward_values():
    rec = _record([20.0, 20.5])
    rec["bundle"]["model"] = "123"            # a string that reads as JSON
    rec["device"]["name"] = "true"
    rec["params"]["cool_below_c"] = None
    rec["stability"]["reasons"] = ['a "quoted", comma -> reason']
    rec["check"] = {"passed": True, "positions": 16, "top1_agreement": 1.0, "mean_kl": 0.0, "max_abs_diff": 0.0,
                    "reasons": [], "reference": {"bundle": "/cache/ref --> not a comment end"}}
    two = [rec, copy.deepcopy(_record([1.0, 2.0], device="board"))]
    for fmt in formats.FORMATS:
        text = formats.write(two, fmt)
        assert formats.read(text, fmt) == two, fmt
        assert formats.read(text) == two, f"{fmt} (sniffed)"


def test_read_refuses_other_files():
    with pytest.raises(Exception, match="not an edgesmith.profile/1 record"):
        formats.read('[{"a": 1}]', "json")


# ---------------------------------------------------------------- what bounds the roofline

def _roof(tok_s: float, per_token_mb: float, probe_gbs: float, llc_mib: float, emulated=False) -> dict:
    from edgesmith.runtime.profile.roofline import bound_roofline

    return bound_roofline(int(per_token_mb * 1e6), tok_s, {"read_gb_s": probe_gbs, "llc_bytes": int(llc_mib * (1 << 20)),
                                                           "spread": 0.02, "mb": 1024, "threads": 2}, emulated=emulated)


def test_roofline_from_dram():
    r = _roof(tok_s=8.0, per_token_mb=2200, probe_gbs=22.0, llc_mib=300)
    assert r["bound"] == "dram" and r["ceiling_tok_s"] == pytest.approx(10.0) and r["fraction"] == pytest.approx(0.8)


def test_roofline_never_above_100_percent():
    # decode streamed 9.9 x 2.2 = 21.8 GB/s while the probe said 9.7: the probe was wrong, not physics
    r = _roof(tok_s=9.9, per_token_mb=2200, probe_gbs=9.7, llc_mib=300)
    assert r["bound"] == "decode" and r["fraction"] == 1.0 and "more than the probe" in r["note"]
    rec = _record([10.0, 10.0], [9.9, 9.9])
    rec["roofline"] = r
    assert "decode-above-probe" in records.flags(rec)


def test_roofline_says_cache_when_a_token_fits_the_llc():
    r = _roof(tok_s=60.0, per_token_mb=250, probe_gbs=19.0, llc_mib=300)
    assert r["bound"] == "cache" and r["fraction"] is None and "last-level cache" in r["note"]


def test_roofline_under_qemu_gives_no_fraction():
    r = _roof(tok_s=0.2, per_token_mb=2200, probe_gbs=1.0, llc_mib=300, emulated=True)
    assert r["bound"] == "emulated" and r["fraction"] is None and r["ceiling_tok_s"] is None
