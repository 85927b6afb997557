"""bench/vulkan_gpu_check.py, the prepared check for a lent NVIDIA GPU's Vulkan driver, tested on
this CPU: prepare (bundles filled from the parameter names, the host reference, the carry folder),
then run with --device any on lavapipe, where the Vulkan bundle filled the same way must give the
host's tokens and logits; and how it finds NVIDIA's Vulkan driver on a machine (faked here: this
one has no NVIDIA driver). The weights and the fill are bench/opencl_gpu_check.py's, tested in
test_opencl_gpu_check.py.
"""
from __future__ import annotations

import argparse
import json
import shutil

import pytest

from bench import vulkan_gpu_check as check

from lavapipe import needs_lavapipe  # noqa: E402

pytestmark = needs_lavapipe


def test_prepare_then_run_on_lavapipe(compiled, tmp_path, capsys):
    out = tmp_path / "carry"
    work = tmp_path / "carry-bundles"
    for name, target in (("host", "host"), ("vulkan", "linux-vulkan")):  # compiled once for the session
        shutil.copytree(compiled("random:tiny", "q4f32", target), work / name)
    assert check.prepare(argparse.Namespace(model="random:tiny", out=str(out), no_cuda=True)) == 0
    carried = sorted(p.name for p in out.iterdir())
    assert carried == ["expected.json", "libvulkan.so.1", "vulkan"]
    assert not list((out / "vulkan" / "params").glob("params_shard_*.bin"))  # weights are not carried
    assert (out / "vulkan" / "bin" / "libwgpu_native.so").is_file()
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 64 << 20
    capsys.readouterr()
    code = check.run(argparse.Namespace(out=str(out), result=str(tmp_path / "result.json"), device="auto"))
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 0, (printed, result)
    vk = result["vulkan"]
    assert vk["tokens_equal"] and vk["logits"]["max_abs_diff"] < 1e-4 and vk["logits"]["positions"] == 12
    assert vk["adapter"]["type"] == "cpu" and "llvmpipe" in vk["adapter"]["name"]
    assert vk["decode_tok_s"] > 0 and "PASSED" in printed and "| vulkan | llvmpipe" in printed


def test_finds_nvidias_vulkan_driver_or_says_why(tmp_path, monkeypatch):
    out = tmp_path / "carry"
    out.mkdir()
    icd_dir = tmp_path / "icd.d"
    icd_dir.mkdir()
    libs = {"libvulkan.so.1": "/usr/lib/x86_64-linux-gnu/libvulkan.so.1"}
    monkeypatch.setattr(check, "_ldconfig_paths", lambda: dict(libs))
    monkeypatch.setattr(check, "_find_lib", lambda name, found: found.get(name))
    # no nvidia_icd.json and no libGLX_nvidia.so.0: the driver has no Vulkan
    with pytest.raises(SystemExit, match="no NVIDIA Vulkan driver on this machine"):
        check.vulkan_env(out, "gpu", icd_dirs=(icd_dir,))
    # libGLX_nvidia.so.0 (NVIDIA's Vulkan driver) without an ICD file: one is written for it
    libs["libGLX_nvidia.so.0"] = "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"
    env, notes = check.vulkan_env(out, "gpu", icd_dirs=(icd_dir,))
    icd = json.loads(open(env["VK_ICD_FILENAMES"]).read())
    assert icd["ICD"]["library_path"] == libs["libGLX_nvidia.so.0"] and env["EDGESMITH_WEBGPU_ADAPTER"] == "gpu"
    assert notes == [f"no nvidia_icd.json: pointed the Vulkan loader at {libs['libGLX_nvidia.so.0']}"]
    # the machine's own ICD file: nothing to do; no loader on the machine: the carried one
    (icd_dir / "nvidia_icd.json").write_text("{}")
    del libs["libvulkan.so.1"]
    (out / "libvulkan.so.1").write_bytes(b"\x7fELF")
    env, notes = check.vulkan_env(out, "gpu", icd_dirs=(icd_dir,))
    assert "VK_ICD_FILENAMES" not in env or env["VK_ICD_FILENAMES"] != str(icd_dir)
    assert notes == ["no libvulkan.so.1 on the machine: used the carried Vulkan loader"]
    assert env["LD_LIBRARY_PATH"].split(":")[0].startswith(str(tmp_path.anchor))
