#!/usr/bin/env bash
# Installs everything edgesmith and its tests need on a fresh Debian machine (run as root):
# cross toolchain, qemu, sshd and adb (for the emulated devices), PoCL + pyopencl (the GPU
# kernels run on the CPU), the CPU build of torch (the tests' reference), edgesmith itself, and
# the aarch64 device runtime (cached once).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v adb >/dev/null || missing+=(adb)
command -v g++ >/dev/null || missing+=(g++)
command -v chromium >/dev/null || missing+=(chromium)  # the farm report's screenshot test
# PoCL: an OpenCL device on the CPU, for the GPU kernel tests (tests/test_pocl_kernels.py)
dpkg -s pocl-opencl-icd >/dev/null 2>&1 || missing+=(pocl-opencl-icd)
dpkg -s ocl-icd-opencl-dev >/dev/null 2>&1 || missing+=(ocl-icd-opencl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# torch first, pinned to the CPU build, so nothing below pulls a CUDA torch.
python -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.13.0
python -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test,farm]"
# pyopencl drives PoCL from the kernel tests
python -m pip install -q --disable-pip-version-check --root-user-action=ignore pyopencl
# The aarch64 libtvm_runtime/libtvm_ffi from the registry's wheels, at the installed TVM version.
python -c "from edgesmith.targets import presets, runtime_libs; runtime_libs.runtime_libs(presets.get_preset('arm64-linux'))"
echo "install.sh: ready ($(python -c 'import tvm; print("TVM", tvm.__version__)'))"
