"""bench/opencl_gpu_check.py, the prepared check for a lent NVIDIA GPU, tested on this CPU: its
weights (stdlib, from the parameter names), its fill of a stripped bundle (the runner verifies
the rewritten hashes), the host reference and the OpenCL bundle filled the same way agreeing on
PoCL, and how it finds NVIDIA's OpenCL on a machine (faked here: this one has no NVIDIA driver).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from bench import opencl_gpu_check as check

import pyopencl as cl  # noqa: E402,F401  (the test extra installs it)


def _values(data: bytes, fmt: str) -> list[float]:
    n = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, data, i)[0] for i in range(0, len(data), n)]


def test_weights_come_from_the_names_in_their_ranges():
    norm = _values(check.param_bytes("model.layers.3.input_layernorm.weight", "float32", 4096), "<f")
    scale = _values(check.param_bytes("lm_head.q_scale", "float32", 4096), "<f")
    half = _values(check.param_bytes("lm_head.q_scale", "float16", 4096), "<e")
    assert all(1 <= v < 2 for v in norm) and len(set(norm)) > 1000
    assert all(2 ** -9 <= abs(v) < 2 ** -8 for v in scale + half)
    assert 400 < sum(v < 0 for v in scale) < 624  # either sign, about half each
    packed = check.param_bytes("lm_head.q_weight", "uint32", 1 << 16)
    nibbles = [b >> s & 15 for b in packed for s in (0, 4)]
    assert all(nibbles.count(v) > 3500 for v in range(16))  # every int4 value, evenly
    # the same name gives the same bytes at any length; another name others
    assert check.param_bytes("lm_head.q_weight", "uint32", 64) == packed[:64]
    assert check.param_bytes("lm_head.q_weigh", "uint32", 64) != packed[:64]
    with pytest.raises(SystemExit, match="dtype int8"):
        check.param_bytes("x", "int8", 8)


@pytest.fixture(scope="module")
def filled(compiled, tmp_path_factory):
    """The host and linux-opencl tiny bundles, stripped of their weights, then filled by the script."""
    out = {}
    for name, target in (("host", "host"), ("opencl", "linux-opencl")):
        dest = tmp_path_factory.mktemp(name) / "b"
        check.strip_weights(compiled("random:tiny", "q4f32", target), dest)
        assert not list((dest / "params").glob("params_shard_*.bin"))
        check.fill_bundle(dest)
        out[name] = dest
    return out


def test_fill_rewrites_shards_md5_and_manifest_hashes(filled):
    bundle = filled["opencl"]
    cache = json.loads((bundle / "params" / "tensor-cache.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    for shard in cache["records"]:
        data = (bundle / "params" / shard["dataPath"]).read_bytes()
        assert shard["md5sum"] == hashlib.md5(data).hexdigest() and len(data) == shard["nbytes"]
        assert manifest["files"][f"params/{shard['dataPath']}"]["sha256"] == hashlib.sha256(data).hexdigest()
        for rec in shard["records"]:
            got = data[rec["byteOffset"]:rec["byteOffset"] + rec["nbytes"]]
            assert got == check.param_bytes(rec["name"], rec["dtype"], rec["nbytes"])
    # the same weights in both bundles: same shards
    for shard in cache["records"]:
        assert (filled["host"] / "params" / shard["dataPath"]).read_bytes() == \
            (bundle / "params" / shard["dataPath"]).read_bytes()


def test_filled_bundles_agree_on_pocl(filled, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESMITH_OPENCL_CACHE", str(tmp_path / "programs"))
    prompt = [1, 45, 496, 7]
    host, _ = check._generate(filled["host"], prompt)  # verified: the manifest's new sha256 hold
    ocl, report = check._generate(filled["opencl"], prompt)
    assert ocl["output_ids"] == host["output_ids"] and len(set(host["output_ids"])) > 1
    assert report["device"]["platform"] == "Portable Computing Language"
    cmp = check.compare_logits(check._logits(filled["opencl"], prompt), check._logits(filled["host"], prompt))
    assert cmp["positions"] == 4 and cmp["top1_agree"] == 4 and cmp["max_abs_diff"] < 1e-4
    # the table's kernels per decoded token: counted by the plug-in in `runner bench`, equal to the
    # manifest's derived count; a bundle whose runner counts none (CUDA) reports the derived one
    lines = check._runner(filled["opencl"], ["bench", "-p", "4", "-n", "2", "-r", "1", "--warmup", "0", "--no-verify"])
    summary = next(line for line in lines if line.get("summary"))
    derived = json.loads((filled["opencl"] / "manifest.json").read_text())["kernels"]["decode_launches"]["total"]
    assert check._tok_s(summary, filled["opencl"])["kernels_per_token"] == derived
    assert check._tok_s(dict(summary, decode_launches=None), filled["opencl"])["kernels_counted"] == "derived"


def test_opencl_env_finds_nvidias_opencl_or_says_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "_ldconfig_paths", lambda: {})
    no_vendors = tmp_path / "vendors"  # no nvidia.icd in it
    no_vendors.mkdir()
    found = {"libnvidia-opencl.so.1": "/usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1"}
    monkeypatch.setattr(check, "_find_lib", lambda name, libs: found.get(name))
    (tmp_path / check.ICD_LOADER).write_bytes(b"carried")
    env, notes = check.opencl_env(tmp_path, "gpu", no_vendors)
    assert env["EDGESMITH_OPENCL_DEVICE"] == "gpu" and env["EDGESMITH_OPENCL_LIBRARY"] == str(tmp_path / "libOpenCL.so.1")
    icd = Path(env["OCL_ICD_VENDORS"]) / "nvidia.icd"
    assert icd.read_text().strip() == found["libnvidia-opencl.so.1"] and len(notes) == 2
    found.clear()  # a driver installed without OpenCL
    with pytest.raises(SystemExit, match="no NVIDIA OpenCL on this machine"):
        check.opencl_env(tmp_path, "gpu", no_vendors)
    (tmp_path / check.ICD_LOADER).unlink()
    with pytest.raises(SystemExit, match="no libOpenCL.so.1 and none was carried"):
        check.opencl_env(tmp_path, "auto", no_vendors)



def test_a_bundle_with_the_same_layout_shares_the_shards(compiled, filled, tmp_path):
    dest = tmp_path / "b"
    check.strip_weights(compiled("random:tiny", "q4f32", "linux-opencl"), dest)
    check.fill_bundle(dest, like=filled["host"])
    ours = json.loads((dest / "manifest.json").read_text())["files"]
    fresh = json.loads((filled["opencl"] / "manifest.json").read_text())["files"]
    shards = [f for f in fresh if f.startswith("params/")]
    assert shards and all(ours[f] == fresh[f] for f in shards)
    first = next((dest / "params").glob("params_shard_*.bin"))
    assert first.stat().st_ino == (filled["host"] / "params" / first.name).stat().st_ino  # a hard link
