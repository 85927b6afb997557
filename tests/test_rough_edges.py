"""What a new user meets first at the command line (issues #12, #22): answers in one line, at once,
with what to do; nothing accepted that makes no sense."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_cli import assert_one_line_error, edgesmith


def in_process(*argv) -> tuple[int, set[str]]:
    """cli.main(argv) in a fresh interpreter: (exit code, whether TVM got imported)."""
    code = ("import sys; from edgesmith import cli; rc = cli.main(sys.argv[1:]); "
            "print('TVM-IMPORTED' if 'tvm' in sys.modules else 'NO-TVM'); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args, suggestion", [
    (["compile", "random:tiny", "--target", "hots"], "did you mean 'host'?"),
    (["compile", "random:tny"], "did you mean 'tiny'?"),
    (["compile", "random:tiny", "--quant", "q4f61"], "did you mean 'q4f16'?"),
])
def test_typos_answer_before_tvm_is_imported(args, suggestion, tmp_path):
    rc, out, err = in_process(*args, "-o", tmp_path / "out")
    assert rc == 1 and suggestion in err and len(err.strip().splitlines()) == 1, err
    assert "NO-TVM" in out, "a typo must be reported before TVM is imported"
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert_one_line_error(edgesmith("compile", "random:tiny", "-o", target), "is a file, not a folder")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("args, needle", [
    (["run", "B", "-n", "-1"], "must be at least 0"),
    (["run", "B", "--tokens", "1,-2"], "cannot be negative"),
    (["run", "B", "--top-p", "0"], "(0, 1]"),
    (["profile", "B", "-p", "128,-5"], "cannot be negative"),
    (["profile", "B", "-r", "0"], "must be at least 1"),
    (["farm", "run", "--model", "random:tiny", "--out", "o", "--retries", "-1"], "must be at least 0"),
    (["compile"], "required: model"),
    (["run", "B", "--timeout", "inf"], "must be a finite number"),
])
def test_argument_errors_are_one_line_exit_2(args, needle):
    p = edgesmith(*args)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0] and "--help" in lines[0], p.stderr
    assert "usage:" not in p.stderr


def test_debug_is_accepted_anywhere(tmp_path):
    for args in (["--debug", "run", tmp_path], ["run", tmp_path, "--debug"], ["run", "--debug", tmp_path]):
        p = edgesmith(*args, "--tokens", "1")
        assert p.returncode != 0 and "Traceback" in p.stderr and "unrecognized" not in p.stderr, p.stderr


def test_engine_python_on_a_device_is_refused(tmp_path):
    assert_one_line_error(edgesmith("run", tmp_path, "--engine", "python", "--device", "board"),
                          "--engine python", "board")


def test_targets_table_is_short_and_json_is_whole():
    table = edgesmith("targets", check=True).stdout
    rows = [l for l in table.splitlines() if l.startswith(("host ", "arm64-linux "))]
    assert len(rows) == 2 and max(len(l) for l in rows) < 100, rows
    assert max(len(l) for l in table.splitlines() if not l.startswith("  ")) < 200
    facts = json.loads(edgesmith("targets", "--json", check=True).stdout)
    arm = next(f for f in facts if f["name"] == "arm64-linux")
    assert arm["tvm_target"]["mtriple"] == "aarch64-linux-gnu" and arm["default_quant"] == "q4f16i8"
    one = json.loads(edgesmith("targets", "cuda", check=True).stdout)
    assert one["device"] == "cuda"
    assert_one_line_error(edgesmith("targets", "cudda"), "did you mean 'cuda'?")


@pytest.fixture(scope="module")
def q0_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("nan") / "q0"
    edgesmith("compile", "random:tiny", "--quant", "q0f32", "-o", out, "-q", check=True)
    return out


@pytest.mark.parametrize("engine", ["runner", "python"])
def test_non_finite_logits_stop_in_one_line(q0_bundle, tmp_path, engine):
    """A garbage shard whose sha matches (rewritten with NaN, manifest updated): the engines say
    the logits are not finite, at which step, instead of printing token 0 forever."""
    from edgesmith.compiler.bundle.folder import sha256_file

    b = tmp_path / "b"
    shutil.copytree(q0_bundle, b)
    shard = b / "params" / "params_shard_0.bin"
    nan = np.full(shard.stat().st_size // 4, np.nan, dtype=np.float32)
    shard.write_bytes(nan.tobytes() + b"\0" * (shard.stat().st_size % 4))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["params/params_shard_0.bin"]["sha256"] = sha256_file(shard)
    (b / "manifest.json").write_text(json.dumps(manifest))
    p = edgesmith("run", b, "--tokens", "1,2,3", "-n", "4", "--engine", engine)
    assert_one_line_error(p, "not finite", "after the prompt")


def test_gpu_bundle_without_runner_says_which_targets_and_why(q0_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(q0_bundle, b)
    manifest = json.loads((b / "manifest.json").read_text())
    # a runnerless GPU preset's manifest (an Android phone's: aarch64, the android-glibc layout)
    manifest["target"].update(preset="android-vulkan", layout="android-glibc")
    manifest["arch"] = "aarch64"
    (b / "bin" / "runner").unlink()
    del manifest["files"]["bin/runner"]
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(edgesmith("run", b, "--tokens", "1", "-n", "1"), "android-vulkan", "no runner",
                          "libvulkan.so) is a bionic library")


def test_ctrl_c_mid_compile_is_one_line_and_leaves_nothing(tmp_path):
    import signal

    out = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "-m", "edgesmith", "compile", "random:tiny", "--quant", "q4f32", "-o",
                          str(out)], stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "lowering" in line:  # TVM is building IR now
            break
    # Inside TVM's lowering: one CPU-second of work past that line (its CPU time, not the clock's:
    # a busy machine stretches the wall time, not the work; the lowering takes ~12 CPU-s here). A
    # later progress line before the interrupt would fail the check of `rest` below.
    import time

    def cpu_s() -> float:
        stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    start = cpu_s()
    while p.poll() is None and cpu_s() < start + 1.0:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    assert p.wait(timeout=60) == 130
    assert rest.strip() == "edgesmith: interrupted", rest
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def test_farm_plot_ticks_are_round_and_labels_clear_the_dots():
    import re

    from edgesmith.runtime.farm.report import _bar_chart, nice_ticks

    assert nice_ticks(38684 * 1.05) == [0, 10000, 20000, 30000, 40000, 50000]
    rows = [{"label": "board", "mean": 18000.0, "sd": 300.0, "samples": [17500.0, 18100.0, 38684.0],
             "baseline": None, "status": "passed"}]
    svg = _bar_chart("pp128", rows)
    ticks = [float(t) for t in re.findall(r'class="tick"[^>]*>([^<]+)<', svg)]
    assert ticks == nice_ticks(38684) and all(t % 10000 == 0 for t in ticks)
    dots = [float(c) for c in re.findall(r'<circle cx="([\d.]+)"', svg)]
    label = float(re.search(r'class="value" x="([\d.]+)"', svg).group(1))
    assert label > max(dots) + 2  # past the dot's radius


def _record_csv(tmp_path) -> Path:
    from edgesmith.runtime.profile import formats, records as R

    rec = {"schema": R.SCHEMA, "device": {"name": "host"}, "pp": {"mean": 1.0}}
    path = tmp_path / "old.csv"
    path.write_text(formats.write([rec], "csv"))
    return path


def test_compare_stray_csv_line_names_file_and_line(tmp_path):
    old = _record_csv(tmp_path)
    old.write_text(old.read_text() + "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\n")
    p = edgesmith("compare", old, old)
    assert_one_line_error(p, str(old), "line 3")


def test_compare_a_file_without_records(tmp_path):
    old = _record_csv(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n\nnothing measured here\n")
    assert_one_line_error(edgesmith("compare", old, readme), str(readme), "no edgesmith profile records")


def test_profile_markdown_on_a_terminal_has_no_machine_records(q0_bundle, tmp_path):
    """A person at a terminal reads tables; the record comments (what `compare` reads) go only
    where the output is kept: a file or a pipe."""
    import os
    import pty

    args = [sys.executable, "-m", "edgesmith", "profile", str(q0_bundle), "-p", "8", "-n", "4", "-r", "2",
            "--max-reps", "2", "--kernels", "0", "--membw-mb", "16", "--cool-below", "off", "-q"]
    piped = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "<!-- edgesmith-record:" in piped.stdout
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    shown = b"".join(chunks).decode()
    assert "| host" in shown and "edgesmith-record" not in shown
    # the stability line says its spread once
    line = next(l for l in shown.splitlines() if "stability:" in l)
    assert line.count("%") <= 3, line


def test_eval_guidance_says_what_is_typical_and_what_is_a_problem():
    from edgesmith.runtime.evaluate import TYPICAL, guidance

    random = ("q4f16", "random:phi-3-mini-4k:layers=2 (seed 0)")
    kl = TYPICAL["phi-3-mini-4k"]["q4f16"][1]
    assert "as expected" in guidance({"mean_kl": kl, "top1_agreement": 0.2}, *random)
    assert "a problem" in guidance({"mean_kl": 5 * kl, "top1_agreement": 0.2}, *random)
    trained = ("q4f16i8", "folder /m (2 shards, bfloat16)")
    assert "compare with `--quant q4f32`" in guidance({"mean_kl": 0.02, "top1_agreement": 0.9}, *trained)


# ---------------------------------------------------------------- issue #34's smaller items

def test_a_timeout_beyond_any_timer_is_no_limit_and_no_traceback(monkeypatch):
    """threading's timers refuse more than TIMEOUT_MAX (`--timeout 1e300` used to print a thread's
    OverflowError traceback): the watchdog treats it as no limit."""
    import threading

    from edgesmith.runtime.transports.base import run_process

    died = []
    monkeypatch.setattr(threading, "excepthook", lambda info: died.append(info.exc_value))
    result, timed_out = run_process(["echo", "ok"], timeout=1e300)
    assert (result.stdout, timed_out, died) == ("ok\n", False, [])


def test_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    """-o where nothing can be made (a parent that is a file, /proc, a read-only filesystem): one
    line naming the path and why, exit 1, at once (not "internal error" after the work)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = [blocker / "bundle", Path("/proc/edgesmith-nowhere/bundle")]
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                      capture_output=True).returncode == 0:  # as root: a read-only mount (CI runs as root)
        paths.append(readonly / "bundle")
    try:
        for out in paths:
            assert_one_line_error(edgesmith("compile", "random:tiny", "-o", out), f"-o {out}: cannot write in")
            assert_one_line_error(edgesmith("tune", "random:tiny", "--device", "host", "-o", out.with_suffix(".json")),
                                  f"-o {out.with_suffix('.json')}: cannot write in")
    finally:
        subprocess.run(["umount", "-l", str(readonly)], capture_output=True)
    assert len(paths) == 3 or os.geteuid() != 0, "the read-only case did not run"


def test_max_position_embeddings_zero_blames_the_config(tiny_ckpt_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_dir("mini-4k"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["max_position_embeddings"] = 0
    (ckpt / "config.json").write_text(json.dumps(config))
    p = edgesmith("compile", ckpt, "--target", "host", "-o", tmp_path / "out")
    assert_one_line_error(p, "max_position_embeddings 0 must be at least 1", "config.json")
    assert "--context" not in p.stderr, p.stderr


def test_run_context_is_kept_as_asked(q0_bundle):
    """--context 4 is a context of 4 tokens, though the cache is made of 16-token pages: 3 + 2 is
    refused in one line naming --context 4, and 3 + 1 runs."""
    assert_one_line_error(edgesmith("run", q0_bundle, "--tokens", "1,2,3", "-n", "2", "--context", "4"),
                          "exceed the context of 4 tokens (--context 4)")
    ok = edgesmith("run", q0_bundle, "--tokens", "1,2,3", "-n", "1", "--context", "4", "--json")
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["output_ids"]) == 1, ok.stderr


def test_a_manifest_never_records_a_file_from_outside(tmp_path):
    """The one writer of manifests refuses a link that leaves the folder (a bundle made of links
    to files elsewhere would record, and later push, what lies outside it); a link that stays
    inside is fine."""
    from edgesmith.compiler.bundle.folder import file_table
    from edgesmith.errors import BundleError

    root = tmp_path / "bundle"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "a.so").write_bytes(b"inside")
    (root / "lib" / "b.so").symlink_to("a.so")
    assert set(file_table(root)) == {"lib/a.so", "lib/b.so"}
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the device")
    (root / "tokenizer.json").symlink_to(secret)
    with pytest.raises(BundleError, match=r"tokenizer.json leads outside the bundle \(symbolic link .*secret.txt\)"):
        file_table(root)
