"""What `edgesmith devices` says about Vulkan: the drivers a device has installed (its ICD files,
which the probe's shell lists on any Linux or Android device) and, on this machine, the adapters
themselves (wgpu). References: the ICD files on this machine's disk, and lavapipe as wgpu lists it."""
from __future__ import annotations

import glob
import os
import subprocess

from edgesmith.runtime.probe import format_table, parse_probe, probe_script, vulkan_driver

from lavapipe import ADAPTER, needs_lavapipe  # noqa: E402


def test_icd_files_name_their_drivers():
    assert vulkan_driver("lvp_icd.x86_64.json") == "lavapipe (Mesa, CPU)"
    assert vulkan_driver("broadcom_icd.aarch64.json") == "V3DV (Raspberry Pi)"
    assert vulkan_driver("nvidia_icd.json") == "NVIDIA"
    assert vulkan_driver("freedreno_icd.aarch64.json") == "turnip (Adreno)"
    assert vulkan_driver("vendor_icd.json") == "vendor"  # unknown: the file's own name


def test_the_probe_lists_this_machines_icd_files(tmp_path):
    out = subprocess.run(["sh", "-c", probe_script(str(tmp_path))], capture_output=True, text=True, timeout=60).stdout
    info = parse_probe(out)
    on_disk = {os.path.basename(p) for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")
               for p in glob.glob(f"{d}/*.json")}
    assert sorted(info.get("vulkan_drivers", [])) == sorted({vulkan_driver(f) for f in on_disk})


def test_a_remote_device_shows_its_drivers_this_machine_its_adapters():
    board = dict(parse_probe("gpu=vulkan:/usr/lib/aarch64-linux-gnu/libvulkan.so.1\n"
                             "vulkan_icd=broadcom_icd.aarch64.json\n"), name="pi5", reachable=True)
    assert "vulkan (drivers: V3DV (Raspberry Pi))" in format_table([board])
    host = dict(board, name="host", vulkan_adapters=["llvmpipe (LLVM 15.0.6, 256 bits) (cpu)"])
    assert "vulkan (llvmpipe (LLVM 15.0.6, 256 bits) (cpu))" in format_table([host])


@needs_lavapipe
def test_this_machines_adapters_come_from_wgpu():
    from edgesmith.runtime.probe import local_vulkan_adapters

    assert f"{ADAPTER['info']['device']} (cpu)" in local_vulkan_adapters()
