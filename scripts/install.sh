#!/usr/bin/env bash
# Installs edgesmith and everything its tests need on a fresh Debian machine (run as root), into a
# virtual environment of its own (default <repo>/.venv; $EDGESMITH_VENV to choose): nothing goes
# into the system Python, and nothing installed there by hand counts.
#   apt:  cross toolchain, qemu, sshd and adb (the emulated devices), PoCL (OpenCL on the CPU),
#         chromium (the farm report's screenshot test), llvm-19 (llvm-mca), python3-venv
#   venv: the CPU build of torch (the tests' reference) first, then edgesmith[test] from
#         pyproject.toml, then the aarch64 device runtime (cached once) and the Phi-3 tokenizer.
# --fresh: delete the venv first (CI does, so a missing dependency cannot hide).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${EDGESMITH_VENV:-$root/.venv}
fresh=0
[ "${1:-}" = "--fresh" ] && fresh=1

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v adb >/dev/null || missing+=(adb)
command -v g++ >/dev/null || missing+=(g++)
command -v chromium >/dev/null || missing+=(chromium)
dpkg -s pocl-opencl-icd >/dev/null 2>&1 || missing+=(pocl-opencl-icd)
dpkg -s ocl-icd-opencl-dev >/dev/null 2>&1 || missing+=(ocl-icd-opencl-dev)
dpkg -s opencl-headers >/dev/null 2>&1 || missing+=(opencl-headers)
dpkg -s clinfo >/dev/null 2>&1 || missing+=(clinfo)
# bench/arm_cost.py and its test: llvm-mca with LLVM 19's Arm scheduling models, and the dynamic
# qemu-aarch64 (the static one loads no TCG plugins).
command -v llvm-mca-19 >/dev/null || missing+=(llvm-19)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
# Debian's python3 has no venv module without python3-venv (pyenv and python.org builds do).
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$fresh" = 1 ] && [ -d "$venv" ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "install.sh: creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
# torch first, pinned to the CPU build, so nothing below pulls a CUDA torch.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e "$root[test]"
# The aarch64 libtvm_runtime/libtvm_ffi from the registry's wheels, at the installed TVM version.
"$py" -c "from edgesmith.targets import presets, runtime_libs; runtime_libs.runtime_libs(presets.get_preset('arm64-linux'))"
# The real Phi-3 tokenizer for random: bundles (llama-cpp-python's sdist -> tokenizer.json in the
# cache; once: it does nothing when it is there). `edgesmith run` never downloads it.
"$venv/bin/edgesmith" tokenizer fetch
echo "install.sh: ready in $venv ($("$py" -c 'import tvm; print("TVM", tvm.__version__)'))"
echo "install.sh: run edgesmith as $venv/bin/edgesmith, or 'source $venv/bin/activate' first"
