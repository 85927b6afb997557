"""The device runtime: `libtvm_runtime.so` + `libtvm_ffi.so` for a preset's platform.

"host" takes them from the installed `tvm` / `tvm_ffi` packages. A wheel platform tag
(e.g. "manylinux_2_28_aarch64") takes them from the registry's wheels of exactly the
installed versions, downloaded once into

    $EDGESMITH_CACHE (default ~/.cache/edgesmith)/runtime/<platform>/<tvm version>/
        libtvm_runtime.so  libtvm_ffi.so  runtime.json   (versions and sha256 of each file)

and verified against runtime.json on every use (no network after the first time).

What the aarch64 libtvm_runtime.so NEEDS (readelf -d): libtvm_ffi.so, then glibc (libc,
libm, libdl, libpthread, ld-linux-aarch64) and the GCC runtime (libstdc++.so.6,
libgcc_s.so.1). The GCC runtime is not part of glibc: `runner_build.bundle_runtime_files`
ships it from the cross toolchain's sysroot next to the runner.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgesmith.errors import TargetError

from .cache import cache_root
from .presets import TargetPreset

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
# wheel member holding each library
_MEMBERS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so", "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}
# macOS arm64 (apple-metal): the only wheel with a Metal device runtime
_MAC_MEMBERS = {
    "libtvm_runtime.dylib": "tvm/lib/libtvm_runtime.dylib",
    "libtvm_runtime_metal.dylib": "tvm/lib/libtvm_runtime_metal.dylib",
    "libtvm_ffi.dylib": "tvm_ffi/lib/libtvm_ffi.dylib",
}


def _members(platform: str) -> dict[str, str]:
    return _MAC_MEMBERS if platform.startswith("macosx") else _MEMBERS


def runtime_version() -> str:
    """The installed apache-tvm version; bundles and runtimes must match it exactly."""
    return importlib.metadata.version("apache-tvm")


def ffi_version() -> str:
    return importlib.metadata.version("apache-tvm-ffi")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # found without importing (no TVM start-up cost)
    if spec is None or not spec.submodule_search_locations:
        raise TargetError(f"python package '{name}' is not installed; pip install apache-tvm")
    return Path(list(spec.submodule_search_locations)[0])


def ffi_include_dirs() -> list[Path]:
    """Headers of the tvm_ffi C++ API (architecture-independent; same version as the wheels)."""
    root = _package_dir("tvm_ffi")
    dirs = [root / "include", root / "3rdparty" / "dlpack" / "include"]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise TargetError(f"tvm_ffi headers not found at {missing[0]}; reinstall apache-tvm-ffi")
    return dirs


def tvm_include_dir() -> Path:
    """The wheel's `tvm/include` (tvm/runtime/device_api.h: what a device runtime plug-in implements)."""
    inc = _package_dir("tvm") / "include"
    if not (inc / "tvm" / "runtime" / "device_api.h").is_file():
        raise TargetError(f"TVM runtime headers not found at {inc}; reinstall apache-tvm")
    return inc


def host_ffi_library() -> Path:
    return _package_dir("tvm_ffi") / "lib" / "libtvm_ffi.so"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def runtime_dir(platform: str) -> Path:
    return cache_root() / "runtime" / platform / runtime_version()


def _download(platform: str, dest: Path) -> None:
    """pip-download both wheels for `platform` and extract just the runtime libraries."""
    tvm_v, ffi_v = runtime_version(), ffi_version()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--only-binary=:all:",
            "--platform", platform, "--python-version", "3.11", "--no-deps",
            "--disable-pip-version-check", "-q", "-d", tmp,
            f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise TargetError(
                f"could not download the {platform} TVM runtime {tvm_v} (pip: {last}); "
                f"check the network, or put {', '.join(RUNTIME_LIBS)} in {dest}"
            )
        dest.mkdir(parents=True, exist_ok=True)
        record = {"tvm_version": tvm_v, "tvm_ffi_version": ffi_v, "platform": platform, "files": {}}
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for lib, member in _members(platform).items():
                    if member in zf.namelist():
                        part = dest / (lib + ".part")
                        part.write_bytes(zf.read(member))
                        part.replace(dest / lib)
                        record["files"][lib] = _sha256(dest / lib)
        missing = [lib for lib in _members(platform) if lib not in record["files"]]
        if missing:
            raise TargetError(
                f"the {platform} wheels of TVM {tvm_v} hold no {missing[0]}; "
                "this platform has no prebuilt device runtime"
            )
        (dest / "runtime.json").write_text(json.dumps(record, indent=1))


def _cached(platform: str) -> list[Path]:
    dest = runtime_dir(platform)
    record_path = dest / "runtime.json"
    if not record_path.is_file():
        _download(platform, dest)
    record = json.loads(record_path.read_text())
    if record.get("tvm_version") != runtime_version():
        raise TargetError(
            f"cached runtime in {dest} is TVM {record.get('tvm_version')}, the installed TVM is "
            f"{runtime_version()}; delete {dest}"
        )
    paths = []
    for lib in _members(platform):
        path = dest / lib
        if not path.is_file() or _sha256(path) != record["files"].get(lib):
            raise TargetError(
                f"cached runtime file {path} is missing or its sha256 does not match "
                f"runtime.json; delete {dest} to download it again"
            )
        paths.append(path)
    return paths


def runtime_libs(preset: TargetPreset) -> list[Path]:
    """[libtvm_runtime.so, libtvm_ffi.so] built for `preset`'s platform."""
    if preset.platform == "host":
        libs = [_package_dir("tvm") / "lib" / "libtvm_runtime.so", host_ffi_library()]
        for lib in libs:
            if not lib.is_file():
                raise TargetError(f"{lib} not found; reinstall apache-tvm / apache-tvm-ffi")
        return libs
    return _cached(preset.platform)


CUDA_RUNTIME = ("libtvm_runtime_cuda.so", "libcudart.so.13")


def _cudart() -> Path:
    """libcudart.so.13 of the CUDA toolkit (nvcc's); libcuda.so.1 is the driver's, on the device."""
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            path = Path(root) / sub / "libcudart.so.13"
            if path.exists():
                return path.resolve()
    raise TargetError("libcudart.so.13 not found under $CUDA_HOME or /usr/local/cuda; install the CUDA 13 "
                      "toolkit (or its cuda-cudart-13 package) or set CUDA_HOME")


# wgpu-native (WebGPU over Vulkan/Metal) comes in pip's `wgpu` package: the version installed here,
# which edgesmith's WebGPU plug-in is compiled against (its headers), for every platform.
WGPU_LIBRARY = "libwgpu_native.so"
_WGPU_MEMBER = "wgpu/resources/libwgpu_native-release.so"


def wgpu_version() -> str:
    try:
        return importlib.metadata.version("wgpu")
    except importlib.metadata.PackageNotFoundError:
        raise TargetError("python package 'wgpu' is not installed (WebGPU/Vulkan bundles ship its wgpu-native); "
                          "pip install wgpu") from None


def wgpu_include_dir() -> Path:
    """The `wgpu` wheel's webgpu.h and wgpu.h (wgpu-native's C API, architecture-independent)."""
    wgpu_version()
    inc = _package_dir("wgpu") / "resources"
    if not (inc / "webgpu.h").is_file() or not (inc / "wgpu.h").is_file():
        raise TargetError(f"webgpu.h / wgpu.h not found in {inc}; reinstall the wgpu package")
    return inc


def wgpu_library(preset: TargetPreset) -> Path:
    """libwgpu_native for `preset`'s platform: the installed package's ("host"), else pip's `wgpu`
    wheel of the same version for that platform, downloaded once into
    <cache>/runtime/<platform>/wgpu-<version>/ and checked against its record on every use."""
    version = wgpu_version()
    if preset.platform == "host":
        lib = _package_dir("wgpu") / "resources" / "libwgpu_native-release.so"
        if not lib.is_file():
            raise TargetError(f"{lib} not found; reinstall the wgpu package")
        return lib
    dest = cache_root() / "runtime" / preset.platform / f"wgpu-{version}"
    record_path, lib = dest / "wgpu.json", dest / WGPU_LIBRARY
    if not record_path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--platform", preset.platform,
                   "--python-version", "3.11", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp,
                   f"wgpu=={version}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise TargetError(f"could not download the {preset.platform} wgpu {version} wheel (pip: {last}); "
                                  f"check the network, or put {WGPU_LIBRARY} in {dest}")
            with zipfile.ZipFile(wheels[0]) as zf:
                if _WGPU_MEMBER not in zf.namelist():
                    raise TargetError(f"the {preset.platform} wgpu {version} wheel holds no {_WGPU_MEMBER}")
                dest.mkdir(parents=True, exist_ok=True)
                part = dest / (WGPU_LIBRARY + ".part")
                part.write_bytes(zf.read(_WGPU_MEMBER))
                part.replace(lib)
        record_path.write_text(json.dumps({"wgpu_version": version, "platform": preset.platform,
                                           "sha256": _sha256(lib)}, indent=1))
    record = json.loads(record_path.read_text())
    if not lib.is_file() or _sha256(lib) != record.get("sha256"):
        raise TargetError(f"cached {lib} is missing or its sha256 does not match {record_path}; delete {dest} "
                          "to download it again")
    return lib


def gpu_runtime_libs(preset: TargetPreset) -> dict[str, Path]:
    """{file name: path} of the device runtime a GPU preset's runner needs on top of the CPU one
    (cuda: TVM's CUDA runtime + libcudart; apple-metal: the whole macOS arm64 runtime; webgpu:
    wgpu-native). OpenCL's and WebGPU's TVM side are none of the wheels': edgesmith builds its own
    plug-ins (targets.runner_build)."""
    if preset.gpu is None or preset.gpu.runtime_note or preset.gpu.api == "opencl":
        return {}
    if preset.gpu.api == "webgpu":
        return {WGPU_LIBRARY: wgpu_library(preset)}
    if preset.gpu.api == "cuda":
        lib = _package_dir("tvm") / "lib" / "libtvm_runtime_cuda.so"
        if not lib.is_file():
            raise TargetError(f"{lib} not found: this apache-tvm wheel has no CUDA runtime; reinstall apache-tvm")
        return {lib.name: lib, "libcudart.so.13": _cudart()}
    return {p.name: p for p in _cached(preset.platform)}


# ------------------------------------------------------------------ arm64 Vulkan under qemu, here

# Debian's arm64 Mesa (lavapipe: Vulkan on the CPU) and Vulkan loader with everything they need,
# unpacked into a private root that qemu-aarch64 takes as its -L prefix: how this x86_64 machine runs
# an arm64-linux-vulkan bundle. apt fetches the packages into a private state folder (its own
# lists, an empty dpkg status: nothing is installed and the system's dpkg architectures stay as
# they are), then each .deb is unpacked with dpkg-deb.
ARM64_MESA_PACKAGES = ("mesa-vulkan-drivers", "libvulkan1")


def arm64_vulkan_root_dir() -> Path:
    return cache_root() / "runtime" / "debian-arm64" / "mesa-vulkan"


def arm64_vulkan_root(fetch: bool = False) -> Path | None:
    """The unpacked arm64 root holding lavapipe (None when not fetched and fetch is False)."""
    dest = arm64_vulkan_root_dir()
    done = dest / "root.json"
    if done.is_file():
        return dest / "root"
    if not fetch:
        return None
    import shutil

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise TargetError("fetching Debian's arm64 Mesa needs apt-get and dpkg-deb (a Debian or Ubuntu machine)")
    state = dest / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", f"Dir::State::status={state / 'status'}", "-o", "Debug::NoLocking=1", "-qq"]
    for args in (["update"], ["install", "--download-only", "-y", *ARM64_MESA_PACKAGES]):
        run = subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise TargetError(f"apt-get {args[0]} for Debian's arm64 Mesa failed: {last}")
    root = dest / "root.part"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    debs = sorted((state / "cache" / "archives").glob("*.deb"))
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    icds = sorted(root.glob("usr/share/vulkan/icd.d/lvp_icd.*.json"))
    if not icds:
        raise TargetError(f"Debian's arm64 mesa-vulkan-drivers held no lavapipe ICD (unpacked in {root})")
    if (dest / "root").exists():
        shutil.rmtree(dest / "root")
    root.replace(dest / "root")
    shutil.rmtree(state / "cache", ignore_errors=True)  # the .debs: unpacked now
    done.write_text(json.dumps({"packages": [d.name for d in debs], "icd": "/" + str(icds[0].relative_to(root))},
                               indent=1))
    return dest / "root"


def arm64_vulkan_wrapper(root: Path) -> tuple[str, ...]:
    """How this machine starts an aarch64 runner that finds lavapipe in `root` (qemu's -L prefix
    maps the loader's absolute paths into it)."""
    icd = json.loads((root.parent / "root.json").read_text())["icd"]
    return ("env", f"VK_ICD_FILENAMES={icd}", f"VK_DRIVER_FILES={icd}", "qemu-aarch64-static", "-L", str(root))
