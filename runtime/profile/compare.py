"""`edgesmith compare OLD NEW`: rows of two profiles matched on their key properties (model,
quant, target, device, emulated, threads, test — records.KEY), the % change of the mean, and
whether it exceeds the noise of the samples (Welch's t-test, 95%).

An emulated row is never matched with a real device's, whatever the names say.
"""
from __future__ import annotations

from edgesmith.runtime.profile import records
from edgesmith.runtime.profile.formats import markdown_table
from edgesmith.runtime.profile.stats import welch


def compare(old: list[dict], new: list[dict]) -> list[dict]:
    """One entry per row of either side: {key fields, old, new, change, t, significant, verdict}."""
    old_rows = {records.row_key(r): r for rec in old for r in records.rows(rec)}
    new_rows = {records.row_key(r): r for rec in new for r in records.rows(rec)}
    out = []
    for key in list(dict.fromkeys([*old_rows, *new_rows])):
        a, b = old_rows.get(key), new_rows.get(key)
        entry = dict(zip(records.KEY, key), old=a["stats"]["mean"] if a else None, new=b["stats"]["mean"] if b else None,
                     change=None, t=None, significant=None)
        if a is None or b is None:
            twin = _other_kind(key, old_rows if a is None else new_rows)
            entry["verdict"] = ("not comparable: emulated vs real device" if twin else
                                f"only in {'new' if a is None else 'old'}")
        else:
            d = welch(a["stats"]["samples"], b["stats"]["samples"])
            entry.update(change=d.change, t=None if d.t != d.t else round(d.t, 2), significant=d.significant)
            if d.significant is None:
                entry["verdict"] = "too few samples to tell"
            elif d.significant:
                entry["verdict"] = "faster" if d.change > 0 else "SLOWER"
            else:
                entry["verdict"] = "within noise"
        out.append(entry)
    return out


def _other_kind(key: tuple, rows: dict) -> bool:
    """Is there a row with the same key but the other emulated flag?"""
    i = records.KEY.index("emulated")
    flipped = key[:i] + (not key[i],) + key[i + 1:]
    return flipped in rows


def regressions(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["significant"] and e["change"] < 0]


def format_compare(entries: list[dict]) -> str:
    header = ["model", "quant", "target", "device", "threads", "test", "old t/s", "new t/s", "change", "verdict"]
    rows = []
    for e in entries:
        rows.append([str(e["model"]), e["quant"], e["target"], e["device"] + (" (emulated)" if e["emulated"] else ""),
                     str(e["threads"] or "auto"), e["test"],
                     "" if e["old"] is None else f"{e['old']:.2f}", "" if e["new"] is None else f"{e['new']:.2f}",
                     "" if e["change"] is None else f"{100 * e['change']:+.1f}%", e["verdict"]])
    return markdown_table(header, rows)
