"""`edgesmith profile` on the host and the emulated board and phone: every format reads back into
the same records; cooldown and stop-when-stable against a fake sysfs the test controls; the fit
check against a fake /proc/meminfo; `--check` against a host reference compiled on its own,
passing on a sound bundle and failing on one whose weights were corrupted after hashing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgesmith.compiler.bundle.folder import sha256_file
from edgesmith.runtime.profile import formats
from edgesmith.runtime.profile.check import POSITIONS, PREFILL, CheckFailed
from edgesmith.runtime.profile.fit import DoesNotFit
from edgesmith.runtime.profile.profiler import ProfileOptions, profile_bundle

from emulated_fixtures import *  # noqa: F401,F403
from emulated_fixtures import pytestmark_emulated, sandbox

pytestmark = [pytestmark_emulated, pytest.mark.slow]

# Small and quick: a tiny model, short runs, a small bandwidth buffer.
QUICK = dict(prompts=[8], gens=[4], reps=2, max_reps=3, target_rsd=10.0, membw_mb=8, kernels_top=5, cool_below=None)


def fake_sysfs(root, temp_c=45.0, cur_mhz=2000, max_mhz=2000, mem_free_kb=None):
    """sys/class/thermal + sys/devices/system/cpu (two cpus) + proc/meminfo under root."""
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    set_temp(root, temp_c)
    for cpu in ("cpu0", "cpu1"):
        freq = root / f"sys/devices/system/cpu/{cpu}/cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "cpuinfo_max_freq").write_text(f"{max_mhz * 1000}\n")
    set_freq(root, cur_mhz)
    if mem_free_kb is not None:
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc/meminfo").write_text(f"MemTotal:       {4 * mem_free_kb} kB\nMemFree: 1 kB\n"
                                           f"MemAvailable:   {mem_free_kb} kB\n")
    return root


def set_temp(root, temp_c):
    (root / "sys/class/thermal/thermal_zone0/temp").write_text(f"{int(temp_c * 1000)}\n")


def set_freq(root, mhz):
    for cpu in ("cpu0", "cpu1"):
        (root / f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_cur_freq").write_text(f"{mhz * 1000}\n")


# ---------------------------------------------------------------- every device, every format

@pytest.fixture(scope="module")
def profiles(devices, host_bundle, arm64_bundle):
    """One profile per device: the host natively (with --check), the board (with --check) and the
    phone under qemu."""
    return {
        "host": profile_bundle(host_bundle, devices["host"], ProfileOptions(**QUICK, check=True)),
        "board": profile_bundle(arm64_bundle, devices["board"], ProfileOptions(**QUICK, check=True)),
        "phone": profile_bundle(arm64_bundle, devices["phone"], ProfileOptions(**QUICK)),
    }


@pytest.mark.parametrize("name", ["host", "board", "phone"])
def test_profile_reads_back_in_every_format(profiles, name):
    recs = profiles[name]
    rec = recs[0]
    assert rec["device"]["name"] == name and rec["device"]["emulated"] == (name != "host")
    assert ("emulated" in rec["flags"]) == (name != "host")
    assert rec["params"]["prompt"] == 8 and rec["params"]["gen"] == 4
    cores = rec["cores"]  # which cores ran (runtime/runner/cores.h), one thread per core chosen
    assert cores["cpus"] and cores["from"] in ("cpu_capacity", "cpuinfo_max_freq", "all", "--threads"), cores
    assert cores["from"] == "--threads" or cores["threads"] == len(cores["cpus"]), cores
    assert rec["reps"] == len(rec["pp"]["samples"]) == len(rec["tg"]["samples"]) >= 2
    assert rec["pp"]["mean"] > 0 and rec["tg"]["mean"] > 0
    assert rec["memory"]["peak_rss_bytes"] > rec["memory"]["weight_bytes"] > 0
    kv_bytes = 4 if name == "host" else 2  # the arm64 (android-arm64) bundle's KV cache is float16 by default
    # layers, K+V, kv heads, head dim, one page, dtype
    assert rec["memory"]["kv_cache_bytes"] == 2 * 2 * 2 * 32 * 16 * kv_bytes
    roof = rec["roofline"]
    assert roof["read_gb_s"] > 0 and roof["probe"]["threads"] >= 1 and roof["probe"]["spread"] is not None
    # the tiny model's reads fit any last-level cache; under qemu the probe measured the emulator
    assert roof["bound"] == ("emulated" if name != "host" else "cache") and roof["fraction"] is None, roof
    top = rec["kernels"]["top"]
    assert len(top) == 5 and top[0]["total_s"] >= top[-1]["total_s"] and top[0]["calls"] >= 1
    assert rec["software"]["tvm_version"] and len(rec["bundle"]["sha256"]) == 64
    for fmt in formats.FORMATS:
        text = formats.write(recs, fmt)
        assert formats.read(text, fmt) == recs, fmt
    md = formats.write(recs, "md")
    assert "| pp8 |" in md and "| tg4@p8 |" in md and ("(emulated)" in md) == (name != "host")
    print(f"\n{md.split('<!--')[0]}")


@pytest.mark.parametrize("name", ["host", "board"])
def test_check_passes_on_host_and_emulated_arm64(profiles, name):
    check = profiles[name][0]["check"]
    assert check["passed"], check["reasons"]
    assert check["top1_agreement"] == 1.0 and check["mean_kl"] < 1e-6 and check["max_abs_diff"] < 1e-3
    assert check["reference"]["target"] == "host"
    # a prompt prefilled at once (the prefill kernels: row 0), then one row per decode step
    assert check["prefill"] == PREFILL and check["positions"] == POSITIONS + 1 == len(check["tokens"]) - PREFILL + 1
    assert check["prefill_row"]["top1_equal"] and check["prefill_row"]["kl"] < 1e-6


def test_check_fails_loudly_on_weights_corrupted_after_hashing(host_bundle, devices, devices_yaml, tmp_path):
    bad = tmp_path / "corrupted"
    shutil.copytree(host_bundle, bad)
    cache = json.loads((bad / "params/tensor-cache.json").read_text())
    shard, rec = next((s, r) for s in cache["records"] for r in s["records"] if r["name"] == "lm_head.q_weight")
    path = bad / "params" / shard["dataPath"]
    data = bytearray(path.read_bytes())
    data[rec["byteOffset"]:rec["byteOffset"] + rec["nbytes"]] = np.random.default_rng(0).bytes(rec["nbytes"])
    path.write_bytes(bytes(data))
    # ... and the manifest re-hashed, so the runner's own sha256 check lets it through
    manifest = json.loads((bad / "manifest.json").read_text())
    rel = f"params/{shard['dataPath']}"
    manifest["files"][rel]["sha256"] = sha256_file(path)
    (bad / "manifest.json").write_text(json.dumps(manifest, indent=1))

    with pytest.raises(CheckFailed, match="accuracy check FAILED on device 'host': .*top-1 agreement"):
        profile_bundle(bad, devices["host"], ProfileOptions(**QUICK, check=True))
    # through the command line (README): exit code 3, one line, no table printed
    p = subprocess.run([sys.executable, "-m", "edgesmith", "profile", bad, "--check", "-p", "8", "-n", "4", "-r", "2",
                        "--max-reps", "2", "--membw-mb", "8", "--kernels", "0", "--cool-below", "off", "-q",
                        "--device", "host", "--devices", devices_yaml], capture_output=True, text=True, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 3 and not p.stdout, (p.returncode, p.stdout, p.stderr)
    assert len(lines) == 1 and "accuracy check FAILED on device 'host'" in lines[0] and "Traceback" not in p.stderr


# ---------------------------------------------------------------- trustworthy numbers

def test_cooldown_waits_for_the_fake_board_to_cool_and_marks_throttling(devices, arm64_bundle, emulators):
    """The board starts hot: the runner must wait before the first repetition until the test
    cools it; the cores then run at half their clock, which marks the result throttled."""
    root = fake_sysfs(sandbox(emulators, "board").parent / "fake-device", temp_c=90)
    seen = []

    def on_line(cmd, line):
        seen.append((cmd, line.get("event")))
        if line.get("event") == "cooldown":  # the runner is waiting: cool it, and slow its clock
            set_temp(root, 40)
            set_freq(root, 1000)

    opts = ProfileOptions(**dict(QUICK, kernels_top=0, cool_below=60.0), cool_poll=0.1, cool_timeout=60,
                          sysroot=str(root))
    rec = profile_bundle(arm64_bundle, devices["board"], opts, on_line=on_line)[0]
    assert ("profile", "cooldown") in seen and ("profile", "cooled") in seen
    st = rec["stability"]
    assert st["cooldowns"] == 1 and st["cooldown_s"] > 0
    assert st["max_temp_c"] == 40.0 and st["min_freq_ratio"] == 0.5
    assert st["throttled"] and "throttled" in rec["flags"]
    assert rec["pp"]["n"] == 2 and rec["stop"] == "stable"  # target 1000%: stops at the minimum


def test_cooldown_that_never_comes_is_throttled(devices, host_bundle, tmp_path):
    root = fake_sysfs(tmp_path / "dev", temp_c=95)
    opts = ProfileOptions(**dict(QUICK, kernels_top=0, cool_below=60.0, reps=1, max_reps=1), cool_poll=0.05,
                          cool_timeout=0.3, sysroot=str(root))
    rec = profile_bundle(host_bundle, devices["host"], opts)[0]
    assert rec["stability"]["throttled"] and "did not cool down" in " ".join(rec["stability"]["reasons"])


def test_repeats_until_stable_or_the_maximum(devices, host_bundle, tmp_path):
    root = fake_sysfs(tmp_path / "dev")
    loose = profile_bundle(host_bundle, devices["host"],
                           ProfileOptions(**dict(QUICK, kernels_top=0, reps=2, max_reps=6, target_rsd=10.0),
                                          sysroot=str(root)))[0]
    assert loose["reps"] == 2 and loose["stop"] == "stable" and loose["stability"]["stable"]
    assert not loose["stability"]["throttled"] and loose["stability"]["max_temp_c"] == 45.0
    strict = profile_bundle(host_bundle, devices["host"],
                            ProfileOptions(**dict(QUICK, kernels_top=0, reps=2, max_reps=4, target_rsd=0.0),
                                           sysroot=str(root)))[0]
    assert strict["reps"] == 4 and strict["stop"] == "max_reps"
    assert not strict["stability"]["stable"] and "unstable" in strict["flags"]


# ---------------------------------------------------------------- fit

def test_fit_check_refuses_a_bundle_too_large_for_the_phone(devices, arm64_bundle, emulators):
    # The phone reports 24 MiB available (its /data/local/tmp is the sandbox folder).
    fake_sysfs(sandbox(emulators, "phone").parent / "fake-device", mem_free_kb=24 * 1024)
    ran = []
    with pytest.raises(DoesNotFit, match=r"device 'phone' has 24 MiB free \(MemAvailable\) and this run needs about "
                                         r"\d+ MiB \(weights .* KV cache .* for 132 tokens"):
        profile_bundle(arm64_bundle, devices["phone"],
                       ProfileOptions(**dict(QUICK, prompts=[128]), sysroot="/data/local/tmp/fake-device"),
                       on_line=lambda cmd, line: ran.append(cmd))
    assert ran == []  # refused before the runner started


# ---------------------------------------------------------------- the CLI

def test_cli_profile_then_compare(host_bundle, devices_yaml, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    # -p and -t take lists (README): every threads x prompt combination is a record of its own
    common = ["-p", "8,16", "-t", "1,2", "-n", "4", "-r", "2", "--max-reps", "2", "--membw-mb", "8", "--kernels", "3",
              "--device", "host", "--devices", devices_yaml, "-q"]
    old = cli("profile", host_bundle, *common, "--format", "csv")
    assert old.returncode == 0, old.stderr
    (tmp_path / "old.csv").write_text(old.stdout)
    new = cli("bench", host_bundle, *common, "-o", tmp_path / "new.jsonl")  # bench: the alias; the format from -o's name
    assert new.returncode == 0, new.stderr
    params = [json.loads(line)["params"] for line in (tmp_path / "new.jsonl").read_text().splitlines()]
    assert sorted((r["threads"], r["prompt"], r["gen"]) for r in params) == [(1, 8, 4), (1, 16, 4), (2, 8, 4), (2, 16, 4)]
    cmp = cli("compare", tmp_path / "old.csv", tmp_path / "new.jsonl")
    assert cmp.returncode == 0, cmp.stderr
    assert "| pp8 |" in cmp.stdout and "| tg4@p8 |" in cmp.stdout and "| pp16 |" in cmp.stdout and "%" in cmp.stdout


def test_progress_shows_each_repetition_as_it_ends(host_bundle, devices):
    """profile's progress (stderr on a terminal) has one line per timed repetition, numbered from 1,
    with the speeds the record then holds as its samples."""
    said = []
    rec = profile_bundle(host_bundle, devices["host"], ProfileOptions(**dict(QUICK, kernels_top=0)),
                         progress=said.append)[0]
    reps = [line for line in said if line.startswith("  rep ")]
    assert [line.split(":")[0] for line in reps] == [f"  rep {i}" for i in range(1, rec["reps"] + 1)]
    assert [float(line.split("pp ")[1].split()[0]) for line in reps] == \
        pytest.approx([round(x, 1) for x in rec["pp"]["samples"]], abs=0.051)
