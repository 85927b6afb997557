"""lavapipe, Mesa's Vulkan driver on the CPU, the WebGPU adapter the Vulkan tests run on.

Installed (its ICD file is there: scripts/install.sh installs mesa-vulkan-drivers) means it must
work: wgpu (the Python package, over the same wgpu-native the bundles ship, not our plug-in) must
list it as a Vulkan adapter, else the tests that need it fail loudly. Not installed is the one case
those tests skip (a machine set up without scripts/install.sh)."""
from __future__ import annotations

import glob

import pytest

ICDS = glob.glob("/usr/share/vulkan/icd.d/lvp_icd.*.json")


def lavapipe_adapter() -> dict | None:
    """wgpu's facts of the lavapipe adapter (name, type, limits, features); None when not installed."""
    if not ICDS:
        return None
    import wgpu

    for adapter in wgpu.gpu.enumerate_adapters_sync():
        info = adapter.info
        if info["backend_type"] == "Vulkan" and "llvmpipe" in info["device"]:
            return {"info": dict(info), "limits": dict(adapter.limits), "features": set(adapter.features)}
    raise RuntimeError(f"lavapipe is installed ({ICDS[0]}) but wgpu lists no llvmpipe Vulkan adapter")


ADAPTER = lavapipe_adapter()
needs_lavapipe = pytest.mark.skipif(ADAPTER is None, reason="lavapipe is not installed (apt-get install "
                                                            "mesa-vulkan-drivers, or bash scripts/install.sh)")
