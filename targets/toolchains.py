"""C++ toolchains: finding the compiler a preset needs, and linking TVM's output with it.

Which compiler is used (first match wins):

| toolchain           | looked up                                                              |
| ------------------- | ---------------------------------------------------------------------- |
| host                | `$CXX`, then `g++`, then `c++` on PATH                                 |
| aarch64-linux-gnu   | `$EDGESMITH_CXX_AARCH64`; `$CXX` only when `$CXX -dumpmachine` says     |
|                     | aarch64 (a global `CXX=g++` must not leak into a cross build); then    |
|                     | `aarch64-linux-gnu-g++` on PATH                                        |
| android-ndk         | `$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/`         |
|                     | `aarch64-linux-android24-clang++`                                      |
| on-device           | none here: the library ships as objects (`model.tar`) and the device   |
|                     | links it and builds the runner (apple-metal: no Mach-O linker here)    |

TVM's linker helpers (`tvm.support.cc`) are reached through tvm_api.create_shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgesmith.errors import TargetError

from .presets import PRESETS, TargetPreset

ANDROID_API = 24


@dataclass(frozen=True)
class ToolchainSpec:
    key: str
    triple: str  # what `cxx -dumpmachine` starts with
    install_hint: str


@dataclass(frozen=True)
class Toolchain:
    cxx: Path
    kind: str  # "gcc" | "ndk-clang"
    sysroot: Path | None  # where the target's libc lives (for the android-glibc loader)
    triple: str


TOOLCHAINS: dict[str, ToolchainSpec] = {
    t.key: t
    for t in [
        ToolchainSpec("host", "", "apt-get install g++ (or set CXX)"),
        ToolchainSpec(
            "aarch64-linux-gnu",
            "aarch64",
            "apt-get install g++-aarch64-linux-gnu (or set EDGESMITH_CXX_AARCH64)",
        ),
        ToolchainSpec("on-device", "", "nothing to install here: the device's own clang++ links the bundle"),
        ToolchainSpec(
            "android-ndk",
            "aarch64",
            "install the Android NDK (r26+) and set ANDROID_NDK_HOME to its folder",
        ),
    ]
}


def _dumpmachine(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "-dumpmachine"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def find_toolchain(preset: TargetPreset) -> Toolchain:
    """The compiler for `preset`, or a TargetError saying how to install one."""
    spec = TOOLCHAINS[preset.toolchain]
    if spec.key == "host":
        env = os.environ.get("CXX")
        cxx = _which(env) if env else (_which("g++") or _which("c++"))
        if cxx is None:
            what = f"CXX='{env}' is not an executable" if env else "no g++ or c++ on PATH"
            raise TargetError(f"target '{preset.name}': {what}; {spec.install_hint}")
        return Toolchain(cxx, "gcc", None, _dumpmachine(str(cxx)))

    if spec.key == "aarch64-linux-gnu":
        override = os.environ.get("EDGESMITH_CXX_AARCH64")
        if override:
            cxx = _which(override)
            if cxx is None:
                raise TargetError(
                    f"target '{preset.name}': EDGESMITH_CXX_AARCH64='{override}' is not an "
                    "executable; point it at an aarch64 g++ or unset it"
                )
        else:
            env = os.environ.get("CXX")
            if env and _which(env) and _dumpmachine(env).startswith("aarch64"):
                cxx = _which(env)
            else:
                cxx = _which("aarch64-linux-gnu-g++")
        if cxx is None:
            raise TargetError(
                f"target '{preset.name}': no aarch64 C++ compiler (aarch64-linux-gnu-g++) "
                f"found; {spec.install_hint}"
            )
        triple = _dumpmachine(str(cxx))
        if not triple.startswith("aarch64"):
            raise TargetError(
                f"target '{preset.name}': {cxx} builds for '{triple or 'unknown'}', not "
                f"aarch64; {spec.install_hint}"
            )
        sysroot = Path("/usr") / triple
        return Toolchain(cxx, "gcc", sysroot if sysroot.is_dir() else None, triple)

    if spec.key == "android-ndk":
        ndk = os.environ.get("ANDROID_NDK_HOME")
        if not ndk:
            raise TargetError(f"target '{preset.name}': ANDROID_NDK_HOME is not set; {spec.install_hint}")
        bindir = Path(ndk) / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64"
        cxx = bindir / "bin" / f"aarch64-linux-android{ANDROID_API}-clang++"
        if not cxx.is_file():
            raise TargetError(
                f"target '{preset.name}': {cxx} not found (ANDROID_NDK_HOME='{ndk}'); "
                f"{spec.install_hint}"
            )
        return Toolchain(cxx, "ndk-clang", bindir / "sysroot", f"aarch64-linux-android{ANDROID_API}")

    if spec.key == "on-device":
        raise TargetError(f"target '{preset.name}' is linked on the device: there is no compiler to run here")

    raise TargetError(f"target '{preset.name}': unknown toolchain '{preset.toolchain}'")


def toolchain_status(preset: TargetPreset) -> tuple[bool, str]:
    """(present?, the compiler's path — or what is missing and how to install it)."""
    if preset.toolchain == "on-device":
        return True, "linked on the device"
    try:
        tc = find_toolchain(preset)
    except TargetError as err:
        return False, str(err)
    return True, str(tc.cxx)


def export_fcompile(preset: TargetPreset):
    """The `fcompile` for `Executable.export_library` that links with the preset's compiler.

    Unlike `tvm.support.cc.cross_compiler`, the options list is not shared between calls,
    and a failed link raises TargetError carrying the compiler's own output.
    """
    from edgesmith.targets.tvm_api import create_shared

    tc = find_toolchain(preset)
    base = ["-O2"] if tc.kind == "gcc" else ["-O2", "-static-libstdc++"]

    def fcompile(output, objects, options=None):
        try:
            create_shared(output, objects, options=base + list(options or []), cc=str(tc.cxx))
        except RuntimeError as err:
            detail = " | ".join(line for line in str(err).splitlines() if line.strip())
            raise TargetError(
                f"target '{preset.name}': linking {output} with {tc.cxx} failed: {detail}"
            ) from err

    fcompile.output_format = "so"
    return fcompile


def export_library_kwargs(preset: TargetPreset) -> dict:
    """Keyword arguments for `Executable.export_library(path, **kwargs)` for `preset`."""
    if preset.toolchain == "on-device":
        return {}  # a .tar path: TVM writes the objects (host code + packed kernels) unlinked
    return {"fcompile": export_fcompile(preset)}


def library_name(preset: TargetPreset) -> str:
    """The model library's file name in BUNDLE/lib/."""
    return "model.tar" if preset.toolchain == "on-device" else "model.so"


def target_facts(preset: TargetPreset) -> dict:
    """What `edgesmith targets` says of one preset (its TVM target JSON included)."""
    from .presets import default_quantization

    ok, detail = toolchain_status(preset)
    quant, why = default_quantization(preset)
    return {"name": preset.name, "description": preset.description, "arch": preset.arch,
            "device": preset.gpu.api if preset.gpu else "cpu", "default_quant": quant, "default_quant_why": why,
            "layout": preset.layout.name, "toolchain_ok": ok, "toolchain": detail,
            "runner": "none: " + preset.gpu.runtime_note if preset.gpu and preset.gpu.runtime_note else
            ("built on the device" if preset.toolchain == "on-device" else "ships in the bundle"),
            "tvm_target": preset.tvm_target()}


def format_targets_table(facts: list[dict] | None = None) -> str:
    """The `edgesmith targets` table: the short facts of each preset (`--json` has the TVM targets)."""
    facts = facts if facts is not None else [target_facts(p) for p in PRESETS.values()]
    rows = [("target", "arch", "runs on", "default quant", "toolchain", "runner")]
    for f in facts:
        rows.append((f["name"], f["arch"], f["device"], f["default_quant"],
                     "ok" if f["toolchain_ok"] else "MISSING", "none yet" if f["runner"].startswith("none") else
                     ("on device" if f["runner"] == "built on the device" else "yes")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"{f['name']}: {f['description']}" for f in facts]
    missing = [f"  {f['name']}: {f['toolchain']}" for f in facts if not f["toolchain_ok"]]
    if missing:
        lines += ["", "missing toolchains:"] + missing
    no_runner = [f"  {f['name']}: {f['runner'][len('none: '):]}" for f in facts if f["runner"].startswith("none")]
    if no_runner:
        lines += ["", "no runner yet (the bundle compiles; running it needs what is named):"] + no_runner
    lines += ["", "default quant: q4f16i8 (int8 activations) where the target has int8 dot products, q4f16 "
              "elsewhere; --quant overrides (`edgesmith quants` lists them).",
              "`edgesmith targets NAME` or --json: the TVM target and the rest."]
    return "\n".join(lines)
