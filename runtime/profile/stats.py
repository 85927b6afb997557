"""Numbers from samples: mean ± sd, relative spread, and whether two sets of samples differ by
more than their noise (Welch's t-test at 95%); stability and throttling of a profile's
repetitions from the sensor readings the runner took around each one."""
from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t by degrees of freedom (1..30); 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def sd(xs: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two samples."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def rsd(xs: list[float]) -> float:
    m = mean(xs)
    return sd(xs) / m if m else 0.0


def summarize(samples: list[float]) -> dict:
    """{mean, sd, rsd, n, samples} of tok/s samples (rounded for reading, samples kept)."""
    return {"mean": round(mean(samples), 3), "sd": round(sd(samples), 3), "rsd": round(rsd(samples), 5),
            "n": len(samples), "samples": [round(x, 3) for x in samples]}


def t_critical(df: float) -> float:
    if df < 1:
        return math.inf
    return _T95[int(df) - 1] if df < 31 else 1.96


@dataclass
class Difference:
    change: float  # (new - old) / old
    t: float
    df: float
    significant: bool | None  # None: too few samples to tell


def welch(old: list[float], new: list[float]) -> Difference:
    """Is mean(new) different from mean(old) beyond the samples' noise?"""
    m0, m1 = mean(old), mean(new)
    change = (m1 - m0) / m0 if m0 else math.inf
    if len(old) < 2 or len(new) < 2:
        return Difference(change, math.nan, 0, None)
    v0, v1 = sd(old) ** 2 / len(old), sd(new) ** 2 / len(new)
    if v0 + v1 == 0:
        return Difference(change, math.inf if m1 != m0 else 0.0, len(old) + len(new) - 2, m1 != m0)
    t = (m1 - m0) / math.sqrt(v0 + v1)
    df = (v0 + v1) ** 2 / ((v0 ** 2 / (len(old) - 1) if v0 else 0) + (v1 ** 2 / (len(new) - 1) if v1 else 0))
    return Difference(change, t, df, abs(t) > t_critical(df))


# ------------------------------------------------------------------ stability and throttling

FREQ_RATIO_THROTTLED = 0.85  # cores running below 85% of their maximum right after the work


def max_temp(sensors: dict) -> float | None:
    temps = list((sensors or {}).get("temps_c", {}).values())
    return max(temps) if temps else None


def freq_ratio(sensors: dict) -> float | None:
    cur, top = (sensors or {}).get("cur_mhz") or [], (sensors or {}).get("max_mhz") or []
    ratios = [c / m for c, m in zip(cur, top) if m]
    return sum(ratios) / len(ratios) if ratios else None


def assess(reps: list[dict], events: list[dict], *, target_rsd: float, max_temp_c: float | None) -> dict:
    """Stability and throttling of one combination's repetitions (the runner's rep lines and its
    cooldown events): {stable, throttled, reasons, cooldown_s, max_temp_c, min_freq_ratio}."""
    reasons = []
    pp = [r["prefill_tok_s"] for r in reps]
    tg = [r["decode_tok_s"] for r in reps]
    stable = len(reps) >= 2 and rsd(pp) <= target_rsd and rsd(tg) <= target_rsd
    if len(reps) < 2:
        reasons.append("one repetition: no spread to judge")
    elif not stable:
        reasons.append(f"spread above the {100 * target_rsd:g}% target")
    temps = [t for r in reps for t in (max_temp(r.get("before")), max_temp(r.get("after"))) if t is not None]
    ratios = [x for r in reps if (x := freq_ratio(r.get("after"))) is not None]
    throttled = False
    if ratios and min(ratios) < FREQ_RATIO_THROTTLED:
        throttled = True
        reasons.append(f"CPU frequency fell to {100 * min(ratios):.0f}% of its maximum during a repetition")
    if max_temp_c is not None and temps and max(temps) >= max_temp_c:
        throttled = True
        reasons.append(f"temperature reached {max(temps):.1f} °C (limit {max_temp_c:g} °C)")
    if any(e.get("event") == "cooled" and e.get("timed_out") for e in events):
        throttled = True
        reasons.append("did not cool down below the threshold before the timeout")
    return {
        "stable": stable,
        "throttled": throttled,
        "reasons": reasons,
        "cooldown_s": round(sum(r.get("cooldown_s", 0) for r in reps), 3),
        "cooldowns": sum(1 for e in events if e.get("event") == "cooldown"),
        "max_temp_c": max(temps) if temps else None,
        "min_freq_ratio": round(min(ratios), 3) if ratios else None,
    }
