"""The C++ runner: built per preset, run on a tiny bundle natively and under qemu.

The reference is independent of the runner: the same module and weights compiled for the
host and driven by `tvm.relax.VirtualMachine` in Python (tests/tiny_vm_model.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgesmith.errors import BundleError, TargetError
from edgesmith.runtime.session import run_runner, runner_argv
from edgesmith.targets import runner_build, toolchains
from edgesmith.targets.presets import get_preset

import tiny_vm_model as tiny

PROMPT = [1, 2, 3, 4, 5, 6, 7]
LONG_PROMPT = [(7 * i + 3) % tiny.VOCAB for i in range(75)]  # > 2 prefill chunks of 32
TIMEOUT = 300


def _can_emulate(name: str) -> bool:
    preset = get_preset(name)
    try:
        preset.layout.qemu_wrapper(preset.arch)  # qemu installed, where this machine needs it
    except TargetError:
        return False
    return toolchains.toolchain_status(preset)[0]


def _bundle(tmp_path_factory, name: str) -> Path:
    if not _can_emulate(name):
        pytest.skip(f"{name}: no toolchain or emulator on this machine")
    preset = get_preset(name)
    # after scripts/install.sh (which caches the aarch64 runtime) a TargetError here is a regression: it fails
    files = runner_build.bundle_runtime_files(preset)
    out = tmp_path_factory.mktemp(name) / "bundle"
    return tiny.write_bundle(
        out,
        target=preset.tvm_target(),
        arch=preset.arch,
        fcompile=toolchains.export_fcompile(preset),
        runtime_files=files,
        preset=preset.name,
        layout=preset.layout.name,
    )


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory, "host")


@pytest.fixture(scope="module")
def arm64_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory, "arm64-linux")


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory, "android-arm64")


@pytest.fixture(scope="module")
def reference(host_bundle):
    return {
        "short": tiny.reference_greedy(host_bundle, PROMPT, 12),
        "long": tiny.reference_greedy(host_bundle, LONG_PROMPT, 6),
    }


def generate(bundle: Path, tokens: list[int], n: int, *extra: str, on_line=None) -> list[dict]:
    args = ["generate", str(bundle), "--tokens", ",".join(map(str, tokens)), "-n", str(n), *extra]
    return run_runner(bundle, args, timeout=TIMEOUT, on_line=on_line)


# ---------------------------------------------------------------- greedy vs the Python VM


@pytest.mark.parametrize("which", ["host_bundle", "arm64_bundle", "android_bundle"])
def test_greedy_matches_python_vm(which, request, reference):
    bundle = request.getfixturevalue(which)
    (result,) = generate(bundle, PROMPT, 12)
    assert result["output_ids"] == reference["short"]
    assert result["prompt_tokens"] == len(PROMPT)
    for key in ("load_s", "prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s", "peak_rss_kb"):
        assert result[key] > 0, key


@pytest.mark.parametrize("which", ["host_bundle", "arm64_bundle"])
def test_prompt_longer_than_a_prefill_chunk(which, request, reference):
    bundle = request.getfixturevalue(which)
    (result,) = generate(bundle, LONG_PROMPT, 6)
    assert result["output_ids"] == reference["long"]


def test_android_layout_starts_through_its_loader(android_bundle):
    argv = runner_argv(android_bundle)
    assert argv[1].endswith("bin/ld-linux-aarch64.so.1") and "--library-path" in argv
    assert (android_bundle / "bin" / "libc.so.6").is_file()


def test_peak_rss_is_the_runners_own(host_bundle):
    # ru_maxrss survives exec: a runner started from this (TVM-laden) python must not report it
    (result,) = generate(host_bundle, PROMPT, 2)
    assert result["peak_rss_kb"] < 200_000


# ---------------------------------------------------------------- sampling, streaming, stop


def test_stream_lines_come_before_the_result(host_bundle, reference):
    seen = []
    records = generate(host_bundle, PROMPT, 5, "--stream", on_line=seen.append)
    assert seen == records
    assert [r["token"] for r in records[:-1] if "token" in r] == reference["short"][:5]  # after a "loaded" line
    assert records[-1]["output_ids"] == reference["short"][:5]


def test_stream_tokens_come_while_the_runner_runs(host_bundle, reference):
    """The event, not the order of a list: in a conversation (--interactive) the runner cannot end
    before its stdin does, and stdin ends only after the first token's line came. A runner that
    held its lines until exit would never show one: the wait runs out. The tokens are generate's
    (the same decode loop prints them)."""
    import threading

    from edgesmith.runtime.transports.base import StdinFeed

    first, waited = threading.Event(), []

    def turns():
        yield (",".join(map(str, PROMPT)) + "\n").encode()
        waited.append(first.wait(TIMEOUT / 2))

    records = run_runner(host_bundle, ["generate", str(host_bundle), "--interactive", "--stream", "-n", "5"],
                         timeout=TIMEOUT, stdin=StdinFeed(turns()),
                         on_line=lambda r: first.set() if "token" in r else None)
    assert waited == [True], "no token line came before the runner's input ended"
    assert [r["token"] for r in records if "token" in r] == reference["short"][:5]


def test_stop_ids_end_the_generation(host_bundle, reference):
    stop = reference["short"][3]
    first = reference["short"].index(stop)
    (result,) = generate(host_bundle, PROMPT, 12, "--stop-ids", f"{tiny.VOCAB + 5},{stop}")
    assert result["output_ids"] == reference["short"][: first + 1]
    assert result["stop_reason"] == "stop"


def test_sampling_is_seeded(host_bundle, reference):
    def sample(seed):  # hot enough that the tiny model's peaked logits still vary
        args = ("--temperature", "100", "--top-p", "0.95", "--seed", str(seed))
        return generate(host_bundle, PROMPT, 12, *args)[0]["output_ids"]

    a, b, c = sample(1), sample(1), sample(2)
    assert a == b
    assert a != c and a != reference["short"]
    assert all(0 <= t < tiny.VOCAB for t in a + c)
    # a top-p so small that only the best token survives is greedy
    tiny_p = generate(host_bundle, PROMPT, 12, "--temperature", "1", "--top-p", "1e-9")
    assert tiny_p[0]["output_ids"] == reference["short"]


# ---------------------------------------------------------------- bench


def test_bench_lines(host_bundle):
    records = run_runner(
        host_bundle,
        ["bench", str(host_bundle), "-p", "40", "-n", "8", "--warmup", "1", "-r", "3"],
        timeout=TIMEOUT,
    )
    reps, summary = records[:-1], records[-1]
    assert [r["rep"] for r in reps] == [0, 1, 2]
    for r in reps:
        assert r["prefill_s"] > 0 and r["decode_tok_s"] > 0
    assert summary["summary"] and summary["reps"] == 3 and summary["prompt_tokens"] == 40
    assert summary["load_s"] > 0 and summary["peak_rss_kb"] > 0


def test_too_long_request_is_refused(host_bundle):
    with pytest.raises(BundleError, match="max_total_seq_len"):
        generate(host_bundle, PROMPT, tiny.MAX_TOTAL_SEQ_LEN)


# ---------------------------------------------------------------- checks that fail in one line


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst, symlinks=True)
    return dst


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("which", ["host_bundle", "arm64_bundle"])
def test_missing_shard_is_named(which, request, tmp_path):
    bundle = _copy(request.getfixturevalue(which), tmp_path)
    (bundle / "params" / "params_shard_0.bin").unlink()
    with pytest.raises(BundleError) as err:
        generate(bundle, PROMPT, 2)
    assert "missing file" in _one_line(err) and "params_shard_0.bin" in str(err.value)


@pytest.mark.parametrize("which", ["host_bundle", "arm64_bundle"])
def test_corrupted_shard_is_refused(which, request, tmp_path):
    bundle = _copy(request.getfixturevalue(which), tmp_path)
    shard = bundle / "params" / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        generate(bundle, PROMPT, 2)
    assert "corrupted" in _one_line(err) and "params_shard_0.bin" in str(err.value)
    # --no-verify skips the hash (the transport checks hashes when it pushes)
    generate(bundle, PROMPT, 2, "--no-verify")


def test_version_mismatch_is_refused(host_bundle, tmp_path):
    bundle = _copy(host_bundle, tmp_path)
    _edit_manifest(bundle, tvm_version="0.26.0")
    with pytest.raises(BundleError) as err:
        generate(bundle, PROMPT, 2)
    msg = _one_line(err)
    assert "0.26.0" in msg and runner_build.runtime_version() in msg


def _run_direct(runner_bundle: Path, data_bundle: Path) -> subprocess.CompletedProcess:
    argv = runner_argv(runner_bundle) + ["generate", str(data_bundle), "--tokens", "1", "-n", "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)


def test_wrong_architecture_is_refused_before_loading(host_bundle, arm64_bundle):
    done = _run_direct(host_bundle, arm64_bundle)  # x86 runner, aarch64 bundle
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "is for aarch64 but this runner is x86_64" in done.stderr
    done = _run_direct(arm64_bundle, host_bundle)  # aarch64 runner under qemu, x86 bundle
    assert done.returncode == 1 and "is for x86_64 but this runner is aarch64" in done.stderr


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json not found"):
        run_runner(tmp_path, ["generate", str(tmp_path)], timeout=10)


def test_bad_arguments_are_one_line(host_bundle):
    with pytest.raises(BundleError) as err:
        run_runner(host_bundle, ["generate", str(host_bundle), "--tokens", "1,x"], timeout=30)
    assert "--tokens" in _one_line(err)
    with pytest.raises(BundleError, match="not a 32-bit integer"):  # 2**32 + 1 would wrap to token 1
        run_runner(host_bundle, ["generate", str(host_bundle), "--tokens", "4294967297"], timeout=30)
    with pytest.raises(BundleError, match="unknown option '--bogus'"):
        run_runner(host_bundle, ["bench", str(host_bundle), "--bogus"], timeout=30)


def test_timeout_becomes_a_bundle_error(arm64_bundle):
    with pytest.raises(BundleError, match="did not finish within"):
        run_runner(arm64_bundle, ["bench", str(arm64_bundle), "-p", "64", "-n", "64", "-r", "100"], timeout=0.5)


# ---------------------------------------------------------------- the build itself


def test_runner_build_is_cached(tmp_path, monkeypatch):
    preset = get_preset("host")
    first = runner_build.build_runner(preset, tmp_path / "a")
    compiled = []
    real_run = runner_build.subprocess.run

    def spy(cmd, *a, **k):  # a second build of the same source must not run the compiler
        if "-o" in cmd:
            compiled.append(cmd)
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(runner_build.subprocess, "run", spy)
    second = runner_build.build_runner(preset, tmp_path / "b")
    assert not compiled and first.read_bytes() == second.read_bytes()


def test_runner_is_self_contained(arm64_bundle):
    dyn = subprocess.run(
        ["readelf", "-d", str(arm64_bundle / "bin" / "runner")], capture_output=True, text=True
    ).stdout
    assert "[$ORIGIN]" in dyn and "libtvm_ffi.so" in dyn
    for needed in ("libtvm_runtime.so", "libtvm_ffi.so", "libstdc++.so.6", "libgcc_s.so.1"):
        assert (arm64_bundle / "bin" / needed).is_file()


def test_build_failure_shows_the_compiler_output(tmp_path, monkeypatch):
    broken = tmp_path / "runner.cc"
    broken.write_text("int main() { return undefined_thing; }\n")
    monkeypatch.setattr(runner_build, "RUNNER_SOURCE", broken)
    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TargetError) as err:
        runner_build.build_runner(get_preset("host"), tmp_path / "out")
    msg = _one_line(err)
    assert "undefined_thing" in msg and "build.log" in msg


# ---------------------------------------------------------------- the real compiler's bundles


@pytest.mark.slow
def test_compiled_bundle_same_tokens_on_host_and_emulated_arm64(tmp_path):
    """Three targets, each against an independent reference: the numpy Phi-3 over the bundle's own
    dequantized weights (tests/numpy_phi3.py), stepping greedily with its own KV cache."""
    from edgesmith.compiler.build import compile_bundle
    from numpy_phi3 import NumpyPhi3, dequantized_weights, read_tensor_cache

    prompt, n = [1, 2, 3, 4], 8
    outputs = {}
    for name in ("host", "arm64-linux", "android-arm64"):
        assert _can_emulate(name), f"{name}: toolchain or qemu missing (bash scripts/install.sh installs them)"
        # one KV dtype for all (android-arm64's default is float16, the others' float32), as the reference's
        bundle = compile_bundle(model="random:tiny", quant="q4f16", target=name, out=tmp_path / name,
                                kv_dtype="float32")
        (result,) = generate(bundle, prompt, n)
        outputs[name] = result["output_ids"]
    cfg = json.loads((tmp_path / "host" / "manifest.json").read_text())["model"]["config"]
    ref = NumpyPhi3(cfg, dequantized_weights(read_tensor_cache(tmp_path / "host" / "params")))
    want, logits = [], ref.forward(prompt)
    for _ in range(n):
        want.append(int(np.argmax(logits)))
        logits = ref.forward([want[-1]])
    assert len(outputs) == 3 and all(tokens == want for tokens in outputs.values()), (outputs, want)
