"""PoCL, the OpenCL device on this CPU that the OpenCL tests run on.

Installed (its ICD file is there: scripts/install.sh installs it) means it must work: a broken
install or a missing device fails the tests that need it, loudly. Not installed is the one case
those tests skip (a machine set up without scripts/install.sh)."""
from __future__ import annotations

from pathlib import Path

import pyopencl as cl
import pytest

ICD = Path("/etc/OpenCL/vendors/pocl.icd")
NAME = "Portable Computing Language"


def pocl_device():
    """PoCL's first device; None when PoCL is not installed. Installed but unusable: an error."""
    if not ICD.exists():
        return None
    try:
        platforms = [p for p in cl.get_platforms() if NAME in p.name]
    except cl.Error as err:
        raise RuntimeError(f"PoCL is installed ({ICD}) but OpenCL lists no platforms: {err}") from None
    if not platforms or not platforms[0].get_devices():
        raise RuntimeError(f"PoCL is installed ({ICD}) but OpenCL shows no PoCL device")
    return platforms[0].get_devices()[0]


DEVICE = pocl_device()
needs_pocl = pytest.mark.skipif(DEVICE is None, reason=f"PoCL is not installed ({ICD} missing: "
                                                        "apt-get install pocl-opencl-icd, or bash scripts/install.sh)")
