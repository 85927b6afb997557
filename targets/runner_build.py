"""Building the C++ runner (runtime/runner/runner.cc) for a preset, and what ships next to it.

The runner is compiled with the preset's toolchain against the tvm_ffi headers, linked to
the platform's libtvm_ffi.so with RUNPATH $ORIGIN, and cached under
`<cache>/runner/<preset>-<key>/` where key = sha256(source, compiler version, flags,
runtime version), so a second bundle for the same target costs nothing.

Files that go into BUNDLE/bin/ (`bundle_runtime_files`; what a layout adds is its own:
targets/layouts.py):

| layout        | files                                                                      |
| ------------- | -------------------------------------------------------------------------- |
| linux (host)  | runner, libtvm_runtime.so, libtvm_ffi.so                                   |
| linux (arm64) | + libstdc++.so.6, libgcc_s.so.1 from the cross sysroot (not part of glibc;  |
|               |   shipped so a board with an older GCC runtime still runs it)              |
| android-glibc | + the glibc loader and libraries (ld-linux-aarch64.so.1, libc.so.6, libm,   |
|               |   libdl, libpthread); started as `bin/ld-linux-aarch64.so.1                |
|               |   --library-path bin bin/runner ...`                                       |
| cuda          | + libtvm_runtime_cuda.so, libcudart.so.13 (the runner dlopens the first;   |
|               |   the driver's libcuda.so.1 and nvcc are the GPU machine's)                |
| opencl        | + libedgesmith_opencl.so: our OpenCL device runtime (runtime/runner/opencl/),|
| (linux, arm64 |   built here like the runner, linked to libtvm_runtime/libtvm_ffi; it      |
|  boards)      |   dlopens the device's libOpenCL.so.1 when it first runs                   |
| webgpu        | + libedgesmith_webgpu.so (runtime/runner/webgpu/, built the same way) and  |
| (linux-vulkan,|   libwgpu_native.so from the registry's `wgpu` wheel for the architecture, |
|  arm64 boards)|   which the plug-in dlopens; it drives the device's Vulkan driver          |
| macos         | no binary: the macOS arm64 dylibs + src/ (runner.cc, tvm_ffi headers) and  |
|               |   build-on-device.sh, which links lib/model.tar and builds the runner      |
| GPU, no       | nothing (android-opencl, android-vulkan: a phone's GPU driver is bionic,   |
|   runtime     |   so it needs NDK builds; the manifest says what is missing)               |
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from edgesmith.errors import TargetError

from .presets import TargetPreset
from .cache import cache_root
from .runtime_libs import (ffi_include_dirs, gpu_runtime_libs, runtime_libs, runtime_version, tvm_include_dir,
                           wgpu_include_dir)
from .toolchains import Toolchain, find_toolchain

# runtime/runner/ sits next to targets/ in the source tree (read as data, not imported)
RUNNER_SOURCE = Path(__file__).resolve().parent.parent / "runtime" / "runner" / "runner.cc"
OPENCL_SOURCE_DIR = RUNNER_SOURCE.parent / "opencl"
OPENCL_PLUGIN = "libedgesmith_opencl.so"
WEBGPU_SOURCE_DIR = RUNNER_SOURCE.parent / "webgpu"
PLUGIN_COUNTS = RUNNER_SOURCE.parent / "plugin_counts.h"  # both plug-ins include it (what the runner counts)
WEBGPU_PLUGIN = "libedgesmith_webgpu.so"



def runner_source() -> Path:
    if not RUNNER_SOURCE.is_file():
        raise TargetError(f"runner source {RUNNER_SOURCE} not found; reinstall edgesmith")
    return RUNNER_SOURCE


def _compiler_version(tc: Toolchain) -> str:
    done = subprocess.run([str(tc.cxx), "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else str(tc.cxx)


def _flags(preset: TargetPreset, ffi_lib: Path) -> list[str]:
    flags = ["-std=c++17", "-O2", "-Wall", f'-DEDGESMITH_TVM_VERSION="{runtime_version()}"']
    flags += [f"-I{d}" for d in ffi_include_dirs()]
    flags += [f"-L{ffi_lib.parent}", "-ltvm_ffi", "-ldl", "-Wl,-rpath,$ORIGIN"]
    if preset.layout.static_libstdcxx:
        flags += ["-static-libstdc++"]
    return flags


def _lib_dir(tc: Toolchain) -> Path:
    if tc.sysroot is None or not (tc.sysroot / "lib").is_dir():
        raise TargetError(
            f"no target libraries next to {tc.cxx} (expected {tc.sysroot}/lib); "
            "apt-get install g++-aarch64-linux-gnu"
        )
    return tc.sysroot / "lib"


def _compile_cached(preset: TargetPreset, what: str, sources: list[Path], flags: list[str], name: str,
                    headers: tuple[Path, ...] = ()) -> Path:
    """Compile `sources` with the preset's compiler into <cache>/<what>/<toolchain>-<key>/<name>,
    or reuse it; key = sha256(sources, their own headers, compiler, flags, runtime version)."""
    tc = find_toolchain(preset)
    texts = [s.read_text() for s in (*sources, *headers)]
    key = hashlib.sha256(
        "\0".join([*texts, _compiler_version(tc), str(tc.cxx), *flags, runtime_version()]).encode()
    ).hexdigest()[:16]
    # keyed by toolchain, not preset: arm64-linux and android-arm64 share one binary
    entry = cache_root() / what / f"{preset.toolchain}-{key}"
    binary = entry / name
    if binary.is_file():
        return binary
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / (name + ".tmp")
    cmd = [str(tc.cxx), *map(str, sources), "-o", str(tmp), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        log = entry / "build.log"
        log.write_text(" ".join(cmd) + "\n\n" + done.stdout + done.stderr)
        errors = [l for l in done.stderr.splitlines() if "error" in l] or done.stderr.splitlines()
        raise TargetError(
            f"building the {what} for '{preset.name}' with {tc.cxx} failed: "
            f"{' | '.join(errors[:3]) or 'no output'} (full log: {log})"
        )
    tmp.replace(binary)
    return binary


def _build_cached(preset: TargetPreset) -> Path:
    """Compile (or reuse) the runner for `preset`; returns the cached binary."""
    ffi_lib = next(p for p in runtime_libs(preset) if p.name == "libtvm_ffi.so")
    src = runner_source()
    return _compile_cached(preset, "runner", [src], _flags(preset, ffi_lib), "runner",
                           headers=tuple(sorted(src.parent.glob("*.h"))))  # membw.h, beside runner.cc


def opencl_plugin_sources() -> list[Path]:
    sources = sorted(OPENCL_SOURCE_DIR.glob("*.cc"))
    if not sources:
        raise TargetError(f"OpenCL runtime sources not found in {OPENCL_SOURCE_DIR}; reinstall edgesmith")
    return sources


def build_opencl_plugin(preset: TargetPreset) -> Path:
    """Compile (or reuse) libedgesmith_opencl.so for `preset`: TVM's OpenCL device API and module
    loader, against the wheel's headers, linked to the preset's libtvm_runtime.so / libtvm_ffi.so."""
    headers = sorted(OPENCL_SOURCE_DIR.glob("*.h")) + [PLUGIN_COUNTS]
    lib_dirs = sorted({str(p.parent) for p in runtime_libs(preset)})
    flags = ["-std=c++17", "-O2", "-Wall", "-fPIC", "-shared", f"-I{OPENCL_SOURCE_DIR}", f"-I{tvm_include_dir()}"]
    flags += [f"-I{d}" for d in ffi_include_dirs()]
    flags += [f"-L{d}" for d in lib_dirs] + ["-ltvm_runtime", "-ltvm_ffi", "-ldl", "-Wl,-rpath,$ORIGIN"]
    if preset.layout.static_libstdcxx:
        flags += ["-static-libstdc++"]
    return _compile_cached(preset, "opencl-plugin", opencl_plugin_sources(), flags, OPENCL_PLUGIN, tuple(headers))


def webgpu_plugin_sources() -> list[Path]:
    sources = sorted(WEBGPU_SOURCE_DIR.glob("*.cc"))
    if not sources:
        raise TargetError(f"WebGPU runtime sources not found in {WEBGPU_SOURCE_DIR}; reinstall edgesmith")
    return sources


def build_webgpu_plugin(preset: TargetPreset) -> Path:
    """Compile (or reuse) libedgesmith_webgpu.so for `preset`: TVM's WebGPU device API and module
    loader over wgpu-native (webgpu.h / wgpu.h from the `wgpu` wheel; the library is dlopen()ed at
    run time), linked to the preset's libtvm_runtime.so / libtvm_ffi.so."""
    wgpu_inc = wgpu_include_dir()
    headers = sorted(WEBGPU_SOURCE_DIR.glob("*.h")) + [PLUGIN_COUNTS, wgpu_inc / "webgpu.h", wgpu_inc / "wgpu.h"]
    lib_dirs = sorted({str(p.parent) for p in runtime_libs(preset)})
    flags = ["-std=c++17", "-O2", "-Wall", "-fPIC", "-shared", f"-I{WEBGPU_SOURCE_DIR}", f"-I{wgpu_inc}",
             f"-I{tvm_include_dir()}"]
    flags += [f"-I{d}" for d in ffi_include_dirs()]
    flags += [f"-L{d}" for d in lib_dirs] + ["-ltvm_runtime", "-ltvm_ffi", "-ldl", "-Wl,-rpath,$ORIGIN"]
    return _compile_cached(preset, "webgpu-plugin", webgpu_plugin_sources(), flags, WEBGPU_PLUGIN, tuple(headers))


def build_runner(preset: TargetPreset, out_dir: Path) -> Path:
    """Compile the runner for `preset` into `out_dir`/runner (cached across calls)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "runner"
    shutil.copy2(_build_cached(preset), dst)
    return dst


ON_DEVICE_SCRIPT = RUNNER_SOURCE.parent / "build-on-device.sh"


def _on_device_files(preset: TargetPreset) -> dict[str, Path]:
    """Runtime dylibs, and what the device needs to link the model and build the runner."""
    files = dict(gpu_runtime_libs(preset))
    files["build-on-device.sh"] = ON_DEVICE_SCRIPT
    files["src/runner.cc"] = runner_source()
    for header in runner_source().parent.glob("*.h"):  # membw.h, beside runner.cc
        files[f"src/{header.name}"] = header
    for inc in ffi_include_dirs():
        for header in inc.rglob("*.h"):
            files[f"src/include/{header.relative_to(inc).as_posix()}"] = header
    return files


def bundle_runtime_files(preset: TargetPreset) -> dict[str, Path]:
    """{path inside BUNDLE/bin: file to copy there}: the runner and all it needs to start."""
    if preset.gpu is not None and preset.gpu.runtime_note:
        return {}
    if preset.layout.built_on_device:
        return _on_device_files(preset)
    files = {"runner": _build_cached(preset)}
    if preset.gpu is not None and preset.gpu.api == "opencl":
        files[OPENCL_PLUGIN] = build_opencl_plugin(preset)
    if preset.gpu is not None and preset.gpu.api == "webgpu":
        files[WEBGPU_PLUGIN] = build_webgpu_plugin(preset)
    files.update(gpu_runtime_libs(preset))
    for lib in runtime_libs(preset):
        files[lib.name] = lib
    extra = preset.layout.sysroot_files(cross=preset.platform != "host")
    if not extra:
        return files
    libdir = _lib_dir(find_toolchain(preset))
    for name in extra:
        path = libdir / name
        if not path.exists():
            raise TargetError(f"{path} not found (needed for '{preset.name}'); apt-get install g++-aarch64-linux-gnu")
        files[name] = path.resolve()  # the real file, not the symlink
    return files
