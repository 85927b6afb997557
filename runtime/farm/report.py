"""The farm's reports, all from the results (run.assemble):

    results.json   the results as they are (schema edgesmith.farm/1), profile records included
    summary.md     verdict, devices, and the rows — for a CI job summary ($GITHUB_STEP_SUMMARY)
    junit.xml      one test case per device x bundle; a failure carries the reason
    report.html    self-contained: tables and inline SVG plots (tok/s per device with spread,
                   against the baseline), no script, no network
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from xml.etree import ElementTree as ET

from edgesmith.runtime.profile.formats import markdown_table

VERDICT = {"pass": "PASS", "regression": "REGRESSION", "failures": "FAILED"}


def write_reports(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "summary.md").write_text(summary_md(results))
    (out / "junit.xml").write_text(junit_xml(results))
    (out / "report.html").write_text(report_html(results))


def _num(x, fmt=".2f") -> str:
    return "" if x is None else format(x, fmt)


def _change(r) -> str:
    return "" if r["change"] is None else f"{100 * r['change']:+.1f}%"


# ------------------------------------------------------------------ markdown

def _flags(r: dict) -> str:
    """A row's flags (unstable, throttled, emulated, ...), as the profile records them."""
    return ", ".join(r.get("flags") or [])


def _device(res: dict, name: str) -> str:
    emulated = {d["name"]: d["emulated"] for d in res["devices"]}
    return name + (" (emulated)" if emulated.get(name) else "")


def _verdict(res: dict) -> str:
    """PASS, REGRESSION or FAILED; a pass with unstable rows says so (their speeds spread beyond
    --target-rsd: a pass on numbers that moved)."""
    word = VERDICT[res["verdict"]]
    unstable = sum("unstable" in (r.get("flags") or []) for r in res["results"])
    if unstable:
        word += f" ({unstable} of {len(res['results'])} row{'s' * (len(res['results']) != 1)} unstable)"
    return word


def summary_md(res: dict) -> str:
    c = res["counts"]
    lines = [f"## edgesmith farm: {_verdict(res)} (exit {res['exit_code']})", "",
             f"{res['model']} at {res['quant']} on {c['devices']} device(s): {c['passed']} passed, "
             f"{c['failed']} failed (allowed {res['policy']['allow_failures']}), {c['regressions']} regressed row(s)"
             + (f" against `{res['baseline']}`" if res["baseline"] else " (no baseline)") + ".", "",
             markdown_table(["device", "target", "status", "attempts", "reason"], [
                 [d["name"] + (" (emulated)" if d["emulated"] else ""), d["target"], d["status"], str(len(d["attempts"])),
                  (d["reason"] or "").replace("|", "\\|").replace("\n", " ")] for d in res["devices"]]),
             "",
             markdown_table(["device", "test", "tok/s", "± sd", "n", "baseline", "change", "verdict", "flags"], [
                 [_device(res, r["device"]), r["test"], _num(r["mean"]), _num(r["sd"]), str(r["n"]),
                  _num(r["baseline"]["mean"]) if r["baseline"] else "", _change(r), r["verdict"], _flags(r)]
                 for r in res["results"]])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ junit

def junit_xml(res: dict) -> str:
    """One <testcase> per device x bundle: its rows' verdicts as output; failed or regressed carry why."""
    suite = ET.Element("testsuite", name="edgesmith-farm", tests=str(len(res["devices"])),
                       failures=str(sum(d["status"] == "regression" for d in res["devices"])),
                       errors=str(sum(d["status"] == "failed" for d in res["devices"])),
                       time=str(res.get("seconds", 0)))
    for d in res["devices"]:
        bundle = next((b for b in res["bundles"] if b["target"] == d["target"]), {})
        name = f"{d['name']} x {Path(bundle.get('path') or d['target']).name}"
        case = ET.SubElement(suite, "testcase", classname=f"farm.{d['target']}", name=name,
                             time=str(round(sum(a["seconds"] for a in d["attempts"]), 2)))
        rows = [r for r in res["results"] if r["device"] == d["name"]]
        # The rows' flags as properties, so a CI's test view shows an unstable or emulated pass as such.
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="emulated", value=str(bool(d["emulated"])).lower())
        for r in rows:
            ET.SubElement(props, "property", name=f"{r['test']}.flags", value=_flags(r))
        if d["status"] == "failed":
            ET.SubElement(case, "error", message=d["reason"] or "failed", type="DeviceFailure").text = \
                "\n".join(f"attempt {a['attempt']}: {a['error']}" for a in d["attempts"]) or d["reason"]
        elif d["status"] == "regression":
            bad = [r for r in rows if r["status"] == "regression"]
            ET.SubElement(case, "failure", message="; ".join(f"{r['test']}: {r['reason']}" for r in bad),
                          type="Regression").text = "\n".join(f"{r['test']}: {r['reason']}" for r in bad)
        ET.SubElement(case, "system-out").text = "\n".join(
            f"{r['test']}: {_num(r['mean'])} ± {_num(r['sd'])} tok/s ({r['verdict']})"
            + (f" [{_flags(r)}]" if _flags(r) else "") for r in rows)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


# ------------------------------------------------------------------ html + svg

def _bar_chart(title: str, rows: list[dict]) -> str:
    """Horizontal bars: one per device (mean tok/s), a whisker for ± sd and dots for the samples;
    the baseline as an outlined bar under it. rows: [{label, mean, sd, samples, baseline, status}]."""
    if not rows:
        return ""
    top = max([r["mean"] + r["sd"] for r in rows if r["mean"] is not None] +
              [s for r in rows for s in r["samples"]] +
              [r["baseline"]["mean"] + r["baseline"]["sd"] for r in rows if r["baseline"]] + [1e-9])
    ticks = nice_ticks(top)
    left, width, bar, gap = 170, 480, 14, 12
    height = 40 + len(rows) * (2 * bar + gap) + 30
    x = lambda v: left + width * v / ticks[-1]  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{left + width + 90}" height="{height}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="10" y="20" font-weight="bold">{html.escape(title)}</text>']
    colors = {"passed": "#2b8a3e", "regression": "#e8590c", "failed": "#c92a2a"}
    for i, r in enumerate(rows):
        y = 35 + i * (2 * bar + gap)
        out.append(f'<text x="{left - 8}" y="{y + bar - 3}" text-anchor="end">{html.escape(r["label"])}</text>')
        if r["mean"] is None:
            out.append(f'<text x="{left + 4}" y="{y + bar - 3}" fill="{colors["failed"]}">failed</text>')
            continue
        out.append(f'<rect class="bar" x="{left}" y="{y}" width="{x(r["mean"]) - left:.1f}" height="{bar}" '
                   f'fill="{colors.get(r["status"], "#1c7ed6")}"><title>{r["mean"]:.2f} ± {r["sd"]:.2f} tok/s'
                   f'</title></rect>')
        lo, hi = x(max(r["mean"] - r["sd"], 0)), x(r["mean"] + r["sd"])
        out.append(f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + bar / 2}" y2="{y + bar / 2}" stroke="#000"/>')
        for s in r["samples"]:
            out.append(f'<circle cx="{x(s):.1f}" cy="{y + bar / 2}" r="2" fill="#fff" stroke="#000"/>')
        # the value past everything drawn on its row (whisker and sample dots), never over them
        label_x = max([hi, *(x(s) for s in r["samples"])]) + 6
        out.append(f'<text class="value" x="{label_x:.1f}" y="{y + bar - 3}">{r["mean"]:.1f}</text>')
        if r["baseline"]:
            b = r["baseline"]
            out.append(f'<rect class="baseline" x="{left}" y="{y + bar}" width="{x(b["mean"]) - left:.1f}" '
                       f'height="{bar - 4}" fill="none" stroke="#495057" stroke-dasharray="3 2">'
                       f'<title>baseline {b["mean"]:.2f} ± {b["sd"]:.2f} tok/s</title></rect>')
    axis_y = height - 22
    out.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#868e96"/>')
    for v in ticks:
        out.append(f'<text class="tick" x="{x(v):.1f}" y="{axis_y + 15}" text-anchor="middle" font-size="11">'
                   f'{v:g}</text>')
    out.append(f'<text x="{left + width + 8}" y="{axis_y + 4}" font-size="11">tok/s</text></svg>')
    return "\n".join(out)


def nice_ticks(top: float, most: int = 6) -> list[float]:
    """Axis ticks from 0 past `top` in a round step (1, 2 or 5 times a power of ten): 0, 10000,
    20000, 30000, 40000 rather than 0, 19342, 38684."""
    import math

    raw = top / (most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(k * step, 12) for k in range(n + 1)] if n >= 1 else [0.0, step]


def report_html(res: dict) -> str:
    # Real and emulated devices on separate charts: their speeds differ by orders of magnitude and
    # are never compared with each other.
    emulated = {d["name"]: d["emulated"] for d in res["devices"]}
    charts = []
    for test in dict.fromkeys(r["test"] for r in res["results"]):
        for emu in (False, True):
            rows = [{"label": r["device"], "mean": r["mean"], "sd": r["sd"] or 0.0, "samples": r["samples"],
                     "baseline": r["baseline"], "status": r["status"]}
                    for r in res["results"] if r["test"] == test and emulated.get(r["device"]) == emu]
            kind = "prompt processing" if test.startswith("pp") else "generation"
            charts.append(_bar_chart(f"{test} ({kind}){' on emulated devices (qemu)' if emu else ''}: tok/s, "
                                     "mean ± sd, samples as dots" + (", baseline dashed" if res["baseline"] else ""),
                                     rows))
    md = summary_md(res)
    devices = "".join(
        f"<tr class='{d['status']}'><td>{html.escape(_device(res, d['name']))}</td><td>{html.escape(d['target'])}</td>"
        f"<td>{d['status']}</td><td>{len(d['attempts'])}</td><td>{html.escape(d['reason'] or '')}</td></tr>"
        for d in res["devices"])
    rows = "".join(
        f"<tr class='{r['status']}'><td>{html.escape(_device(res, r['device']))}</td><td>{r['test']}</td>"
        f"<td>{_num(r['mean'])}</td><td>{_num(r['sd'])}</td><td>{r['n']}</td>"
        f"<td>{_num(r['baseline']['mean']) if r['baseline'] else ''}</td><td>{_change(r)}</td>"
        f"<td>{html.escape(r['verdict'])}</td><td>{html.escape(_flags(r))}</td></tr>" for r in res["results"])
    title = md.splitlines()[0].lstrip("# ")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #212529; }}
table {{ border-collapse: collapse; margin: 12px 0; }} td, th {{ border: 1px solid #dee2e6; padding: 3px 8px; }}
tr.failed td {{ background: #ffe3e3; }} tr.regression td {{ background: #fff4e6; }}
svg.plot {{ display: block; margin: 16px 0; font: 12px system-ui, sans-serif; }}
.verdict-pass {{ color: #2b8a3e; }} .verdict-regression {{ color: #e8590c; }} .verdict-failures {{ color: #c92a2a; }}
</style></head><body>
<h1 class="verdict-{res['verdict']}">{html.escape(title)}</h1>
<p>{html.escape(md.splitlines()[2])}</p>
<p>Started {res.get('started')}, {res.get('seconds')} s. Policy: {res['policy']['retries']} retr{'y' if res['policy']['retries'] == 1 else 'ies'} per device,
{res['policy']['allow_failures']} failed device(s) allowed, regression threshold {100 * res['policy']['threshold']:g}%.</p>
{''.join(charts)}
<h2>Devices</h2>
<table><tr><th>device</th><th>target</th><th>status</th><th>attempts</th><th>reason</th></tr>{devices}</table>
<h2>Rows</h2>
<table><tr><th>device</th><th>test</th><th>tok/s</th><th>± sd</th><th>n</th><th>baseline</th><th>change</th><th>verdict</th><th>flags</th></tr>{rows}</table>
</body></html>
"""
