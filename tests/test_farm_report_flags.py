"""The farm report shows each row's flags (unstable, emulated, throttled) in summary.md, the HTML
and JUnit (as properties), and an unstable pass is not a clean PASS. A results.json of the shape
runtime/farm/orchestrator.py writes, made here by hand (no devices, no compile)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from edgesmith.runtime.farm.report import write_reports


def row(device, test, mean, flags):
    return {"device": device, "test": test, "mean": mean, "sd": mean / 2, "n": 3, "samples": [mean] * 3,
            "baseline": None, "change": None, "significant": None, "verdict": "no baseline", "status": "ok",
            "flags": flags}


def results():
    return {
        "schema": "edgesmith.farm/1", "model": "random:tiny", "quant": "q4f16", "verdict": "pass", "exit_code": 0,
        "counts": {"devices": 2, "passed": 2, "failed": 0, "regressions": 0}, "baseline": None,
        "policy": {"allow_failures": 0, "retries": 1, "threshold": 0.05}, "started": "2026-12-07T13:00:00Z",
        "seconds": 12.0, "bundles": [{"target": "host", "path": "b/host"}, {"target": "arm64-linux", "path": "b/a"}],
        "devices": [{"name": "host", "target": "host", "status": "passed", "attempts": [{"attempt": 1, "seconds": 3.0,
                                                                                        "error": None}],
                     "reason": None, "emulated": False},
                    {"name": "board", "target": "arm64-linux", "status": "passed",
                     "attempts": [{"attempt": 1, "seconds": 5.0, "error": None}], "reason": None, "emulated": True}],
        "results": [row("host", "pp8", 22797.62, ["unstable"]), row("host", "tg4@p8", 900.0, []),
                    row("board", "pp8", 300.0, ["emulated", "unstable"]),
                    row("board", "tg4@p8", 90.0, ["emulated", "throttled"])],
    }


def test_flags_reach_every_report(tmp_path):
    write_reports(results(), tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "edgesmith farm: PASS (2 of 4 rows unstable) (exit 0)" in md
    assert "| host | pp8 | 22797.62 | 11398.81 | 3 |  |  | no baseline | unstable |" in md
    assert "| board (emulated) | tg4@p8 | 90.00 |" in md and "| emulated, throttled |" in md
    html = (tmp_path / "report.html").read_text()
    assert "<th>flags</th>" in html and "<td>emulated, unstable</td>" in html and "board (emulated)" in html
    assert "PASS (2 of 4 rows unstable)" in html
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    props = {c.get("name").split(" x ")[0]: {p.get("name"): p.get("value") for p in c.find("properties")}
             for c in suite.findall("testcase")}
    assert props["host"] == {"emulated": "false", "pp8.flags": "unstable", "tg4@p8.flags": ""}
    assert props["board"]["emulated"] == "true" and props["board"]["tg4@p8.flags"] == "emulated, throttled"
    assert "[emulated, unstable]" in suite.find(".//system-out").text or \
        "[emulated, unstable]" in "".join(e.text or "" for e in suite.iter("system-out"))


def test_a_stable_pass_stays_plain(tmp_path):
    res = results()
    for r in res["results"]:
        r["flags"] = [f for f in r["flags"] if f != "unstable"]
    write_reports(res, tmp_path)
    assert "edgesmith farm: PASS (exit 0)" in (tmp_path / "summary.md").read_text()
