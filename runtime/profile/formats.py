"""Writers and readers for profile records: md, json, jsonl, csv. Every format reads back into
the records it was written from:

    json    a list of records
    jsonl   one record per line
    csv     one row per record; sections flattened to `section.field` columns, anything that is
            not a number/string/bool (samples, reasons, probe, kernels, check) as a JSON cell
    md      the tables people read, each record also kept whole in an HTML comment
            (`<!-- edgesmith-record: {...} -->`, invisible when rendered)
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.profile import records

FORMATS = ("md", "json", "jsonl", "csv")
FLAT = ("bundle", "device", "software", "params", "pp", "tg", "stability", "memory", "roofline")
_COMMENT = re.compile(r"^<!-- edgesmith-record: (.*) -->$", re.M)


def write(recs: list[dict], fmt: str, *, embed_records: bool = True) -> str:
    """`recs` in `fmt`. md embeds each record in an HTML comment (so `compare` reads the file
    back) unless embed_records is False: a terminal shows people the tables only."""
    if fmt == "json":
        return json.dumps(recs, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in recs)
    if fmt == "csv":
        return _write_csv(recs)
    if fmt == "md":
        return _write_md(recs, embed_records)
    raise EdgesmithError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")


def read(text: str, fmt: str | None = None) -> list[dict]:
    fmt = fmt or sniff(text)
    try:
        if fmt == "json":
            data = json.loads(text)
            recs = data if isinstance(data, list) else [data]
        elif fmt == "jsonl":
            recs = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        recs.append(json.loads(line))
                    except ValueError as err:
                        raise EdgesmithError(f"line {n}: not a JSON record ({err})") from None
        elif fmt == "csv":
            recs = _read_csv(text)
        elif fmt == "md":
            recs = [json.loads(m) for m in _COMMENT.findall(text)]
        else:
            raise EdgesmithError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    except json.JSONDecodeError as err:
        raise EdgesmithError(f"line {err.lineno}: not a readable {fmt} profile ({err.msg})") from None
    except (ValueError, csv.Error) as err:
        raise EdgesmithError(f"not a readable {fmt} profile ({err})") from None
    if not recs:
        raise EdgesmithError(f"holds no edgesmith profile records (expected what `edgesmith profile -o "
                             f"{'|'.join(FORMATS)}` writes)")
    for n, r in enumerate(recs, 1):
        if not isinstance(r, dict) or r.get("schema") != records.SCHEMA:
            found = r.get("schema") if isinstance(r, dict) else type(r).__name__
            where = f"line {r.pop('_line')}" if isinstance(r, dict) and "_line" in r else f"record {n}"
            raise EdgesmithError(f"{where}: not an {records.SCHEMA} record (found schema {found!r})")
        r.pop("_line", None)
    return recs


def sniff(text: str) -> str:
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":  # jsonl: every line a record; json: one (indented) record
        lines = [l for l in text.splitlines() if l.strip()]
        return "jsonl" if all(l.startswith("{") for l in lines) else "json"
    if "<!-- edgesmith-record:" in text:
        return "md"
    return "csv"


def read_file(path: Path) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise EdgesmithError(f"cannot read profile {path}: {err.strerror}") from None
    ext = path.suffix.lstrip(".")
    try:
        return read(text, ext if ext in FORMATS else None)
    except EdgesmithError as err:
        raise EdgesmithError(f"{path}: {err}") from None


# ------------------------------------------------------------------ csv

def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:  # a string that reads as JSON (or is empty) is written quoted, so it reads back a string
            json.loads(value)
            return json.dumps(value)
        except ValueError:
            return value if value else json.dumps(value)
    return json.dumps(value)


def _uncell(text: str):
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _write_csv(recs: list[dict]) -> str:
    flat = []
    for r in recs:
        row = {}
        for key, value in r.items():
            if key in FLAT and isinstance(value, dict):
                row.update({f"{key}.{k}": _cell(v) for k, v in value.items()})
            else:
                row[key] = _cell(value)
        flat.append(row)
    columns = list(dict.fromkeys(c for row in flat for c in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def _read_csv(text: str) -> list[dict]:
    out = []
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        if None in row or None in row.values():  # more or fewer cells than the header has
            cells = len(row) - (None in row) + len(row.get(None) or ()) - sum(v is None for v in row.values())
            raise EdgesmithError(f"line {reader.line_num}: {cells} cells where the header has "
                                 f"{len(reader.fieldnames)}; fix or remove that line")
        rec: dict = {"_line": reader.line_num}
        for col, cell in row.items():
            section, dot, field = col.partition(".")
            if dot and section in FLAT:
                rec.setdefault(section, {})[field] = _uncell(cell)
            else:
                rec[col] = _uncell(cell)
        out.append(rec)
    return out


# ------------------------------------------------------------------ markdown

def _mib(b) -> str:
    return "-" if b is None else f"{b / (1 << 20):.1f} MiB"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The one markdown table writer (profiles, compare, the farm's summary, bench's scripts); the
    readers below parse what it writes."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _write_md(recs: list[dict], embed_records: bool = True) -> str:
    header = ["model", "quant", "target", "device", "threads", "test", "t/s", "reps", "peak RSS", "roofline",
              "flags"]
    rows = []
    for rec in recs:
        for row in records.rows(rec):
            s = row["stats"]
            roof = rec["roofline"]
            is_tg = row["test"].startswith("tg")
            rows.append([
                row["model"], row["quant"], row["target"], row["device"] + (" (emulated)" if row["emulated"] else ""),
                str(row["threads"] or "auto"), row["test"], f"{s['mean']:.2f} ± {s['sd']:.2f}", str(s["n"]),
                _mib(rec["memory"]["peak_rss_bytes"]),
                _roof_cell(roof) if is_tg else "",
                ", ".join(rec["flags"]),
            ])
    parts = [markdown_table(header, rows)]
    if any(r["device"]["emulated"] for r in recs):
        parts.append("_emulated: timings under qemu, never compared with a real device's._")
    for rec in recs:
        parts.append(_details(rec))
    if embed_records:
        parts.append("\n".join(f"<!-- edgesmith-record: {json.dumps(r).replace('>', chr(92) + 'u003e')} -->"
                               for r in recs))
    return "\n\n".join(parts) + "\n"


def _roof_cell(roof: dict) -> str:
    bound = roof.get("bound")
    if bound in ("dram", "decode") and roof["fraction"] is not None:
        return f"{100 * roof['fraction']:.0f}% of {roof['ceiling_tok_s']:.1f}" + (" (decode's own)" if bound == "decode"
                                                                                   else "")
    return {"cache": "cache-resident", "emulated": "emulated"}.get(bound, "")


def _window(m: dict) -> str:
    """' (sliding window W: the window's pages)' where the run's cache slid, else ''."""
    window = m.get("kv_window") or 0
    return f" (sliding window {window}: the window's pages)" if window and m["kv_context"] > window else ""


def _details(rec: dict) -> str:
    p, m, roof, st = rec["params"], rec["memory"], rec["roofline"], rec["stability"]
    title = f"### {rec['device']['name']} · pp{p['prompt']} tg{p['gen']}" + (f" · {p['threads']} threads" if p["threads"] else "")
    lines = [title, ""]
    lines.append(f"- memory: peak RSS {_mib(m['peak_rss_bytes'])} (after load {_mib(m['rss_after_load_bytes'])}); "
                 f"weights {_mib(m['weight_bytes'])}, KV cache {_mib(m['kv_cache_bytes'])} for {m['kv_context']} tokens"
                 f"{_window(m)}; "
                 f"estimate {_mib(m['need_bytes'])} of {_mib(m['free_bytes'])} free")
    if roof["read_gb_s"]:
        probe = roof.get("probe") or {}
        steady = (f", passes within {100 * probe['spread']:.1f}%" if probe.get("spread") is not None else "")
        where = f" ({probe['mb']} MiB, {probe['threads']} threads{steady})" if probe.get("mb") else ""
        line = (f"- roofline: read bandwidth {roof['read_gb_s']:.2f} GB/s{where}"
                + (" (emulated)" if roof.get("bound") == "emulated" else "")
                + f"; {roof['bytes_per_token'] / 1e6:.2f} MB per token")
        if roof.get("bound") == "dram":
            line += (f" -> at most {roof['ceiling_tok_s']:.1f} tok/s; decode reaches {100 * roof['fraction']:.1f}% "
                     "of the DRAM ceiling")
        if roof.get("note"):
            line += f"; {roof['note']}"
        lines.append(line)
    verdict = "stable" if st["stable"] else "UNSTABLE"
    # (the spread's numbers are said once, here; the reasons say why it is unstable)
    lines.append(f"- stability: {verdict} after {rec['reps']} repetitions (spread pp ±{100 * rec['pp']['rsd']:.1f}%, "
                 f"tg ±{100 * rec['tg']['rsd']:.1f}%)"
                 + (f"; hottest {st['max_temp_c']:.1f} °C" if st["max_temp_c"] is not None else "")
                 + (f"; cooled down {st['cooldowns']}x, {st['cooldown_s']:.1f} s" if st["cooldowns"] else "")
                 + ("; THROTTLED" if st["throttled"] else "")
                 + (f" — {'; '.join(st['reasons'])}" if st["reasons"] else ""))
    if rec["tg"].get("kernels_per_token") is not None:
        lines.append(f"- kernels per decoded token: {rec['tg']['kernels_per_token']:g} (launches counted by the "
                     "device plug-in)")
    if rec["tg"].get("stalls_per_token") is not None:
        lines.append(f"- host waits per decoded token: {rec['tg']['host_waits_per_token']:g}, of them "
                     f"{rec['tg']['stalls_per_token']:g} on queued kernels (the rest on copies alone)")
    c = rec.get("check")
    if c:
        lines.append(f"- check vs host reference: {'passed' if c['passed'] else 'FAILED'} — top-1 "
                     f"{100 * c['top1_agreement']:.0f}%, mean KL {c['mean_kl']:.2e}, max |logit diff| "
                     f"{c['max_abs_diff']:.2e} over {c['positions']} positions")
    k = rec.get("kernels")
    if k:
        lines += ["", f"Top {len(k['top'])} of {k['kernels']} kernels by phase (one pass, timed by "
                  f"{k.get('timing', 'host clock')}; prefill {1e3 * k['prefill_s']:.2f} ms, "
                  f"decode {1e3 * k['decode_s']:.2f} ms; outside kernels: prefill {1e3 * k['other_s']['prefill']:.2f} ms, "
                  f"decode {1e3 * k['other_s']['decode']:.2f} ms):", ""]
        lines.append(markdown_table(["kernel", "phase", "calls", "total ms", "µs/call", "share"],
                            [[r["kernel"], r["phase"], str(r["calls"]), f"{1e3 * r['total_s']:.3f}",
                              f"{r['per_call_us']:.1f}", f"{100 * r['share']:.1f}%" if r["share"] is not None else ""]
                             for r in k["top"]]))
    return "\n".join(lines)
