"""llama.cpp for aarch64, from the registry's llama-cpp-python sdist, for bench/arm_cost.py.

Nothing of llama.cpp is kept in the repository: the sdist is downloaded at run time into a cache
folder (bench/models/llama.cpp-arm by default, ignored by git) and only the parts needed are
extracted (the build tree, the HF -> GGUF converter and its gguf-py):

  kernel_asm(src, march)    arch/arm/quants.c and repack.cpp compiled to assembly with
                            aarch64-linux-gnu-gcc/g++ -O3 -DNDEBUG -march=... (the Release flags
                            of llama.cpp's CMake build for ggml-cpu)
  build(src, cache, march)  libllama + libggml* cross-built with CMake (shared, no OpenMP), and
                            bench/llama_decode.cpp linked against them: one folder to run under
                            qemu. libllama and ggml-base take no -march (llama.cpp applies the CPU
                            flags to ggml-cpu only), so a second -march rebuilds only ggml-cpu.
  gguf(hf, src, cache, run) the sdist's convert_hf_to_gguf.py -> f16 GGUF, then llama.cpp's own
                            quantizer (run under qemu through the driver) -> Q4_0 for every
                            tensor (`pure`: the lm_head too, as edgesmith quantizes it)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as `python bench/NAME.py`: import siblings as bench.NAME from the
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # repo root; bench/ itself never on sys.path
from bench.common import extract_llama_sdist  # noqa: E402

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is what is compiled
KEEP = ("CMakeLists.txt", "cmake/", "ggml/", "src/", "include/", "vendor/", "licenses/", "LICENSE",
        "convert_hf_to_gguf.py", "conversion/", "gguf-py/")
CROSS_CC, CROSS_CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"


class LlamaError(RuntimeError):
    """A step of getting llama.cpp for aarch64 failed; the message says which and why."""


def sh(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, what: str = "",
       timeout: float = 3600) -> str:
    p = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        tail = " | ".join(line.strip() for line in (p.stdout + p.stderr).strip().splitlines()[-6:])
        raise LlamaError(f"{what or cmd[0]} failed (exit {p.returncode}): {tail[-700:]}")
    return p.stdout


def source(cache: Path, version: str = VERSION) -> Path:
    """The sdist's vendor/llama.cpp (the parts in KEEP), downloaded and extracted once."""
    src = cache / f"src-{version}"
    if (src / ".complete").exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    print(f"llama.cpp: pip download llama-cpp-python=={version} (sdist, ~77 MB)", file=sys.stderr)
    return extract_llama_sdist(sh, version, cache / "sdist", src, KEEP)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise LlamaError(f"{tool} is not installed: apt-get install g++-aarch64-linux-gnu cmake")
    return path


def kernel_asm(src: Path, march: str, out: Path) -> dict[str, str]:
    """{"quants": asm, "repack": asm} of ggml-cpu's ARM kernels for -march=`march`."""
    out.mkdir(parents=True, exist_ok=True)
    inc = [f"-I{src / d}" for d in ("ggml/include", "ggml/src", "ggml/src/ggml-cpu")]
    flags = ["-O3", "-DNDEBUG", "-D_GNU_SOURCE", f"-march={march}", "-S", *inc]
    result = {}
    for name, compiler, std, path in (("quants", CROSS_CC, "-std=gnu11", "ggml/src/ggml-cpu/arch/arm/quants.c"),
                                      ("repack", CROSS_CXX, "-std=gnu++17", "ggml/src/ggml-cpu/arch/arm/repack.cpp")):
        asm = out / f"{name}-{march}.s"
        if not asm.exists():
            sh([_need(compiler), std, *flags, str(src / path), "-o", str(asm)], what=f"{compiler} -S {path}")
        result[name] = asm.read_text()
    return result


def _cmake(src: Path, build: Path, march: str, target: str, jobs: int) -> None:
    _need(CROSS_CXX)
    if not (build / "CMakeCache.txt").exists():
        shutil.rmtree(build, ignore_errors=True)
        sh([_need("cmake"), "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            f"-DCMAKE_C_COMPILER={CROSS_CC}", f"-DCMAKE_CXX_COMPILER={CROSS_CXX}",
            "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={march}", "-DGGML_OPENMP=OFF",
            "-DGGML_LLAMAFILE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_COMMON=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"], what=f"cmake configure ({march})")
    sh([_need("cmake"), "--build", str(build), "--target", target, "-j", str(jobs)],
       what=f"cmake --build {target} ({march})", timeout=7200)


def build(src: Path, cache: Path, march: str, base_march: str, jobs: int = 2) -> Path:
    """A folder with llama_decode and the shared libraries it runs on, ggml-cpu for `march`.

    libllama, ggml and ggml-base are built once (in the `base_march` build); other -march builds
    compile only ggml-cpu. The driver links against the base build's libraries.
    """
    run = cache / f"run-{march}"
    driver = run / "llama_decode"
    if driver.exists():
        return run
    base = cache / f"build-{base_march}"
    if not (base / "bin" / "libllama.so").exists():
        print(f"llama.cpp: cross-building libllama for aarch64 ({base_march}; 10-30 minutes on 2 busy cores)",
              file=sys.stderr)
    _cmake(src, base, base_march, "llama", jobs)
    cpu_build = base
    if march != base_march:
        cpu_build = cache / f"build-{march}"
        print(f"llama.cpp: cross-building ggml-cpu for -march={march}", file=sys.stderr)
        _cmake(src, cpu_build, march, "ggml-cpu", jobs)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    libs = {p.name: p for p in (base / "bin").glob("lib*.so*")}
    libs.update({p.name: p for p in (cpu_build / "bin").glob("libggml-cpu.so*")})
    for name, path in libs.items():  # the soname links stay links
        shutil.copy2(path, run / name, follow_symlinks=False)
    sh([CROSS_CXX, "-O2", "-std=c++17", str(HERE / "llama_decode.cpp"), f"-I{src / 'include'}",
        f"-I{src / 'ggml' / 'include'}", f"-L{run}", "-lllama", "-lggml", "-lggml-base", "-Wl,-rpath,$ORIGIN",
        "-o", str(driver)], what="link llama_decode")
    return run


def gguf(hf: Path, src: Path, cache: Path, run_driver) -> Path:
    """The checkpoint as a Q4_0 GGUF (every tensor Q4_0), made once; `run_driver(args)` runs
    the aarch64 driver (under qemu) with those arguments."""
    q4 = cache / f"{hf.name}-Q4_0.gguf"
    if q4.exists():
        return q4
    f16 = cache / f"{hf.name}-f16.gguf"
    sh([sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f16", "--outfile", str(f16)],
       env={"PYTHONPATH": str(src / "gguf-py")}, what="convert_hf_to_gguf.py")
    tmp = q4.with_suffix(".part")
    run_driver(["quantize", str(f16), str(tmp)])
    tmp.rename(q4)
    f16.unlink()
    return q4
