#!/usr/bin/env bash
# Installs edgesmith and everything its tests need on a fresh Debian machine (run as root), into a
# virtual environment of its own (default <repo>/.venv; $EDGESMITH_VENV to choose): nothing goes
# into the system Python, and nothing installed there by hand counts.
#   apt:  cross toolchain, qemu, sshd and adb (the emulated devices), PoCL (OpenCL on the CPU),
#         Mesa's Vulkan drivers (lavapipe: Vulkan on the CPU, for the Vulkan bundles' tests),
#         chromium (the farm report's screenshot test), tmux (the chat's terminal test),
#         llvm-19 (llvm-mca), python3-venv
#   venv: by default exactly requirements.lock (every package at the version CI tested, hashes
#         checked; scripts/lock.sh writes it), then edgesmith itself (editable) without resolving
#         anything more; then the aarch64 device runtime (cached once) and the Phi-3 tokenizer.
# --fresh:  delete the venv first (CI does, so a missing dependency cannot hide).
# --if-needed: leave the venv alone when it already holds this lock (or a --latest install);
#           what test.sh and demo.sh call, so a pulled lock reaches the venv by itself.
# --latest: ignore the lock: the CPU build of torch, then the newest versions pyproject.toml's
#           ranges allow (how a break in a new release is found on purpose; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${EDGESMITH_VENV:-$root/.venv}
fresh=0
mode=lock
if_needed=0
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 ;;
    --latest) mode=latest ;;
    --if-needed) if_needed=1 ;;
    *) echo "install.sh: unknown option $arg (known: --fresh, --latest, --if-needed)" >&2; exit 2 ;;
  esac
done
lock=$root/requirements.lock
if [ "$mode" = lock ]; then
  here=$(python3 -c 'import platform, sys; print(f"{platform.machine()} {sys.version_info[0]}.{sys.version_info[1]}")')
  if [ "$here" != "x86_64 3.11" ]; then
    echo "install.sh: requirements.lock is for x86_64 and Python 3.11; this machine has $here: installing from" \
         "pyproject.toml's ranges instead (--latest)" >&2
    mode=latest
  fi
fi

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v adb >/dev/null || missing+=(adb)
command -v g++ >/dev/null || missing+=(g++)
command -v chromium >/dev/null || missing+=(chromium)
command -v tmux >/dev/null || missing+=(tmux)  # tests/test_chat.py: the chat in a real terminal
dpkg -s pocl-opencl-icd >/dev/null 2>&1 || missing+=(pocl-opencl-icd)
dpkg -s ocl-icd-opencl-dev >/dev/null 2>&1 || missing+=(ocl-icd-opencl-dev)
dpkg -s opencl-headers >/dev/null 2>&1 || missing+=(opencl-headers)
dpkg -s clinfo >/dev/null 2>&1 || missing+=(clinfo)
# linux-vulkan bundles run on lavapipe here (wgpu-native finds it through the Vulkan loader)
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || missing+=(libvulkan1)
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

marker=$venv/edgesmith-install
want="latest"
[ "$mode" = lock ] && want="lock $(sha256sum "$lock" | cut -d' ' -f1)"
have=$(cat "$marker" 2>/dev/null || true)
if [ "$if_needed" = 1 ] && [ -x "$venv/bin/edgesmith" ] && { [ "$have" = "$want" ] || [ "$have" = latest ]; }; then
  exit 0
fi
if [ "$mode" = lock ] && [ -d "$venv" ] && [ "$have" != "$want" ] && [ "$fresh" = 0 ]; then
  # Another lock (or --latest) made this venv: start it afresh, so it holds this lock and nothing else.
  echo "install.sh: $venv was not installed from this requirements.lock; recreating it"
  fresh=1
fi
if [ "$fresh" = 1 ] && [ -d "$venv" ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "install.sh: creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
if [ "$mode" = lock ]; then
  # Exactly the lock, hashes checked, nothing resolved beyond it (--no-deps: a package the lock
  # lacks stays missing, and tests/test_lock.py says so); then edgesmith, built by the locked
  # setuptools (no isolated build environment fetching its own).
  "${pip[@]}" --require-hashes --no-deps -r "$lock"
  "${pip[@]}" --no-deps --no-build-isolation -e "$root"
  "$py" -m pip check --disable-pip-version-check >/dev/null || {
    "$py" -m pip check --disable-pip-version-check >&2
    echo "install.sh: requirements.lock is inconsistent (above); refresh it with scripts/lock.sh" >&2; exit 1; }
  echo "$want" > "$marker"
else
  # torch first, pinned to the CPU build, so nothing below pulls a CUDA torch.
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" --upgrade --upgrade-strategy eager -e "$root[test]"
  echo "latest" > "$marker"
fi
# The aarch64 libtvm_runtime/libtvm_ffi from the registry's wheels, at the installed TVM version,
# and the aarch64 wgpu-native (arm64 Vulkan bundles) from the wgpu wheel of the installed version.
"$py" -c "from edgesmith.targets import presets, runtime_libs; runtime_libs.runtime_libs(presets.get_preset('arm64-linux'))"
"$py" -c "from edgesmith.targets import presets, runtime_libs; runtime_libs.wgpu_library(presets.get_preset('arm64-linux-vulkan'))"
# Debian's arm64 Mesa (lavapipe) unpacked into a private root (apt with its own state: nothing is
# installed, no foreign architecture added): qemu runs arm64-linux-vulkan bundles on it here.
"$py" -c "from edgesmith.targets import runtime_libs; runtime_libs.arm64_vulkan_root(fetch=True)"
# The real Phi-3 tokenizer for random: bundles (llama-cpp-python's sdist -> tokenizer.json in the
# cache; once: it does nothing when it is there). `edgesmith run` never downloads it.
"$venv/bin/edgesmith" tokenizer fetch
echo "install.sh: ready in $venv ($("$py" -c 'import tvm; print("TVM", tvm.__version__)'))"
echo "install.sh: run edgesmith as $venv/bin/edgesmith, or 'source $venv/bin/activate' first"
