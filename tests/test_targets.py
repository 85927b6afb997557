"""Target presets, toolchains and the device runtime cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from edgesmith.errors import TargetError
from edgesmith.targets import presets, runtime_libs, toolchains
from edgesmith.targets.presets import PRESETS, get_preset

CPU_PRESETS = {name: p for name, p in PRESETS.items() if p.gpu is None}  # GPU ones: test_gpu_targets.py
ARM64 = [p for p in CPU_PRESETS.values() if p.arch == "aarch64"]
ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


def elf_machine(path: Path) -> int:
    """e_machine from the ELF header, read independently of readelf/our code."""
    head = Path(path).read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def have_cross() -> bool:
    return toolchains.toolchain_status(get_preset("arm64-linux"))[0]


# ---------------------------------------------------------------- registry


def test_registry_names_and_fields():
    assert list(CPU_PRESETS) == ["host", "arm64-linux", "arm64-linux-dotprod", "arm64-linux-i8mm", "android-arm64"]
    for name, p in CPU_PRESETS.items():
        assert p.name == name
        assert p.arch in ("x86_64", "aarch64")
        assert p.triple.startswith(p.arch)
        assert p.toolchain in toolchains.TOOLCHAINS
        assert p.layout.name in ("linux", "android-glibc", "android-ndk", "macos")
    for p in ARM64:
        assert p.platform == "manylinux_2_28_aarch64"
        # this machine runs them under qemu: a glibc-linked runner with the cross sysroot, one that
        # ships its loader without it (targets/layouts.py)
        with_sysroot = p.layout.name == "linux"
        assert p.layout.qemu_wrapper("aarch64", installed=False) == (
            ("qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu") if with_sysroot else ("qemu-aarch64-static",))
    assert get_preset("android-arm64").layout.name == "android-glibc"
    with pytest.raises(FrozenInstanceError):
        get_preset("host").arch = "riscv64"


def test_unknown_target_names_the_value_and_the_known_ones():
    with pytest.raises(TargetError) as err:
        get_preset("pixel9")
    msg = str(err.value)
    assert "'pixel9'" in msg and "arm64-linux" in msg and "edgesmith targets" in msg
    assert "\n" not in msg


def test_host_target_names_the_cpu():
    t = get_preset("host").tvm_target()
    assert t["kind"] == "llvm" and t["mtriple"].endswith("-linux-gnu")
    assert t.get("mcpu") != "native"


# ------------------------------------------------ every target builds a function


@pytest.fixture(scope="module")
def tiny_prim_func():
    from tvm import te

    a = te.placeholder((64,), "float32", name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0 + 1.0, name="b")
    return te.create_prim_func([a, b])


@pytest.mark.parametrize("name", list(CPU_PRESETS))
def test_every_preset_target_builds(name, tiny_prim_func):
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(get_preset(name).tvm_target())
    tvm.compile(tvm.IRModule({"main": tiny_prim_func}), target=target)
    # LLVM only warns about a feature it does not know: check each is really enabled.
    enabled = set(codegen.llvm_get_cpu_features(target))
    for attr in get_preset(name).mattr:
        assert attr.lstrip("+") in enabled, f"{name}: LLVM 22 does not know {attr}"


@pytest.mark.skipif(not have_cross(), reason="no aarch64 cross compiler")
def test_export_fcompile_links_for_aarch64(tmp_path, tiny_prim_func):
    import tvm

    preset = get_preset("arm64-linux")
    mod = tvm.compile(tvm.IRModule({"main": tiny_prim_func}), target=tvm.target.Target(preset.tvm_target()))
    so = tmp_path / "f.so"
    mod.export_library(str(so), **toolchains.export_library_kwargs(preset))
    assert elf_machine(so) == ELF_MACHINE["aarch64"]
    # calling it twice must not accumulate options (tvm's cross_compiler shares its list)
    mod.export_library(str(tmp_path / "g.so"), **toolchains.export_library_kwargs(preset))


def test_export_fcompile_failure_shows_compiler_output(tmp_path):
    fcompile = toolchains.export_fcompile(get_preset("host"))
    bad = tmp_path / "bad.o"
    bad.write_text("not an object file")
    with pytest.raises(TargetError) as err:
        fcompile(str(tmp_path / "x.so"), [str(bad)])
    assert "bad.o" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- toolchains


def test_host_toolchain_present():
    ok, detail = toolchains.toolchain_status(get_preset("host"))
    assert ok, detail


@pytest.mark.skipif(not have_cross(), reason="no aarch64 cross compiler")
def test_global_cxx_is_not_used_for_the_cross_toolchain(monkeypatch):
    monkeypatch.setenv("CXX", shutil.which("g++"))  # an x86 compiler
    monkeypatch.delenv("EDGESMITH_CXX_AARCH64", raising=False)
    tc = toolchains.find_toolchain(get_preset("arm64-linux"))
    assert tc.triple.startswith("aarch64") and Path(tc.cxx).name == "aarch64-linux-gnu-g++"


def test_cross_override_that_is_missing_names_the_variable(monkeypatch):
    monkeypatch.setenv("EDGESMITH_CXX_AARCH64", "/nonexistent/aarch64-g++")
    ok, detail = toolchains.toolchain_status(get_preset("arm64-linux"))
    assert not ok and "EDGESMITH_CXX_AARCH64" in detail and "/nonexistent/aarch64-g++" in detail


def test_cross_override_that_is_not_aarch64_is_rejected(monkeypatch):
    monkeypatch.setenv("EDGESMITH_CXX_AARCH64", shutil.which("g++"))
    ok, detail = toolchains.toolchain_status(get_preset("arm64-linux"))
    assert not ok and "not aarch64" in detail


def test_missing_cross_compiler_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGESMITH_CXX_AARCH64", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, detail = toolchains.toolchain_status(get_preset("arm64-linux"))
    assert not ok and "apt-get install g++-aarch64-linux-gnu" in detail


def test_targets_table_lists_every_preset():
    table = toolchains.format_targets_table()
    for name in PRESETS:
        assert name in table
    facts = {f["name"]: f for f in (toolchains.target_facts(p) for p in PRESETS.values())}
    assert facts["arm64-linux"]["tvm_target"]["mtriple"] == "aarch64-linux-gnu"


# What compile uses without --quant (#20): int8 activations on every Arm CPU (dot products, or NEON's
# smull/smlal on plain Armv8-A since #28), float on GPUs.
DEFAULT_QUANT = {"arm64-linux": "q4f16i8", "arm64-linux-dotprod": "q4f16i8", "arm64-linux-i8mm": "q4f16i8",
                 "android-arm64": "q4f16i8", "android-opencl": "q4f16", "android-mali": "q4f16",
                 "android-vulkan": "q4f16", "linux-vulkan": "q4f16", "apple-metal": "q4f16", "cuda": "q4f16"}


@pytest.mark.parametrize("name", sorted(DEFAULT_QUANT))
def test_default_quantization_per_target(name):
    quant, why = presets.default_quantization(get_preset(name))
    assert quant == DEFAULT_QUANT[name] and why


def test_host_default_follows_the_cpu():
    """The host's default comes from /proc/cpuinfo; checked against LLVM's own view of this CPU
    (the features the int8 kernels select on), an independent path."""
    from edgesmith.compiler.kernels import int8 as kernels_int8

    quant, why = presets.default_quantization(get_preset("host"))
    import tvm

    has_dot = bool(kernels_int8.dot_isas(tvm.target.Target(get_preset("host").tvm_target())))
    assert quant == ("q4f16i8" if has_dot else "q4f16"), why
    assert presets.host_int8_dot("flags\t: fpu sse2 avx2\n") is None
    assert presets.host_int8_dot("flags\t: fpu avx512f avx512_vnni\n") == "AVX512-VNNI"
    assert presets.host_int8_dot("Features\t: fp asimd asimddp\n") == "Arm dotprod"


# ---------------------------------------------------------------- runtime libraries


def test_host_runtime_libs_are_the_installed_ones():
    libs = runtime_libs.runtime_libs(get_preset("host"))
    assert [p.name for p in libs] == ["libtvm_runtime.so", "libtvm_ffi.so"]
    import tvm

    assert runtime_libs.runtime_version() == tvm.__version__
    for lib in libs:
        assert elf_machine(lib) == ELF_MACHINE[presets.host_arch()]


@pytest.fixture(scope="module")
def arm64_runtime():
    # scripts/install.sh caches it (its first use needs the package registry): an error is a regression
    return runtime_libs.runtime_libs(get_preset("arm64-linux"))


def test_arm64_runtime_is_aarch64_and_recorded(arm64_runtime):
    for lib in arm64_runtime:
        assert elf_machine(lib) == ELF_MACHINE["aarch64"]
    record = json.loads((arm64_runtime[0].parent / "runtime.json").read_text())
    assert record["tvm_version"] == runtime_libs.runtime_version()
    assert set(record["files"]) == {"libtvm_runtime.so", "libtvm_ffi.so"}


def _copy_cache(src_lib: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path))
    dest = runtime_libs.runtime_dir("manylinux_2_28_aarch64")
    shutil.copytree(src_lib.parent, dest)
    return dest


def test_corrupted_cached_runtime_is_refused(arm64_runtime, tmp_path, monkeypatch):
    dest = _copy_cache(arm64_runtime[0], tmp_path, monkeypatch)
    with open(dest / "libtvm_ffi.so", "r+b") as f:
        f.seek(4096)
        f.write(b"\0garbage")
    with pytest.raises(TargetError, match="sha256 does not match"):
        runtime_libs.runtime_libs(get_preset("arm64-linux"))


def test_cached_runtime_of_another_version_is_refused(arm64_runtime, tmp_path, monkeypatch):
    dest = _copy_cache(arm64_runtime[0], tmp_path, monkeypatch)
    record = json.loads((dest / "runtime.json").read_text())
    record["tvm_version"] = "0.26.0"
    (dest / "runtime.json").write_text(json.dumps(record))
    with pytest.raises(TargetError, match="0.26.0"):
        runtime_libs.runtime_libs(get_preset("arm64-linux"))


def test_layers_targets_imports_nothing_above_it():
    code = (
        "import sys, edgesmith.targets.presets, edgesmith.targets.toolchains, "
        "edgesmith.targets.runtime_libs, edgesmith.targets.runner_build\n"
        "bad = [m for m in sys.modules if m.startswith(('edgesmith.compiler', 'edgesmith.runtime'))]\n"
        "assert not bad, bad\n"
        "assert 'tvm' not in sys.modules, 'targets must import TVM lazily'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
