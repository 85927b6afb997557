"""big.LITTLE: the runner decodes on the big cluster by default (runtime/runner/cores.h), found in
sysfs, with one thread per big core; --cpus and --threads choose instead. A fake sysfs (the
runner's --sysroot) stands in for a phone's: its CPU numbers are the ones this process may use,
so the runner can really pin itself to the chosen ones here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgesmith.errors import EdgesmithError
from edgesmith.runtime.session import run_runner

ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to tell a big one from a little one")


def fake_sysfs(root: Path, per_cpu: dict[int, dict[str, int]]) -> Path:
    """root/sys/devices/system/cpu/cpuN/<file> = value, as the kernel lays them out."""
    for cpu, files in per_cpu.items():
        for name, value in files.items():
            f = root / "sys/devices/system/cpu" / f"cpu{cpu}" / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{value}\n")
    return root


def generate(bundle: Path, *extra: str) -> dict:
    records = run_runner(bundle, ["generate", str(bundle), "--tokens", "1,5,9", "-n", "2", *extra], timeout=120)
    return records[-1]


@needs_two
def test_decode_runs_on_the_big_cluster_by_capacity_else_max_freq(compiled, tmp_path):
    bundle = compiled("random:tiny", "q4f16")
    little, big = ALLOWED[:-1], ALLOWED[-1]
    # cpu_capacity (1024 = the biggest core) decides; cpuinfo_max_freq, saying otherwise, is not read
    caps = {c: {"cpu_capacity": 446, "cpufreq/cpuinfo_max_freq": 2_800_000} for c in little}
    caps[big] = {"cpu_capacity": 1024, "cpufreq/cpuinfo_max_freq": 1_800_000}
    rec = generate(bundle, "--sysroot", str(fake_sysfs(tmp_path / "capacity", caps)))
    assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == ([big], "cpu_capacity", 1)
    assert len(rec["output_ids"]) == 2
    # no cpu_capacity (older kernels): the largest cpuinfo_max_freq, here the first CPU's
    freqs = {c: {"cpufreq/cpuinfo_max_freq": 1_800_000} for c in ALLOWED}
    freqs[ALLOWED[0]] = {"cpufreq/cpuinfo_max_freq": 2_840_000}
    rec = generate(bundle, "--sysroot", str(fake_sysfs(tmp_path / "freq", freqs)))
    assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == ([ALLOWED[0]], "cpuinfo_max_freq", 1)
    # all alike, or nothing to read: every CPU, one thread each (what the runner did before)
    same = {c: {"cpu_capacity": 1024} for c in ALLOWED}
    for root, source in ((fake_sysfs(tmp_path / "same", same), "cpu_capacity"), (tmp_path / "empty", "all")):
        rec = generate(bundle, "--sysroot", str(root))
        assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == (ALLOWED, source, len(ALLOWED))


@needs_two
def test_cpus_and_threads_override_the_cluster(compiled, tmp_path):
    bundle = compiled("random:tiny", "q4f16")
    caps = {c: {"cpu_capacity": 1024 if c == ALLOWED[-1] else 446} for c in ALLOWED}
    root = str(fake_sysfs(tmp_path / "capacity", caps))
    rec = generate(bundle, "--sysroot", root, "--cpus", str(ALLOWED[0]))
    assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == ([ALLOWED[0]], "--cpus", 1)
    rec = generate(bundle, "--sysroot", root, "--cpus", ",".join(map(str, ALLOWED)), "--threads", "1")
    assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == (ALLOWED, "--cpus", 1)
    rec = generate(bundle, "--sysroot", root, "--threads", "2")  # a count alone: not pinned
    assert (rec["cpus"], rec["cpus_from"], rec["threads"]) == (ALLOWED, "--threads", 2)


def test_bad_cpu_lists_are_one_line_errors(compiled):
    bundle = compiled("random:tiny", "q4f16")
    not_ours = max(ALLOWED, default=0) + 1
    for bad, says in (("4-x", "is not a CPU list"), ("", "is not a CPU list"), (str(not_ours), "cannot run on CPUs")):
        with pytest.raises(EdgesmithError) as e:
            generate(bundle, "--cpus", bad)
        assert says in str(e.value) and "\n" not in str(e.value).strip(), str(e.value)
