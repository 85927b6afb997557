"""`edgesmith farm`: one run over the host, the emulated board (real sshd) and phone (real adb)
writes all four reports, and the HTML renders its plots in headless Chromium; a device whose link
is cut mid-run fails alone, with its reason, and the exit code follows the policy; two runs
against one TVM RPC tracker never hold a device at the same time (read from the devices' own lease
logs) and both finish; the regression gate trips on a clearly faster baseline, not on a difference
inside the noise."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from edgesmith.cli import main
from edgesmith.runtime.farm.orchestrator import EXIT_FAILURES, EXIT_PASS, EXIT_REGRESSION, LEASE_LOG, FarmOptions, farm_run
from edgesmith.runtime.profile.profiler import ProfileOptions

from emulated_fixtures import *  # noqa: F401,F403
from tracker_proc import running_tracker
from emulated_fixtures import pytestmark_emulated, sandbox

pytestmark = [pytestmark_emulated, pytest.mark.slow]

QUICK = dict(prompts=[8], gens=[4], reps=2, max_reps=3, target_rsd=10.0, membw_mb=8, kernels_top=0, cool_below=None)
QUICK_ARGS = ["-p", "8", "-n", "4", "-r", "2", "--max-reps", "3", "--target-rsd", "10", "--membw-mb", "8",
              "--cool-below", "off", "-q"]
ARTIFACTS = Path(os.environ.get("EDGESMITH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def full_run(devices_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("farm-all")
    code = main(["farm", "run", "--model", "random:tiny", "--devices", str(devices_yaml), "-s", "host,board,phone",
                 "--out", str(out), *QUICK_ARGS])
    return code, out, json.loads((out / "results.json").read_text())


# ---------------------------------------------------------------- all devices, all reports

def test_farm_run_over_host_board_and_phone_writes_every_report(full_run):
    code, out, res = full_run
    assert code == EXIT_PASS and res["verdict"] == "pass", res["devices"]
    assert res["schema"] == "edgesmith.farm/1"
    assert {d["name"]: d["status"] for d in res["devices"]} == {"host": "passed", "board": "passed", "phone": "passed"}
    # one bundle per target the devices need
    assert sorted(b["target"] for b in res["bundles"]) == ["android-arm64", "arm64-linux", "host"]
    # one row per device x bundle x test
    assert sorted((r["device"], r["test"]) for r in res["results"]) == sorted(
        (d, t) for d in ("host", "board", "phone") for t in ("pp8", "tg4@p8"))
    assert all(r["mean"] > 0 and r["n"] >= 2 for r in res["results"])
    assert [r["device"]["name"] for r in res["records"]] == ["host", "board", "phone"]

    suite = ET.parse(out / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 3 and not suite.findall(".//failure") and not suite.findall(".//error")
    assert {c.get("name").split(" x ")[0] for c in cases} == {"host", "board", "phone"}
    md = (out / "summary.md").read_text()
    # an unstable row is never a clean PASS: the title counts them; emulated rows say so
    unstable = sum("unstable" in r["flags"] for r in res["results"])
    assert (f"PASS ({unstable} of 6 rows unstable) (exit 0)" if unstable else "PASS (exit 0)") in md
    assert "| phone (emulated) | tg4@p8 |" in md
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and html.count('class="bar"') == 6  # pp and tg; real and emulated apart
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in html


def test_second_run_reuses_the_bundles(devices_yaml, full_run, tmp_path):
    res = farm_run(FarmOptions(model="random:tiny", out=tmp_path, devices_file=devices_yaml, select=["host"],
                               profile=ProfileOptions(**QUICK)))
    assert res["bundles"][0]["cached"] and res["bundles"][0]["path"] == next(
        b["path"] for b in full_run[2]["bundles"] if b["target"] == "host")


def _png_pixels(path: Path) -> list[bytes]:
    """RGB(A) pixels of an 8-bit non-interlaced PNG (what Chromium writes), decoded by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, pixels = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [bytes(line[i:i + 3]) for i in range(0, stride, bpp)]
        prev = line
    return pixels


def test_report_html_draws_its_plots_in_headless_chromium(full_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/install.sh does it)")
    _, out, _ = full_run
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,900",
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "farm-report.png")
    pixels = _png_pixels(shot)
    # the passed bars are drawn in #2b8a3e: a plot that did not render has none of that green
    green = sum(1 for p in pixels if p == b"\x2b\x8a\x3e")
    assert green > 6 * 50, f"only {green} bar pixels in {ARTIFACTS / 'farm-report.png'}"


# ---------------------------------------------------------------- a device killed mid-run

def test_device_cut_mid_run_fails_alone_with_its_reason(devices_yaml, full_run, fault, tmp_path):
    cut = threading.Event()

    def progress(msg):  # cut the phone's link once it is profiling
        if msg.startswith("[phone] pp8") and not cut.is_set():
            fault("phone", "cut")
            cut.set()

    opts = FarmOptions(model="random:tiny", out=tmp_path / "strict", devices_file=devices_yaml,
                       select=["host", "board", "phone"], profile=ProfileOptions(**QUICK), retries=1,
                       retry_delay=0.5)
    res = farm_run(opts, progress=progress)
    assert cut.is_set()
    status = {d["name"]: d for d in res["devices"]}
    assert status["host"]["status"] == status["board"]["status"] == "passed"
    phone = status["phone"]
    assert phone["status"] == "failed" and len(phone["attempts"]) == 2 and "phone" in phone["reason"]
    assert res["verdict"] == "failures" and res["exit_code"] == EXIT_FAILURES
    junit = ET.parse(tmp_path / "strict" / "junit.xml").getroot()
    err = [c for c in junit.findall("testcase") if c.get("name").startswith("phone")][0].find("error")
    assert err is not None and "failed 2 attempts" in err.get("message")
    assert "| phone (emulated) | android-arm64 | failed | 2 |" in (tmp_path / "strict" / "summary.md").read_text()
    # the same device results under a policy allowing one failure pass
    from edgesmith.runtime.farm.orchestrator import assemble

    lenient = assemble(FarmOptions(model="random:tiny", out=tmp_path, allow_failures=1,
                                   profile=ProfileOptions(**QUICK)),
                       [dict(d, records=[r for r in res["records"] if r["device"]["name"] == d["name"]])
                        for d in res["devices"]], res["bundles"], None)
    assert lenient["exit_code"] == EXIT_PASS and lenient["counts"]["failed"] == 1


# ---------------------------------------------------------------- two runs, one tracker

def _wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _leases(path: Path) -> list[tuple[str, float, float]]:
    """(user, begin, end) from a device's lease log."""
    open_, out = {}, []
    for line in path.read_text().splitlines():
        t, kind, user = line.split(" ", 2)
        if kind == "begin":
            open_[user] = float(t)
        else:
            out.append((user, open_.pop(user), float(t)))
    assert not open_, f"unfinished leases in {path}: {open_}"
    return out


def test_two_runs_against_one_tracker_never_share_a_device(devices_yaml, emulators, full_run, tmp_path):
    for name in ("board", "phone"):
        (sandbox(emulators, name) / LEASE_LOG).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    with running_tracker() as address:
        _two_runs(devices_yaml, tmp_path, address, env, procs)
    for i in (1, 2):
        res = json.loads((tmp_path / f"job{i}" / "results.json").read_text())
        assert {d["name"]: d["status"] for d in res["devices"]} == {"board": "passed", "phone": "passed"}
        assert {d["agent"] for d in res["devices"]} == {"rack1"}
    for name in ("board", "phone"):
        leases = sorted(_leases(sandbox(emulators, name) / LEASE_LOG), key=lambda x: x[1])
        assert len(leases) == 2 and leases[0][0] != leases[1][0], leases
        assert leases[0][2] <= leases[1][1], f"{name} was used by two runs at once: {leases}"


def _two_runs(devices_yaml, tmp_path, address, env, procs):
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "edgesmith.cli", "farm", "agent", "--tracker", address,
                                       "--devices", str(devices_yaml), "-s", "board,phone", "--host", "127.0.0.1",
                                       "--name", "rack1"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / "agent.log", "wb")))
        status = tmp_path / "status.json"

        def published():
            r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "farm", "status", "--tracker", address,
                                "--json"], capture_output=True, text=True)
            status.write_text(r.stdout)
            return r.returncode == 0 and len(json.loads(r.stdout)["devices"]) == 2

        _wait_for(published, 60, "the agent's devices on the tracker")
        assert {d["name"] for d in json.loads(status.read_text())["devices"]} == {"board", "phone"}
        runs = [subprocess.Popen([sys.executable, "-m", "edgesmith.cli", "farm", "run", "--model", "random:tiny",
                                  "--tracker", address, "--out", str(tmp_path / f"job{i}"), "--priority", str(i),
                                  *QUICK_ARGS], env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / f"job{i}.log", "wb")) for i in (1, 2)]
        codes = [r.wait(timeout=300) for r in runs]
        assert codes == [EXIT_PASS, EXIT_PASS], [(tmp_path / f"job{i}.log").read_text()[-2000:] for i in (1, 2)]
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=10)


# ---------------------------------------------------------------- the regression gate

QEMU = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]
GATE_ARGS = ["-p", "16", "-n", "16", "-r", "5", "--max-reps", "5"]  # enough samples for Welch's test


def _qemu_device(tmp_path: Path, wrapper: list[str]) -> Path:
    """devices.yaml with one local arm64 device under qemu: the same device (name, target, emulated)
    whether its wrapper slows it down or not, so its rows match the baseline's."""
    import yaml

    path = tmp_path / f"devices-{len(wrapper)}.yaml"
    path.write_text(yaml.safe_dump({"devices": [{"name": "arm64-qemu", "transport": "local",
                                                 "target": "arm64-linux", "exec_wrapper": wrapper}]}))
    return path


def _farm(devices: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = main(["farm", "run", "--model", "random:tiny", "--quant", "q4f16", "--devices", str(devices),
                 "--out", str(out), *QUICK_ARGS, *extra])
    return code, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def qemu_baseline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gate")
    code, _ = _farm(_qemu_device(tmp, QEMU), tmp / "base", *GATE_ARGS)
    assert code == EXIT_PASS
    return tmp / "base" / "results.json"


THROTTLE = [sys.executable, str(Path(__file__).with_name("cpu_throttle.py"))]


def throttled(share: float) -> list[str]:
    """The wrapper that runs a command at `share` of the CPU, whatever else runs: a device
    throttled the way a hot phone is (stopped and continued in turn; no cgroup, so the same on
    cgroup v1 and v2 machines)."""
    return [*THROTTLE, str(share)]


def test_throttle_slows_a_command_and_passes_its_status():
    spin = [sys.executable, "-c", "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "sys.exit(7)"]
    t0 = time.monotonic()
    assert subprocess.run(spin).returncode == 7
    alone = time.monotonic() - t0
    t0 = time.monotonic()
    assert subprocess.run([*throttled(0.1), *spin]).returncode == 7
    slowed = time.monotonic() - t0
    assert slowed > 3 * alone, (alone, slowed)  # a tenth of the CPU: about 10x, whatever the machine


@pytest.mark.parametrize("kind, expected", [("slowed down", EXIT_REGRESSION), ("same speed", EXIT_PASS)])
def test_regression_gate(request, tmp_path, kind, expected):
    """A genuinely slower run trips the gate: the same device throttled to a tenth of one CPU (a
    stop/continue duty cycle, enforced whatever else the machine runs). The same device rerun
    at its own speed does not: against a baseline taken just before it, side by side, so both
    see the machine's load of the moment (a baseline from minutes ago on a shared 2-core machine
    can be tens of percent off). The threshold (50%) leaves room for what remains; the throttled
    run is several times slower."""
    if kind == "slowed down":
        wrapper, baseline = [*throttled(0.1), *QEMU], request.getfixturevalue("qemu_baseline")
    else:
        code, _ = _farm(_qemu_device(tmp_path, QEMU), tmp_path / "base", *GATE_ARGS)
        assert code == EXIT_PASS
        wrapper, baseline = QEMU, tmp_path / "base" / "results.json"
    code, res = _farm(_qemu_device(tmp_path, wrapper), tmp_path / "out", *GATE_ARGS, "--baseline",
                      str(baseline), "--threshold", "0.5")
    assert code == expected == res["exit_code"], res["results"]
    if expected == EXIT_REGRESSION:
        assert any(r["status"] == "regression" and r["verdict"] == "SLOWER" for r in res["results"]), res["results"]
        assert ET.parse(tmp_path / "out" / "junit.xml").getroot().find(".//failure") is not None
        assert 'class="baseline"' in (tmp_path / "out" / "report.html").read_text()
    else:
        assert all(r["status"] == "passed" for r in res["results"]), res["results"]

# ---------------------------------------------------------------- exit codes through the command line

def test_farm_exit_4_and_allow_failures_through_the_cli(tmp_path):
    """README: a failed device makes `farm run` exit 4; `--allow-failures 1` lets one fail and exits 0.
    The failing device is the host behind a wrapper that fails every command it is given."""
    import yaml

    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [{"name": "host", "transport": "local", "target": "host"},
                                                   {"name": "broken", "transport": "local", "target": "host",
                                                    "exec_wrapper": ["/bin/false"]}]}))

    def farm(out, *extra):
        return subprocess.run([sys.executable, "-m", "edgesmith", "farm", "run", "--model", "random:tiny", "--quant",
                               "q4f16", "--devices", str(devices), "--out", str(tmp_path / out), "--retries", "0",
                               *QUICK_ARGS, *extra], capture_output=True, text=True, timeout=900)

    strict = farm("strict")
    assert strict.returncode == EXIT_FAILURES == 4, strict.stderr
    res = json.loads((tmp_path / "strict" / "results.json").read_text())
    assert {d["name"]: d["status"] for d in res["devices"]} == {"host": "passed", "broken": "failed"}
    lenient = farm("lenient", "--allow-failures", "1")
    assert lenient.returncode == EXIT_PASS == 0, lenient.stderr
    assert json.loads((tmp_path / "lenient" / "results.json").read_text())["counts"]["failed"] == 1
