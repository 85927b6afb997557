"""`edgesmith tune` and `compile --tuning`: the kernel choices as parameters, the tuning loop on the
host (budget, resume after a real interruption), the record applied (same tokens as the untuned
bundle and as the numpy Phi-3, tests/numpy_phi3.py), refusals of a record from another device or
target, and the mechanism end to end on the emulated board (a real sshd, aarch64 under qemu)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from emulated_fixtures import board_emulator, devices_yaml, emulators, pytestmark_emulated  # noqa: F401 (fixtures)

from edgesmith.compiler.tuning import (SPACES, GemmI8Params, GemmParams, GemvParams, Tuning, TuningError,
                                       TuningRecord, parse_key, shape_key)

PROMPT, STEPS = [1, 2, 3, 4, 5], 8


def edgesmith(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgesmith", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def own_cache(tmp_path: Path) -> dict:
    """An environment whose cache holds no tuning record yet (the runner builds and device runtimes
    are shared with the session's cache: they are keyed by their content)."""
    session = Path(os.environ["EDGESMITH_CACHE"])
    cache = tmp_path / "cache"
    cache.mkdir()
    for shared in ("runtime", "runner", "tokenizers"):
        (session / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(session / shared)
    return dict(os.environ, EDGESMITH_CACHE=str(cache))


def host_fingerprint() -> dict:
    from edgesmith.runtime.devices import Device
    from edgesmith.runtime.tune.fingerprint import probe_fingerprint

    return probe_fingerprint(Device(name="host", transport="local", target="host", workdir="/tmp"))


# ---------------------------------------------------------------- parameters and records (no compile)


def test_defaults_are_the_hand_measured_choices():
    from edgesmith.compiler.kernels import cpu as kernels
    from edgesmith.compiler.kernels import int8 as kernels_int8

    assert (GemvParams().rows, GemvParams().prefetch_rows) == (16, 2)
    assert GemmI8Params().tokens == 4 and GemmParams().tokens == 8 == kernels.ROW_TILE
    assert kernels_int8.GEMV_ROWS == 16 and kernels_int8.GEMM_TOKENS == 4
    for kind, space in SPACES.items():  # the default is always a candidate, and only once
        assert sum(p == type(space[0])() for p in space) == 1, kind
    t = Tuning.of({shape_key("gemv", 96, 64, 32, "float16"): GemvParams(4, 0)})
    assert t.params("gemv", 96, 64, 32, "float16") == GemvParams(4, 0)
    assert t.params("gemv", 96, 128, 32, "float16") == GemvParams()  # another shape: the defaults
    assert parse_key("gemm_i8:n=9216:k=3072:g=32:s=float16") == {"kind": "gemm_i8", "n": 9216, "k": 3072, "g": 32,
                                                                 "s": "float16"}


def test_damaged_records_are_one_line(tmp_path):
    cases = {"missing.json": None, "notjson.json": "{", "format.json": json.dumps({"format": 99}),
             "params.json": json.dumps({"format": 1, "fingerprint": {}, "fingerprint_id": "x", "target": "host",
                                        "device": "host", "emulated": False,
                                        "kernels": {"gemv:n=8:k=64:g=32:s=float16": {"params": {"rows": -1}}}})}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(TuningError) as e:
            TuningRecord.read(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value), str(e.value)


def test_mismatched_record_is_one_line_and_nothing_written(tmp_path):
    fp = host_fingerprint()
    good = TuningRecord(fingerprint=fp, fingerprint_id="x", target="host", device="host", emulated=False)
    other_cpu = dataclasses.replace(good, fingerprint=dict(fp, cpu_model="ARM Cortex-A76", cores=8))
    other_cpu.write(tmp_path / "a76.json")
    dataclasses.replace(good, target="arm64-linux").write(tmp_path / "arm.json")
    for record, what in (("a76.json", "another kind of device"), ("arm.json", "for target arm64-linux")):
        out = tmp_path / f"bundle-{record}"
        p = edgesmith("compile", "random:tiny", "--tuning", tmp_path / record, "-o", out)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and what in lines[0], p.stderr
        assert "Cortex-A76" in lines[0] or "arm64-linux" in lines[0]
        assert not out.exists() and not list(tmp_path.glob(f".bundle-{record}*"))
    p = edgesmith("compile", "random:tiny", "--tuning", "auto", "--target", "arm64-linux", "-o", tmp_path / "x")
    assert p.returncode != 0 and "needs --device" in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- tuning on the host


def _start_s(env) -> float:
    """Seconds this machine, as loaded now, takes to start a Python process that imports edgesmith's
    CLI and TVM: the scale of what a tune spends before its clock starts (the process, the CLI) and
    after its budget check (a step in flight, the record written). The budget checks below allow
    multiples of it instead of fixed seconds, so a busy machine slows both sides alike."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import edgesmith.cli, tvm"], env=env, check=True, capture_output=True)
    return time.monotonic() - t0


def _tune(env, *args):
    return edgesmith("tune", "random:tiny", "--device", "host", "-r", "3", *args, env=env, timeout=1800)


@pytest.mark.slow
def test_tune_on_host_keeps_its_budget_and_resumes_after_an_interruption(tmp_path):
    env = own_cache(tmp_path)
    cached = Path(env["EDGESMITH_CACHE"]) / "tuning"
    start_s = _start_s(env)
    # Interrupted (Ctrl-C) once the first shape is in the cached record: the event, however long it
    # takes on a busy machine (a budget far above that; the guard only catches a hang)...
    proc = subprocess.Popen([sys.executable, "-m", "edgesmith", "tune", "random:tiny", "--device", "host",
                             "--budget", "30", "-r", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    hang = time.monotonic() + 900
    while proc.poll() is None:
        records = list(cached.glob("*-host.json"))
        if records and json.loads(records[0].read_text())["kernels"]:
            break
        assert time.monotonic() < hang, "tune measured no shape in 15 minutes"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]  # still running: the SIGINT lands mid-tune
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60 + 10 * start_s)
    assert proc.returncode == 130, err
    (path,) = cached.glob("*-host.json")
    partial = json.loads(path.read_text())
    assert partial["complete"] is False and 1 <= len(partial["kernels"]) < 9, partial
    # ... then run again with a one-minute budget: only the missing shapes are measured, the budget
    # kept (to within a step in flight), what was measured before kept. An idle machine finishes
    # in it; a busy one may stop early, saying so.
    t0 = time.monotonic()
    p = _tune(env, "--budget", "1", "-o", tmp_path / "rec.json")
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert f"{len(partial['kernels'])} already in" in p.stderr
    record = TuningRecord.read(tmp_path / "rec.json")
    assert not record.emulated and record.budget_s == 60
    assert record.elapsed_s <= 60 + 2 * start_s, (record.elapsed_s, start_s)
    assert wall - record.elapsed_s < max(20, 4 * start_s), (wall, record.elapsed_s, start_s)  # the process start
    for key, entry in partial["kernels"].items():  # what was measured before the interruption is kept
        assert record.kernels[key] == entry
    if not record.complete:  # a busy machine: the note says why; a third run (no budget to speak of) finishes
        assert len(record.notes) == 1 and "ran out" in record.notes[0], record.notes
        kept = dict(record.kernels)
        p = _tune(env, "--budget", "30", "-o", tmp_path / "rec.json")
        assert p.returncode == 0 and f"{len(kept)} already in" in p.stderr, p.stderr
        record = TuningRecord.read(tmp_path / "rec.json")
        assert all(record.kernels[key] == entry for key, entry in kept.items())
    assert record.complete and len(record.kernels) == 9 and not record.notes  # 8 linears + attention
    # A budget too small for any shape: stops at once (its set-up, TVM's import and the probe, is
    # inside the budget), says so, and measures nothing.
    p = _tune(env, "--budget", "0.1", "--restart")
    assert p.returncode == 0 and "budget" in p.stderr and "ran out" in p.stderr, p.stderr
    small = TuningRecord.read(path)
    assert not small.kernels and small.elapsed_s <= 6 + 2 * start_s, (small.elapsed_s, start_s)


def _all_non_default(shapes) -> dict:
    """For every tunable shape, a candidate of its space other than the default (varied)."""
    table = {}
    for i, shape in enumerate(shapes):
        space = SPACES[parse_key(shape.key)["kind"]]
        others = [p for p in space if p != type(space[0])()]
        table[shape.key] = others[(3 * i + 1) % len(others)]
    return table


def _record_for(fp: dict, target: str, table: dict, emulated=False) -> TuningRecord:
    from edgesmith.compiler.tuning import fingerprint_id

    return TuningRecord(fingerprint=fp, fingerprint_id=fingerprint_id(fp), target=target, device="host",
                        emulated=emulated, kernels={k: {"params": dataclasses.asdict(p)} for k, p in table.items()})


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q4f16", "q4f16i8"])
def test_tuned_bundle_gives_the_untuned_tokens_and_the_numpy_reference(quant, tmp_path, compiled):
    """Every tunable kernel of the model given a non-default choice: the library changes, the logits
    do not (each output is reduced in the same order), so neither do the greedy tokens; q4f16 (float
    activations) also against the numpy Phi-3 over the bundle's own dequantized weights."""
    import tvm
    from edgesmith.compiler.inputs.checkpoint import open_checkpoint
    from edgesmith.compiler.kernels.family import kernel_family
    from edgesmith.compiler.quantization.registry import get_quantization
    from edgesmith.compiler.tuning import model_shape_id
    from edgesmith.runtime.engine import Engine
    from edgesmith.runtime.session import run_bundle
    from edgesmith.runtime.tune.shapes import tunable_shapes
    from edgesmith.targets.presets import get_preset
    from numpy_phi3 import NumpyPhi3, dequantized_weights, read_tensor_cache

    family = kernel_family(tvm.target.Target(get_preset("host").tvm_target()))
    if quant.endswith("i8") and not family.dot_isas:
        pytest.skip("this CPU has no int8 dot products")
    shapes = tunable_shapes(open_checkpoint("random:tiny").config, get_quantization(quant), family, kv_dtype="float32")
    assert {s.phase for s in shapes} == {"decode", "prefill"} and len(shapes) >= 9
    assert any(s.key.startswith("attn_prefill:") for s in shapes)
    table = _all_non_default(shapes)
    record = _record_for(host_fingerprint(), "host", table)
    cfg = open_checkpoint("random:tiny").config
    record.threads = {model_shape_id(cfg, quant): {"threads": 1, "us": {}}}  # a run-time choice, applied by the runner
    record.write(tmp_path / "rec.json")
    tuned = tmp_path / "tuned"
    p = edgesmith("compile", "random:tiny", "--quant", quant, "--tuning", tmp_path / "rec.json", "-o", tuned, "-q")
    assert p.returncode == 0, p.stderr
    default = compiled("random:tiny", quant)
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["tuning"]["kernels"] == {k: dataclasses.asdict(v) for k, v in table.items()}
    assert manifest["tuning"]["untuned"] == []  # every tunable kernel the compile met was in `shapes`
    assert manifest["files"]["lib/model.so"]["sha256"] != json.loads(
        (default / "manifest.json").read_text())["files"]["lib/model.so"]["sha256"]
    shown = edgesmith("inspect", tuned).stdout
    assert all(key in shown for key in table), shown

    logits = {}
    for name, bundle in (("default", default), ("tuned", tuned)):
        eng = Engine(bundle)
        out = [eng.prefill(PROMPT)]
        for _ in range(STEPS):
            out.append(eng.decode(int(np.argmax(out[-1]))))
        logits[name] = np.stack(out)
    assert np.abs(logits["tuned"] - logits["default"]).max() <= 1e-5
    # The in-process Engine above set TVM_NUM_THREADS for its own pool: a runner started from here does
    # not inherit it (it would take it for the user's choice and ignore the bundle's tuned count).
    runs = {name: run_bundle(None, bundle, ["generate", "--tokens", ",".join(map(str, PROMPT)), "-n", STEPS],
                             timeout=300)[-1] for name, bundle in (("default", default), ("tuned", tuned))}
    tokens = {name: r["output_ids"] for name, r in runs.items()}
    assert tokens["tuned"] == tokens["default"] and len(tokens["tuned"]) == STEPS
    assert manifest["tuning"]["threads"] == 1 and runs["tuned"]["threads"] == 1
    assert runs["default"]["threads"] == len(os.sched_getaffinity(0))  # the runner's own default: every core
    overridden = run_bundle(None, tuned, ["generate", "--tokens", "1,2", "-n", 1, "--threads", 2], timeout=300)
    assert overridden[-1]["threads"] == 2
    if quant == "q4f16":
        ref = NumpyPhi3(manifest["model"]["config"], dequantized_weights(read_tensor_cache(tuned / "params")))
        want, out = [], ref.forward(PROMPT)
        for _ in range(STEPS):
            want.append(int(np.argmax(out)))
            out = ref.forward([want[-1]])
        assert tokens["tuned"] == want


# ---------------------------------------------------------------- the emulated board (sshd + qemu)


@pytest.mark.slow
@pytestmark_emulated
def test_tune_on_the_emulated_board_needs_allow_emulated_and_applies(tmp_path, board_emulator):
    from edgesmith.runtime.emulated import emulated_device_entries

    board = [e for e in emulated_device_entries(board_emulator) if e["name"] == "board"]
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": board}))
    env = own_cache(tmp_path)
    p = edgesmith("tune", "random:tiny", "--device", "board", "--devices", devices, env=env)
    assert p.returncode != 0 and "--allow-emulated" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (Path(env["EDGESMITH_CACHE"]) / "tuning").exists()  # refused before anything ran

    p = edgesmith("tune", "random:tiny", "--device", "board", "--devices", devices, "--allow-emulated",
                  "--budget", "4", "-r", "2", "-o", tmp_path / "board.json", env=env)
    assert p.returncode == 0, p.stderr
    record = TuningRecord.read(tmp_path / "board.json")
    assert record.emulated and record.target == "arm64-linux" and record.device == "board"
    assert record.fingerprint["emulated"] and record.kernels and record.elapsed_s <= 240
    assert all(len(e["candidates"]) == len(SPACES[parse_key(k)["kind"]]) for k, e in record.kernels.items())

    # applied: found by --tuning auto for the board, marked emulated, and the same tokens on the board
    tuned, default = tmp_path / "tuned", tmp_path / "default"
    p = edgesmith("compile", "random:tiny", "--quant", "q4f16", "--target", "arm64-linux", "--tuning", "auto",
                  "--device", "board", "--devices", devices, "-o", tuned, env=env)
    assert p.returncode == 0 and "emulated" in p.stderr, p.stderr
    assert json.loads((tuned / "manifest.json").read_text())["tuning"]["emulated"] is True
    assert "EMULATED" in edgesmith("inspect", tuned).stdout
    p = edgesmith("compile", "random:tiny", "--quant", "q4f16", "--target", "arm64-linux", "-o", default, "-q", env=env)
    assert p.returncode == 0, p.stderr
    outs = {}
    for name, bundle in (("tuned", tuned), ("default", default)):
        p = edgesmith("run", bundle, "--device", "board", "--devices", devices, "--tokens", "1,2,3,4,5", "-n", "8",
                      env=env)
        assert p.returncode == 0, p.stderr
        outs[name] = p.stdout.strip().splitlines()[-1]
    assert outs["tuned"] == outs["default"] and len(outs["tuned"].split()) == 8


@pytest.mark.slow
@pytestmark_emulated
def test_tune_on_the_emulated_phone_over_adb(tmp_path, devices_yaml):
    """The same mechanism through the real adb (android-arm64: the glibc loader shipped with the
    runner); refused without --allow-emulated, marked emulated with it."""
    env = own_cache(tmp_path)
    p = edgesmith("tune", "random:tiny", "--device", "phone", "--devices", devices_yaml, env=env)
    assert p.returncode != 0 and "--allow-emulated" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = edgesmith("tune", "random:tiny", "--device", "phone", "--devices", devices_yaml, "--allow-emulated",
                  "--budget", "4", "-r", "2", "-o", tmp_path / "phone.json", env=env)
    assert p.returncode == 0, p.stderr
    record = TuningRecord.read(tmp_path / "phone.json")
    assert record.emulated and record.target == "android-arm64" and record.device == "phone"
    assert record.complete and len(record.kernels) == 9 and record.elapsed_s <= 240


@pytest.mark.slow
def test_farm_run_tune_tunes_once_and_profiles_the_tuned_bundle(tmp_path):
    env = own_cache(tmp_path)
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [{"name": "host", "transport": "local", "target": "host"}]}))
    logs = []
    for run in ("first", "second"):
        p = edgesmith("farm", "run", "--model", "random:tiny", "--devices", devices, "-s", "host", "--tune",
                      "--tune-budget", "2", "-p", "8", "-n", "4", "-r", "1", "--max-reps", "1", "--out", tmp_path / run,
                      env=env)
        assert p.returncode == 0, p.stderr
        logs.append(p.stderr)
        (device,) = json.loads((tmp_path / run / "results.json").read_text())["devices"]
        assert device["status"] == "passed" and device["tuning"]["status"] == "tuned", device
        manifest = json.loads((Path(device["bundle"]) / "manifest.json").read_text())
        assert manifest["tuning"]["source"] == device["tuning"]["record"] and manifest["tuning"]["kernels"]
    assert "0 already in" in logs[0] and "9 already in" in logs[1]  # the second run measures nothing
